"""The shared training loop on a toy stage: resume exactness, NaN skipping, data order,
signals, corrupt checkpoints."""

import datetime
import functools
import json
import os
import signal

import pytest
import torch
from torch import nn

from t2i.checkpoint import list_checkpoints, load_tensors
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
        noise = ctx.randn(batch["x"].shape[0], 8) * 0.01  # exercises the step-seeded draws
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


class DrawingStage(ToyStage):
    """Draws from the global generator every step, as dropout does."""

    def __init__(self, draws, **kw):
        super().__init__(**kw)
        self.draws = draws

    def training_step(self, batch, ctx):
        self.draws[ctx.step] = torch.rand(1).item()
        return super().training_step(batch, ctx)


def test_resume_continues_the_global_generator(tmp_path):
    """After a resume the global generator gives what it gave at the same steps uninterrupted
    (starting the data loader used to draw from it between the restore and the first step)."""
    straight, resumed = {}, {}
    train(DrawingStage(straight), ToyData(), cfg(), tmp_path / "a")
    with pytest.raises(TrainingInterrupted):
        train(DrawingStage(resumed, signal_at=4), ToyData(), cfg(), tmp_path / "b")
    train(DrawingStage(resumed), ToyData(), cfg(), tmp_path / "b")
    assert resumed == straight


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


def test_modified_latest_checkpoint_fails_its_hash_and_falls_back(tmp_path):
    """A same-size change to the tensor bytes still parses as safetensors; only the SHA-256
    recorded in state.json catches it, and the previous checkpoint is used."""
    with pytest.raises(TrainingInterrupted):
        train(ToyStage(signal_at=5), ToyData(), cfg(), tmp_path)
    latest = list_checkpoints(tmp_path / "checkpoints" / "toy")[-1]
    assert latest.name == "step_0000006"
    tensor_file = latest / "state.safetensors"
    size = tensor_file.stat().st_size
    with open(tensor_file, "r+b") as f:  # flip every bit of the last byte: tensor data, not header
        f.seek(-1, os.SEEK_END)
        last = f.read(1)[0]
        f.seek(-1, os.SEEK_END)
        f.write(bytes([last ^ 0xFF]))
    assert tensor_file.stat().st_size == size
    load_tensors(tensor_file)  # still a valid safetensors file
    with pytest.warns(UserWarning, match="step_0000006 is unreadable.*does not match its recorded SHA-256"):
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


def test_keep_last_prunes_old_checkpoints(tmp_path):
    train(ToyStage(), ToyData(), cfg(ckpt_every=2, steps=8, keep_last=2), tmp_path)
    names = [p.name for p in list_checkpoints(tmp_path / "checkpoints" / "toy")]
    assert names == ["step_0000006", "step_0000008"]  # 2 and 4 were written, then pruned


def test_compiled_modules_resume_and_save_plain_weights(tmp_path, monkeypatch):
    """--compile wraps modules in torch.compile's OptimizedModule; checkpoints and saved weights
    must hold the plain module's keys (no `_orig_mod.` prefix) so resume and loading work. The
    "eager" backend keeps the same wrapper without the minute of C++ compilation, and runs the
    same kernels, so the interrupted + resumed compiled run equals an uncompiled one bitwise."""
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    straight = ToyStage()
    train(straight, ToyData(), cfg(ema_decay=0.0), tmp_path / "plain")
    with pytest.raises(TrainingInterrupted):
        train(ToyStage(signal_at=4), ToyData(), cfg(ema_decay=0.0, compile=True), tmp_path / "compiled")
    ckpt = list_checkpoints(tmp_path / "compiled" / "checkpoints" / "toy")[-1]
    keys = json.loads((ckpt / "state.json").read_text())["state"]["models"]["net"]
    assert sorted(keys) == ["0.bias", "0.weight", "2.bias", "2.weight"]
    resumed = ToyStage()
    metrics = train(resumed, ToyData(), cfg(ema_decay=0.0, compile=True), tmp_path / "compiled")
    assert metrics["resumed_from"] == 5
    assert resumed.final.keys() == straight.final.keys()  # what `finish` saves loads into the plain net
    nn.Sequential(nn.Linear(8, 16), nn.SiLU(), nn.Linear(16, 1)).load_state_dict(resumed.final)
    for k in straight.final:
        assert torch.equal(resumed.final[k], straight.final[k]), k


