"""The UNet stage: exact resume after SIGTERM, and 2 processes == 1 process (issue 9)."""

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from t2i.checkpoint import load_tensors
from t2i.config import replace
from t2i.data.latents import LatentCache
from t2i.text_encoder import TextEncoder
from t2i.train.loop import TrainingInterrupted, train
from t2i.train.unet import PRESETS, LatentDataset, UNetStage
from tiny_model import tiny_model_fixture


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, synth_dir):
    return tiny_model_fixture(tmp_path_factory, synth_dir)


def parts_dir(tiny_model: Path, dest: Path) -> Path:
    """A model dir with the tiny VAE, CLIP and latent cache but no UNet yet."""
    shutil.copytree(tiny_model, dest, ignore=shutil.ignore_patterns("unet", "checkpoints", "logs", "samples"))
    return dest


class SignalAt(UNetStage):
    """Sends itself SIGTERM during step `at` (as a cluster pre-empting the job would)."""

    at = -1

    def training_step(self, batch, ctx):
        if ctx.step == self.at:
            os.kill(os.getpid(), signal.SIGTERM)
        return super().training_step(batch, ctx)


def run_stage(model_dir: Path, steps: int, signal_at: int = -1, **loop):
    cfg = PRESETS["tiny"]
    cfg = replace(cfg, loop=replace(cfg.loop, steps=steps, ckpt_every=100, **loop))
    cache = LatentCache.open(model_dir / "latents")
    stage = SignalAt(cfg, TextEncoder.from_pretrained(model_dir), cache, model_dir / "vae",
                     image_size=int(cache.meta["image_size"]))
    stage.at = signal_at
    return train(stage, LatentDataset(cache), cfg.loop, model_dir)


def weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return load_tensors(model_dir / "unet" / "model.safetensors")


def test_resume_after_sigterm_is_bitwise_exact(tiny_model, tmp_path):
    straight = parts_dir(tiny_model, tmp_path / "straight")
    run_stage(straight, steps=6)

    resumed = parts_dir(tiny_model, tmp_path / "resumed")
    with pytest.raises(TrainingInterrupted) as info:
        run_stage(resumed, steps=6, signal_at=2)
    assert info.value.step == 3 and (resumed / "checkpoints" / "unet" / "step_0000003").is_dir()
    assert not (resumed / "unet").exists()
    metrics = run_stage(resumed, steps=6)
    assert metrics["resumed_from"] == 3
    a, b = weights(straight), weights(resumed)  # EMA weights, the ones the pipeline samples with
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_two_processes_match_one_with_the_same_global_batch(tiny_model, tmp_path):
    """torchrun with 2 CPU processes (gloo), per-process batch 4, vs 1 process with batch 8.
    Tolerance: float summation order differs (gradients are averaged across ranks), so the
    weights agree to ~1e-6 relative, not bitwise; we allow 1e-4 absolute after 4 steps."""
    one, two = parts_dir(tiny_model, tmp_path / "one"), parts_dir(tiny_model, tmp_path / "two")
    common = ["train", "unet", "--data", "unused", "--preset", "tiny", "--steps", "4",
              "--mixed-precision", "no", "--seed", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    subprocess.run([sys.executable, "-m", "t2i.cli", *common, "--out", str(one), "--batch-size", "8"],
                   check=True, env=env, capture_output=True, timeout=600)
    torchrun = Path(sys.executable).parent / "torchrun"
    proc = subprocess.run(
        [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "t2i.cli", *common,
         "--out", str(two), "--batch-size", "4"],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    import json

    run_one = json.loads((one / "logs" / "unet" / "run.json").read_text())
    run_two = json.loads((two / "logs" / "unet" / "run.json").read_text())
    assert run_one["world_size"] == 1 and run_two["world_size"] == 2
    assert run_one["global_batch"] == run_two["global_batch"] == 8
    a, b = weights(one), weights(two)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-4, msg=k)
    # Only rank 0 wrote: the same files exist in both runs, and a single TensorBoard event file.
    def files(d):
        return sorted(str(p.relative_to(d)) for p in d.rglob("*") if p.is_file() and "events" not in p.name)
    assert files(one) == files(two)
    assert len(list((two / "logs" / "unet").glob("events.*"))) == 1
