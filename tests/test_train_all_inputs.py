"""What makes `t2i train all` retrain a stage: the content of the data it reads (not a file's
mtime) and its section of the resolved recipe; --print-config; a dataset without splits of
its own gets past the data check."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from caption_datasets import make_imagefolder
from t2i import workflow
from t2i.cli import main

STAGES = ["vae", "clip", "encode", "unet", "judge", "eval"]


@pytest.fixture
def fake_stages(monkeypatch):
    """Stage commands replaced by one that writes the stage's output file: the orchestration
    (data check, fingerprints, what is up to date) runs for real, in well under a second."""
    ran: list[str] = []

    def run_stage(spec):
        ran.append(spec.name)
        argv = spec.argv
        out = argv[argv.index("--model" if spec.name == "eval" else "--out") + 1]
        target = (Path(out) / spec.output) if spec.name != "encode" else Path(out) / "index.json"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text("{}")
        return 0

    monkeypatch.setattr(workflow, "run_stage", run_stage)
    monkeypatch.setattr(workflow, "_stage_metrics", lambda out, name: {})
    return ran


def _run(data, out, ran, *extra) -> list[str]:
    ran.clear()
    assert main(["train", "all", "--data", str(data), "--out", str(out), "--preset", "tiny", *extra]) == 0
    return sorted(ran)


def test_captions_content_retrains_dependents_and_mtime_does_not(synth_dir, tmp_path, fake_stages):
    data, out = tmp_path / "data", tmp_path / "model"
    shutil.copytree(synth_dir, data)
    assert _run(data, out, fake_stages) == sorted(STAGES)
    assert _run(data, out, fake_stages) == []
    # touching every annotation file (new mtime, same bytes) retrains nothing
    for name in ("captions.json", "list_attr_celeba.txt", "list_eval_partition.txt"):
        os.utime(data / name, ns=(1_000_000_000, 1_000_000_000))
    assert _run(data, out, fake_stages) == []
    # one changed caption: the stages that read captions, not the VAE or the judge
    captions = json.loads((data / "captions.json").read_text())
    first = sorted(captions)[0]
    captions[first][0] = "a completely different caption"
    (data / "captions.json").write_text(json.dumps(captions))
    assert _run(data, out, fake_stages) == ["clip", "encode", "eval", "unet"]
    # one changed attribute label: the judge too (still not the VAE)
    attr = data / "list_attr_celeba.txt"
    lines = attr.read_text().splitlines()
    cells = lines[2].split()
    cells[1] = "1" if cells[1] == "-1" else "-1"
    lines[2] = " ".join(cells)
    attr.write_text("\n".join(lines) + "\n")
    assert _run(data, out, fake_stages) == ["clip", "encode", "eval", "judge", "unet"]
    recorded = json.loads((out / "recipe.json").read_text())
    assert recorded["preset"] == "tiny" and recorded["unet"]["loop"]["steps"] == 20


def test_imagefolder_metadata_content_and_recipe_sections(synth_dir, tmp_path, fake_stages):
    data, out = make_imagefolder(synth_dir, tmp_path / "folder", n=24), tmp_path / "model"
    caption_stages = sorted(s for s in STAGES if s != "judge")  # no labels: no judge
    assert _run(data, out, fake_stages) == caption_stages  # no splits of its own: carved out
    meta = data / "metadata.jsonl"
    text = meta.read_text()
    os.utime(meta, ns=(2_000_000_000, 2_000_000_000))
    assert _run(data, out, fake_stages) == []
    meta.write_text(text.replace('"text": ["', '"text": ["an edited caption", "', 1))
    assert _run(data, out, fake_stages) == ["clip", "encode", "eval", "unet"]
    # a recipe field retrains its stage and what reads it
    assert _run(data, out, fake_stages, "--set", "unet.loop.steps=3") == ["eval", "unet"]
    assert _run(data, out, fake_stages, "--set", "unet.loop.steps=3") == []
    # another split moves images between splits: everything retrains
    assert _run(data, out, fake_stages, "--set", "unet.loop.steps=3", "--val-fraction", "0.3") == caption_stages


def test_print_config_and_refused_field(capsys, tmp_path):
    (tmp_path / "r.toml").write_text('[unet.loop]\nlr = 0.004\n')
    assert main(["train", "all", "--preset", "tiny", "--config", str(tmp_path / "r.toml"),
                 "--set", "unet.model.channels=[16,32]", "--print-config"]) == 0
    recipe = json.loads(capsys.readouterr().out)
    assert list(recipe) == ["preset", "data", "vae", "clip", "unet", "judge", "eval"]
    assert recipe["unet"]["unet"]["channels"] == [16, 32] and recipe["unet"]["loop"]["lr"] == 0.004
    assert recipe["vae"]["loop"]["steps"] == 20  # the tiny preset's
    assert main(["train", "all", "--preset", "tiny", "--set", "judge.loop.step=5", "--print-config"]) == 2
    assert "unknown field judge.loop.step of LoopConfig" in capsys.readouterr().err
    assert main(["train", "all", "--preset", "tiny"]) == 2
    assert "train all needs --data and --out" in capsys.readouterr().err
