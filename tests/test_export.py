"""`t2i export` / `save_pretrained`: an inference-only folder that loads to the same pixels, its
model card (with the eval numbers), the Space that serves it, and loading it from a Hugging
Face Hub cache offline."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from t2i.cli import main
from t2i.pipeline import T2IPipeline

PROMPT = "a smiling woman with blond hair"
INFERENCE_FILES = {"README.md", ".gitattributes", "model_index.json", "tokenizer.json", "vocabulary.json",
                   "clip/config.json", "clip/model.safetensors", "unet/config.json", "unet/model.safetensors",
                   "vae/config.json", "vae/model.safetensors"}


@pytest.fixture(scope="module")
def evaluated_model(tiny_model, synth_dir, tmp_path_factory):
    """A copy of the tiny training dir (checkpoints, latents, logs and all) with a real
    `t2i eval` report in eval/report.json, as `t2i train all` leaves it."""
    root = tmp_path_factory.mktemp("export")
    model = root / "trained"
    shutil.copytree(tiny_model, model)
    assert main(["train", "judge", "--data", str(synth_dir), "--out", str(root / "judge"), "--preset", "tiny",
                 "--steps", "2"]) == 0
    assert main(["eval", "--model", str(model), "--judge", str(root / "judge"), "--data", str(synth_dir),
                 "--n-prompts", "2", "--n-per-prompt", "2", "--n-heldout", "1", "--steps", "2", "--no-progress",
                 "--device", "cpu", "--seed", "3"]) == 0
    return model


@pytest.fixture(scope="module")
def exported(evaluated_model):
    out = evaluated_model.parent / "exported"
    assert main(["export", str(evaluated_model), str(out)]) == 0
    return out


def files_under(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def pixels(images) -> np.ndarray:
    return np.stack([np.asarray(im) for im in images])


def test_export_is_inference_only_and_gives_the_same_pixels(evaluated_model, exported):
    assert {"checkpoints", "latents", "logs", "eval"} <= {p.name for p in evaluated_model.iterdir()}
    assert files_under(exported) == INFERENCE_FILES
    assert sum((exported / f).stat().st_size for f in INFERENCE_FILES) < 10_000_000
    trained = T2IPipeline.from_pretrained(evaluated_model, device="cpu")
    loaded = T2IPipeline.from_pretrained(exported, device="cpu")
    for sampler in ("dpm++2m", "euler-a"):
        a = trained(PROMPT, num_images=2, steps=4, seed=7, sampler=sampler)
        b = loaded(PROMPT, num_images=2, steps=4, seed=7, sampler=sampler)
        assert np.array_equal(pixels(a), pixels(b)), sampler
    assert loaded.model_id == trained.model_id
    # The recipe travels with the weights; the training records do not.
    unet_config = json.loads((exported / "unet" / "config.json").read_text())
    assert unet_config["stage_config"]["loop"]["steps"] == 6 and unet_config["diffusion"]["prediction"] == "v"
    assert "stages" not in json.loads((exported / "model_index.json").read_text())
    # The training captions' words travel too (unseen-word warnings need them).
    from t2i.vocabulary import Vocabulary

    assert Vocabulary.load(exported).to_dict() == Vocabulary.load(evaluated_model).to_dict()
    assert loaded.vocabulary is not None


def test_save_pretrained_refuses_a_folder_with_other_files(tiny_model, tmp_path):
    pipe = T2IPipeline.from_pretrained(tiny_model, device="cpu")
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty and holds no earlier t2i export"):
        pipe.save_pretrained(tmp_path)
    again = tmp_path / "again"
    pipe.save_pretrained(again)
    pipe.save_pretrained(again)  # an earlier export is replaced in place
    assert files_under(again) == INFERENCE_FILES - {"README.md", ".gitattributes"}
    with pytest.raises(ValueError, match="outside the model directory"):
        from t2i.export import export

        export(tiny_model, tiny_model / "inside")


def test_diffusers_pointed_at_an_export_names_t2i(exported):
    diffusers = pytest.importorskip("diffusers")
    with pytest.raises(AttributeError, match=r"t2i\.pipeline\.T2IPipeline"):
        diffusers.DiffusionPipeline.from_pretrained(str(exported))


def test_model_card_front_matter_eval_numbers_and_usage(evaluated_model, exported, tmp_path, monkeypatch):
    from t2i.eval.report import fmt

    card = (exported / "README.md").read_text()
    front = card.split("---\n")[1]
    assert "license: mit" in front and "library_name: t2i" in front and "pipeline_tag: text-to-image" in front
    assert "- text-to-image" in front
    report = json.loads((evaluated_model / "eval" / "report.json").read_text())
    table = card[card.index("## Evaluation"):card.index("## Limitations")]
    # The headline numbers of this report, in its table rows, and what they were measured on.
    fd, clip = report["fd"], report["clip_score"]
    assert re.search(rf"\| FD, judge features \(not Inception FID\) \| {re.escape(fmt(fd['generated'], 2))} \|", table)
    assert f"real/real {fmt(fd['real_vs_real'], 2)}" in table
    assert re.search(rf"\| attribute faithfulness .*\| {fmt(report['faithfulness']['test']['macro_balanced'])} \|",
                     table)
    assert re.search(rf"\| CLIP score \(project CLIP\) \| {re.escape(fmt(clip['generated'], 2))} \|", table)
    info = report["suite"]["info"]
    assert f"{info['test_prompts']} test prompts + {info['heldout_prompts']} held-out" in table
    assert "2 steps, guidance 3.0, seed 3" in table
    assert "## Training data" in card and "training images" in card and "## Limitations" in card

    # The usage snippet runs as written (from the folder the export was written from).
    snippet = re.search(r"```python\n(.*?)```", card, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    snippet = snippet.replace(f'"{exported}"', json.dumps(str(exported)))
    exec(compile(snippet, "model card", "exec"), {})
    assert (tmp_path / "face.png").is_file()


def test_card_without_an_eval_report_says_so(tiny_model, tmp_path):
    assert main(["export", str(tiny_model), str(tmp_path / "x"), "--license", "other"]) == 0
    card = (tmp_path / "x" / "README.md").read_text()
    assert "license: other" in card and "No eval report was found" in card


def test_space_serves_the_exported_model_with_python_app_py(tiny_model, tmp_path):
    pytest.importorskip("gradio")
    gradio_client = pytest.importorskip("gradio_client")
    from test_app import free_port, request, stop_server, wait_until_serving

    space = tmp_path / "space"
    assert main(["export", str(tiny_model), str(space), "--space"]) == 0
    readme = (space / "README.md").read_text()
    front = readme.split("---\n")[1]
    assert "sdk: gradio" in front and "app_file: app.py" in front
    assert "*.safetensors filter=lfs" in (space / ".gitattributes").read_text()
    requirements = (space / "requirements.txt").read_text().splitlines()
    assert any(r.startswith("gradio") for r in requirements) and any(r.startswith("torch") for r in requirements)
    assert (space / "model" / "unet" / "model.safetensors").is_file() and (space / "t2i" / "pipeline.py").is_file()

    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the t2i copied into the Space
    env |= {"GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port), "PYTHONUNBUFFERED": "1",
            "GRADIO_TEMP_DIR": str(tmp_path / "gradio_tmp"), "GRADIO_ANALYTICS_ENABLED": "False",
            "HF_HUB_OFFLINE": "1"}
    log_path = tmp_path / "space.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "app.py"], cwd=space, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_serving(proc, url, log_path, "the Space's app.py")
        client = gradio_client.Client(url, verbose=False, download_files=str(tmp_path / "dl"), analytics_enabled=False)
        outputs = client.predict(**request(PROMPT, steps=3, seed=1), api_name="/generate")
        gallery, info = outputs[1], outputs[2]  # (preview, gallery, info, ...) as `t2i serve` answers
        assert len(gallery) == 1 and Path(gallery[0]["image"]).is_file()
        assert "model `" in info
    finally:
        stop_server(proc)


def test_hub_repo_id_loads_from_the_cache_offline(exported, tmp_path):
    pytest.importorskip("huggingface_hub")
    # The layout huggingface_hub keeps: models--user--repo/{refs/main, snapshots/<revision>/...}.
    revision = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--someone--tiny-faces"
    shutil.copytree(exported, repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    env = os.environ | {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub")}
    proc = subprocess.run([sys.executable, "-m", "t2i", "generate", PROMPT, "--model", "someone/tiny-faces",
                           "--out", str(tmp_path / "hub_out"), "-n", "2", "--steps", "3", "--seed", "4",
                           "--device", "cpu"], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    from PIL import Image

    local = T2IPipeline.from_pretrained(exported, device="cpu")(PROMPT, num_images=2, steps=3, seed=4)
    for k, image in enumerate(local):
        assert np.array_equal(np.asarray(Image.open(tmp_path / "hub_out" / "0001" / f"00_{k:02d}.png")),
                              np.asarray(image))
    # A repo id that is not in the cache: a clear error, no network (HF_HUB_OFFLINE=1 here too).
    with pytest.raises(FileNotFoundError, match="not-cached, and the Hugging Face Hub has no model"):
        T2IPipeline.from_pretrained("someone/not-cached")
