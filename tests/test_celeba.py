"""FaceDataset: every supported layout (with text-file quirks), samples, preload cache, and
clear errors for bad input."""

from __future__ import annotations

import json
import os
import shutil
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from t2i.attributes import CELEBA_ATTRIBUTES
from t2i.data import celeba
from t2i.data.celeba import FaceDataset, collate_skip_none, read_annotations
from t2i.data.options import DataOptions

N = 12  # images copied into each test layout


def _official_rows(synth_dir: Path) -> tuple[list[str], np.ndarray]:
    lines = (synth_dir / "list_attr_celeba.txt").read_text().splitlines()[2:2 + N]
    ids = [ln.split()[0] for ln in lines]
    rows = np.array([[int(v) for v in ln.split()[1:]] for ln in lines], dtype=np.int8)
    return ids, rows


def _parts(synth_dir: Path) -> list[str]:
    return [ln.split()[1] for ln in (synth_dir / "list_eval_partition.txt").read_text().splitlines()[:N]]


def _copy_images(synth_dir: Path, dst: Path, ids) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for i in ids:
        shutil.copy(synth_dir / "img_align_celeba" / i, dst / i)


def make_official(synth_dir: Path, root: Path, quirks: bool = True) -> Path:
    """Official layout; with quirks: BOM, CRLF, runs of spaces and trailing spaces."""
    ids, rows = _official_rows(synth_dir)
    _copy_images(synth_dir, root / "img_align_celeba", ids)
    nl = "\r\n" if quirks else "\n"
    sep = "   " if quirks else " "
    text = f"{N}  {nl}" + sep.join(CELEBA_ATTRIBUTES) + f" {nl}"
    text += "".join(i + sep + sep.join(f"{v:2d}" for v in r) + ("  " if quirks else "") + nl for i, r in zip(ids, rows))
    (root / "list_attr_celeba.txt").write_bytes(("\ufeff" if quirks else "").encode() + text.encode())
    parts = _parts(synth_dir)
    (root / "list_eval_partition.txt").write_bytes(
        ("\ufeff" if quirks else "").encode() + "".join(f"{i}  {p} {nl}" for i, p in zip(ids, parts)).encode())
    return root


def make_kaggle(synth_dir: Path, root: Path, quirks: bool = True) -> Path:
    """Kaggle layout; with quirks: BOM, CRLF, ", " and ",  " separators and trailing spaces."""
    ids, rows = _official_rows(synth_dir)
    _copy_images(synth_dir, root / "img_align_celeba" / "img_align_celeba", ids)
    nl, sep, end = ("\r\n", ", ", "  ") if quirks else ("\n", ",", "")
    bom = "\ufeff" if quirks else ""
    lines = ["image_id" + sep + sep.join(CELEBA_ATTRIBUTES)]
    lines += [i + sep + sep.join(f"{v:2d}" if quirks else str(v) for v in r) for i, r in zip(ids, rows)]
    (root / "list_attr_celeba.csv").write_bytes((bom + "".join(ln + end + nl for ln in lines)).encode())
    parts = _parts(synth_dir)
    text = bom + f"image_id{sep}partition{end}{nl}" + "".join(f"{i}{sep}{p}{end}{nl}" for i, p in zip(ids, parts))
    (root / "list_eval_partition.csv").write_bytes(text.encode())
    return root


