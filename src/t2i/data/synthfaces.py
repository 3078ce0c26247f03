"""SynthFaces: procedurally drawn faces written in CelebA's exact on-disk layout.

Each image is drawn from its 40-attribute vector with PIL polygons (supersampled 2x for
anti-aliasing), so every rendered attribute is visible and unambiguous after CelebA's
preprocessing (centre square crop, resize to 64x64). Everything that is *not* an attribute
(skin tone, face shape, pose, background, lighting, colours of hats/glasses/clothes, JPEG
quality) is random nuisance drawn from the image's own generator, seeded from
(seed, index): the output is identical for any worker count.

`render_face` draws *all* nuisance values up front in a fixed order (`_Style`), so flipping
one attribute with the same generator state changes only that attribute's pixels.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from t2i.attributes import ATTRIBUTE_INDEX as IDX
from t2i.attributes import CELEBA_ATTRIBUTES, NUM_ATTRIBUTES, RENDERED_ATTRIBUTES
from t2i.data.captions import build_captions

HAIR_COLOURS = ("Black_Hair", "Blond_Hair", "Brown_Hair", "Gray_Hair")

DEFAULT_SIZE = (178, 218)  # CelebA's aligned crops (width, height)
SUPERSAMPLE = 2  # draw at 2x and box-downsample: cheap anti-aliasing for ImageDraw


# ----------------------------------------------------------------------------- attributes


def sample_attributes(rng: np.random.Generator) -> np.ndarray:
    """One attribute vector (40,) int8 in {-1, +1}, with CelebA-like marginals and
    correlations (mustache/beards only on men, lipstick mostly women, bald mostly older men,
    one hair colour at most, grey mostly old). Always draws the same number of values."""
    u = rng.random(20)  # fixed number of draws keeps the stream aligned for render_face
    a = {name: False for name in RENDERED_ATTRIBUTES}
    male = a["Male"] = u[0] < 0.42
    young = a["Young"] = u[1] < (0.70 if male else 0.82)
    a["Bald"] = male and u[2] < (0.015 if young else 0.20)
    a["Wearing_Hat"] = (not a["Bald"]) and u[3] < 0.05
    if not a["Bald"]:
        # Grey mostly old; the rest split like CelebA (black 24%, brown 20%, blond 15%);
        # about a third of faces have none of the four (drawn red/auburn).
        if u[4] < (0.015 if young else 0.20):
            a["Gray_Hair"] = True
        else:
            blond = 0.26 if not male else 0.05
            cuts = np.cumsum([0.27, 0.23, blond])
            k = int(np.searchsorted(cuts, u[5], side="right"))
            if k < 3:
                a[("Black_Hair", "Brown_Hair", "Blond_Hair")[k]] = True
        a["Bangs"] = u[6] < (0.20 if not male else 0.08)
        a["Wavy_Hair"] = u[7] < (0.45 if not male else 0.15)
    a["Smiling"] = u[8] < 0.48
    a["Mouth_Slightly_Open"] = u[9] < (0.70 if a["Smiling"] else 0.25)
    a["Eyeglasses"] = u[10] < (0.11 if male else 0.03)
    beard = male and u[11] < 0.38
    a["No_Beard"] = not beard
    a["Mustache"] = male and u[12] < (0.30 if beard else 0.04)
    a["Wearing_Lipstick"] = (not male) and u[13] < 0.80
    a["Pale_Skin"] = u[14] < 0.045
    a["Wearing_Earrings"] = u[15] < (0.32 if not male else 0.02)
    a["Wearing_Necklace"] = (not beard) and u[16] < (0.20 if not male else 0.01)
    a["Rosy_Cheeks"] = (not beard) and u[17] < (0.11 if not male else 0.02)
    a["Chubby"] = u[18] < (0.08 if male else 0.03) * (1.0 if young else 1.8)
    out = np.full(NUM_ATTRIBUTES, -1, dtype=np.int8)
    for name, on in a.items():
        if on:
            out[IDX[name]] = 1
    return out


# ----------------------------------------------------------------------------- style

# Palettes. Hair colours are far apart in hue/brightness/saturation so that lighting jitter
# can never turn one into another; "no colour attribute" is drawn red/auburn.
_HAIR = {
    "Black_Hair": [(28, 24, 24), (40, 32, 30), (20, 20, 26)],
    "Brown_Hair": [(112, 70, 38), (96, 60, 34), (125, 82, 48)],
    "Blond_Hair": [(232, 200, 118), (240, 214, 140), (222, 186, 104)],
    "Gray_Hair": [(182, 182, 186), (204, 204, 206), (160, 162, 166)],
    None: [(168, 58, 28), (186, 76, 34), (150, 48, 30)],  # red/auburn: no colour attribute
}
_SKIN = np.array([(232, 192, 164), (214, 168, 132), (190, 140, 104), (160, 110, 78),
                  (126, 84, 58), (96, 64, 46)], dtype=np.float64)
_PALE_SKIN = np.array((250, 236, 230), dtype=np.float64)
_LIPSTICK = [(200, 20, 46), (222, 38, 92), (150, 16, 58), (230, 56, 56), (186, 24, 24)]
_EYES = [(70, 46, 30), (40, 30, 24), (70, 110, 160), (80, 120, 80), (110, 80, 50)]
_HATS = [(40, 70, 160), (30, 120, 70), (190, 40, 40), (120, 50, 150), (235, 235, 235),
         (30, 150, 170), (220, 150, 30)]
_METAL = [(236, 196, 50), (245, 214, 90), (64, 200, 230), (230, 60, 160), (120, 230, 90)]
_FRAMES = [(20, 20, 20), (60, 30, 20), (140, 20, 30), (20, 40, 120)]


@dataclass
class _Style:
    """All nuisance randomness of one image, drawn before anything is rendered."""

    # pose: offset of the face centre (base px), scale, rotation (degrees), face width factor
    cx: float
    cy: float
    scale: float
    angle: float
    width: float
    # skin: position along the tone palette, per-channel jitter
    skin_t: float
    skin_jit: np.ndarray
    # hair: shade index within its colour, length of long hair, parting, wave phase
    hair_shade: int
    hair_len: float
    hair_part: float
    wave_phase: float
    eye_colour: int
    brow_tilt: float
    # accessories: palette indices and styles (used only when the attribute is on)
    lip_colour: int
    hat_colour: int
    hat_style: int
    hat_height: float
    frame_colour: int
    sunglasses: bool
    round_glasses: bool
    ear_colour: int
    hoop: bool
    neck_colour: int
    pearls: bool
    cloth: tuple
    neckline: float
    # photo: background gradient, lighting, colour cast, noise window, JPEG quality
    bg1: np.ndarray
    bg2: np.ndarray
    bg_angle: float
    light_dir: float
    light_amp: float
    bright: float
    cast: np.ndarray
    noise_seed: int
    jpeg_quality: int

    @classmethod
    def draw(cls, rng: np.random.Generator) -> _Style:
        u = rng.random(40)
        return cls(
            cx=(u[0] - 0.5) * 10, cy=(u[1] - 0.5) * 8, scale=0.94 + 0.12 * u[2],
            angle=(u[3] - 0.5) * 12, width=0.96 + 0.08 * u[4],
            skin_t=u[5], skin_jit=(rng.random(3) - 0.5) * 12,
            hair_shade=int(u[6] * 3), hair_len=u[7], hair_part=u[8] - 0.5, wave_phase=u[9] * 6.28,
            eye_colour=int(u[10] * len(_EYES)), brow_tilt=(u[11] - 0.5) * 3,
            lip_colour=int(u[12] * len(_LIPSTICK)), hat_colour=int(u[13] * len(_HATS)),
            hat_style=int(u[14] * 2), hat_height=u[15],
            frame_colour=int(u[16] * len(_FRAMES)), sunglasses=u[17] < 0.2, round_glasses=u[18] < 0.5,
            ear_colour=int(u[19] * len(_METAL)), hoop=u[20] < 0.6,
            neck_colour=int(u[21] * len(_METAL)), pearls=u[22] < 0.3,
            cloth=tuple(int(c) for c in rng.integers(20, 230, 3)), neckline=u[23],
            bg1=rng.integers(30, 240, 3).astype(np.float64), bg2=rng.integers(30, 240, 3).astype(np.float64),
            bg_angle=u[24] * 6.28,
            light_dir=u[25] * 6.28, light_amp=0.16 * u[26], bright=0.93 + 0.12 * u[27],
            cast=1.0 + (rng.random(3) - 0.5) * 0.05,
            noise_seed=int(rng.integers(0, 2**31 - 1)), jpeg_quality=int(78 + 17 * u[28]),
        )


# ----------------------------------------------------------------------------- drawing


def _mul(c, f: float, alpha: int | None = None) -> tuple:
    out = tuple(int(max(0, min(255, round(v * f)))) for v in c[:3])
    return out + ((alpha,) if alpha is not None else ())


def _mix(a, b, t: float) -> tuple:
    return tuple(int(round(x * (1 - t) + y * t)) for x, y in zip(a[:3], b[:3]))


def _lum(c) -> float:
    return 0.3 * c[0] + 0.59 * c[1] + 0.11 * c[2]


def _darker_than(colour, skin, margin: float) -> tuple:
    """`colour`, scaled down until its luminance is at least `margin` below the skin's."""
    target = _lum(skin) - margin
    lum = _lum(colour)
    if lum <= target:
        return tuple(colour)
    return _mul(colour, max(0.12, target / max(lum, 1.0)))


