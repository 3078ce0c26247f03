"""`t2i data show`: print what a dataset directory holds and save a captioned sample grid."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from t2i.attributes import CELEBA_ATTRIBUTES
from t2i.data.options import add_data_arguments, data_options_from_args
from t2i.imaging import captioned_grid, tensor_to_pil


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="dataset root (any supported layout)")
    p.add_argument("--out", default="grid.png", help="grid PNG to write (default grid.png)")
    p.add_argument("--split", default="train", choices=["train", "val", "test", "all"])
    p.add_argument("--n", type=int, default=16, help="number of samples in the grid")
    p.add_argument("--size", type=int, default=64, help="image size after preprocessing (default 64)")
    p.add_argument("--seed", type=int, default=0, help="picks which samples are shown")
    p.add_argument("--captions", default=None,
                   help="captions JSON to show instead of DATA/captions.json ({image: [captions]}); "
                        "checks that it covers every image of the split")
    add_data_arguments(p)


def run(args: argparse.Namespace) -> int:
    from t2i.data.celeba import FaceDataset

    if args.n < 1:
        raise ValueError(f"--n must be >= 1, got {args.n}")
    ds = FaceDataset(args.data, split=args.split, image_size=args.size, captions=args.captions,
                     options=data_options_from_args(args))
    s = ds.summary()
    print(f"dataset {s['root']}")
    print(f"  layout      {s['layout']}")
    print("  splits      " + ", ".join(f"{k} {v}" for k, v in s["splits"].items()) + f" ({s['split_source']})")
    print(f"  this split  {args.split}: {len(ds)} images")
    print(f"  captions    {ds.caption_source}")
    if len(ds) == 0:
        raise ValueError(f"{args.data}: split {args.split!r} is empty")
    if ds.has_attributes:
        freq = ds.attributes.mean(0)
        shown = [f"{a} {f:.0%}" for a, f in zip(CELEBA_ATTRIBUTES, freq) if f > 0]
        print("  attributes  " + (", ".join(shown) if shown else "(all absent)"))
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(ds))
    images, caps = [], []
    for i in order:
        sample = ds[(int(i), args.seed)]
        if sample is None:
            continue
        images.append(tensor_to_pil(sample["image"][None])[0])
        caps.append(sample["caption"])
        if len(images) == args.n:
            break
    print(f"  missing     {ds.count_missing()} of the {len(ds)} listed image(s) not on disk")
    print(f"  skipped     {ds.skipped} unreadable/missing image(s) among the {len(images) + ds.skipped} read")
    if not images:
        raise ValueError(f"{args.data}: no readable images in split {args.split!r}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    captioned_grid(images, caps, cols=min(4, len(images))).save(out)
    print(f"wrote {out} ({len(images)} samples)")
    for c in caps[:4]:
        print(f"  - {c}")
    return 0