def make_imagefolder(synth_dir: Path, root: Path) -> Path:
    ids, _ = _official_rows(synth_dir)
    _copy_images(synth_dir, root / "imgs", ids)
    recs = [{"file_name": f"imgs/{i}", "text": f"a face number {k}"} for k, i in enumerate(ids)]
    (root / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    return root


# ----------------------------------------------------------------------------- layouts


def test_all_layouts_read_the_same_attributes(synth_dir, tmp_path):
    ids, rows = _official_rows(synth_dir)
    expected = (rows > 0).astype(np.float32)
    roots = {
        "celeba": make_official(synth_dir, tmp_path / "official"),
        "torchvision": tmp_path / "tv",
        "kaggle": make_kaggle(synth_dir, tmp_path / "kaggle"),
    }
    make_official(synth_dir, tmp_path / "tv" / "celeba")
    for name in ("list_attr_celeba.txt", "list_attr_celeba.csv", "list_eval_partition.csv"):
        raw = (tmp_path / ("kaggle" if name.endswith(".csv") else "tv/celeba") / name).read_bytes()
        assert raw.startswith(b"\xef\xbb\xbf") and b" \r\n" in raw, name  # the quirks are really there
    for layout, root in roots.items():
        ds = FaceDataset(root, split="all")
        assert ds.layout == layout
        assert ds.image_ids == ids
        assert ds.attributes.dtype == np.float32 and np.array_equal(ds.attributes, expected), layout
        train = FaceDataset(root, split="train")
        assert len(train) == sum(p == "0" for p in _parts(synth_dir))
        s = train[0]
        assert s["image"].shape == (3, 64, 64) and s["image"].dtype == torch.float32


def test_imagefolder_layout(synth_dir, tmp_path):
    root = make_imagefolder(synth_dir, tmp_path / "folder")
    ds = FaceDataset(root, split="all")
    assert ds.layout == "imagefolder" and len(ds) == N and not ds.has_attributes
    assert ds.attributes.shape == (N, 40) and not ds.attributes.any()
    assert ds[3]["caption"] == "a face number 3"
    # No split of its own: carved out by a hash of the file name (data/options.py)
    sizes = [len(FaceDataset(root, split=s)) for s in ("train", "val", "test")]
    assert sum(sizes) == N and sizes[0] > 0
    assert len(FaceDataset(root, options=DataOptions(val_fraction=0.0, test_fraction=0.0))) == N


def test_synth_dir_samples(synth_dir):
    ds = FaceDataset(synth_dir, split="train", image_size=64)
    s = ds[0]
    assert set(s) == {"image", "caption", "attributes", "index"}
    img = s["image"]
    assert img.shape == (3, 64, 64) and img.min() >= -1 and img.max() <= 1 and img.std() > 0.1
    assert s["attributes"].shape == (40,) and set(s["attributes"].tolist()) <= {0.0, 1.0}
    assert s["caption"] in ds.captions[0] and s["index"] == 0
    # the sample seed picks the caption deterministically; int key = seed index
    assert ds[(5, 9)]["caption"] == ds[(5, 9)]["caption"]
    assert ds[5]["caption"] == ds[(5, 5)]["caption"]
    assert len({ds[(5, k)]["caption"] for k in range(30)}) > 1
    big = FaceDataset(synth_dir, split="val", image_size=128)
    assert big[0]["image"].shape == (3, 128, 128)


def test_flip_follows_the_sample_seed(synth_dir):
    plain = FaceDataset(synth_dir, split="test")
    flip = FaceDataset(synth_dir, split="test", flip=True)
    x = plain[(0, 0)]["image"]
    outcomes = []
    for seed in range(12):
        y = flip[(0, seed)]["image"]
        assert torch.equal(y, flip[(0, seed)]["image"])
        outcomes.append(torch.equal(y, x.flip(-1)))
        assert outcomes[-1] or torch.equal(y, x)
    assert any(outcomes) and not all(outcomes)


def test_default_and_override_captions(synth_dir, tmp_path):
    ds = FaceDataset(synth_dir, split="all")
    caps = json.loads((synth_dir / "captions.json").read_text())
    assert ds.captions[0] == caps["000001.jpg"]
    custom = tmp_path / "dialog.json"
    custom.write_text(json.dumps({i: [f"custom {i}"] for i in caps}))
    assert FaceDataset(synth_dir, split="all", captions=custom)[2]["caption"] == "custom 000003.jpg"
    # no captions.json: generated on the fly from attributes, deterministic per caption_seed
    root = make_official(synth_dir, tmp_path / "nocaps")
    a, b = FaceDataset(root, split="all"), FaceDataset(root, split="all")
    assert a.captions[3] == b.captions[3] and len(a.captions[3]) == 5
    assert FaceDataset(root, split="all", caption_seed=1).captions[3] != a.captions[3]


def test_preload_cache_and_rebuild(synth_dir, tmp_path, monkeypatch):
    root = make_official(synth_dir, tmp_path / "pre", quirks=False)
    ds = FaceDataset(root, split="all", preload=True)
    assert ds.pixels.dtype == torch.uint8 and ds.pixels.shape == (N, 3, 64, 64)
    assert (root / ".t2i_cache" / "pixels_all_64.npy").is_file()
    assert torch.allclose(ds[4]["image"], FaceDataset(root, split="all")[4]["image"])
    # second load reads the cache: no image is decoded
    def no_decoding(*args):
        raise AssertionError("an image was decoded although the cache is valid")

    monkeypatch.setattr(celeba, "_load_or_none", no_decoding)
    again = FaceDataset(root, split="all", preload=True)
    assert torch.equal(again.pixels, ds.pixels)
    monkeypatch.undo()
    # a changed image invalidates the cache
    victim = root / "img_align_celeba" / ds.image_ids[4]
    shutil.copy(root / "img_align_celeba" / ds.image_ids[5], victim)
    os.utime(victim, ns=(1, 1))
    rebuilt = FaceDataset(root, split="all", preload=True)
    assert torch.equal(rebuilt.pixels[4], ds.pixels[5])


# ----------------------------------------------------------------------------- bad input


def test_missing_directory_and_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        FaceDataset(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="list_attr_celeba.txt"):
        FaceDataset(tmp_path / "empty")


def _rewrite_attr(root: Path, fn) -> None:
    p = root / "list_attr_celeba.txt"
    lines = p.read_text().splitlines()
    p.write_text("\n".join(fn(lines)) + "\n")


@pytest.mark.parametrize("mutate,match", [
    (lambda ls: [ls[0], ls[1].replace("Young", "Old")] + ls[2:], r"list_attr_celeba.txt:2: .*unknown \['Old'\]"),
    (lambda ls: [ls[0], " ".join(ls[1].split()[:-1])] + ls[2:], r"list_attr_celeba.txt:2: expected the 40"),
    (lambda ls: ls[:4] + [" ".join(ls[4].split()[:-2])] + ls[5:], r"list_attr_celeba.txt:5: expected a file name and 40 values, got 38"),
    (lambda ls: ls[:3] + [ls[3].replace("-1", "2", 1)] + ls[4:], r"list_attr_celeba.txt:4: attribute value '2'"),
    (lambda ls: ["13"] + ls[1:], r"list_attr_celeba.txt:1: header says 13 images but 12"),
    (lambda ls: ["many"] + ls[1:], r"list_attr_celeba.txt:1: expected the image count"),
    (lambda ls: ls[:3] + ["../" + ls[3]] + ls[4:], r"list_attr_celeba.txt:4: image name '../000002.jpg' must be a plain"),
])
def test_bad_attribute_files(synth_dir, tmp_path, mutate, match):
    root = make_official(synth_dir, tmp_path / "bad", quirks=False)
    _rewrite_attr(root, mutate)
    with pytest.raises(ValueError, match=match):
        FaceDataset(root, split="all")


def test_bad_partition_and_kaggle_rows(synth_dir, tmp_path):
    root = make_official(synth_dir, tmp_path / "p", quirks=False)
    p = root / "list_eval_partition.txt"
    lines = p.read_text().splitlines()
    lines[4] = lines[4].split()[0] + " 7"
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"list_eval_partition.txt:5: expected"):
        FaceDataset(root)
    k = make_kaggle(synth_dir, tmp_path / "k")
    csv = k / "list_attr_celeba.csv"
    lines = csv.read_text(encoding="utf-8-sig").splitlines()
    lines[3] = lines[3].rsplit(",", 1)[0]
    csv.write_text("\n".join(lines))
    with pytest.raises(ValueError, match=r"list_attr_celeba.csv:4: expected an image_id and 40 values, got 39"):
        FaceDataset(k)


