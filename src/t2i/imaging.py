"""Pixels in and out: images in [-1, 1] <-> uint8 / PIL, image grids with or without captions,
and text wrapped to a width in pixels. The one place that lays out pictures: training samples,
`t2i generate`'s grid, `t2i data show`, the web app's previews and the eval report use it.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

# ----------------------------------------------------------------------------- conversions


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) float in [-1, 1] -> (N, H, W, 3) uint8 (values outside [-1, 1] are clipped)."""
    return ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def tensor_to_pil(images: torch.Tensor) -> list[Image.Image]:
    """(N, 3, H, W) in [-1, 1] -> list of PIL images."""
    return [Image.fromarray(a) for a in to_uint8(images)]


def from_uint8(images: torch.Tensor) -> torch.Tensor:
    """uint8 (..., 3, H, W) -> float32 in [-1, 1]."""
    return images.float().div(127.5).sub(1.0)


def center_square(image: Image.Image, size: int) -> Image.Image:
    """The training preprocessing: centre square crop (CelebA's 178x218 -> the middle 178x178),
    then a bicubic resize to `size` (skipped when already that size)."""
    w, h = image.size
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    image = image.crop((left, top, left + s, top + s))
    if s != size:
        image = image.resize((size, size), Image.Resampling.BICUBIC, reducing_gap=None)
    return image


def pil_to_tensor(image: Image.Image, size: int) -> torch.Tensor:
    """PIL -> (3, size, size) in [-1, 1], preprocessed as in training (`center_square`)."""
    pixels = np.array(center_square(image.convert("RGB"), size), dtype=np.uint8)  # (S, S, 3)
    return from_uint8(torch.from_numpy(pixels).permute(2, 0, 1))


# ----------------------------------------------------------------------------- text


def load_font(size: int = 11):
    """Pillow's default font at `size` pixels."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):  # Pillow built without FreeType: fixed bitmap font
        return ImageFont.load_default()


def wrap_text(text: str, font, width: float) -> list[str]:
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


def _clip_lines(lines: list[str], max_lines: int) -> list[str]:
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] += "..."
    return lines


# ----------------------------------------------------------------------------- grids


def image_grid(images: list[Image.Image], cols: int | None = None, gap: int = 0, margin: int = 0,
               background=(255, 255, 255)) -> Image.Image:
    """Images in rows of `cols` (default: all side by side up to 4, else a near-square grid),
    `gap` pixels apart and `margin` pixels from the edge."""
    if not images:
        raise ValueError("no images to tile")
    n = len(images)
    cols = cols or (n if n <= 4 else math.ceil(math.sqrt(n)))
    rows = math.ceil(n / cols)
    w, h = images[0].size
    grid = Image.new("RGB", (cols * w + (cols - 1) * gap + 2 * margin, rows * h + (rows - 1) * gap + 2 * margin),
                     background)
    for i, im in enumerate(images):
        grid.paste(im, (margin + (i % cols) * (w + gap), margin + (i // cols) * (h + gap)))
    return grid


def captioned_grid(images: list[Image.Image], captions: list[str], cols: int = 4, scale: int = 2,
                   row_captions: list[str] | None = None, colours: list | None = None,
                   font_size: int = 11, max_lines: int = 12) -> Image.Image:
    """Images upscaled `scale`x (nearest neighbour: the pixels stay visible), each caption
    word-wrapped under its image, and optionally a caption per row under the whole row (e.g.
    the prompt a row of samples was made from). Every cell is as tall as the longest caption
    needs, so captions are shown whole (up to `max_lines` lines, past which "..." marks the
    cut; row captions are never cut). `colours` gives each caption's text colour (default near-black)."""
    if not images:
        raise ValueError("no images to show")
    if len(captions) != len(images):
        raise ValueError(f"{len(captions)} captions for {len(images)} images")
    rows = (len(images) + cols - 1) // cols
    if row_captions is not None and len(row_captions) != rows:
        raise ValueError(f"{len(row_captions)} row captions for {rows} rows")
    w, h = images[0].size
    tw, th = w * scale, h * scale
    font = load_font(font_size)
    line_h, pad = font_size + 3, 6
    wrapped = [_clip_lines(wrap_text(c, font, tw), max_lines) for c in captions]
    cell_h = th + 6 + max(map(len, wrapped), default=0) * line_h
    row_width = cols * (tw + pad) - pad
    row_lines = [wrap_text(c, font, row_width) for c in row_captions or []]
    row_h = cell_h + max(map(len, row_lines), default=0) * line_h
    grid = Image.new("RGB", (cols * (tw + pad) + pad, rows * (row_h + pad) + pad), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for k, (img, lines) in enumerate(zip(images, wrapped)):
        x = pad + (k % cols) * (tw + pad)
        y = pad + (k // cols) * (row_h + pad)
        grid.paste(img.convert("RGB").resize((tw, th), Image.Resampling.NEAREST), (x, y))
        colour = colours[k] if colours is not None else (20, 20, 20)
        for j, line in enumerate(lines):
            draw.text((x, y + th + 3 + j * line_h), line, fill=colour, font=font)
    for r, lines in enumerate(row_lines):
        y = pad + r * (row_h + pad)
        for j, line in enumerate(lines):
            draw.text((pad, y + cell_h + j * line_h), line, fill=(0, 0, 0), font=font)
        if r < rows - 1:  # a rule in the gap between rows: each row caption reads as its row's
            draw.line([(0, y + row_h + pad // 2), (grid.width, y + row_h + pad // 2)], fill=(200, 200, 200))
    return grid
