"""`t2i train all`: every stage in order, up-to-date stages skipped, an interrupted run resumes
to the same final model and metrics as an uninterrupted one."""

import json
import os
import signal

import torch

from t2i.checkpoint import load_tensors
from t2i.cli import main
from t2i.train import unet as unet_stage


def test_train_all_resumes_to_the_same_result(synth_dir, tmp_path, monkeypatch, capsys):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    argv = ["train", "all", "--data", str(synth_dir), "--preset", "tiny", "--seed", "0"]
    assert main([*argv, "--out", str(straight)]) == 0
    index = json.loads((straight / "model_index.json").read_text())
    assert set(index["stages"]) == {"vae", "clip", "encode", "unet", "judge", "eval"}
    assert "Eyeglasses" in index["attributes"] and "Attractive" not in index["attributes"]
    assert "faithfulness_balanced" in index["stages"]["eval"]["metrics"]

    # Second run: everything is up to date.
    capsys.readouterr()
    assert main([*argv, "--out", str(straight)]) == 0
    assert capsys.readouterr().out.count(": up to date\n") == 6

    # Kill mid-UNet (SIGTERM inside step 10 of 20), then rerun the same command.
    original = unet_stage.UNetStage.training_step

    def preempted(self, batch, ctx):
        if ctx.step == 10:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, batch, ctx)

    with monkeypatch.context() as m:
        m.setattr(unet_stage.UNetStage, "training_step", preempted)
        assert main([*argv, "--out", str(resumed)]) != 0
    assert not (resumed / "unet" / "model.safetensors").exists()
    interrupted = json.loads((resumed / "model_index.json").read_text())["stages"]["unet"]["seconds"]
    assert interrupted > 0  # the stopped run's time is counted
    assert main([*argv, "--out", str(resumed)]) == 0
    out = capsys.readouterr().out
    assert "resuming from step 11" in out and "vae: up to date" in out
    assert json.loads((resumed / "model_index.json").read_text())["stages"]["unet"]["seconds"] > interrupted

    a, b = (load_tensors(d / "unet" / "model.safetensors") for d in (straight, resumed))
    assert all(torch.equal(a[k], b[k]) for k in a)
    metrics = [json.loads((d / "model_index.json").read_text())["stages"]["eval"]["metrics"]
               for d in (straight, resumed)]
    for key in ("faithfulness_balanced", "all_correct", "fd_judge", "clip_score"):
        assert metrics[0][key] == metrics[1][key], key

    # A changed recipe (here: the UNet preset's caption dropout) retrains that stage and the
    # ones downstream of it, not the others.
    from t2i.config import replace

    tiny = unet_stage.PRESETS["tiny"]
    monkeypatch.setitem(unet_stage.PRESETS, "tiny", replace(tiny, diffusion=replace(tiny.diffusion, caption_dropout=0.2)))
    assert main([*argv, "--out", str(straight)]) == 0
    out = capsys.readouterr().out
    assert out.count(": up to date\n") == 4 and "[all] unet: t2i train unet" in out and "[all] eval: t2i eval" in out


def test_max_steps_caps_every_training_stage():
    from t2i.config import resolve_recipe
    from t2i.workflow import plan, recipe_bases

    def recipe(preset):
        return resolve_recipe(recipe_bases, preset)

    steps = {s.name: s.argv[s.argv.index("--steps") + 1] for s in plan("d", "o", recipe("celeba128"), 0, max_steps=300)
             if "--steps" in s.argv}
    assert steps == {"vae": "300", "clip": "300", "unet": "300", "judge": "300"}
    tiny = {s.name: s.argv for s in plan("d", "o", recipe("tiny"), 0, max_steps=1000)}
    assert tiny["unet"][-2:] == ["--steps", "20"]  # the preset's 20 is already below the cap
    assert all("--steps" not in s.argv for s in plan("d", "o", recipe("tiny"), 0))
    assert main(["train", "all", "--data", "d", "--out", "o", "--max-steps", "0"]) == 2