def test_missing_and_corrupt_images_are_skipped(synth_dir, tmp_path):
    root = make_official(synth_dir, tmp_path / "holes", quirks=False)
    ds = FaceDataset(root, split="all")
    (root / "img_align_celeba" / ds.image_ids[2]).unlink()
    (root / "img_align_celeba" / ds.image_ids[5]).write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    data = (root / "img_align_celeba" / ds.image_ids[7]).read_bytes()
    (root / "img_align_celeba" / ds.image_ids[7]).write_bytes(data[: len(data) // 3])  # truncated
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = [ds[i] for i in range(N)]
    assert [i for i, s in enumerate(out) if s is None] == [2, 5, 7]
    assert ds.skipped == 3
    assert sum("skipping unreadable image" in str(w.message) for w in caught) == 1  # warned once
    batch = collate_skip_none(out[:8])
    assert batch["image"].shape == (5, 3, 64, 64) and batch["index"].tolist() == [0, 1, 3, 4, 6]
    assert len(batch["caption"]) == 5 and batch["attributes"].shape == (5, 40)
    assert collate_skip_none([None, None]) is None
    # preload marks them too, and a DataLoader with workers never crashes on them
    pre = FaceDataset(root, split="all", preload=True)
    assert pre.skipped == 3 and pre[6] is not None
    with pytest.warns(UserWarning, match="skipping unreadable image"):
        assert pre[5] is None
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=1, collate_fn=collate_skip_none)
    assert sum(b["image"].shape[0] for b in loader) == N - 3


@pytest.mark.parametrize("workers", [1, 2])
def test_skipped_images_are_counted_across_dataloader_workers(synth_dir, tmp_path, capfd, monkeypatch, workers):
    """Workers are separate processes: their skips must reach `ds.skipped` in this one, and
    the warning is printed once, not once per worker."""
    # pytest records warnings in a list, which a worker's copy would keep to itself: print them.
    monkeypatch.setattr(warnings, "showwarning", lambda msg, *a, **k: print(f"warning: {msg}", file=sys.stderr))
    root = make_official(synth_dir, tmp_path / "holes", quirks=False)
    ds = FaceDataset(root, split="all")
    for j in (2, 5, 7):  # one hole in the first batch of 4, two in the second
        (root / "img_align_celeba" / ds.image_ids[j]).unlink()
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=workers, collate_fn=collate_skip_none)
    assert sum(b["image"].shape[0] for b in loader) == N - 3
    assert ds.skipped == 3 and ds.summary()["skipped"] == 3
    warned = capfd.readouterr().err.count("skipping unreadable image")
    assert warned == 1 if workers == 1 else 1 <= warned <= workers  # two workers may race to the flag
    assert list(loader) and ds.skipped == 3  # a second epoch counts distinct images, not events


