"""The shared training loop on a toy stage: resume exactness, NaN skipping, data order,
signals, corrupt checkpoints."""

import json
import os
import signal

import pytest
import torch
from torch import nn

from t2i.checkpoint import list_checkpoints
from t2i.train.loop import (
    LoopConfig,
    Stage,
    StepBatchSampler,
    StepOutput,
    TrainingInterrupted,
    lr_at,
    train,
)


class ToyData(torch.utils.data.Dataset):
    def __init__(self, n=64):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 8, generator=g)
        self.y = self.x @ torch.randn(8, 1, generator=g)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, key):
        i, seed = key if isinstance(key, tuple) else (key, key)
        return {"x": self.x[i], "y": self.y[i], "seed": seed}


class ToyStage(Stage):
    name = "toy"

    def __init__(self, nan_at=(), signal_at=None):
        self.nan_at, self.signal_at = set(nan_at), signal_at

    def build(self):
        torch.manual_seed(1)
        return {"net": nn.Sequential(nn.Linear(8, 16), nn.SiLU(), nn.Linear(16, 1))}

    def training_step(self, batch, ctx):
        if ctx.step == self.signal_at:
            os.kill(os.getpid(), signal.SIGTERM)
        noise = ctx.randn(batch["x"].shape[0], 8) * 0.01  # exercises the seeded draws
        loss = (ctx.models["net"](batch["x"] + noise) - batch["y"]).pow(2).mean()
        if ctx.step in self.nan_at:
            loss = loss * float("nan")
        return StepOutput(loss, {"mse": loss.detach()})

    def finish(self, ctx):
        self.final = {k: v.clone() for k, v in ctx.ema("net").state_dict().items()}
        return {"done": True}


def cfg(**kw):
    base = dict(steps=8, batch_size=8, lr=1e-2, warmup_steps=2, ckpt_every=4, log_every=2,
                ema_decay=0.9, mixed_precision="no", seed=3)
    return LoopConfig(**{**base, **kw})


def test_resume_is_bitwise_exact(tmp_path):
    straight = ToyStage()
    train(straight, ToyData(), cfg(), tmp_path / "a")

    first = ToyStage(signal_at=4)
    with pytest.raises(TrainingInterrupted) as info:
        train(first, ToyData(), cfg(), tmp_path / "b")
    assert info.value.step == 5  # the signalled step finishes, then it saves
    resumed = ToyStage()
    metrics = train(resumed, ToyData(), cfg(), tmp_path / "b")
    assert metrics["resumed_from"] == 5
    for k in straight.final:
        assert torch.equal(straight.final[k], resumed.final[k]), k


def test_nan_loss_is_skipped_and_reported(tmp_path, capsys):
    stage = ToyStage(nan_at={2, 3})
    metrics = train(stage, ToyData(), cfg(), tmp_path)
    assert metrics["skipped_steps"] == 2
    assert "step 2: non-finite loss" in capsys.readouterr().out
    assert all(torch.isfinite(v).all() for v in stage.final.values())


def test_too_many_nans_abort(tmp_path):
    with pytest.raises(FloatingPointError, match="non-finite losses in a row"):
        train(ToyStage(nan_at=range(8)), ToyData(), cfg(max_bad_steps=3), tmp_path)


def test_corrupt_latest_checkpoint_falls_back(tmp_path):
    with pytest.raises(TrainingInterrupted):
        train(ToyStage(signal_at=5), ToyData(), cfg(), tmp_path)
    ckpts = list_checkpoints(tmp_path / "checkpoints" / "toy")
    assert [p.name for p in ckpts] == ["step_0000004", "step_0000006"]
    with open(ckpts[-1] / "state.safetensors", "r+b") as f:
        f.truncate(100)
    with pytest.warns(UserWarning, match="step_0000006 is unreadable"):
        metrics = train(ToyStage(), ToyData(), cfg(), tmp_path)
    assert metrics["resumed_from"] == 4


def test_logs_written(tmp_path):
    train(ToyStage(), ToyData(), cfg(), tmp_path)
    lines = (tmp_path / "logs" / "toy" / "train_log.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["step"] for r in records] == [2, 4, 6, 8]
    assert all(r["images_per_s"] > 0 and "mse" in r for r in records)


def test_sampler_global_order_independent_of_world_size():
    one = iter(StepBatchSampler(40, 8, seed=5))
    r0 = iter(StepBatchSampler(40, 4, seed=5, rank=0, world=2))
    r1 = iter(StepBatchSampler(40, 4, seed=5, rank=1, world=2))
    for _ in range(12):  # crosses epoch boundaries (5 batches per epoch)
        assert next(one) == next(r0) + next(r1)
    resumed = iter(StepBatchSampler(40, 8, seed=5, start=7))
    fresh = iter(StepBatchSampler(40, 8, seed=5))
    for _ in range(7):
        next(fresh)
    assert next(resumed) == next(fresh)


def test_sampler_refuses_tiny_dataset():
    with pytest.raises(ValueError, match="fewer than the global batch"):
        StepBatchSampler(3, 8, seed=0)


def test_lr_schedule_warmup_then_cosine():
    c = LoopConfig(steps=100, lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_at(0, c) == pytest.approx(0.1)
    assert lr_at(9, c) == pytest.approx(1.0)
    assert lr_at(55, c) == pytest.approx(0.55)
    assert lr_at(100, c) == pytest.approx(0.1)
