"""The UNet stage: exact resume after SIGTERM, and 2 processes == 1 process."""

import json
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


def parts_dir(tiny_model: Path, dest: Path, keep_cache: bool = True) -> Path:
    """A model dir with the tiny VAE, CLIP (and latent cache) but no UNet yet."""
    skip = ["unet", "checkpoints", "logs", "samples"] + ([] if keep_cache else ["latents", ".latents*"])
    shutil.copytree(tiny_model, dest, ignore=shutil.ignore_patterns(*skip))
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
    text_encoder = TextEncoder.from_pretrained(model_dir, token_embeddings=cfg.unet.text_token_embeddings)
    stage = SignalAt(cfg, text_encoder, cache, model_dir / "vae",
                     image_size=int(cache.meta["image_size"]))
    stage.at = signal_at
    return train(stage, LatentDataset(cache, cfg.complete_caption_prob), cfg.loop, model_dir)


def weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return load_tensors(model_dir / "unet" / "model.safetensors")


def test_complete_caption_prob_picks_the_first_caption(tiny_model):
    cache = LatentCache.open(tiny_model / "latents")
    i = 0
    first, others = cache.captions[i][0], set(cache.captions[i][1:])
    assert len(cache.captions[i]) > 1 and first not in others

    def draws(prob):
        ds = LatentDataset(cache, prob)
        return [ds[(i, seed)]["caption"] for seed in range(400)]

    assert set(draws(1.0)) == {first}
    half = draws(0.5)
    assert 0.4 < half.count(first) / len(half) < 0.6 and set(half) - {first} <= others
    uniform = draws(0.0)
    assert 0.1 < uniform.count(first) / len(uniform) < 0.3  # 1 in len(captions) = 5
    assert draws(0.5) == half  # the sample seed decides
    with pytest.raises(ValueError, match="complete_caption_prob"):
        LatentDataset(cache, 1.5)


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


# Installed (through PYTHONPATH) in the torchrun ranks of the 2-process test only: an audit hook
# (PEP 578) that logs every filesystem write under $T2I_WATCH_DIR to $T2I_WRITES_DIR/rank<RANK>.txt.
WRITE_LOGGER = """
import os, sys

_watch, _logs, _rank = (os.environ.get(k) for k in ("T2I_WATCH_DIR", "T2I_WRITES_DIR", "RANK"))
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_EVENTS = ("os.rename", "os.remove", "os.mkdir", "os.rmdir", "shutil.rmtree", "os.symlink",
           "os.link", "os.truncate", "os.chmod", "os.utime")

if _watch and _logs and _rank is not None:
    _watch = os.path.realpath(_watch)
    _log = open(os.path.join(_logs, "rank" + _rank + ".txt"), "a", buffering=1)

    def _hook(event, args):
        if event == "open":
            path, mode, flags = args
            if not (mode and set(mode) & set("wax+")) and not (mode is None and (flags or 0) & _WRITE_FLAGS):
                return
            paths = [path]
        elif event in _EVENTS:
            paths = args
        else:
            return
        for p in paths:
            if isinstance(p, (str, bytes, os.PathLike)):
                p = os.path.realpath(os.fsdecode(p))
                if p == _watch or p.startswith(_watch + os.sep):
                    _log.write(event + " " + p + "\\n")

    sys.addaudithook(_hook)
"""


def test_two_processes_match_one_with_the_same_global_batch(tiny_model, synth_dir, tmp_path):
    """torchrun with 2 CPU processes (gloo), per-process batch 4, vs 1 process with batch 8, both
    on a fresh --out without a latent cache (rank 0 must build it while rank 1 waits), the
    2-process run with --gradient-checkpointing (it must not change the result).

    Tolerance: float summation order differs (gradients are averaged across ranks), so the
    weights agree to ~1e-6 relative, not bitwise; we allow 1e-4 absolute after 4 steps.

    Only rank 0 writes: each rank runs with an audit hook (PEP 578, `WRITE_LOGGER`, loaded via
    PYTHONPATH as sitecustomize: no test code in t2i) that logs every open-for-writing, rename,
    mkdir, remove... under the output dir. Rank 1's log must be empty and rank 0's must show the
    latent cache, checkpoints and the UNet (so the hook demonstrably sees writes)."""
    one = parts_dir(tiny_model, tmp_path / "one", keep_cache=False)
    two = parts_dir(tiny_model, tmp_path / "two", keep_cache=False)
    common = ["train", "unet", "--data", str(synth_dir), "--preset", "tiny", "--steps", "4",
              "--mixed-precision", "no", "--seed", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    subprocess.run([sys.executable, "-m", "t2i", *common, "--out", str(one), "--batch-size", "8"],
                   check=True, env=env, capture_output=True, timeout=600)

    hook_dir, writes = tmp_path / "hook", tmp_path / "writes"
    hook_dir.mkdir()
    writes.mkdir()
    (hook_dir / "sitecustomize.py").write_text(WRITE_LOGGER)
    python_path = os.pathsep.join(p for p in (str(hook_dir), env.get("PYTHONPATH")) if p)
    torchrun = Path(sys.executable).parent / "torchrun"
    proc = subprocess.run(
        [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "t2i", *common,
         "--out", str(two), "--batch-size", "4", "--gradient-checkpointing"],
        env={**env, "PYTHONPATH": python_path, "T2I_WATCH_DIR": str(two), "T2I_WRITES_DIR": str(writes)},
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]

    run_one = json.loads((one / "logs" / "unet" / "run.json").read_text())
    run_two = json.loads((two / "logs" / "unet" / "run.json").read_text())
    assert run_one["world_size"] == 1 and run_two["world_size"] == 2
    assert run_one["global_batch"] == run_two["global_batch"] == 8
    config_two = json.loads((two / "unet" / "config.json").read_text())["config"]
    assert config_two["gradient_checkpointing"] is True
    a, b = weights(one), weights(two)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-4, msg=k)

    rank0 = (writes / "rank0.txt").read_text().splitlines()
    rank1 = (writes / "rank1.txt").read_text().splitlines()
    assert rank1 == [], rank1[:10]
    for written in ("latents", "checkpoints/unet/step_0000004", "unet/model.safetensors"):
        assert any(line.endswith(str(two / written)) for line in rank0), written
    assert len(list((two / "logs" / "unet").glob("events.*"))) == 1


def test_unet_metrics_record_the_run(tiny_model):
    # What the model card and `train all`'s summary read: the precision that ran ("auto" resolved).
    metrics = json.loads((tiny_model / "unet" / "metrics.json").read_text())
    assert metrics["mixed_precision"] == "no" and metrics["parameters"] > 0
    assert metrics["train_seconds"] > 0 and metrics["steps"] >= 1 and metrics["resumed_from"] == 0


def test_a_cache_from_other_data_is_refused(tiny_model, synth_dir, tmp_path, capsys):
    from t2i.cli import main

    model = parts_dir(tiny_model, tmp_path / "model")
    other = tmp_path / "other"
    assert main(["data", "synth", "--out", str(other), "--n", "24", "--seed", "1"]) == 0
    argv = ["train", "unet", "--out", str(model), "--preset", "tiny", "--steps", "1"]
    assert main([*argv, "--data", str(other)]) != 0  # the cache holds synth_dir's latents
    err = capsys.readouterr().err
    assert f"latent cache {model / 'latents'}" in err and "delete" in err
    assert not (model / "unet").exists()
    assert main([*argv, "--data", str(synth_dir)]) == 0
