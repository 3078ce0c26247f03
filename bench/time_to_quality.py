"""Time to quality of the pipeline: judge-based faithfulness and FD against training wall-clock.

Trains the UNet stage (the synth64 preset by default) on top of a model directory that already
holds the VAE, CLIP, latent cache and judge (the one `make demo` writes), and every `--every`
steps evaluates the EMA weights with `t2i eval`'s own code at a reduced size (fewer prompts
and FD images than the full report, so its numbers are noisier). Evaluation time is kept off
the training clock. Not a test.

The whole pipeline's clock: each point also carries `pipeline_seconds`, the UNet's training
time so far plus the upstream stages' as they recorded it (VAE and CLIP `train_seconds` in
their metrics.json, the latent encoding's seconds in model_index.json). So recipes that spend
their time differently (a cheaper CLIP, a shorter UNet) compare as faithfulness per minute of
the whole run. `--clip` (repeatable) trains one UNet per CLIP on the same VAE and latents,
each a curve of the same plot: side by side in one run.

    python bench/time_to_quality.py --model runs/demo --data data/synthfaces [--every 150] \
        [--clip runs/demo --clip runs/clip-on-latents]

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

    def __init__(self, *args, judge, judge_meta, data, eval_cfg, upstream_seconds, on_point, **kwargs):
        super().__init__(*args, **kwargs)
        self.judge, self.judge_meta, self.data, self.eval_cfg = judge, judge_meta, data, eval_cfg
        self.upstream_seconds = upstream_seconds
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
                     "pipeline_seconds": round(self.upstream_seconds + self.train_seconds, 1),
                     "eval_seconds": round(time.perf_counter() - t0, 1), **eval_headline(report)}
            self.points.append(point)
            self.on_point(self.points)
        self._since = time.perf_counter()


def upstream_seconds(model: Path, clip: Path) -> dict[str, float]:
    """The recorded training seconds of what a UNet run stands on: the VAE (of `model`), the
    latent encoding (of `model`, when `t2i train all` timed it) and the CLIP (of `clip`)."""

    def train_seconds(component: Path) -> float:
        metrics = component / "metrics.json"
        return float(json.loads(metrics.read_text()).get("train_seconds", 0.0)) if metrics.is_file() else 0.0

    index = model / "model_index.json"
    stages = json.loads(index.read_text()).get("stages", {}) if index.is_file() else {}
    return {"vae": train_seconds(resolve_component(model, "vae")),
            "encode": float(stages.get("encode", {}).get("seconds", 0.0)),
            "clip": train_seconds(resolve_component(clip, "clip"))}


def plot(runs: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.6))
    for i, run in enumerate(runs):
        points = run["points"]
        minutes = [p["pipeline_seconds"] / 60 for p in points]
        label = run["clip"] if len(runs) > 1 else ""
        ax1.plot(minutes, [p["faithfulness_balanced"] for p in points], "o-", color=f"C{i}",
                 label=f"balanced {label}".strip())
        ax1.plot(minutes, [p["all_correct"] for p in points], "s--", color=f"C{i}",
                 label=f"all correct {label}".strip())
        ax2.plot(minutes, [p["fd_judge"] for p in points], "o-", color=f"C{i}", label=label or "generated")
    last = runs[0]["points"][-1]
    ax1.axhline(last["real_ceiling_balanced"], color="gray", ls=":", lw=1, label="real images: balanced")
    ax1.axhline(last["real_ceiling_all_correct"], color="gray", ls="-.", lw=1, label="real images: all correct")
    ax1.set(xlabel="pipeline training (min, wall)", ylabel="faithfulness (judge)", ylim=(0, 1.02))
    ax1.legend(fontsize=6, loc="lower right")
    ax2.axhline(last["fd_vae_floor"], color="gray", ls="--", lw=1, label="VAE round trip (floor)")
    ax2.set(xlabel="pipeline training (min, wall)", ylabel="FD (judge features)", ylim=(0, None))
    ax2.legend(fontsize=6, loc="upper right")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _title(result: dict) -> str:
    return (f"t2i {result['preset']}: time to quality, UNet {result['steps']} steps x {result['batch_size']} "
            f"({result['machine']}, {result['date']})")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="runs/demo", help="model dir with vae/, clip/, tokenizer.json, latents/, judge/")
    parser.add_argument("--clip", action="append", default=None,
                        help="model dir whose tokenizer.json and clip/ the UNet conditions on (default: --model); "
                             "repeat it to train one UNet per CLIP, side by side")
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
        plot(result["runs"], out.with_suffix(".png"), _title(result))
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
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "benchmark": "time_to_quality", "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads", "torch": torch.__version__,
        "preset": args.preset, "train_text_encoder": args.train_text_encoder, "steps": loop.steps,
        "batch_size": loop.batch_size, "model": str(model),
        "eval": {"prompts": args.eval_prompts, "images_per_prompt": 2, "fd_images": args.fd_images,
                 "note": "reduced t2i eval: noisier than the full report"},
        "runs": [],
    }
    for clip in [Path(c) for c in args.clip or [model]]:
        run = {"clip": str(clip), "upstream_seconds": upstream_seconds(model, clip), "points": []}
        result["runs"].append(run)

        def on_point(points: list[dict], run=run) -> None:
            run["points"] = points
            out.write_text(json.dumps(result, indent=2) + "\n")  # partial results survive an interruption
            p = points[-1]
            print(f"{run['clip']}: step {p['step']:5d}  UNet {p['train_seconds'] / 60:5.1f} min  pipeline "
                  f"{p['pipeline_seconds'] / 60:5.1f} min  faithfulness {p['faithfulness_balanced']:.3f}  "
                  f"all-correct {p['all_correct']:.3f}  FD {p['fd_judge']:.2f}", flush=True)

        stage = TimedUNetStage(
            replace(cfg, loop=loop, train_text_encoder=True if args.train_text_encoder else None),
            TextEncoder.from_pretrained(clip, token_embeddings=cfg.unet.text_token_embeddings), cache, vae_dir,
            image_size=int(cache.meta.get("image_size", 64)), judge=judge, judge_meta=judge_meta, data=args.data,
            eval_cfg=eval_cfg, upstream_seconds=sum(run["upstream_seconds"].values()), on_point=on_point,
        )
        work = Path(args.work)
        shutil.rmtree(work, ignore_errors=True)  # a fresh run each time: the clock must start at step 0
        train(stage, LatentDataset(cache, cfg.complete_caption_prob), loop, work)
    plot(result["runs"], out.with_suffix(".png"), _title(result))
    print(f"-> {out} and {out.with_suffix('.png')}")
    return result


if __name__ == "__main__":
    main()
