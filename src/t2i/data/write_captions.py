"""`t2i data captions`: write DATA/captions.json from a dataset's attribute file."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from t2i.data.captions import build_captions
from t2i.data.celeba import read_annotations


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="dataset root (any supported layout)")
    p.add_argument("--per-image", type=int, default=5, help="captions per image (default 5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="output path (default DATA/captions.json)")


def run(args: argparse.Namespace) -> int:
    ann = read_annotations(args.data)
    if not ann.has_attributes:
        raise ValueError(f"{args.data}: layout {ann.layout!r} has no attribute file to caption from")
    rows = np.where(ann.attributes > 0, 1, -1).astype(np.int8)
    caps = build_captions(ann.image_ids, rows, seed=args.seed, per_image=args.per_image)
    out = Path(args.out) if args.out else Path(ann.root) / "captions.json"
    with open(out, "w") as f:
        json.dump(caps, f, indent=0, ensure_ascii=False)
    first = next(iter(caps.values()))
    print(f"wrote {len(caps)} x {args.per_image} captions to {out}")
    print(f"  e.g. {first[0]!r}")
    return 0
