"""What a VAE's round trip leaves for the judge to read: VAEs side by side on the same real test images.

No latent generator can be more faithful than real images passed through its VAE, so the judge's
scores on round trips are the ceiling of everything downstream (`t2i eval`'s "through the VAE"
row). This compares candidate VAEs on that ceiling, beside the real images themselves:

    python bench/vae_round_trip.py --model runs/demo --data data/synthfaces \
        --vae runs/demo --vae runs/vae-try --out bench/results/vae_round_trip.json

Each --vae is a model dir or a vae/ dir; the judge comes from --model. Output: JSON with, per VAE,
PSNR, the judge's macro balanced accuracy and all-attributes-correct rate, and the per-attribute
balanced accuracy of the attributes that lose most.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from t2i.checkpoint import load_component, resolve_component
from t2i.eval.faithfulness import faithfulness, judge_images, load_judge
from t2i.eval.generation import vae_reconstruct
from t2i.eval.run import load_eval_data
from t2i.models.vae import VAE, VAEConfig


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean PSNR in dB of images in [-1, 1] (peak-to-peak 2)."""
    mse = (a - b).pow(2).flatten(1).mean(1).clamp_min(1e-10)  # (N,)
    return float((10 * torch.log10(4.0 / mse)).mean())


def summary(result: dict, reference: dict | None, worst: int) -> dict:
    """The headline figures, and the `worst` attributes by balanced accuracy (with the reference's)."""
    per = result["per_attribute"]
    names = sorted(per, key=lambda a: per[a]["balanced"] if per[a]["balanced"] is not None else 1.0)[:worst]
    return {
        "macro_balanced": result["macro_balanced"],
        "all_correct": result["all_correct_rate"],
        "weakest": {a: {"balanced": per[a]["balanced"], "real": reference["per_attribute"][a]["balanced"]}
                    if reference else per[a]["balanced"] for a in names},
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="runs/demo", help="model dir holding judge/")
    parser.add_argument("--data", default="data/synthfaces")
    parser.add_argument("--vae", action="append", required=True, help="model or vae dir (repeat to compare)")
    parser.add_argument("--max-real", type=int, default=1000, help="real test images scored")
    parser.add_argument("--worst", type=int, default=6, help="weakest attributes listed per VAE")
    parser.add_argument("--out", default="bench/results/vae_round_trip.json")
    args = parser.parse_args(argv)

    judge, judge_meta = load_judge(args.model)
    scored = tuple(judge_meta.get("attributes") or ())
    if not scored:
        raise SystemExit(f"{args.model}: the judge's config names no attributes")
    vaes = [(path, *load_component(resolve_component(path, "vae"), VAE, VAEConfig, "vae")) for path in args.vae]
    sizes = {meta.get("training", {}).get("image_size") or 64 for _, _, meta in vaes}
    if len(sizes) != 1:
        raise SystemExit(f"the VAEs were trained at different image sizes {sorted(sizes)}; compare like with like")
    _, real, rows, _ = load_eval_data(args.data, sizes.pop(), args.max_real)

    real_scores = faithfulness(judge_images(judge, real)[0], rows, scored)
    results = {"real images": summary(real_scores, None, args.worst)}
    for path, vae, meta in vaes:
        t = time.perf_counter()
        recon = vae_reconstruct(vae, real)  # (N, 3, S, S)
        seconds = time.perf_counter() - t
        scores = faithfulness(judge_images(judge, recon)[0], rows, scored)
        results[str(path)] = {"psnr_db": round(psnr(recon, real), 2), "round_trip_seconds": round(seconds, 1),
                              "steps": meta.get("training", {}).get("loop", {}).get("steps"), **summary(scores, real_scores, args.worst)}
    report = {"images": len(real), "scored_attributes": len(scored), "model": str(args.model), "results": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
