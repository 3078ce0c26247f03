"""Is training ever input-bound? Rates of the data paths versus what training consumes.

    python bench/data.py --data data/synthfaces [--model runs/demo] [--size 64]

Measures, for the loop's own batch sampler and collate:
  - JPEG decoding (FaceDataset without preload) with 0 and 2 DataLoader workers;
  - the preloaded uint8 pixel cache (what the VAE/CLIP/judge stages read on CPU);
  - the latent cache (what the UNet stage reads);
and, when a model dir with logs is given, the images/s each stage consumed in training.
Writes bench/results/data.json. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import json
import time
from itertools import islice
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from t2i.data.celeba import FaceDataset
from t2i.train.loop import Stage, StepBatchSampler


def rate(dataset, collate, batch_size: int, batches: int, workers: int = 0) -> float:
    """Items per second through DataLoader + the loop's sampler (first batch excluded)."""
    sampler = StepBatchSampler(len(dataset), batch_size, seed=0)
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=workers)
    it = iter(loader)
    next(it)
    t0 = time.perf_counter()
    n = sum(len(b["caption"]) for b in islice(it, batches))
    return n / (time.perf_counter() - t0)


def training_rates(model_dir: Path) -> dict[str, float]:
    """Median images/s logged by each stage's training run."""
    out = {}
    for log in sorted(model_dir.glob("logs/*/train_log.jsonl")):
        values = sorted(json.loads(line)["images_per_s"] for line in log.read_text().splitlines()[1:])
        if values:
            out[log.parent.name] = round(values[len(values) // 2], 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="data/synthfaces")
    parser.add_argument("--model", default="runs/demo")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--out", default="bench/results/data.json")
    args = parser.parse_args()
    collate = Stage().collate
    results = {"benchmark": "data", "date": time.strftime("%Y-%m-%d"), "threads": torch.get_num_threads(),
               "batch_size": args.batch_size, "items_per_s": {}}
    jpeg = FaceDataset(args.data, split="train", image_size=args.size, flip=True)
    for workers in (0, 2):
        results["items_per_s"][f"jpeg_decode_workers{workers}"] = round(
            rate(jpeg, collate, args.batch_size, args.batches, workers), 1)
    t0 = time.perf_counter()
    preloaded = FaceDataset(args.data, split="train", image_size=args.size, flip=True, preload=True)
    results["preload_seconds"] = round(time.perf_counter() - t0, 1)
    results["items_per_s"]["pixel_cache"] = round(rate(preloaded, collate, args.batch_size, args.batches * 5), 1)

    model = Path(args.model)
    if (model / "latents" / "index.json").is_file():
        from t2i.data.latents import LatentCache
        from t2i.train.unet import LatentDataset, UNetStage

        latents = LatentDataset(LatentCache.open(model / "latents"))
        results["items_per_s"]["latent_cache"] = round(
            rate(latents, lambda items: UNetStage.collate(None, items), args.batch_size, args.batches * 5), 1)
        results["training_images_per_s"] = training_rates(model)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    for k, v in results["items_per_s"].items():
        print(f"{k:28s} {v:10.1f} items/s")
    for k, v in results.get("training_images_per_s", {}).items():
        print(f"training consumed ({k}) {v:10.1f} images/s")
    print(f"-> {out}")


if __name__ == "__main__":
    main()
