"""`t2i data show`: print what a dataset directory holds and save a captioned sample grid."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from t2i.attributes import CELEBA_ATTRIBUTES
from t2i.data.options import add_data_arguments, data_options_from_args


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):  # Pillow built without FreeType: fixed bitmap font
        return ImageFont.load_default()


def wrap_to_width(text: str, font, width: float) -> list[str]:
    """Greedy word wrap measured in pixels of `font` (a character count would overflow the
    tile for wide letters and waste it for narrow ones). A word wider than `width` keeps a
    line of its own."""
    lines: list[str] = []
    for word in text.split():
        if lines and font.getlength(lines[-1] + " " + word) <= width:
            lines[-1] += " " + word
        else:
            lines.append(word)
    return lines


def captioned_grid(images: list[np.ndarray], captions: list[str], cols: int = 4, scale: int = 2,
                   font_size: int = 11, max_lines: int = 12) -> Image.Image:
    """Tile (H, W, 3) uint8 images with each caption word-wrapped under its image. Every cell
    is as tall as the longest caption needs, so captions are shown whole (up to `max_lines`
    lines, past which "..." marks the cut)."""
    if not images:
        raise ValueError("no images to show")
    h, w = images[0].shape[:2]
    tw, th = w * scale, h * scale
    font = _font(font_size)
    wrapped = [wrap_to_width(c, font, tw) for c in captions]
    for lines in wrapped:
        if len(lines) > max_lines:
            del lines[max_lines:]
            lines[-1] += "..."
    line_h = font_size + 3
    cell_h = th + 6 + max(map(len, wrapped), default=0) * line_h
    rows = (len(images) + cols - 1) // cols
    pad = 6
    grid = Image.new("RGB", (cols * (tw + pad) + pad, rows * (cell_h + pad) + pad), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for k, (img, lines) in enumerate(zip(images, wrapped)):
        x = pad + (k % cols) * (tw + pad)
        y = pad + (k // cols) * (cell_h + pad)
        grid.paste(Image.fromarray(img).resize((tw, th), Image.NEAREST), (x, y))
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
