"""`t2i data show`: print what a dataset directory holds and save a captioned sample grid."""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from t2i.attributes import CELEBA_ATTRIBUTES


def captioned_grid(images: list[np.ndarray], captions: list[str], cols: int = 4, scale: int = 2,
                   font_size: int = 11, caption_lines: int = 5) -> Image.Image:
    """Tile (H, W, 3) uint8 images with each caption word-wrapped under its image."""
    if not images:
        raise ValueError("no images to show")
    h, w = images[0].shape[:2]
    tw, th = w * scale, h * scale
    try:
        font = ImageFont.load_default(size=font_size)
    except (TypeError, ImportError, OSError):  # Pillow built without FreeType: fixed bitmap font
        font = ImageFont.load_default()
    chars = max(8, int(tw / (font_size * 0.55)))  # characters per line at this font width
    line_h = font_size + 3
    cell_h = th + 6 + caption_lines * line_h
    rows = (len(images) + cols - 1) // cols
    pad = 6
    grid = Image.new("RGB", (cols * (tw + pad) + pad, rows * (cell_h + pad) + pad), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for k, (img, cap) in enumerate(zip(images, captions)):
        x = pad + (k % cols) * (tw + pad)
        y = pad + (k // cols) * (cell_h + pad)
        grid.paste(Image.fromarray(img).resize((tw, th), Image.NEAREST), (x, y))
        lines = textwrap.wrap(cap, chars)
        if len(lines) > caption_lines:
            lines = lines[:caption_lines]
            lines[-1] = lines[-1][: max(0, chars - 3)] + "..."
        for j, line in enumerate(lines):
            draw.text((x, y + th + 3 + j * line_h), line, fill=(20, 20, 20), font=font)
    return grid


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="dataset root (any supported layout)")
    p.add_argument("--out", default="grid.png", help="grid PNG to write (default grid.png)")
    p.add_argument("--split", default="train", choices=["train", "val", "test", "all"])
    p.add_argument("--n", type=int, default=16, help="number of samples in the grid")
    p.add_argument("--size", type=int, default=64, help="image size after preprocessing (default 64)")
    p.add_argument("--seed", type=int, default=0, help="picks which samples are shown")


def run(args: argparse.Namespace) -> int:
    from t2i.data.celeba import FaceDataset

    if args.n < 1:
        raise ValueError(f"--n must be >= 1, got {args.n}")
    ds = FaceDataset(args.data, split=args.split, image_size=args.size)
    s = ds.summary()
    print(f"dataset {s['root']}")
    print(f"  layout      {s['layout']}")
    print("  splits      " + ", ".join(f"{k} {v}" for k, v in s["splits"].items()))
    print(f"  this split  {args.split}: {len(ds)} images")
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
        images.append(((sample["image"].permute(1, 2, 0).numpy() + 1) * 127.5).round().clip(0, 255).astype(np.uint8))
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
