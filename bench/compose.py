"""What a composed prompt costs: time per image of a plain prompt, of a composed prompt of three
terms (every term of every image and the unconditional branch in one batched UNet call per step,
`t2i.diffusion.guidance.composed_model`), and of a reference that calls the UNet once per term
of each image (what batching avoids; its images must match the batched ones).

    python bench/compose.py --model runs/demo [--images 1 8] [--steps 10] [--threads 1]

Times are CPU seconds of this process (`time.process_time`) by default, so a busy machine
changes them less than wall-clock time; `--wall` reports wall-clock time instead (use it on
CUDA, where the CPU waits). Each figure is the best of `--repeats` calls after one warm-up, text
encoding and VAE decoding included. Writes bench/results/compose_<device>.json and prints a
table. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

import t2i.pipeline as pipeline_module
from t2i.diffusion.guidance import composed_model
from t2i.pipeline import T2IPipeline

PLAIN = "a smiling young woman with blond hair"
COMPOSED = "a smiling young woman with blond hair AND wearing eyeglasses AND NOT a hat"


def per_term_model(net, scale, context, context_mask, pooled, term_image, term_weight, uncond_context,
                   uncond_mask=None, uncond_pooled=None):
    """`composed_model`'s formula with one UNet call per term of each image, plus one for the
    unconditional branch: the reference the batched version is compared with."""

    def rows(t: torch.Tensor | None, n: int) -> torch.Tensor | None:
        return None if t is None else t.expand(n, *t.shape[1:]) if t.shape[0] == 1 else t

    def model_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        N = x.shape[0]
        uncond = net(x, t, rows(uncond_context, N), rows(uncond_mask, N), rows(uncond_pooled, N))  # (N, C, h, w)
        out = uncond.clone()
        for r in range(context.shape[0]):
            n = int(term_image[r])
            cond = net(x[n : n + 1], t[n : n + 1], context[r : r + 1], context_mask[r : r + 1],
                       None if pooled is None else pooled[r : r + 1])  # (1, C, h, w)
            out[n] += scale * float(term_weight[r]) * (cond[0] - uncond[n])
        return out

    return model_fn


def best_time(pipe: T2IPipeline, prompt: str, images: int, steps: int, repeats: int, clock) -> tuple[float, torch.Tensor]:
    """(best seconds per call, the images of the last call)."""
    run = dict(num_images=images, steps=steps, seed=0, output_type="pt")
    out = pipe(prompt, **run)
    best = float("inf")
    for _ in range(repeats):
        t0 = clock()
        out = pipe(prompt, **run)
        best = min(best, clock() - t0)
    return best, out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="model directory")
    parser.add_argument("--images", type=int, nargs="+", default=[1, 8], help="images per call")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--wall", action="store_true", help="wall-clock time instead of process CPU time")
    parser.add_argument("--out", help="JSON path (default bench/results/compose_<device>.json)")
    args = parser.parse_args(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return run(args)
    finally:
        torch.set_num_threads(threads)  # a caller in the same process keeps its own setting


def run(args: argparse.Namespace) -> dict:
    clock = time.perf_counter if args.wall else time.process_time
    pipe = T2IPipeline.from_pretrained(args.model, device=args.device)
    rows = []
    for n in args.images:
        plain, _ = best_time(pipe, PLAIN, n, args.steps, args.repeats, clock)
        batched, batched_images = best_time(pipe, COMPOSED, n, args.steps, args.repeats, clock)
        pipeline_module.composed_model = per_term_model
        try:
            per_term, per_term_images = best_time(pipe, COMPOSED, n, args.steps, args.repeats, clock)
        finally:
            pipeline_module.composed_model = composed_model
        rows.append({"images": n, "plain_ms_per_image": 1000 * plain / n,
                     "composed_batched_ms_per_image": 1000 * batched / n,
                     "composed_per_term_calls_ms_per_image": 1000 * per_term / n,
                     "max_abs_difference_batched_vs_per_term": float((batched_images - per_term_images).abs().max())})
        r = rows[-1]
        print(f"{n:3d} images: plain {r['plain_ms_per_image']:8.1f} ms/img | composed (3 terms) batched "
              f"{r['composed_batched_ms_per_image']:8.1f} | one UNet call per term "
              f"{r['composed_per_term_calls_ms_per_image']:8.1f} | max |diff| "
              f"{r['max_abs_difference_batched_vs_per_term']:.1e}")
    result = {
        "model": str(args.model), "device": str(pipe.device), "threads": args.threads, "steps": args.steps,
        "clock": "wall" if args.wall else "process CPU time", "plain_prompt": PLAIN, "composed_prompt": COMPOSED,
        "torch": torch.__version__, "cpu": platform.processor() or platform.machine(), "rows": rows,
    }
    out = Path(args.out) if args.out else Path(__file__).parent / "results" / f"compose_{pipe.device.type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
