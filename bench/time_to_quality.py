"""Time to quality for a UNet recipe: judge-based faithfulness and FD against training wall-clock.

Trains the UNet stage (the synth64 preset by default) on top of a model directory that already
holds the VAE, CLIP, latent cache and judge (the one `make demo` writes), and every `--every`
steps evaluates the EMA weights with `t2i eval`'s own code at a reduced size (fewer prompts
and FD images than the full report, so its numbers are noisier). Evaluation time is kept off
the training clock. Not a test.

    python bench/time_to_quality.py --model runs/demo --data data/synthfaces [--every 150]

Writes bench/results/time_to_quality.json (one point per evaluation) and a .png plot.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import time
from pathlib import Path

import torch

from t2i.checkpoint import resolve_component
from t2i.config import replace
from t2i.data.latents import LatentCache
from t2i.eval.faithfulness import load_judge
from t2i.eval.report import eval_headline
from t2i.eval.run import EvalConfig, evaluate
from t2i.text_encoder import TextEncoder
from t2i.train.encode import load_vae
from t2i.train.loop import add_loop_arguments, loop_config_from_args, train
from t2i.train.unet import PRESETS, LatentDataset, UNetStage


class TimedUNetStage(UNetStage):
    """The UNet stage whose `sample` hook evaluates instead of drawing a grid, and keeps a
    training clock that stops while it does."""

    def __init__(self, *args, judge, judge_meta, data, eval_cfg, on_point, **kwargs):
        super().__init__(*args, **kwargs)
        self.judge, self.judge_meta, self.data, self.eval_cfg = judge, judge_meta, data, eval_cfg
        self.on_point = on_point
        self.points: list[dict] = []

    def build(self):
        self.train_seconds, self._since = 0.0, time.perf_counter()
        return super().build()

    def sample(self, ctx, path):
        self.train_seconds += time.perf_counter() - self._since
        if not self.points or self.points[-1]["step"] != ctx.step:  # the last step may be sampled twice
            t0 = time.perf_counter()
            report = evaluate(self._pipeline(ctx), self.judge, self.data, self.eval_cfg,
                              judge_meta=self.judge_meta, progress=False, log=lambda *a: None)
            point = {"step": ctx.step, "train_seconds": round(self.train_seconds, 3),
                     "eval_seconds": round(time.perf_counter() - t0, 1), **eval_headline(report)}
            self.points.append(point)
            self.on_point(self.points)
        self._since = time.perf_counter()


def plot(points: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    minutes = [p["train_seconds"] / 60 for p in points]
    last = points[-1]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.4))
    ax1.plot(minutes, [p["faithfulness_balanced"] for p in points], "o-", color="C0", label="macro balanced")
    ax1.axhline(last["real_ceiling_balanced"], color="C0", ls="--", lw=1, label="real images: balanced")
    ax1.plot(minutes, [p["all_correct"] for p in points], "s-", color="C1", label="all attributes correct")
    ax1.axhline(last["real_ceiling_all_correct"], color="C1", ls="--", lw=1, label="real images: all correct")
    ax1.set(xlabel="UNet training (min, wall)", ylabel="faithfulness (judge)", ylim=(0, 1.02))
    ax1.legend(fontsize=7, loc="center right")
    ax2.plot(minutes, [p["fd_judge"] for p in points], "o-", color="C3", label="generated")
    ax2.axhline(last["fd_vae_floor"], color="gray", ls="--", lw=1, label="VAE round trip (floor)")
    ax2.set(xlabel="UNet training (min, wall)", ylabel="FD (judge features)", ylim=(0, None))
    ax2.legend(fontsize=7, loc="lower left")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _title(result: dict) -> str:
    return (f"t2i {result['preset']}: UNet time to quality, {result['steps']} steps x {result['batch_size']} "
            f"({result['machine']}, {result['date']})")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="runs/demo", help="model dir with vae/, clip/, tokenizer.json, latents/, judge/")
    parser.add_argument("--data", default="data/synthfaces")
    parser.add_argument("--preset", default="synth64", choices=sorted(PRESETS))
    parser.add_argument("--train-text-encoder", action="store_true", help="fine-tune the text encoder jointly")
    parser.add_argument("--every", type=int, default=150, help="evaluate every N steps and at the end (this replaces --sample-every)")
    parser.add_argument("--eval-prompts", type=int, default=32)
    parser.add_argument("--fd-images", type=int, default=128)
    parser.add_argument("--max-real", type=int, default=1000, help="real test images (ceiling, FD reference)")
    parser.add_argument("--work", default="bench/results/time_to_quality_run", help="scratch model dir (replaced)")
    parser.add_argument("--out", default="bench/results/time_to_quality.json")
    parser.add_argument("--replot", action="store_true", help="only redraw the plot of an existing --out")
    add_loop_arguments(parser)  # --steps, --lr, ... as `t2i train unet` takes them
    args = parser.parse_args(argv)
    out = Path(args.out)
    if args.replot:
        result = json.loads(out.read_text())
        plot(result["points"], out.with_suffix(".png"), _title(result))
        return result

    model = Path(args.model)
    cfg = PRESETS[args.preset]
    loop = loop_config_from_args(cfg.loop, args)
    loop = replace(loop, sample_every=args.every, ckpt_every=loop.steps + 1)
    eval_cfg = EvalConfig(n_prompts=args.eval_prompts, n_per_prompt=2, n_heldout=0, fd_images=args.fd_images,
                          max_real=args.max_real, clip_images=64, min_images_per_class=4, wording_prompts=0)
    vae_dir = resolve_component(model, "vae")
    cache = LatentCache.open(model / "latents", expect_vae_hash=load_vae(vae_dir).fingerprint())
    judge, judge_meta = load_judge(model)
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)  # a fresh run each time: the clock must start at step 0
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "benchmark": "time_to_quality", "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads", "torch": torch.__version__,
        "preset": args.preset, "train_text_encoder": args.train_text_encoder, "steps": loop.steps,
        "batch_size": loop.batch_size, "model": str(model),
        "eval": {"prompts": args.eval_prompts, "images_per_prompt": 2, "fd_images": args.fd_images,
                 "note": "reduced t2i eval: noisier than the full report"},
        "points": [],
    }

    def on_point(points: list[dict]) -> None:
        result["points"] = points
        out.write_text(json.dumps(result, indent=2) + "\n")  # partial results survive an interruption
        p = points[-1]
        print(f"step {p['step']:5d}  train {p['train_seconds'] / 60:5.1f} min  faithfulness "
              f"{p['faithfulness_balanced']:.3f}  all-correct {p['all_correct']:.3f}  FD {p['fd_judge']:.2f}",
              flush=True)

    stage = TimedUNetStage(
        replace(cfg, loop=loop, train_text_encoder=True if args.train_text_encoder else None),
        TextEncoder.from_pretrained(model, token_embeddings=cfg.unet.text_token_embeddings), cache, vae_dir,
        image_size=int(cache.meta.get("image_size", 64)),
        judge=judge, judge_meta=judge_meta, data=args.data, eval_cfg=eval_cfg, on_point=on_point,
    )
    train(stage, LatentDataset(cache, cfg.complete_caption_prob), loop, work)
    plot(result["points"], out.with_suffix(".png"), _title(result))
    print(f"-> {out} and {out.with_suffix('.png')}")
    return result


if __name__ == "__main__":
    main()
