"""End-to-end time per image (text encode + sampling + VAE decode) for t2i's default settings
versus the baseline's: the reference project (Text-To-Image-From-Scratch: diffusers
UNet2DConditionModel, pretrained DistilBERT) samples with 400 DDPM steps and no guidance.
Both settings run on t2i's model in the same process.

    python bench/pipeline.py --model runs/demo [--device cuda] [--precision bf16] [--compile]

Writes bench/results/pipeline_<device>.json and prints a table. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from t2i.eval.report import eval_headline
from t2i.pipeline import DEFAULT_GUIDANCE, DEFAULT_SAMPLER, DEFAULT_STEPS, T2IPipeline

PROMPT = "a smiling young woman with blond hair wearing eyeglasses"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_call(pipe: T2IPipeline, batch: int, repeats: int, **settings) -> dict:
    pipe([PROMPT], num_images=batch, seed=0, output_type="pt", **settings)  # warm-up (and compile)
    times, cpu_times = [], []
    for r in range(repeats):
        sync(pipe.device)
        t0, c0 = time.perf_counter(), time.process_time()
        pipe([PROMPT], num_images=batch, seed=r, output_type="pt", **settings)
        sync(pipe.device)
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
    median = statistics.median(times)
    # Process CPU time is the steadier measure on a shared machine; on an idle machine with
    # all threads busy, wall time is about CPU time / threads.
    cpu = statistics.median(cpu_times)
    return {"batch": batch, "repeats": repeats, "seconds_per_call": round(median, 4),
            "seconds_per_image": round(median / batch, 5),
            "cpu_seconds_per_image": round(cpu / batch, 5), **settings}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="runs/demo")
    parser.add_argument("--device", default=None)
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    parser.add_argument("--compile", action="store_true", help="torch.compile the UNet (CUDA graphs on GPU)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--baseline-repeats", "--seed-repeats", dest="baseline_repeats", type=int, default=2,
                        help="repeats for the slow 400-step baseline setting")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    pipe = T2IPipeline.from_pretrained(args.model, device=args.device, precision=args.precision)
    if args.compile:
        pipe.compile()
    default = dict(steps=DEFAULT_STEPS, guidance=DEFAULT_GUIDANCE, sampler=DEFAULT_SAMPLER)
    baseline_setting = dict(steps=400, guidance=1.0, sampler="ddpm")  # 400 DDPM steps, no CFG
    rows = []
    for batch in args.batches:
        rows.append({"setting": "t2i default", **time_call(pipe, batch, args.repeats, **default)})
        rows.append({"setting": "baseline (400 DDPM, no guidance)",
                     **time_call(pipe, batch, args.baseline_repeats, **baseline_setting)})
    for batch in args.batches:
        ours = next(r for r in rows if r["batch"] == batch and r["setting"] == "t2i default")
        baseline = next(r for r in rows if r["batch"] == batch and r["setting"] != "t2i default")
        ours["speedup_vs_baseline"] = round(baseline["seconds_per_image"] / ours["seconds_per_image"], 2)

    report_path = Path(args.model) / "eval" / "report.json"
    faithfulness = eval_headline(json.loads(report_path.read_text())) if report_path.is_file() else None
    result = {
        "benchmark": "pipeline",
        "date": time.strftime("%Y-%m-%d"),
        "device": str(pipe.device),
        "device_name": torch.cuda.get_device_name() if pipe.device.type == "cuda" else platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "precision": pipe.precision,
        "compiled": args.compile,
        "model": str(args.model),
        "image_size": pipe.image_size,
        "unet_parameters": sum(p.numel() for p in pipe.unet.parameters()),
        "faithfulness_at_default_settings": faithfulness,
        "rows": rows,
    }
    out = Path(args.out or f"bench/results/pipeline_{pipe.device.type}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'setting':32s} {'batch':>5s} {'s/call':>9s} {'s/image':>9s} {'cpu-s/image':>11s} {'speed-up':>8s}")
    for r in rows:
        print(f"{r['setting']:32s} {r['batch']:5d} {r['seconds_per_call']:9.3f} {r['seconds_per_image']:9.4f} "
              f"{r['cpu_seconds_per_image']:11.4f} {r.get('speedup_vs_baseline', ''):>8}")
    print(f"-> {out}")


if __name__ == "__main__":
    main()
