"""Benchmark t2i's UNet against diffusers' UNet2DConditionModel in the same process.

Not a test. Measures, per model: parameters, forward FLOPs per image (FlopCounterMode),
training throughput (forward + backward + AdamW step; img/s and achieved TFLOP/s from the
counted FLOPs of one step), sampling latency per step (no-grad forward) at batch 1 and 16,
and peak memory on CUDA. Models:

  diffusers-baseline  the baseline's denoiser. The reference project (Text-To-Image-From-Scratch:
                      diffusers UNet2DConditionModel, pretrained DistilBERT, 400 DDPM steps)
                      uses UNet2DConditionModel with blocks 64/128/256, cross-attention at 8x8
                      and 4x4 (+ mid), cross_attention_dim 1280 (29.3M parameters)
  t2i-equal           t2i's UNet scaled to the same parameter count, same text input (1280-wide)
  t2i-equal-nokv      the same without reusing the text K/V projections across sampling steps
  t2i-synth64         the synth64 preset that `t2i train` uses (128-wide text, pooled embedding)

All see 4x16x16 latents and `--context-len` text tokens (16 by default: the baseline's 1.63
GFLOP/img corresponds to ~14-16 tokens). Rounds are interleaved across models and the
median (and best) round is reported, because the machine may be shared.

    python bench/unet.py --device cpu [--quick] [--bf16] [--compile] [--channels-last]
    python bench/unet.py --device cuda --bf16 --compile --cuda-graphs
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from t2i.models.unet import UNET_PRESETS, UNet, UNetConfig  # noqa: E402

LATENT = (4, 16, 16)

# t2i's UNet scaled to the baseline's parameter count (29.3M) and fed the same 1280-wide text.
# Same family as the synth64 preset (one ResBlock per level down, two up), grown by one more
# level (2x2) and wider coarse levels: a parameter costs ~2*h*w FLOPs per image, so parameters
# placed at 4x4 and 2x2 are 16-64x cheaper than at 16x16. No attention at 16x16 (256 tokens),
# where it costs most and, at this size, buys least.
T2I_EQUAL = UNetConfig(
    channels=(64, 128, 256, 256), blocks=1, attention_levels=(1, 2, 3), num_heads=8,
    context_dim=1280, pooled_dim=0, mlp_mult=4,
)


# --tiny (a dry run of the benchmark's code, not a measurement): both models an eighth as wide,
# fed 32-wide text.
T2I_EQUAL_TINY = UNetConfig(
    channels=(8, 16, 32, 32), blocks=1, attention_levels=(1, 2, 3), num_heads=2,
    context_dim=32, pooled_dim=0, mlp_mult=4,
)


def diffusers_baseline(tiny=False):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, block_out_channels=(8, 16, 32) if tiny else (64, 128, 256),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32 if tiny else 1280, layers_per_block=2, attention_head_dim=8,
        norm_num_groups=8 if tiny else 32,
    )


class Spec:
    """A model plus how to call it: f(x, t, context, mask, pooled) -> (B, 4, h, w)."""

    def __init__(self, name, module, context_dim, pooled_dim, is_diffusers=False):
        self.name, self.module = name, module
        self.context_dim, self.pooled_dim = context_dim, pooled_dim
        self.is_diffusers = is_diffusers
        self.fn = self.sample_fn = module  # training and sampling calls (compiled or not)

    def __call__(self, x, t, ctx, mask, pooled, sampling=False):
        fn = self.sample_fn if sampling else self.fn
        if self.is_diffusers:
            # diffusers' additive mask: encoder_attention_mask (B, L) of 1/0
            return fn(x, t, ctx, encoder_attention_mask=mask).sample
        return fn(x, t, ctx, mask, pooled)

    def inputs(self, B, L, device, seed=0):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(B, *LATENT, generator=g)
        t = torch.randint(0, 1000, (B,), generator=g)
        ctx = torch.randn(B, L, self.context_dim, generator=g)
        mask = torch.ones(B, L, dtype=torch.bool)
        mask[:, L * 3 // 4 :] = False  # a quarter padding, as real prompts have
        pooled = torch.randn(B, self.pooled_dim, generator=g) if self.pooled_dim else None
        out = [x, t, ctx, mask, pooled]
        return [None if v is None else v.to(device) for v in out]


def build_specs(names, device, channels_last, tiny=False):
    specs = []
    equal = T2I_EQUAL_TINY if tiny else T2I_EQUAL
    for name in names:
        if name == "diffusers-baseline":
            spec = Spec(name, diffusers_baseline(tiny), equal.context_dim, 0, is_diffusers=True)
        elif name in ("t2i-equal", "t2i-equal-nokv"):
            spec = Spec(name, UNet(equal), equal.context_dim, 0)
            # -nokv: without reusing the text K/V projections across sampling steps
            spec.module.set_text_kv_cache(name == "t2i-equal")
        elif name == "t2i-synth64":
            c = UNET_PRESETS["synth64"]
            spec = Spec(name, UNet(c), c.context_dim, c.pooled_dim)
        else:
            raise ValueError(f"unknown model {name!r}")
        spec.module.to(device)
        if channels_last:
            spec.module.to(memory_format=torch.channels_last)
        specs.append(spec)
    return specs


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def count_flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


class TrainStep:
    def __init__(self, spec, B, L, device, amp, channels_last):
        self.spec, self.device, self.amp = spec, device, amp
        self.x, self.t, self.ctx, self.mask, self.pooled = spec.inputs(B, L, device)
        if channels_last:
            self.x = self.x.contiguous(memory_format=torch.channels_last)
        self.target = torch.randn_like(self.x)
        # fused AdamW (CPU and CUDA) for every model: the optimizer is not what is compared
        self.opt = torch.optim.AdamW(spec.module.parameters(), lr=1e-4, fused=True)

    def __call__(self):
        with self.amp():
            out = self.spec(self.x, self.t, self.ctx, self.mask, self.pooled)
            loss = torch.nn.functional.mse_loss(out.float(), self.target)
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)


class SampleStep:
    def __init__(self, spec, B, L, device, amp, channels_last, cuda_graph):
        self.spec, self.amp = spec, amp
        self.x, self.t, self.ctx, self.mask, self.pooled = spec.inputs(B, L, device, seed=1)
        if channels_last:
            self.x = self.x.contiguous(memory_format=torch.channels_last)
        self.graph = None
        if cuda_graph:
            # Fixed shapes: capture one forward and replay it (a sampler copies x_t into the
            # static input each step; that copy is included below).
            self.static_in = self.x.clone()
            s = torch.cuda.Stream()
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s), torch.no_grad():
                for _ in range(3):
                    self._forward(self.static_in)
            torch.cuda.current_stream().wait_stream(s)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph), torch.no_grad():
                self.static_out = self._forward(self.static_in)

    def _forward(self, x):
        with self.amp():
            return self.spec(x, self.t, self.ctx, self.mask, self.pooled, sampling=True)

    @torch.no_grad()
    def __call__(self):
        if self.graph is not None:
            self.static_in.copy_(self.x)
            self.graph.replay()
            return self.static_out
        return self._forward(self.x)


def timed(fn, iters, device) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) per call, averaged over `iters` calls. On a shared
    CPU the process time is the steadier measure of work (it excludes time spent descheduled);
    it sums all threads."""
    sync(device)
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(iters):
        fn()
    sync(device)
    return (time.perf_counter() - t0) / iters, (time.process_time() - c0) / iters


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (CPU or CUDA)")
    p.add_argument("--compile", action="store_true", help="torch.compile every model")
    p.add_argument("--cuda-graphs", action="store_true", help="sampling via CUDA graph replay")
    p.add_argument("--eager-sampling", action="store_true",
                   help="with --compile: compile the training step only (sampling eager, or its CUDA graph)")
    p.add_argument("--channels-last", action="store_true", help="channels_last weights/inputs")
    p.add_argument("--quick", action="store_true", help="fewer rounds and iterations")
    p.add_argument("--tiny", action="store_true",
                   help="diffusers' and t2i's equal-size UNets an eighth as wide: runs the code, measures nothing")
    p.add_argument("--train-batch", type=int, default=0, help="default 32 (CPU) / 256 (CUDA)")
    p.add_argument("--sample-batches", default="1,16")
    p.add_argument("--context-len", type=int, default=16)
    p.add_argument("--rounds", type=int, default=0, help="interleaved rounds (default 5, quick 2)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    p.add_argument("--models", default="diffusers-baseline,t2i-equal,t2i-equal-nokv,t2i-synth64")
    p.add_argument("--out", default="", help="JSON path (default bench/results/unet_<device>.json)")
    args = p.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but CUDA is not available")
    if args.cuda_graphs and device.type != "cuda":
        raise SystemExit("--cuda-graphs needs --device cuda")
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    train_B = args.train_batch or (256 if device.type == "cuda" else 32)
    sample_Bs = [int(b) for b in args.sample_batches.split(",") if b]
    rounds = args.rounds or (2 if args.quick else 5)
    # iterations per round, scaled so one round of one model takes roughly a second on CPU
    train_iters = 2 if args.quick else (20 if device.type == "cuda" else 4)
    if device.type == "cuda":  # a step takes milliseconds: enough calls to average launches
        sample_iters = {b: 50 for b in sample_Bs}
    else:
        sample_iters = {b: max(2, 16 // b) for b in sample_Bs}
    if args.quick:
        sample_iters = {b: max(1, n // 4) for b, n in sample_iters.items()}
    amp_dtype = torch.bfloat16 if args.bf16 else None

    def amp():
        if amp_dtype is None:
            return nullcontext()
        return torch.autocast(device.type, dtype=amp_dtype)

    torch.manual_seed(0)
    specs = build_specs(args.models.split(","), device, args.channels_last, args.tiny)
    L = args.context_len
    results = {}
    trains, samplers = {}, {}
    for spec in specs:
        # FLOPs counted on the eager module (forward at batch 1; forward + backward of a step)
        spec.module.train()
        n_params = sum(p.numel() for p in spec.module.parameters())
        one = spec.inputs(1, L, device)
        with torch.no_grad():
            fwd = count_flops(lambda: spec(*one))  # noqa: B023 (called right here)
        trains[spec.name] = step = TrainStep(spec, train_B, L, device, amp, args.channels_last)
        results[spec.name] = {
            "params": n_params,
            "fwd_gflop_per_img": fwd / 1e9,
            "train_gflop_per_img": count_flops(step) / train_B / 1e9,
        }
        if args.compile:
            spec.fn = torch.compile(spec.module)
            if not args.eager_sampling:
                spec.sample_fn = spec.fn

    # Warm up (and compile): the training step, then the sampling steps.
    for spec in specs:
        spec.module.train()
        for _ in range(2):
            trains[spec.name]()
        spec.module.eval()
        for b in sample_Bs:
            samplers[spec.name, b] = s = SampleStep(spec, b, L, device, amp, args.channels_last,
                                                    args.cuda_graphs)
            for _ in range(3):
                s()

    # Interleaved rounds: every model measured in every round, so load changes hit all.
    train_t = {s.name: [] for s in specs}
    sample_t = {(s.name, b): [] for s in specs for b in sample_Bs}
    peak = {}
    for r in range(rounds):
        for spec in specs:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            spec.module.train()
            train_t[spec.name].append(timed(trains[spec.name], train_iters, device))
            if device.type == "cuda":
                peak[spec.name, "train"] = torch.cuda.max_memory_allocated() / 2**20
            spec.module.eval()
            for b in sample_Bs:
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                sample_t[spec.name, b].append(timed(samplers[spec.name, b], sample_iters[b], device))
                if device.type == "cuda":
                    peak[spec.name, f"sample_b{b}"] = torch.cuda.max_memory_allocated() / 2**20
        print(f"round {r + 1}/{rounds} done", file=sys.stderr)

    def med(xs, i):
        return statistics.median(x[i] for x in xs)

    for spec in specs:
        res = results[spec.name]
        tt = train_t[spec.name]
        res["train_img_per_s"] = train_B / med(tt, 0)
        res["train_img_per_s_best"] = train_B / min(x[0] for x in tt)
        res["train_img_per_cpu_s"] = train_B / med(tt, 1)
        res["train_tflops"] = res["train_gflop_per_img"] * res["train_img_per_s"] / 1e3
        for b in sample_Bs:
            ts = sample_t[spec.name, b]
            res[f"sample_ms_per_step_b{b}"] = med(ts, 0) * 1e3
            res[f"sample_ms_per_step_b{b}_best"] = min(x[0] for x in ts) * 1e3
            res[f"sample_cpu_ms_per_step_b{b}"] = med(ts, 1) * 1e3
        if device.type == "cuda":
            res["peak_mem_mib"] = {k[1]: v for k, v in peak.items() if k[0] == spec.name}

    # Ratios against diffusers' UNet (> 1 means t2i is faster): wall-clock medians, and on CPU
    # also process-CPU-time medians (steadier on a shared machine).
    ratios = {}
    if "diffusers-baseline" in results:
        ref = results["diffusers-baseline"]
        for name, res in results.items():
            if name == "diffusers-baseline":
                continue
            r = {"params": res["params"] / ref["params"],
                 "fwd_flops": res["fwd_gflop_per_img"] / ref["fwd_gflop_per_img"],
                 "train_speedup": res["train_img_per_s"] / ref["train_img_per_s"]}
            for b in sample_Bs:
                k = f"sample_ms_per_step_b{b}"
                r[f"sample_speedup_b{b}"] = ref[k] / res[k]
            if device.type == "cpu":
                r["train_speedup_cpu_time"] = res["train_img_per_cpu_s"] / ref["train_img_per_cpu_s"]
                for b in sample_Bs:
                    k = f"sample_cpu_ms_per_step_b{b}"
                    r[f"sample_speedup_b{b}_cpu_time"] = ref[k] / res[k]
            ratios[name] = r

    import diffusers

    report = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "command": "python bench/unet.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
            "torch_threads": torch.get_num_threads(),
        },
        "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__,
                     "python": platform.python_version()},
        "settings": {"tiny": args.tiny, "latent": LATENT, "context_len": L, "train_batch": train_B,
                     "sample_batches": sample_Bs, "bf16": args.bf16, "compile": args.compile,
                     "eager_sampling": args.eager_sampling,
                     "cuda_graphs": args.cuda_graphs, "channels_last": args.channels_last,
                     "rounds": rounds, "train_iters": train_iters, "sample_iters": sample_iters},
        "t2i_equal_config": T2I_EQUAL.__dict__,
        "results": results,
        "ratios_vs_diffusers_baseline": ratios,
    }
    out = Path(args.out or f"bench/results/unet_{args.device}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str))

    cols = {"params": "params", "fwd_gflop_per_img": "GFLOP/img", "train_img_per_s": "train img/s",
            "train_tflops": "TFLOP/s"}
    for b in sample_Bs:
        cols[f"sample_ms_per_step_b{b}"] = f"ms/step b{b}"
    if device.type == "cpu":
        cols["train_img_per_cpu_s"] = "train img/cpu-s"
        for b in sample_Bs:
            cols[f"sample_cpu_ms_per_step_b{b}"] = f"cpu-ms/step b{b}"
    if device.type == "cuda":
        cols["peak_mem_mib"] = "peak MiB (train)"
    print(f"{'model':20s}" + "".join(f"{c:>17s}" for c in cols.values()))
    for name, res in results.items():
        cells = []
        for c in cols:
            v = res[c]
            if c == "params":
                cells.append(f"{v / 1e6:.2f}M")
            elif c == "peak_mem_mib":
                cells.append(f"{v.get('train', 0):.0f}")
            elif c in ("fwd_gflop_per_img", "train_tflops"):
                cells.append(f"{v:.3f}")
            else:
                cells.append(f"{v:.1f}")
        print(f"{name:20s}" + "".join(f"{c:>17s}" for c in cells))
    for name, r in ratios.items():
        print(f"{name} vs diffusers-baseline: " + ", ".join(f"{k} {v:.2f}x" for k, v in r.items()))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
