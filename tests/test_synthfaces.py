"""SynthFaces: deterministic rendering, attribute statistics, where each attribute shows,
and the CelebA-format files `generate` writes."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from t2i.attributes import ATTRIBUTE_INDEX as IDX
from t2i.attributes import CELEBA_ATTRIBUTES
from t2i.data.synthfaces import (
    HAIR_COLOURS,
    RENDERED_ATTRIBUTES,
    _image_rng,
    generate,
    render_face,
    sample_attributes,
)

W, H = 178, 218
CX = 89  # face centre column (jitter is +-5 px)


def _vec(**on) -> np.ndarray:
    a = np.full(40, -1, dtype=np.int8)
    for name, v in on.items():
        a[IDX[name]] = 1 if v == 1 else -1  # True or 1 -> +1; False, 0 or -1 -> -1
    return a


def _render(attrs, seed: int):
    return np.asarray(render_face(attrs, np.random.default_rng(seed)), dtype=np.int16)


def test_render_is_deterministic_and_seed_dependent():
    a = sample_attributes(np.random.default_rng(3))
    x1, x2, x3 = _render(a, 11), _render(a, 11), _render(a, 12)
    assert x1.shape == (H, W, 3)
    assert np.array_equal(x1, x2)
    assert np.abs(x1 - x3).mean() > 5  # another seed: another pose, palette and background


def test_render_rejects_bad_input():
    with pytest.raises(ValueError, match="shape"):
        render_face(np.ones(39), np.random.default_rng(0))
    with pytest.raises(ValueError, match="16x16"):
        render_face(np.ones(40), np.random.default_rng(0), size=(8, 8))


def test_other_sizes_keep_the_face_centred():
    img = render_face(_vec(Young=1), np.random.default_rng(0), size=(128, 128))
    assert img.size == (128, 128)


def test_attribute_statistics_and_constraints():
    rng = np.random.default_rng(0)
    rows = np.stack([sample_attributes(rng) for _ in range(4000)])
    assert rows.dtype == np.int8 and set(np.unique(rows)) <= {-1, 1}
    on = rows > 0
    col = {n: on[:, IDX[n]] for n in CELEBA_ATTRIBUTES}
    for name in CELEBA_ATTRIBUTES:
        if name not in RENDERED_ATTRIBUTES:
            assert not col[name].any(), f"{name} is not rendered, so it must always be -1"
        else:
            assert col[name].any() and not col[name].all(), f"{name} never varies"
    # CelebA-like marginals
    for name, target, tol in [("Male", 0.42, 0.04), ("Young", 0.77, 0.04), ("Smiling", 0.48, 0.04),
                              ("Eyeglasses", 0.065, 0.025), ("Wearing_Lipstick", 0.47, 0.05),
                              ("Mouth_Slightly_Open", 0.48, 0.05), ("Wearing_Hat", 0.05, 0.02)]:
        assert abs(col[name].mean() - target) < tol, (name, col[name].mean())
    # correlations
    male = col["Male"]
    assert not (col["Mustache"] & ~male).any()
    assert not (~col["No_Beard"] & ~male).any()
    assert col["Wearing_Lipstick"][~male].mean() > 0.6 and col["Wearing_Lipstick"][male].mean() < 0.02
    assert col["Bald"][male & ~col["Young"]].mean() > 5 * max(col["Bald"][~male].mean(), 0.01)
    assert on[:, [IDX[c] for c in HAIR_COLOURS]].sum(1).max() <= 1
    assert not (col["Bald"] & on[:, [IDX[c] for c in HAIR_COLOURS]].any(1)).any()
    assert col["Gray_Hair"][~col["Young"]].mean() > 5 * col["Gray_Hair"][col["Young"]].mean()


def _diff_mask(base: np.ndarray, name: str, seed: int, value: int = 1) -> np.ndarray:
    a, b = base.copy(), base.copy()
    a[IDX[name]], b[IDX[name]] = -value, value
    return np.abs(_render(a, seed) - _render(b, seed)).max(-1) > 12  # (H, W)


# Where flipping each attribute must change the picture (image rows/cols, 178x218 layout;
# the face centre is ~(89, 114) with +-5 px jitter, the eyes ~107, the mouth ~148).
def _centroid(mask):
    ys, xs = np.nonzero(mask)
    return ys.mean(), xs.mean()


REGIONS = {
    # name: (base attributes, (y_min, y_max) for the centroid, extra check)
    "Eyeglasses": (dict(Young=1), (96, 116), None),
    "Smiling": (dict(Young=1), (136, 160), "central"),
    "Mouth_Slightly_Open": (dict(Young=1), (136, 160), "central"),
    "Wearing_Lipstick": (dict(Young=1), (136, 160), "central"),
    "Mustache": (dict(Male=1, Young=1), (128, 150), "central"),
    "No_Beard": (dict(Male=1, Young=1, No_Beard=1), (135, 200), None),
    "Rosy_Cheeks": (dict(Young=1), (118, 142), "sides"),
    "Wearing_Earrings": (dict(Young=1), (115, 150), "far_sides"),
    "Wearing_Necklace": (dict(Young=1), (165, 200), "central"),
    "Wearing_Hat": (dict(Young=1, Black_Hair=1), (20, 80), None),
    "Bangs": (dict(Young=1, Black_Hair=1), (60, 100), None),
    "Young": (dict(), (70, 165), None),
    "Bald": (dict(Male=1), (20, 110), "not_eyes_mouth"),
    "Wavy_Hair": (dict(Young=1, Brown_Hair=1), (20, 200), "not_eyes_mouth"),
    "Black_Hair": (dict(Young=1), (20, 200), "not_eyes_mouth"),
    "Blond_Hair": (dict(Young=1), (20, 200), "not_eyes_mouth"),
    "Brown_Hair": (dict(Young=1), (20, 200), "not_eyes_mouth"),
    "Gray_Hair": (dict(), (20, 200), "not_eyes_mouth"),
    "Pale_Skin": (dict(Young=1), (60, 200), None),
    "Chubby": (dict(Young=1), (60, 200), "sides"),
    "Male": (dict(Young=1), (0, 218), None),
}


def test_every_rendered_attribute_has_a_region_test():
    assert set(REGIONS) == set(RENDERED_ATTRIBUTES)


@pytest.mark.parametrize("name", sorted(REGIONS))
def test_each_attribute_changes_its_own_region(name):
    base_on, (y0, y1), extra = REGIONS[name]
    base = _vec(**base_on)
    if name != "No_Beard":
        base[IDX["No_Beard"]] = 1  # the usual value: no beard
    for seed in (0, 1, 2):
        m = _diff_mask(base, name, seed)
        area = m.mean()
        assert area > 0.002, f"{name}: flipping it changes only {area:.4%} of the pixels (seed {seed})"
        cy, cx = _centroid(m)
        assert y0 <= cy <= y1, f"{name}: change centred at row {cy:.0f}, expected {y0}..{y1} (seed {seed})"
        ys, xs = np.nonzero(m)
        if extra == "central":
            assert abs(cx - CX) < 12 and np.abs(xs - CX).max() < 60, name
        elif extra == "sides":
            assert (np.abs(xs - CX) > 10).mean() > 0.8, name
        elif extra == "far_sides":
            assert (np.abs(xs - CX) > 35).mean() > 0.9, name
        elif extra == "not_eyes_mouth":  # hair changes stay off the eyes/nose/mouth box
            box = m[100:150, CX - 14:CX + 14]
            assert box.mean() < 0.05, f"{name}: {box.mean():.1%} of the eye-mouth box changed"


def test_generate_writes_celeba_layout(synth_dir):
    imgs = sorted((synth_dir / "img_align_celeba").iterdir())
    assert [p.name for p in imgs[:2]] == ["000001.jpg", "000002.jpg"] and len(imgs) == 96
    lines = (synth_dir / "list_attr_celeba.txt").read_text().split("\n")
    assert lines[0] == "96"
    assert lines[1].split() == list(CELEBA_ATTRIBUTES)
    # CelebA pads each value to width 2: "000001.jpg -1  1 -1 ..."
    row = lines[2]
    assert row.startswith("000001.jpg ") and len(row.split()) == 41
    assert row == "000001.jpg " + " ".join(f"{int(v):2d}" for v in row.split()[1:])
    parts = [ln.split() for ln in (synth_dir / "list_eval_partition.txt").read_text().splitlines()]
    assert [p[0] for p in parts] == [p.name for p in imgs]
    assert {p[1] for p in parts} <= {"0", "1", "2"} and sum(p[1] == "0" for p in parts) > 60
    caps = json.loads((synth_dir / "captions.json").read_text())
    assert list(caps) == [p.name for p in imgs] and all(len(c) == 5 for c in caps.values())


def test_generate_rows_match_per_image_rng(synth_dir):
    """Image i's attributes come from the generator seeded by (seed, i) alone."""
    lines = (synth_dir / "list_attr_celeba.txt").read_text().splitlines()[2:]
    for i in (0, 5, 95):
        row = np.array([int(v) for v in lines[i].split()[1:]], dtype=np.int8)
        assert np.array_equal(row, sample_attributes(_image_rng(0, i)))


def _digest(root):
    h = hashlib.sha1()
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name != "synthfaces.json":
            h.update(p.relative_to(root).as_posix().encode() + p.read_bytes())
    return h.hexdigest()


def test_output_does_not_depend_on_worker_count(tmp_path):
    s1 = generate(tmp_path / "a", 10, seed=5, workers=1, size=(64, 80))
    s2 = generate(tmp_path / "b", 10, seed=5, workers=2, size=(64, 80))
    assert s1["workers"] == 1 and s2["workers"] == 2
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    generate(tmp_path / "c", 10, seed=6, workers=1, size=(64, 80))
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")
    assert s1["images_per_second"] > 0


def test_generate_rejects_bad_n(tmp_path):
    with pytest.raises(ValueError, match="--n"):
        generate(tmp_path, 0)