class NanMicroStage(ToyStage):
    """A NaN on the first micro-batch of step 2 (of 2); records the data each micro-batch saw."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.seen = {}

    def training_step(self, batch, ctx):
        self.seen[(ctx.step, ctx._micro)] = batch["seed"][0].item()
        out = super().training_step(batch, ctx)
        if (ctx.step, ctx._micro) == (2, 0):
            out.loss = out.loss * float("nan")
        return out


def test_nan_with_grad_accum_keeps_the_data_position(tmp_path):
    """A skipped step still consumes all its micro-batches: step s reads global micro-batches
    s*grad_accum.., so a resumed run (which starts reading there) matches a straight one."""
    c = cfg(grad_accum=2)
    straight = NanMicroStage()
    assert train(straight, ToyData(), c, tmp_path / "a")["skipped_steps"] == 1
    G = c.batch_size  # one process
    for (step, micro), first_seed in straight.seen.items():
        assert first_seed == (c.seed * 1_000_003 + (step * c.grad_accum + micro) * G) % 2**31, (step, micro)
    with pytest.raises(TrainingInterrupted):
        train(NanMicroStage(signal_at=4), ToyData(), c, tmp_path / "b")
    resumed = NanMicroStage()
    train(resumed, ToyData(), c, tmp_path / "b")
    for k in straight.final:
        assert torch.equal(straight.final[k], resumed.final[k]), k


class TwoNets(ToyStage):
    """Two modules with their own optimizers sharing one loss scaler (like VAE + discriminator).
    At `overflow_at`, net "b"'s scaled gradients overflow while its loss stays finite."""

    def __init__(self, overflow_at=(), **kw):
        super().__init__(**kw)
        self.overflow_at, self.scales = set(overflow_at), {}

    def build(self):
        torch.manual_seed(1)
        return {"a": nn.Linear(8, 1), "b": nn.Linear(8, 1)}

    def training_step(self, batch, ctx):
        if ctx.step == self.signal_at:
            os.kill(os.getpid(), signal.SIGTERM)
        self.scales[ctx.step] = ctx.accelerator.scaler.get_scale()
        la = (ctx.models["a"](batch["x"]) - batch["y"]).pow(2).mean()
        lb = (ctx.models["b"](batch["x"]) - batch["y"]).pow(2).mean()
        k = 1e34 if ctx.step in self.overflow_at else 1.0  # finite loss; x 2^16 overflows fp32
        return StepOutput(la + lb * k)

    def finish(self, ctx):
        self.final = {f"{n}.{k}": v.clone() for n in ("a", "b") for k, v in ctx.unwrap(n).state_dict().items()}
        return {}


@pytest.fixture
def cpu_loss_scaler(monkeypatch):
    """Accelerate creates its fp16 GradScaler on GPUs only; give the CPU accelerator a real
    torch.amp.GradScaler("cpu") so the loop's scaler path (unscale, clip, step, update,
    checkpointing its state) runs here. Autocast stays fp32: loss scaling alone is exercised."""
    from t2i.train import loop

    real = loop.make_accelerator

    def with_scaler(mixed_precision="auto"):
        accelerator = real("no")
        accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
        return accelerator

    monkeypatch.setattr(loop, "make_accelerator", with_scaler)


def test_loss_scaler_overflow_two_optimizers(tmp_path, cpu_loss_scaler):
    stage = TwoNets(overflow_at={1})
    metrics = train(stage, ToyData(), cfg(), tmp_path)
    assert metrics["skipped_steps"] == 1  # one overflow = one skipped step, not one per optimizer
    assert stage.scales[1] == 2.0**16 and stage.scales[2] == 2.0**15  # the scale halved once
    assert all(torch.isfinite(v).all() for v in stage.final.values())


def test_loss_scaler_state_is_checkpointed(tmp_path, cpu_loss_scaler):
    """The scale lowered by an overflow before the interruption is the scale after resume."""
    straight = TwoNets(overflow_at={1})
    train(straight, ToyData(), cfg(), tmp_path / "a")
    with pytest.raises(TrainingInterrupted):
        train(TwoNets(overflow_at={1}, signal_at=4), ToyData(), cfg(), tmp_path / "b")
    resumed = TwoNets(overflow_at={1})
    train(resumed, ToyData(), cfg(), tmp_path / "b")
    assert resumed.scales == {s: straight.scales[s] for s in range(5, 8)}
    assert resumed.scales[5] == 2.0**15
    for k in straight.final:
        assert torch.equal(straight.final[k], resumed.final[k]), k


def test_process_group_timeout_outlasts_rank0_work():
    """Other ranks wait at a barrier while rank 0 alone samples, saves and evaluates (or encodes
    the latent cache): the accelerator asks for PROCESS_GROUP_TIMEOUT, not NCCL's 10 minutes."""
    from t2i.train.loop import PROCESS_GROUP_TIMEOUT, make_accelerator

    accelerator = make_accelerator("no")
    assert accelerator.init_handler.timeout == PROCESS_GROUP_TIMEOUT >= datetime.timedelta(hours=1)


def test_auto_precision_uses_bf16_on_the_cpu_only_where_it_is_native(tmp_path):
    from t2i.train.loop import cpu_has_native_bf16

    info = tmp_path / "cpuinfo"
    info.write_text("processor : 0\nflags : fpu sse2 avx avx2 fma\n")
    assert not cpu_has_native_bf16(info)
    info.write_text("processor : 0\nflags : fpu avx2 avx512f avx512_bf16\n")
    assert cpu_has_native_bf16(info)
    info.write_text("processor : 0\nflags : fpu avx2 amx_bf16 amx_tile\n")
    assert cpu_has_native_bf16(info)
    assert not cpu_has_native_bf16(tmp_path / "missing")


@pytest.mark.parametrize("native,expected", [(False, "no"), (True, "bf16")])
def test_auto_precision_on_the_cpu_follows_native_bf16(monkeypatch, native, expected):
    from t2i.train import loop

    monkeypatch.setattr(loop, "cpu_has_native_bf16", lambda: native)
    assert loop.make_accelerator("auto").mixed_precision == expected