def _ellipse_pts(x, y, rx, ry, t0=0.0, t1=2 * math.pi, n=36) -> list[tuple[float, float]]:
    ts = np.linspace(t0, t1, n)
    return list(zip(x + rx * np.cos(ts), y + ry * np.sin(ts)))


class _Canvas:
    """Draws in face coordinates: base pixels at scale 1, origin at the face centre, y down.
    Shapes are polygons so the whole face rotates with the pose jitter."""

    def __init__(self, img: Image.Image, cx: float, cy: float, scale: float, angle_deg: float):
        self.draw = ImageDraw.Draw(img, "RGBA")
        k = SUPERSAMPLE
        self.k, self.cx, self.cy, self.s = k, cx * k, cy * k, scale * k
        a = math.radians(angle_deg)
        self.ca, self.sa = math.cos(a), math.sin(a)

    def tf(self, pts) -> list[tuple[float, float]]:
        out = []
        for x, y in pts:
            out.append((self.cx + self.s * (self.ca * x - self.sa * y),
                        self.cy + self.s * (self.sa * x + self.ca * y)))
        return out

    def poly(self, pts, fill) -> None:
        self.draw.polygon(self.tf(pts), fill=fill)

    def ellipse(self, x, y, rx, ry, fill, n=36) -> None:
        self.poly(_ellipse_pts(x, y, rx, ry, n=n), fill)

    def line(self, pts, fill, width: float) -> None:
        self.draw.line(self.tf(pts), fill=fill, width=max(1, int(round(width * self.s))), joint="curve")

    def ring(self, x, y, rx, ry, fill, width: float, n=36) -> None:
        pts = _ellipse_pts(x, y, rx, ry, n=n)
        self.line(pts + pts[:2], fill, width)


