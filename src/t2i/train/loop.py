"""The training loop every stage shares (VAE, CLIP, UNet, judge).

A stage says *what* to optimise (`Stage.build`, `Stage.training_step`); this loop owns *how*:
Accelerate for device/DDP/mixed precision, AdamW, warm-up + cosine LR, gradient clipping,
EMA, a deterministic step-indexed data order, atomic checkpoints + exact resume, SIGINT/SIGTERM
handling, NaN/inf skipping, TensorBoard/JSONL logs and a progress bar.

Determinism: the data order and every random draw made through `ctx.randn/rand/randint` are
functions of (seed, step) for the *global* batch, sliced per rank. So resuming at step k
replays exactly what an uninterrupted run does, and N processes with global batch B reproduce
one process with batch B (up to float summation order).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import json
import math
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from t2i.checkpoint import atomic_write_json, load_latest_training_state, save_training_state
from t2i.config import (
    add_recipe_arguments,
    config_to_dict,
    recipe_from_args,
    recipe_to_dict,
    replace,
)
from t2i.data.options import DataOptions, add_data_arguments, data_options_from_args
from t2i.errors import TrainingInterrupted

# Rank 0 alone renders sample grids, saves components and runs a stage's `finish` (which may
# evaluate) while the other ranks wait at a barrier; an encode before multi-process UNet
# training is also done by rank 0 alone. NCCL's default timeout (10 minutes) would kill such a
# wait, so the process group is created with a generous one. The price: a rank that really hangs
# is only detected after this long.
PROCESS_GROUP_TIMEOUT = datetime.timedelta(hours=2)


@dataclass
class LoopConfig:
    steps: int = 1000
    batch_size: int = 64  # per process and micro-batch; global batch = this x processes x grad_accum
    grad_accum: int = 1
    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1  # cosine decays from lr to lr * min_lr_ratio
    grad_clip: float = 1.0  # 0 = off
    ema_decay: float = 0.0  # 0 = no EMA
    mixed_precision: str = "auto"  # "no" | "bf16" | "fp16" | "auto" (bf16 where the device computes it natively)
    seed: int = 0
    log_every: int = 25
    sample_every: int = 0  # 0 = only at the end
    ckpt_every: int = 500
    keep_last: int = 2
    num_workers: int = 0
    max_bad_steps: int = 10  # abort after this many non-finite losses in a row
    compile: bool = False

    def __post_init__(self):
        for name in ("steps", "batch_size", "grad_accum", "keep_last"):
            if getattr(self, name) < (0 if name == "steps" else 1):
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.mixed_precision not in ("no", "bf16", "fp16", "auto"):
            raise ValueError(f"mixed_precision must be no|bf16|fp16|auto, got {self.mixed_precision!r}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")


def add_loop_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags every training stage shares; an unset flag keeps the preset's value."""
    g = parser.add_argument_group("training loop (defaults: the preset's)")
    g.add_argument("--steps", type=int, help="optimizer steps")
    g.add_argument("--batch-size", type=int, help="per process and micro-batch")
    g.add_argument("--grad-accum", type=int, help="micro-batches per optimizer step")
    g.add_argument("--lr", type=float, help="peak learning rate")
    g.add_argument("--seed", type=int)
    g.add_argument("--mixed-precision", choices=["no", "bf16", "fp16", "auto"])
    g.add_argument("--ckpt-every", type=int, help="save a resumable checkpoint every N steps")
    g.add_argument("--log-every", type=int)
    g.add_argument("--sample-every", type=int, help="write the stage's sample grid every N steps (0 = at the end)")
    g.add_argument("--num-workers", type=int, help="data-loader worker processes")
    g.add_argument("--compile", action="store_true", help="torch.compile the trained modules")