def test_all_images_missing_is_an_error(synth_dir, tmp_path):
    root = make_official(synth_dir, tmp_path / "noimg", quirks=False)
    shutil.rmtree(root / "img_align_celeba")
    with pytest.raises(FileNotFoundError, match="img_align_celeba"):
        FaceDataset(root)
    (root / "img_align_celeba").mkdir()
    with pytest.raises(FileNotFoundError, match="none of the first listed images"):
        FaceDataset(root, split="all")


@pytest.mark.parametrize("name,match", [
    ("../outside.jpg", "outside the dataset root"),
    ("/etc/passwd", "relative path"),
    ("imgs/../../outside.jpg", "outside the dataset root"),
    ("link/outside.jpg", "outside the dataset root"),
])
def test_metadata_paths_cannot_escape_root(synth_dir, tmp_path, name, match):
    root = make_imagefolder(synth_dir, tmp_path / "folder")
    outside = tmp_path / "secret"
    outside.mkdir()
    shutil.copy(root / "imgs" / "000001.jpg", outside / "outside.jpg")
    shutil.copy(root / "imgs" / "000001.jpg", tmp_path / "outside.jpg")
    (root / "link").symlink_to(outside, target_is_directory=True)
    meta = root / "metadata.jsonl"
    lines = meta.read_text().splitlines()
    lines.insert(2, json.dumps({"file_name": name, "text": "x"}))
    meta.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=rf"metadata.jsonl:3: .*{match}"):
        FaceDataset(root)


def test_annotation_files_linked_from_outside_the_root_are_refused(synth_dir, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    # captions.json: a link to a file inside the root is fine, one pointing out is refused
    root = make_official(synth_dir, tmp_path / "caps", quirks=False)
    ids, _ = _official_rows(synth_dir)
    (root / "v1").mkdir()
    (root / "v1" / "caps.json").write_text(json.dumps({i: [f"inside {i}"] for i in ids}))
    (outside / "caps.json").write_text(json.dumps({i: [f"outside {i}"] for i in ids}))
    (root / "captions.json").symlink_to(root / "v1" / "caps.json")
    assert FaceDataset(root, split="all")[0]["caption"] == f"inside {ids[0]}"
    (root / "captions.json").unlink()
    (root / "captions.json").symlink_to(outside / "caps.json")
    with pytest.raises(ValueError, match=r"captions.json: file 'captions.json' points outside the dataset root"):
        FaceDataset(root, split="all")
    # passed explicitly, a captions file may live anywhere
    assert FaceDataset(root, split="all", captions=outside / "caps.json")[0]["caption"] == f"outside {ids[0]}"
    # metadata.jsonl itself
    folder = make_imagefolder(synth_dir, tmp_path / "folder")
    shutil.move(folder / "metadata.jsonl", outside / "metadata.jsonl")
    (folder / "metadata.jsonl").symlink_to(outside / "metadata.jsonl")
    with pytest.raises(ValueError, match=r"metadata.jsonl: file 'metadata.jsonl' points outside the dataset root"):
        FaceDataset(folder)


def test_metadata_bad_lines(synth_dir, tmp_path):
    root = make_imagefolder(synth_dir, tmp_path / "folder")
    meta = root / "metadata.jsonl"
    good = meta.read_text()
    meta.write_text(good + "{broken\n")
    with pytest.raises(ValueError, match=rf"metadata.jsonl:{N + 1}: not valid JSON"):
        FaceDataset(root)
    meta.write_text(good + json.dumps({"text": "no file"}) + "\n")
    with pytest.raises(ValueError, match="file_name"):
        FaceDataset(root)


def test_read_annotations_reports_layout(synth_dir):
    ann = read_annotations(synth_dir)
    assert ann.layout == "celeba" and len(ann.image_ids) == 96 and ann.partition is not None