_NOISE_BANK: np.ndarray | None = None


def _noise_patch(seed: int, h: int, w: int) -> np.ndarray:
    """Sensor-like Gaussian noise (sigma 2.5): a random window of a fixed noise bank, which
    costs a slice instead of ~100k fresh normal draws per image."""
    global _NOISE_BANK
    if _NOISE_BANK is None:
        _NOISE_BANK = np.random.default_rng(12345).standard_normal((512, 512, 3), dtype=np.float32) * 2.5
    bh, bw = _NOISE_BANK.shape[:2]
    if h > bh or w > bw:  # unusually large images: fresh noise
        return np.random.default_rng(seed).standard_normal((h, w, 3), dtype=np.float32) * 2.5
    y, x = seed % (bh - h + 1), (seed // 7919) % (bw - w + 1)
    return _NOISE_BANK[y:y + h, x:x + w]


def _ramp(w: int, h: int, angle: float) -> np.ndarray:
    """(h, w) float32 linear ramp from 0 to 1 along direction `angle`."""
    xs = np.float32(math.cos(angle)) * np.arange(w, dtype=np.float32) / w
    ys = np.float32(math.sin(angle)) * np.arange(h, dtype=np.float32) / h
    d = ys[:, None] + xs[None, :]
    lo, hi = float(d.min()), float(d.max())
    return (d - lo) / max(hi - lo, 1e-6)


def render_face(attrs: np.ndarray, rng: np.random.Generator, size: tuple[int, int] = DEFAULT_SIZE) -> Image.Image:
    """Draw one face for a (40,) ±1 attribute vector. `size` is (width, height); the face is
    placed like CelebA's aligned crops (eyes ~51% down, face filling the centre square)."""
    attrs = np.asarray(attrs)
    if attrs.shape != (NUM_ATTRIBUTES,):
        raise ValueError(f"attrs must have shape ({NUM_ATTRIBUTES},), got {attrs.shape}")
    w, h = int(size[0]), int(size[1])
    if w < 16 or h < 16:
        raise ValueError(f"size must be at least 16x16, got {w}x{h}")
    on = {name: bool(attrs[IDX[name]] > 0) for name in RENDERED_ATTRIBUTES}
    st = _Style.draw(rng)
    k = SUPERSAMPLE

    # Background: a linear gradient between two random colours, via one 8-bit ramp and a
    # per-channel lookup table (PIL's point() is far cheaper than float maths per pixel).
    ramp = Image.fromarray((_ramp(w * k, h * k, st.bg_angle) * 255).astype(np.uint8), "L")
    ts = np.linspace(0.0, 1.0, 256)
    img = Image.merge("RGB", [ramp.point([int(c0 + (c1 - c0) * t) for t in ts])
                              for c0, c1 in zip(st.bg1, st.bg2)])

    # Face placement: CelebA's aligned 178x218 crops put the face centre at ~(89, 114);
    # other sizes scale with the smaller side so the face fills the centre square.
    base = min(w, h / 218 * 178) / 178
    cv = _Canvas(img, w / 2 + st.cx * base, h * 114 / 218 + st.cy * base, 1.1 * base * st.scale, st.angle)
    _draw_face(cv, on, st)

    img = img.reduce(k)
    # Lighting: a directional gradient, global brightness and a slight colour cast, then
    # sensor-like noise; applied to the whole photo like a real camera would.
    arr = np.asarray(img, dtype=np.float32)
    g = _ramp(w, h, st.light_dir) * 2 - 1  # (h, w) in [-1, 1]
    gain = (np.float32(st.bright) * (1 + np.float32(st.light_amp) * g))[..., None] * st.cast.astype(np.float32)
    noise = _noise_patch(st.noise_seed, h, w)
    arr = np.clip(arr * gain + noise, 0, 255).astype(np.uint8)
    out = Image.fromarray(arr, "RGB")
    out.info["jpeg_quality"] = st.jpeg_quality
    return out


def _draw_face(cv: _Canvas, on: dict[str, bool], st: _Style) -> None:
    """Paint one face back to front; each numbered step is one layer."""
    male, bald = on["Male"], on["Bald"]
    rx = 44.0 * st.width * (1.22 if on["Chubby"] else 1.0) * (1.03 if male else 1.0)
    ry = 57.0
    skin = _skin_colour(on["Pale_Skin"], st)
    hair_key = next((c for c in HAIR_COLOURS if on[c]), None)
    hair = _HAIR[hair_key][st.hair_shade]
    # Facial hair follows the hair colour but is kept clearly darker than the skin, so a
    # red beard on dark skin still reads as a beard at 64px.
    beard_col = _darker_than(_mul(hair, 0.85) if not bald else (70, 50, 36), skin, 45)

    # 1. Hair behind the head (long hair reaches the shoulders).
    if not bald:
        if not male:
            _back_hair(cv, rx, ry, 30 + 45 * st.hair_len, on["Wavy_Hair"], st, hair)
        else:
            cv.ellipse(0, -6, rx + 5, ry + 4, hair)

    # 2. Neck and clothes.
    cv.poly([(-23, 20), (23, 20), (26, 120), (-26, 120)], _mul(skin, 0.80))
    cv.poly([(-150, 120), (-140, 78), (-80, 64), (-32, 64), (0, 72 + 8 * st.neckline), (32, 64),
             (80, 64), (140, 78), (150, 120)], st.cloth)

    # 3. Ears, then the face (jaw shape: square-ish for men, tapered for women).
    for sx in (-1, 1):
        cv.ellipse(sx * (rx - 1), -2, 7.5, 12, _mul(skin, 0.9))
    cv.poly(_face_outline(rx, ry, male), skin)
    if bald:  # the cranium shows, with a shine
        cv.ellipse(0, -14, rx * 0.98, ry * 0.82, skin)
        cv.ellipse(-rx * 0.25, -ry * 0.72, rx * 0.28, 7, _mul(skin, 1.18, 170))
    if on["Chubby"]:  # round cheeks + double chin
        cv.line(_ellipse_pts(0, ry - 4, 24, 7, 0.3, math.pi - 0.3, 12), _mul(skin, 0.65), 3.0)
        for sx in (-1, 1):
            cv.ellipse(sx * (rx - 14), 16, 12, 10, _mul(skin, 1.07, 200))

    # 4. Age lines, cheeks, eyes, brows, nose.
    if not on["Young"]:
        _age_lines(cv, rx, skin)
    if on["Rosy_Cheeks"]:
        for sx in (-1, 1):
            cv.ellipse(sx * 24, 15, 10, 7, (240, 60, 90, 170))
    if bald:
        brow = _mul(skin, 0.45)
    else:
        brow = _mul(hair, 0.55 if hair_key in ("Blond_Hair", "Gray_Hair") else 0.6)
    _eyes(cv, male, brow, skin, st)
    cv.line([(-3, 0), (-5, 12), (-2, 15)], _mul(skin, 0.75), 1.8)
    for sx in (-1, 1):
        cv.ellipse(sx * 4, 15, 2.6, 1.6, _mul(skin, 0.5))

    # 5. Beard (No_Beard = -1), mustache, then the mouth on top so a mustache never hides
    # the raised corners of a smile.
    if not on["No_Beard"]:
        # A full beard around the mouth; the upper lip stays bare so a mustache (drawn
        # darker) is its own visible cue.
        pts = [(x * 1.03, y * 1.03 + 2) for x, y in _face_outline(rx, ry, male) if y > 6]
        pts += [(-(rx - 11), 8), (-21, 24), (-16, 40), (0, 44), (16, 40), (21, 24), (rx - 11, 8)]
        cv.poly(pts, beard_col)
    if on["Mustache"]:
        cv.poly([(-20, 29), (-12, 18.5), (0, 18), (12, 18.5), (20, 29), (9, 25), (0, 25.5), (-9, 25)],
                _darker_than(_mul(beard_col, 0.7), skin, 60))
    lips = _LIPSTICK[st.lip_colour] if on["Wearing_Lipstick"] else _mix(skin, (150, 60, 60), 0.35)
    _mouth(cv, on["Smiling"], on["Mouth_Slightly_Open"], on["Wearing_Lipstick"], lips)

    # 6. Hair on top (or bangs), then the hat.
    if not bald:
        _top_hair(cv, rx, ry, male, on["Bangs"], on["Wavy_Hair"], st, hair)
    if on["Wearing_Hat"]:
        _hat(cv, rx, st)

    # 7. Accessories drawn last so nothing hides them.
    if on["Eyeglasses"]:
        _glasses(cv, rx, st)
    if on["Wearing_Earrings"]:
        _earrings(cv, rx, st)
    if on["Wearing_Necklace"]:
        _necklace(cv, skin, st)


def _skin_colour(pale: bool, st: _Style) -> tuple:
    """Interpolate a palette of realistic tones; "pale" is far lighter and pinker than the
    lightest normal tone so lighting jitter cannot blur the two."""
    if pale:
        skin = _PALE_SKIN + st.skin_jit * 0.3
    else:
        pos = st.skin_t * (len(_SKIN) - 1)
        i = min(int(pos), len(_SKIN) - 2)
        skin = _SKIN[i] * (1 - (pos - i)) + _SKIN[i + 1] * (pos - i) + st.skin_jit
    return tuple(int(v) for v in np.clip(skin, 0, 255))


def _age_lines(cv: _Canvas, rx: float, skin) -> None:
    """Forehead wrinkles, eye bags, nasolabial folds and jowls, ~3 base px wide so they
    survive the resize to 64px."""
    wr = _mul(skin, 0.58)
    for yw in (-42, -35):
        cv.line(_ellipse_pts(0, yw + 40, 22, 40, -math.pi / 2 - 0.45, -math.pi / 2 + 0.45, 10), wr, 2.8)
    for sx in (-1, 1):
        cv.line([(sx * 10, 10), (sx * 16, 22), (sx * 20, 34)], wr, 3.0)
        cv.line(_ellipse_pts(sx * 19, -1, 9, 6, 0.4, math.pi - 0.4, 8), wr, 2.6)
        cv.line([(sx * (rx - 10), 36), (sx * (rx - 16), 48)], wr, 2.6)


def _eyes(cv: _Canvas, male: bool, brow, skin, st: _Style) -> None:
    eye_col = _EYES[st.eye_colour]
    lid = _mul(skin, 0.45) if male else (30, 22, 20)  # women: eyeliner
    for sx in (-1, 1):
        ex, ey = sx * 19, -6
        cv.ellipse(ex, ey, 8, 4.2, (238, 238, 236))
        cv.ellipse(ex, ey + 0.3, 3.8, 3.8, eye_col)
        cv.ellipse(ex, ey + 0.3, 1.8, 1.8, (10, 10, 10))
        cv.line(_ellipse_pts(ex, ey + 1, 8.5, 5.5, math.pi + 0.2, 2 * math.pi - 0.2, 10), lid,
                1.6 if male else 2.4)
        cv.line([(ex - sx * 9, ey - 10 + st.brow_tilt), (ex, ey - 13), (ex + sx * 10, ey - 10)], brow,
                4.2 if male else 2.8)


def _glasses(cv: _Canvas, rx: float, st: _Style) -> None:
    frame = _FRAMES[st.frame_colour]
    for sx in (-1, 1):
        ex = sx * 19
        if st.sunglasses:
            cv.ellipse(ex, -6, 12, 9, (24, 26, 30, 235))
        if st.round_glasses:
            cv.ring(ex, -6, 12.5, 10, frame, 3.4)
        else:
            pts = [(ex - 13, -15), (ex + 13, -15), (ex + 12, 2), (ex - 12, 2)]
            cv.line(pts + pts[:2], frame, 3.4)
        cv.line([(sx * 31, -9), (sx * (rx + 2), -8)], frame, 3.0)  # temples
    cv.line([(-7, -8), (0, -10), (7, -8)], frame, 3.0)  # bridge


def _earrings(cv: _Canvas, rx: float, st: _Style) -> None:
    metal = _METAL[st.ear_colour]
    for sx in (-1, 1):
        x = sx * (rx + 1)
        if st.hoop:
            cv.ring(x, 17, 6.5, 7.5, metal, 3.2)
        else:
            cv.line([(x, 9), (x, 17)], metal, 2.4)
            cv.ellipse(x, 20, 5.0, 5.0, metal)


def _necklace(cv: _Canvas, skin, st: _Style) -> None:
    """A U of large beads between chin and collar; pearls only where they contrast."""
    colour = (246, 242, 228) if (st.pearls and sum(skin) < 480) else _METAL[st.neck_colour]
    n = 11
    for i in range(n):
        t = -1 + 2 * i / (n - 1)
        cv.ellipse(22 * t, 54 + 14 * (1 - t * t), 3.6, 3.6, colour, n=12)


def _face_outline(rx: float, ry: float, male: bool) -> list[tuple[float, float]]:
    """Face contour: an ellipse whose lower half is squared (men) or tapered (women)."""
    pts = []
    for t in np.linspace(0, 2 * math.pi, 48, endpoint=False):
        c, s = math.cos(t), math.sin(t)
        if s > 0:  # lower half: superellipse exponent < 2 gives a chin, > 2 a square jaw
            e = 2.6 if male else 1.7
            x = rx * math.copysign(abs(c) ** (2 / e), c)
            y = ry * abs(s) ** (2 / e)
        else:
            x, y = rx * c, ry * s
        pts.append((x, y))
    return pts


def _strand_colour(hair) -> tuple:
    """Strands contrast with the hair mass: lighter on dark hair, darker on light hair."""
    if _lum(hair) < 80:
        return tuple(min(255, int(c * 1.2 + 60)) for c in hair)
    return _mul(hair, 0.66)


def _back_hair(cv: _Canvas, rx, ry, bottom, wavy, st: _Style, hair) -> None:
    top = _ellipse_pts(0, -8, rx + 10, ry + 6, math.pi, 2 * math.pi, 24)
    right, left = [], []
    for y in np.linspace(-6, bottom, 14):
        wave = 7.0 * math.sin(y / 6.0 + st.wave_phase) if wavy else 0.0
        widen = 6 * max(0.0, y - 20) / 60
        right.append((rx + 12 + widen + wave, y))
        left.append((-(rx + 12 + widen) - wave, y))
    pts = top + right + [(rx - 6, bottom), (-(rx - 6), bottom)] + left[::-1]
    cv.poly(pts, hair)
    strand = _strand_colour(hair)
    for sx in (-1, 1):  # strands along the hanging hair: wavy or straight
        for off in (5, 12):
            ys = np.linspace(0, bottom - 4, 14)
            amp = 4.0 if wavy else 0.0
            cv.line([(sx * (rx + off) + amp * math.sin(y / 6 + st.wave_phase), y) for y in ys], strand, 2.2)


def _top_hair(cv: _Canvas, rx, ry, male, bangs, wavy, st: _Style, hair) -> None:
    """The hair mass on the crown with its hairline (or a fringe covering the forehead)."""
    outer = []
    n = 40
    for t in np.linspace(math.pi * 0.98, math.pi * 2.02, n):
        r = 1.0
        if wavy:  # bumpy crown outline
            r += 0.10 * abs(math.sin(8 * t + st.wave_phase))
        outer.append(((rx + 5) * r * math.cos(t), -4 + (ry + 8) * r * math.sin(t)))
    side_y = 4 if male else 14
    hairline = -40 if not bangs else -22
    inner = [(rx - 4, side_y), (rx - 7, hairline + 10)]
    if bangs:  # a fringe straight across (scalloped when wavy)
        m = 9
        for i in range(m + 1):
            x = (rx - 8) - i * 2 * (rx - 8) / m
            y = hairline + (4 if (wavy and i % 2) else 0)
            inner.append((x, y))
    else:
        part = st.hair_part * 20
        inner += [(rx * 0.5, hairline - 2), (part, hairline - 6), (-rx * 0.5, hairline - 2)]
    inner += [(-(rx - 7), hairline + 10), (-(rx - 4), side_y)]
    cv.poly([(rx + 5, side_y)] + outer[::-1] + [(-(rx + 5), side_y)] + inner[::-1], hair)
    # strands give hair a texture (wavy or straight) the eye reads as hair, not a helmet
    strand = _strand_colour(hair)
    for x0 in (-0.55, -0.2, 0.15, 0.5):
        x = x0 * rx + st.hair_part * 8
        if wavy:
            pts = [(x + 4.5 * math.sin(y / 4 + st.wave_phase), y) for y in np.linspace(-ry - 2, hairline - 4, 10)]
        else:
            pts = [(x * 1.05, -ry - 2), (x * 0.9, hairline - 4)]
        cv.line(pts, strand, 2.2)


def _hat(cv: _Canvas, rx, st: _Style) -> None:
    colour = _HATS[st.hat_colour]
    band = _mul(colour, 0.55)
    brim_y = -42
    crown_h = 30 + 12 * st.hat_height
    if st.hat_style == 0:  # fedora: trapezoid crown over a wide brim
        cv.poly([(-(rx - 4), brim_y), (-(rx - 10), brim_y - crown_h), (rx - 10, brim_y - crown_h), (rx - 4, brim_y)], colour)
        cv.poly([(-(rx - 4), brim_y - 2), (rx - 4, brim_y - 2), (rx - 5, brim_y - 10), (-(rx - 5), brim_y - 10)], band)
        cv.ellipse(0, brim_y, rx + 22, 7, colour)
    else:  # bowler/cloche: a dome with a narrower brim
        cv.poly(_ellipse_pts(0, brim_y, rx + 2, crown_h, math.pi, 2 * math.pi, 24), colour)
        cv.poly([(-(rx + 1), brim_y - 2), (rx + 1, brim_y - 2), (rx, brim_y - 9), (-rx, brim_y - 9)], band)
        cv.ellipse(0, brim_y + 1, rx + 14, 6, colour)


def _mouth(cv: _Canvas, smiling: bool, open_: bool, lipstick: bool, lips) -> None:
    y0 = 31
    dark, teeth = (60, 16, 20), (246, 244, 236)
    th = 1.6 if lipstick else 1.0  # lipstick lips are fuller
    if smiling and open_:  # wide D-shaped grin showing the top teeth
        hw = 17
        us = np.linspace(-1, 1, 15)
        top = [(hw * u, y0 - 3 - 5 * u * u) for u in us]
        bot = [(hw * u, y0 + 10 * (1 - u * u) - 8 * u * u) for u in us[::-1]]
        cv.poly(top + bot, dark)
        cv.poly(top + [(hw * u, y0 + 1 - 5 * u * u) for u in us[::-1]], teeth)
        cv.line(top, lips, 2.6 * th)
        cv.line(bot, lips, 3.2 * th)
    elif smiling:  # closed smile: a wide U with raised corners and dimples
        hw = 18
        us = np.linspace(-1, 1, 13)
        mid = [(hw * u, y0 + 2 - 9 * u * u) for u in us]
        upper = [(hw * u, y0 + 2 - 3 * th - 9 * u * u + 2 * abs(u)) for u in us[::-1]]
        lower = [(hw * u, y0 + 2 + 4 * th * (1 - u * u) - 9 * u * u) for u in us[::-1]]
        cv.poly(mid + upper, lips)
        cv.poly(mid + lower, _mul(lips, 1.05))
        cv.line(mid, dark, 2.0)
        for sx in (-1, 1):
            cv.line([(sx * (hw + 1), y0 - 10), (sx * (hw + 3), y0 - 6)], dark, 1.6)
    elif open_:  # relaxed open mouth: dark oval framed by lips
        cv.ellipse(0, y0 + 2, 9, 6.5, dark)
        cv.ring(0, y0 + 2, 9.5, 7, lips, 2.8 * th)
    else:  # closed, neutral
        hw = 13
        us = np.linspace(-1, 1, 11)
        mid = [(hw * u, y0) for u in us]
        upper = [(hw * u, y0 - 3.2 * th * (1 - u * u) - 0.8 * (1 - abs(u))) for u in us[::-1]]
        lower = [(hw * u, y0 + 4.2 * th * (1 - u * u)) for u in us[::-1]]
        cv.poly(mid + upper, lips)
        cv.poly(mid + lower, _mul(lips, 1.05))
        cv.line(mid, dark, 1.4)


# ----------------------------------------------------------------------------- dataset writer


def _image_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(index)])