def loop_config_from_args(loop: LoopConfig, args: argparse.Namespace) -> LoopConfig:
    """`loop` (a preset's) with the flags of `add_loop_arguments` that were given."""
    new = replace(loop, steps=args.steps, batch_size=args.batch_size, grad_accum=args.grad_accum, lr=args.lr,
                  seed=args.seed, mixed_precision=args.mixed_precision, ckpt_every=args.ckpt_every,
                  log_every=args.log_every, sample_every=args.sample_every, num_workers=args.num_workers,
                  compile=True if args.compile else None)
    if args.steps is not None:  # a shorter run keeps its warmup to at most a tenth of it
        new = replace(new, warmup_steps=min(loop.warmup_steps, max(1, args.steps // 10)))
    return new


@dataclass
class StepOutput:
    loss: torch.Tensor  # scalar to minimise; each term must only reach the params it should
    logs: dict[str, Any] = field(default_factory=dict)  # scalars (tensors or floats) to log


class Stage:
    """What a training stage provides. See docs/architecture.md."""

    name = "stage"

    def build(self) -> dict[str, nn.Module]:
        """The trainable modules; each gets its own AdamW (LR times `lr_scale(name)`)."""
        raise NotImplementedError

    def lr_scale(self, name: str) -> float:
        return 1.0

    def collate(self, items: list) -> Any:
        """Batch items; unreadable items arrive as None and are dropped."""
        return default_collate([x for x in items if x is not None])

    def training_step(self, batch: Any, ctx: Context) -> StepOutput:
        raise NotImplementedError

    def sample(self, ctx: Context, path: Path) -> None:
        """Main process only: write a visual check (grid) to `path` (a .png)."""

    def finish(self, ctx: Context) -> dict:
        """Main process only, after the last step: save the component, return metrics."""
        return {}


class EMA:
    """Exponential moving average of a module's weights (kept in fp32 on the model's device)."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        # Warm the decay up so early averages are not dominated by the random init.
        decay = min(self.decay, (1 + step) / (10 + step))
        for ema_p, p in zip(self.model.parameters(), model.parameters()):
            ema_p.lerp_(p.detach(), 1.0 - decay)
        for ema_b, b in zip(self.model.buffers(), model.buffers()):
            ema_b.copy_(b)


class StepBatchSampler(Sampler):
    """Yields micro-batches of `(index, sample_seed)` forever, starting at micro-batch `start`.

    Global micro-batch b takes positions [b*G, (b+1)*G) of epoch e's permutation (G = global
    batch, e = b // batches_per_epoch, permutation seeded by (seed, e)); rank r takes its slice.
    `sample_seed` is a function of the global position, so augmentations do not depend on the
    number of processes either.
    """

    def __init__(self, n: int, batch_size: int, seed: int, start: int = 0, rank: int = 0, world: int = 1):
        self.n, self.batch_size, self.seed, self.start, self.rank, self.world = n, batch_size, seed, start, rank, world
        self.global_batch = batch_size * world
        if n < self.global_batch:
            raise ValueError(
                f"the dataset has {n} items, fewer than the global batch of {self.global_batch}; "
                "use a smaller --batch-size or more data"
            )

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        per_epoch = self.n // self.global_batch  # drop the ragged tail of each epoch
        epoch, perm = -1, None
        b = self.start
        while True:
            e, pos = divmod(b, per_epoch)
            if e != epoch:
                epoch = e
                perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 7919 + e))
            first = pos * self.global_batch + self.rank * self.batch_size
            idx = perm[first : first + self.batch_size].tolist()
            base = b * self.global_batch + self.rank * self.batch_size
            yield [(i, (self.seed * 1_000_003 + base + j) % 2**31) for j, i in enumerate(idx)]
            b += 1

    def __len__(self) -> int:  # infinite; DataLoader only needs this for len(loader)
        return 2**62


class Context:
    """What `training_step`, `sample` and `finish` see."""

    def __init__(self, accelerator, cfg: LoopConfig, out_dir: Path, stage_name: str):
        self.accelerator = accelerator
        self.cfg = cfg
        self.out_dir = out_dir
        self.stage_name = stage_name
        self.device = accelerator.device
        self.rank = accelerator.process_index
        self.world_size = accelerator.num_processes
        self.is_main = accelerator.is_main_process
        self.models: dict[str, nn.Module] = {}
        self.emas: dict[str, EMA] = {}
        self.step = 0
        self._micro = 0
        self._draw = 0

    def unwrap(self, name: str) -> nn.Module:
        """The trained module itself, without DDP and without torch.compile's wrapper (whose
        state_dict keys carry an `_orig_mod.` prefix that a plain module cannot load)."""
        return unwrap_module(self.accelerator, self.models[name])

    def ema(self, name: str) -> nn.Module:
        """The EMA copy of a module (the raw module when EMA is off)."""
        return self.emas[name].model if name in self.emas else self.unwrap(name)

    def autocast(self):
        return self.accelerator.autocast()

    # Random draws for the global batch, seeded by (seed, step, micro-batch, draw number).
    def _generator(self) -> torch.Generator:
        self._draw += 1
        key = ((self.cfg.seed * 1_000_003 + self.step) * 131 + self._micro) * 257 + self._draw
        return torch.Generator().manual_seed(key % 2**63)

    def _local(self, full: torch.Tensor, b: int) -> torch.Tensor:
        return full[self.rank * b : (self.rank + 1) * b].to(self.device)

    def randn(self, b: int, *shape: int) -> torch.Tensor:
        return self._local(torch.randn(b * self.world_size, *shape, generator=self._generator()), b)

    def rand(self, b: int, *shape: int) -> torch.Tensor:
        return self._local(torch.rand(b * self.world_size, *shape, generator=self._generator()), b)

    def randint(self, low: int, high: int, b: int) -> torch.Tensor:
        return self._local(torch.randint(low, high, (b * self.world_size,), generator=self._generator()), b)


def unwrap_module(accelerator, module: nn.Module) -> nn.Module:
    """`module` as built by the stage: DDP and torch.compile wrappers removed. Accelerate's
    `keep_torch_compile=False` only strips a compiled wrapper at the top, but the loop compiles
    first and Accelerate wraps DDP around the compiled module, so strip what is left too."""
    module = accelerator.unwrap_model(module, keep_torch_compile=False)
    while isinstance(module, torch._dynamo.eval_frame.OptimizedModule):
        module = module._orig_mod
    return module


def distributed_state():
    """Accelerate's process-wide state. Under torchrun / `accelerate launch` the first call joins
    the process group (gloo on CPU, NCCL on GPU) with `PROCESS_GROUP_TIMEOUT`; later calls and
    `make_accelerator` reuse it. Use it for work one rank must do before training starts:
    `with distributed_state().main_process_first(): ...`."""
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available(), timeout=PROCESS_GROUP_TIMEOUT)


def add_stage_recipe_arguments(parser: argparse.ArgumentParser) -> None:
    """--config, --set and the dataset-reading flags of a training stage."""
    add_recipe_arguments(parser)
    add_data_arguments(parser)


def stage_recipe(args: argparse.Namespace, name: str, presets: dict) -> dict:
    """{"preset", "data": DataOptions, name: the stage's config} from the preset, --config,
    --set and the data flags (the stage applies its own flags to its section)."""
    recipe = recipe_from_args(args, lambda preset: {"data": DataOptions(), name: presets[preset]})
    recipe["data"] = data_options_from_args(args, recipe["data"])
    return recipe


def record_recipe(out: str | Path, name: str, recipe: dict) -> None:
    """Write a stage's resolved recipe beside its outputs, OUT/recipes/NAME.json (rank 0 only);
    `--config` takes the file back."""
    if distributed_state().is_main_process:
        atomic_write_json(Path(out) / "recipes" / f"{name}.json", recipe_to_dict(recipe))


def cpu_has_native_bf16(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """Whether the CPU computes bf16 natively (AVX512-BF16 or AMX): there, bf16 autocast trained
    1.4-2.3x faster than fp32; on an AVX2-only CPU it is emulated and was 10-16x slower (synth64
    steps: VAE 3.0 s vs 0.30 s, UNet 25.8 s vs 1.64 s at batch 64). Unknown (no /proc/cpuinfo) -> False."""
    try:
        flags = Path(cpuinfo).read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def make_accelerator(mixed_precision: str = "auto"):
    """An Accelerator for this process (CPU when no GPU; gloo under torchrun on CPU)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import InitProcessGroupKwargs

    use_cpu = not torch.cuda.is_available()
    if mixed_precision == "auto":
        if use_cpu:
            mixed_precision = "bf16" if cpu_has_native_bf16() else "no"
        else:
            mixed_precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    # Several stages may train in one process (`t2i train all`, tests): Accelerate keeps a
    # process-wide state that refuses a new precision unless reset.
    AcceleratorState._reset_state()
    return Accelerator(cpu=use_cpu, mixed_precision=mixed_precision,
                       kwargs_handlers=[InitProcessGroupKwargs(timeout=PROCESS_GROUP_TIMEOUT)])


def lr_at(step: int, cfg: LoopConfig) -> float:
    """Linear warm-up, then cosine decay to lr * min_lr_ratio (Loshchilov & Hutter 2017)."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cosine)


def train(stage: Stage, dataset: Dataset, cfg: LoopConfig, out_dir: str | Path) -> dict:
    """Train `stage` on `dataset` for `cfg.steps` optimizer steps, resuming if a checkpoint
    exists under `out_dir/checkpoints/<stage>`. Returns `stage.finish`'s metrics plus timing."""
    run = _Run(stage, cfg, Path(out_dir))
    run.build()  # the stage's modules, an AdamW and an EMA copy for each
    run.resume()  # from the latest checkpoint, if there is one
    run.prepare()  # Accelerate: device, DDP, mixed precision
    batches = iter(run.loader(dataset))
    log = _TrainLog(run)
    with _SignalFlag() as stop_signal:
        for step in range(run.start_step, cfg.steps):
            result = run.optimizer_step(step, batches, stop_signal)
            done = step + 1  # steps completed
            log.record(done, result, run.skipped)
            if run.ctx.is_main and cfg.sample_every and done % cfg.sample_every == 0:
                run.sample(done, f"step_{done:07d}.png")
            if result.stop:  # agreed by all ranks in `_agree`, so every rank saves at the same step
                signum = stop_signal.signum or signal.SIGTERM  # another rank was signalled
                path = run.save(done)
                log.close_progress()
                raise TrainingInterrupted(done, signum, path)
            if done % cfg.ckpt_every == 0 and done < cfg.steps:
                run.save(done)
    log.close_progress()
    metrics = run.finish(train_seconds=time.perf_counter() - log.t_start, global_batch=log.global_batch)
    log.close()
    return metrics


@dataclass
class _StepResult:
    ok: bool  # False: a non-finite loss on some rank; the step was skipped everywhere
    loss: torch.Tensor | None
    logs: dict
    stop: bool  # some rank was asked to stop (SIGINT/SIGTERM)


class _Run:
    """The state `train` steps through: the accelerator, the stage's modules with their
    optimizers and EMA copies, and where checkpoints, logs and samples go."""

    def __init__(self, stage: Stage, cfg: LoopConfig, out_dir: Path):
        self.stage, self.cfg = stage, cfg
        self.accelerator = make_accelerator(cfg.mixed_precision)
        torch.manual_seed(cfg.seed)  # model init: identical on every rank
        self.ctx = Context(self.accelerator, cfg, out_dir, stage.name)
        self.ckpt_root = out_dir / "checkpoints" / stage.name
        self.log_dir = out_dir / "logs" / stage.name
        self.sample_dir = out_dir / "samples" / stage.name
        self.start_step = 0
        self.skipped = 0  # steps skipped so far: non-finite losses and fp16 overflows
        self.bad_in_a_row = 0

    def build(self) -> None:
        cfg = self.cfg
        self.raw = self.stage.build()
        self.names = list(self.raw)
        self.optimizers = {}
        for name, module in self.raw.items():
            params = [p for p in module.parameters() if p.requires_grad]
            self.optimizers[name] = torch.optim.AdamW(
                params, lr=cfg.lr * self.stage.lr_scale(name), betas=cfg.betas, weight_decay=cfg.weight_decay,
                fused=self.accelerator.device.type == "cuda",
            )
        self.emas = {name: EMA(m, cfg.ema_decay) for name, m in self.raw.items()} if cfg.ema_decay > 0 else {}

    def resume(self) -> None:
        resumed = load_latest_training_state(self.ckpt_root)
        if resumed is None:
            return
        self.start_step, state = resumed
        for name, module in self.raw.items():
            module.load_state_dict(state["models"][name])
            self.optimizers[name].load_state_dict(state["optimizers"][name])
            if name in self.emas:
                self.emas[name].model.load_state_dict(state["ema"][name])
        torch.set_rng_state(state["rng"]["torch"])
        if torch.cuda.is_available() and "cuda" in state["rng"]:
            # This device's generator (every rank's advanced in step with rank 0's, which saved it).
            torch.cuda.set_rng_state(state["rng"]["cuda"], self.accelerator.device)
        if self.accelerator.scaler is not None and state.get("scaler"):
            self.accelerator.scaler.load_state_dict(state["scaler"])
        _warn_config_change(state.get("loop_config", {}), self.cfg, self.accelerator)
        self.accelerator.print(f"[{self.stage.name}] resuming from step {self.start_step} ({self.ckpt_root})")

    def prepare(self) -> None:
        names, accelerator = self.names, self.accelerator
        compiled = [torch.compile(self.raw[n]) if self.cfg.compile else self.raw[n] for n in names]
        prepared = accelerator.prepare(*compiled, *[self.optimizers[n] for n in names])
        prepared = prepared if isinstance(prepared, (list, tuple)) else [prepared]
        self.ctx.models = dict(zip(names, prepared[: len(names)]))
        self.opts = dict(zip(names, prepared[len(names) :]))
        for ema in self.emas.values():
            ema.model.to(accelerator.device)
        self.ctx.emas = self.emas
        # Base LR per module (set again every step from the schedule).
        self.base_scale = {n: self.stage.lr_scale(n) for n in names}

    def loader(self, dataset: Dataset) -> DataLoader:
        cfg, ctx = self.cfg, self.ctx
        sampler = StepBatchSampler(
            len(dataset), cfg.batch_size, cfg.seed, start=self.start_step * cfg.grad_accum,
            rank=ctx.rank, world=ctx.world_size,
        )
        # The loader's own generator: starting an iterator draws a base seed, and from the global
        # generator that draw would land between a resumed run's restored RNG state and its first
        # step, shifting every later global draw (dropout) against an uninterrupted run.
        return DataLoader(
            dataset, batch_sampler=sampler, collate_fn=self.stage.collate, num_workers=cfg.num_workers,
            persistent_workers=cfg.num_workers > 0, pin_memory=self.accelerator.device.type == "cuda",
            generator=torch.Generator().manual_seed(cfg.seed),
        )

    def optimizer_step(self, step: int, batches: Iterator, stop_signal: _SignalFlag) -> _StepResult:
        """Step `step`: the LR from the schedule, forward/backward over `grad_accum` micro-batches,
        then clip, step every optimizer and update the EMA copies (or skip the step, on every
        rank, when a loss was not finite)."""
        self.ctx.step = step
        for n in self.names:
            for group in self.opts[n].param_groups:
                group["lr"] = lr_at(step, self.cfg) * self.base_scale[n]
        for m in self.ctx.models.values():
            m.train()
        result = self._accumulate_gradients(batches, stop_signal)
        if result.ok:
            overflow, norms = _step_optimizers(self.accelerator, self.ctx.models, self.opts, self.cfg.grad_clip)
            result.logs.update({f"grad_norm/{n}": v for n, v in norms.items()})
            if overflow:  # fp16 loss scaler: the update was skipped and the scale lowered
                self.skipped += 1
            for n, ema in self.emas.items():
                ema.update(self.ctx.unwrap(n), step)
            self.bad_in_a_row = 0
        else:
            self._count_bad_step(step)
        for n in self.names:
            self.opts[n].zero_grad(set_to_none=True)
        return result

    def _accumulate_gradients(self, batches: Iterator, stop_signal: _SignalFlag) -> _StepResult:
        cfg, accelerator = self.cfg, self.accelerator
        loss, logs, stop = None, {}, False
        for micro in range(cfg.grad_accum):
            self.ctx._micro, self.ctx._draw = micro, 0
            batch = _to_device(next(batches), accelerator.device)
            sync = micro == cfg.grad_accum - 1
            with contextlib.ExitStack() as stack:
                if not sync:
                    for m in self.ctx.models.values():
                        stack.enter_context(accelerator.no_sync(m))
                with accelerator.autocast():
                    out = self.stage.training_step(batch, self.ctx)
                finite, stop = _agree(accelerator, torch.isfinite(out.loss.detach()), stop_signal.signum)
                if not finite:
                    # Take the skipped step's remaining micro-batches too: the data position stays
                    # step x grad_accum, which is where a resumed run starts reading.
                    for _ in range(micro + 1, cfg.grad_accum):
                        next(batches)
                    return _StepResult(False, None, logs, stop)
                accelerator.backward(out.loss / cfg.grad_accum)
            loss, logs = out.loss, out.logs
        return _StepResult(True, loss, logs, stop)

    def _count_bad_step(self, step: int) -> None:
        self.bad_in_a_row += 1
        self.skipped += 1
        name = self.stage.name
        self.accelerator.print(f"[{name}] step {step}: non-finite loss, step skipped ({self.bad_in_a_row} in a row)")
        if self.bad_in_a_row >= self.cfg.max_bad_steps:
            raise FloatingPointError(
                f"[{name}] {self.bad_in_a_row} non-finite losses in a row at step {step}; aborting. "
                "Lower the learning rate or use --mixed-precision no."
            )

    def sample(self, step: int, file_name: str) -> None:
        """Rank 0: the stage's sample grid after `step` steps."""
        self.ctx.step = step
        self.sample_dir.mkdir(parents=True, exist_ok=True)
        with torch.no_grad():
            self.stage.sample(self.ctx, self.sample_dir / file_name)

    def save(self, step: int) -> Path | None:
        """Checkpoint the training state (rank 0 writes; every rank waits for it)."""
        path = None
        if self.ctx.is_main:
            state = {
                "models": {n: self.ctx.unwrap(n).state_dict() for n in self.names},
                "optimizers": {n: self.opts[n].state_dict() for n in self.names},
                "ema": {n: e.model.state_dict() for n, e in self.emas.items()},
                "rng": _rng_state(self.accelerator),
                "loop_config": config_to_dict(self.cfg),
            }
            if self.accelerator.scaler is not None:  # fp16: the loss scale and its growth tracker
                state["scaler"] = self.accelerator.scaler.state_dict()
            path = save_training_state(self.ckpt_root, step, state, keep_last=self.cfg.keep_last)
        self.accelerator.wait_for_everyone()
        return path

    def finish(self, train_seconds: float, global_batch: int) -> dict:
        """The last checkpoint, then on rank 0 the final sample grid and the stage's `finish`
        (save the component, measure it); returns its metrics with the run's timing."""
        cfg, ctx = self.cfg, self.ctx
        if self.start_step < cfg.steps:
            self.save(cfg.steps)
        metrics: dict = {}
        if ctx.is_main:
            for m in ctx.models.values():
                m.eval()
            self.sample(cfg.steps, "final.png")
            metrics = self.stage.finish(ctx) or {}
            run_info = dict(train_seconds=round(train_seconds, 1), steps=cfg.steps, resumed_from=self.start_step,
                            skipped_steps=self.skipped, world_size=ctx.world_size, global_batch=global_batch,
                            mixed_precision=self.accelerator.mixed_precision, device=str(self.accelerator.device))
            atomic_write_json(self.log_dir / "run.json", run_info)
            metrics.update(run_info)
        self.accelerator.wait_for_everyone()
        return metrics


class _TrainLog:
    """Rank 0's view of a run: the mean of every logged value over `log_every` steps, written
    to TensorBoard and logs/<stage>/train_log.jsonl, and a progress bar with loss and images/s."""

    def __init__(self, run: _Run):
        cfg, ctx = run.cfg, run.ctx
        self.cfg, self.name = cfg, run.stage.name
        self.global_batch = cfg.batch_size * ctx.world_size * cfg.grad_accum
        self.writer, self.jsonl, self.progress = None, None, None
        if ctx.is_main:
            run.log_dir.mkdir(parents=True, exist_ok=True)
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(run.log_dir))
            self.jsonl = open(run.log_dir / "train_log.jsonl", "a", encoding="utf-8")
        self.t_start = time.perf_counter()
        self.t_log, self.images_since_log = self.t_start, 0
        self.running: dict[str, float] = {}
        if ctx.is_main and run.start_step < cfg.steps:
            from tqdm.auto import tqdm

            self.progress = tqdm(total=cfg.steps, initial=run.start_step, desc=f"train {self.name}",
                                 mininterval=2.0, dynamic_ncols=True, unit="step")

    def record(self, step: int, result: _StepResult, skipped: int) -> None:
        """After `step` steps: add the step's values; every `log_every` steps, write their means."""
        cfg = self.cfg
        self.images_since_log += self.global_batch
        if self.writer is None:
            return
        if result.ok:
            for k, v in {"loss": result.loss, **result.logs}.items():
                self.running[k] = self.running.get(k, 0.0) + float(v.detach() if torch.is_tensor(v) else v)
        if self.progress is not None:
            self.progress.update(1)
        if (step % cfg.log_every == 0 or step == cfg.steps) and self.running:
            now = time.perf_counter()
            n_logged = max(1, cfg.log_every if step % cfg.log_every == 0 else step % cfg.log_every)
            record = {k: v / n_logged for k, v in self.running.items()}
            record.update(step=step, lr=lr_at(step - 1, cfg), skipped=skipped,
                          images_per_s=self.images_since_log / max(now - self.t_log, 1e-9),
                          elapsed_s=now - self.t_start)
            for k, v in record.items():
                if k != "step":
                    self.writer.add_scalar(f"{self.name}/{k}", v, step)
            self.jsonl.write(json.dumps(record) + "\n")
            self.jsonl.flush()
            self.progress.set_postfix(loss=f"{record['loss']:.4f}", img_s=f"{record['images_per_s']:.0f}")
            self.running, self.t_log, self.images_since_log = {}, now, 0

    def close_progress(self) -> None:
        if self.progress is not None:
            self.progress.close()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.jsonl.close()


def _step_optimizers(accelerator, models: dict[str, nn.Module], opts: dict, grad_clip: float
                     ) -> tuple[bool, dict[str, torch.Tensor]]:
    """Clip and step every optimizer once; returns (the fp16 loss scaler skipped the step, the
    gradient norm of each module before clipping).

    With a loss scaler this is PyTorch's AMP recipe for several optimizers sharing one scaler:
    unscale each optimizer once, clip, `scaler.step` each, `scaler.update()` once. Accelerate's
    optimizer wrapper calls `update()` after every optimizer and its `clip_grad_norm_` unscales
    all of them each call, so with two modules (VAE + discriminator, UNet + text encoder) the
    second clip raised and the second optimizer's gradients were unscaled with a scale they had
    not been multiplied by; one overflow also counted as two skipped steps."""
    norms: dict[str, torch.Tensor] = {}
    scaler = accelerator.scaler
    if scaler is None:
        if grad_clip > 0:
            for n, m in models.items():
                norms[n] = accelerator.clip_grad_norm_(m.parameters(), grad_clip)
        for opt in opts.values():
            opt.step()
        return False, norms
    inner = {n: getattr(o, "optimizer", o) for n, o in opts.items()}  # past AcceleratedOptimizer
    for opt in inner.values():
        scaler.unscale_(opt)
    if grad_clip > 0:  # after unscaling, so the threshold applies to the true gradients
        for n, m in models.items():
            norms[n] = torch.nn.utils.clip_grad_norm_(m.parameters(), grad_clip)
    scale = scaler.get_scale()
    for opt in inner.values():
        scaler.step(opt)  # skips this optimizer if its gradients hold inf/NaN
    scaler.update()  # lowers the scale once if any optimizer overflowed
    return scaler.get_scale() < scale, norms


def _rng_state(accelerator) -> dict[str, torch.Tensor]:
    """The global generators a stage may draw from (dropout, augmentations): CPU, and on GPU this
    rank's device. Rank 0's states stand for every rank's: all ranks are seeded alike and draw
    the same amounts, so their generators advance in step."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state(accelerator.device)
    return state


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)) and batch and isinstance(batch[0], torch.Tensor):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


def _agree(accelerator, finite: torch.Tensor, signum: int | None) -> tuple[bool, bool]:
    """All ranks agree on (every loss finite, someone asked to stop): one small all-reduce.
    Without it, one rank skipping a backward or exiting would leave the others hanging."""
    flags = torch.stack([(~finite).float(), torch.tensor(float(signum is not None), device=finite.device)])
    if accelerator.num_processes > 1:
        flags = accelerator.reduce(flags.to(accelerator.device), reduction="sum")
    bad, stop = flags.tolist()
    return bad == 0, stop > 0


class _SignalFlag:
    """Turns the first SIGINT/SIGTERM into a flag checked at the end of each step (the loop
    then checkpoints and raises TrainingInterrupted); a second SIGINT interrupts at once."""

    def __init__(self):
        self.signum: int | None = None
        self._old: dict = {}

    def _handle(self, signum, frame):
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self):
        try:
            for s in (signal.SIGINT, signal.SIGTERM):
                self._old[s] = signal.signal(s, self._handle)
        except ValueError:  # not the main thread (e.g. inside a web worker): no handlers
            self._old = {}
        return self

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)
        return False


def _warn_config_change(saved: dict, cfg: LoopConfig, accelerator) -> None:
    now = config_to_dict(cfg)
    changed = {k: (saved[k], now[k]) for k in ("batch_size", "grad_accum", "lr", "seed")
               if k in saved and saved[k] != now[k]}
    if changed:
        accelerator.print(f"warning: resuming with changed settings {changed}; the run will not "
                          "match an uninterrupted one")