def _render_one(job: tuple[int, int, int, int, str]) -> tuple[int, bytes, int]:
    """Worker: (index, seed, w, h, img_dir) -> (index, attribute row as bytes, partition)."""
    index, seed, w, h, img_dir = job
    rng = _image_rng(seed, index)
    attrs = sample_attributes(rng)
    # Partition drawn per image (not by index range) so a larger --n keeps earlier splits.
    r = rng.random()
    partition = 0 if r < 0.81 else (1 if r < 0.91 else 2)
    img = render_face(attrs, rng, (w, h))
    img.save(os.path.join(img_dir, f"{index + 1:06d}.jpg"), quality=img.info["jpeg_quality"])
    return index, attrs.tobytes(), partition


def generate(out_dir, n: int, seed: int = 0, size: tuple[int, int] = DEFAULT_SIZE,
             workers: int | None = None, captions_per_image: int = 5, progress: bool = False) -> dict:
    """Write `n` SynthFaces to `out_dir` in CelebA's layout and return a summary dict."""
    if n < 1:
        raise ValueError(f"--n must be >= 1, got {n}")
    w, h = int(size[0]), int(size[1])
    out = Path(out_dir)
    img_dir = out / "img_align_celeba"
    img_dir.mkdir(parents=True, exist_ok=True)
    workers = max(1, min(workers or os.cpu_count() or 1, n))
    t0 = time.perf_counter()
    rows = np.zeros((n, NUM_ATTRIBUTES), dtype=np.int8)
    parts = np.zeros(n, dtype=np.int8)
    jobs = [(i, seed, w, h, str(img_dir)) for i in range(n)]
    if workers == 1:
        results = map(_render_one, jobs)
        pool = None
    else:
        pool = mp.get_context("fork" if sys.platform != "win32" else "spawn").Pool(workers)
        results = pool.imap_unordered(_render_one, jobs, chunksize=max(1, min(32, n // (4 * workers))))
    try:
        for done, (i, row, p) in enumerate(results, 1):
            rows[i] = np.frombuffer(row, dtype=np.int8)
            parts[i] = p
            if progress and (done % 2000 == 0 or done == n):
                rate = done / (time.perf_counter() - t0)
                print(f"  {done}/{n} images ({rate:.0f} img/s)", flush=True)
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    render_s = time.perf_counter() - t0

    ids = [f"{i + 1:06d}.jpg" for i in range(n)]
    write_attribute_file(out / "list_attr_celeba.txt", ids, rows)
    with open(out / "list_eval_partition.txt", "w", newline="\n") as f:
        f.writelines(f"{i} {int(p)}\n" for i, p in zip(ids, parts))

    caps = build_captions(ids, rows, seed=seed, per_image=captions_per_image)
    with open(out / "captions.json", "w") as f:
        json.dump(caps, f, indent=0, ensure_ascii=False)
    total_s = time.perf_counter() - t0
    freq = {name: float((rows[:, IDX[name]] > 0).mean()) for name in RENDERED_ATTRIBUTES}
    return {
        "out": str(out), "n": n, "seed": seed, "size": [w, h], "workers": workers,
        "splits": {s: int((parts == k).sum()) for k, s in enumerate(("train", "val", "test"))},
        "seconds": round(total_s, 2), "render_seconds": round(render_s, 2),
        "images_per_second": round(n / render_s, 1), "attribute_frequencies": freq,
    }


def write_attribute_file(path, image_ids: list[str], rows: np.ndarray) -> None:
    """Write `list_attr_celeba.txt` exactly as CelebA does: count, names, padded ±1 rows."""
    rows = np.asarray(rows)
    with open(path, "w", newline="\n") as f:
        f.write(f"{len(image_ids)}\n")
        f.write(" ".join(CELEBA_ATTRIBUTES) + " \n")
        for image_id, row in zip(image_ids, rows):
            # CelebA right-aligns each value in a width-2 field after one space: "  1 -1 -1"
            f.write(image_id + " " + " ".join(f"{int(v):2d}" for v in row) + "\n")


# ----------------------------------------------------------------------------- CLI


def _parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"--size must look like WIDTHxHEIGHT (e.g. 178x218), got {text!r}") from None
    if w < 16 or h < 16:
        raise ValueError(f"--size must be at least 16x16, got {text!r}")
    return w, h


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output directory (CelebA layout)")
    p.add_argument("--n", type=int, default=20000, help="number of images (default 20000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", default="178x218", help="WIDTHxHEIGHT (default 178x218, CelebA's aligned crops)")
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    p.add_argument("--per-image", type=int, default=5, help="captions per image in captions.json")


def run(args: argparse.Namespace) -> int:
    size = _parse_size(args.size)
    print(f"SynthFaces: {args.n} images {size[0]}x{size[1]} seed {args.seed} -> {args.out}", flush=True)
    s = generate(args.out, args.n, seed=args.seed, size=size, workers=args.workers,
                 captions_per_image=args.per_image, progress=True)
    print(f"wrote {s['n']} images in {s['seconds']:.1f} s ({s['images_per_second']:.0f} img/s rendering, "
          f"{s['workers']} workers); splits {s['splits']}")
    with open(Path(args.out) / "synthfaces.json", "w") as f:
        json.dump(s, f, indent=1)
    return 0
