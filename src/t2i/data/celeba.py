"""Datasets of (image, caption, attributes) samples: CelebA's layouts, and the caption
datasets people already have (Hugging Face imagefolder, parquet: data/imagefolder.py,
data/parquet.py).

Layouts recognised under `root` (checked in this order):
- "torchvision": `root/celeba/` holding the official layout (torchvision's `CelebA(root)`).
- "celeba":      `img_align_celeba/*.jpg`, `list_attr_celeba.txt`, `list_eval_partition.txt`.
- "kaggle":      `img_align_celeba/img_align_celeba/*.jpg`, `list_attr_celeba.csv`
                 (`image_id` column, -1/1) and `list_eval_partition.csv` (`image_id,partition`).
- "imagefolder": images with `metadata.jsonl` or `metadata.csv` (`file_name` + captions), at the
                 top or in train/, validation/, test/ folders (the Hugging Face convention).
- "parquet":     `*.parquet` (or `save_to_disk`'s `*.arrow`) files with an image and a caption
                 column; `root` may also be a single such file.
A dataset without a split of its own is split by a hash of each file name (`DataOptions`).

Text files tolerate a UTF-8 BOM, CRLF line ends, runs of spaces and trailing spaces. Bad
annotations raise ValueError/FileNotFoundError naming the file and line (or row); an image that
is missing or unreadable at load time yields `None` (counted in `dataset.skipped`, also when
DataLoader workers load it, and warned once), which `collate_skip_none` drops.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import warnings
from concurrent.futures import ProcessPoolExecutor
from io import BytesIO
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from t2i.attributes import ATTRIBUTE_INDEX, CELEBA_ATTRIBUTES, NUM_ATTRIBUTES
from t2i.data.annotations import Annotations, inside, read_lines
from t2i.data.captions import caption_rng, captions_for, load_captions_file, varied_attributes
from t2i.data.options import DataOptions, split_of
from t2i.imaging import center_square, from_uint8

SPLITS = {"train": 0, "val": 1, "test": 2}
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


# ----------------------------------------------------------------------------- annotations


def _check_header(names: list[str], path: Path, lineno: int) -> list[int]:
    """Map the file's column order to CELEBA_ATTRIBUTES; error on wrong names/count."""
    if len(names) != NUM_ATTRIBUTES or set(names) != set(CELEBA_ATTRIBUTES):
        unknown = [n for n in names if n not in ATTRIBUTE_INDEX]
        missing = [n for n in CELEBA_ATTRIBUTES if n not in names]
        raise ValueError(
            f"{path}:{lineno}: expected the {NUM_ATTRIBUTES} CelebA attribute names, got {len(names)}"
            + (f"; unknown {unknown[:5]}" if unknown else "") + (f"; missing {missing[:5]}" if missing else ""))
    return [ATTRIBUTE_INDEX[n] for n in names]


def _parse_values(values: list[str], path: Path, lineno: int) -> list[float]:
    out = []
    for v in values:
        if v in ("1", "+1"):
            out.append(1.0)
        elif v in ("-1", "0"):
            out.append(0.0)
        else:
            raise ValueError(f"{path}:{lineno}: attribute value {v!r} is not -1, 0 or 1")
    return out


def _image_name(name: str, path: Path, lineno: int) -> str:
    """A listed image must be a plain file name in the image folder (no folders, no '..')."""
    if "/" in name or "\\" in name or name in (".", ".."):
        raise ValueError(f"{path}:{lineno}: image name {name!r} must be a plain file name inside the image folder")
    return name


def read_attr_txt(path: Path) -> tuple[list[str], np.ndarray]:
    """Official `list_attr_celeba.txt`: count, names, then `file v1 ... v40` rows."""
    lines = read_lines(path)
    if len(lines) < 2:
        raise ValueError(f"{path}: expected a count line and an attribute-name line, got {len(lines)} line(s)")
    try:
        count = int(lines[0].strip())
    except ValueError:
        raise ValueError(f"{path}:1: expected the image count, got {lines[0][:40]!r}") from None
    order = _check_header(lines[1].split(), path, 2)
    ids, rows = [], []
    for lineno, line in enumerate(lines[2:], start=3):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != NUM_ATTRIBUTES + 1:
            raise ValueError(f"{path}:{lineno}: expected a file name and {NUM_ATTRIBUTES} values, "
                             f"got {len(parts) - 1} value(s)")
        ids.append(_image_name(parts[0], path, lineno))
        rows.append(_parse_values(parts[1:], path, lineno))
    if len(ids) != count:
        raise ValueError(f"{path}:1: header says {count} images but {len(ids)} rows follow")
    return ids, _reorder(rows, order)


def read_attr_csv(path: Path) -> tuple[list[str], np.ndarray]:
    """Kaggle `list_attr_celeba.csv`: `image_id,5_o_Clock_Shadow,...` then -1/1 rows."""
    lines = read_lines(path)
    if not lines:
        raise ValueError(f"{path}: empty file")
    header = [h.strip() for h in lines[0].split(",")]
    if not header or header[0] != "image_id":
        raise ValueError(f"{path}:1: expected the first column to be 'image_id', got {header[0]!r}")
    order = _check_header(header[1:], path, 1)
    ids, rows = [], []
    for lineno, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != NUM_ATTRIBUTES + 1:
            raise ValueError(f"{path}:{lineno}: expected an image_id and {NUM_ATTRIBUTES} values, "
                             f"got {len(parts) - 1} value(s)")
        ids.append(_image_name(parts[0], path, lineno))
        rows.append(_parse_values(parts[1:], path, lineno))
    return ids, _reorder(rows, order)


def _reorder(rows: list[list[float]], order: list[int]) -> np.ndarray:
    arr = np.asarray(rows, dtype=np.float32).reshape(len(rows), NUM_ATTRIBUTES)
    out = np.zeros_like(arr)
    out[:, order] = arr
    return out


def read_partition(path: Path, csv: bool) -> dict[str, int]:
    lines = read_lines(path)
    out = {}
    start = 1 if csv else 0
    if csv and (not lines or [h.strip() for h in lines[0].split(",")] != ["image_id", "partition"]):
        raise ValueError(f"{path}:1: expected the header 'image_id,partition'")
    for lineno, line in enumerate(lines[start:], start=start + 1):
        parts = [p.strip() for p in line.split(",")] if csv else line.split()
        if not parts or parts == [""]:
            continue
        if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
            raise ValueError(f"{path}:{lineno}: expected '<image> 0|1|2', got {line[:60]!r}")
        out[parts[0]] = int(parts[1])
    return out


def detect_layout(root) -> tuple[str, Path]:
    """(layout name, directory holding the annotation files, or the parquet file itself)."""
    from t2i.data.imagefolder import find_metadata
    from t2i.data.parquet import find_shards

    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"dataset directory not found: {root}")
    if root.is_file() and root.suffix in (".parquet", ".arrow"):
        return "parquet", root
    if not root.is_dir():
        raise NotADirectoryError(f"dataset path is not a directory (or a .parquet file): {root}")
    nested = root / "celeba"
    if (nested / "list_attr_celeba.txt").is_file():
        return "torchvision", nested
    if (root / "list_attr_celeba.txt").is_file():
        return "celeba", root
    if (root / "list_attr_celeba.csv").is_file():
        return "kaggle", root
    if find_metadata(root):
        return "imagefolder", root
    if find_shards(root):
        return "parquet", root
    raise FileNotFoundError(
        f"{root}: no dataset found: expected list_attr_celeba.txt (official CelebA), celeba/list_attr_celeba.txt "
        f"(torchvision), list_attr_celeba.csv (Kaggle), metadata.jsonl or metadata.csv (image folder, at the "
        f"top or in train/ validation/ test/) or *.parquet files")


def read_annotations(root, options: DataOptions | None = None) -> Annotations:
    options = options or DataOptions()
    layout, base = detect_layout(root)
    if layout == "imagefolder":
        from t2i.data.imagefolder import read_imagefolder

        return read_imagefolder(base, options)
    if layout == "parquet":
        from t2i.data.parquet import read_parquet

        return read_parquet(base, options)
    if layout == "kaggle":
        attr_file = base / "list_attr_celeba.csv"
        ids, attrs = read_attr_csv(attr_file)
        part_path, csv = base / "list_eval_partition.csv", True
        image_dir = base / "img_align_celeba" / "img_align_celeba"
        if not image_dir.is_dir():
            image_dir = base / "img_align_celeba"
    else:
        attr_file = base / "list_attr_celeba.txt"
        ids, attrs = read_attr_txt(attr_file)
        part_path, csv = base / "list_eval_partition.txt", False
        image_dir = base / "img_align_celeba"
    if not image_dir.is_dir():
        raise FileNotFoundError(f"{base}: image directory not found: {image_dir}")
    if not ids:
        raise ValueError(f"{attr_file}: no images listed")
    files = [attr_file]
    if part_path.is_file():
        parts = read_partition(part_path, csv)
        missing = [i for i in ids if i not in parts]
        if missing:
            raise ValueError(f"{part_path}: no partition for {len(missing)} image(s), e.g. {missing[0]!r}")
        partition = np.asarray([parts[i] for i in ids], dtype=np.int8)
        files.append(part_path)
        how = part_path.name
    else:
        partition = np.asarray([split_of(i, options) for i in ids], dtype=np.int8)
        how = (f"no {part_path.name}: carved out by file-name hash (val {options.val_fraction}, "
               f"test {options.test_fraction}, seed {options.split_seed})")
    return Annotations(base, layout, image_dir, ids, attrs, partition, True, files=files, split_source=how)


# ----------------------------------------------------------------------------- images


def load_image(path, image_size: int) -> np.ndarray:
    """CelebA preprocessing: centre square crop (178x218 -> the middle 178x178), resize to
    `image_size` with antialiased bicubic. Returns (S, S, 3) uint8."""
    with Image.open(path) as im:
        return np.array(center_square(im.convert("RGB"), image_size), dtype=np.uint8)  # writable (torch.from_numpy)


def _load_or_none(args: tuple[str | bytes, int]) -> np.ndarray | None:
    """(image path or encoded bytes, size) -> the image, or None when it cannot be decoded."""
    try:
        if isinstance(args[0], bytes):
            return load_image(BytesIO(args[0]), args[1])
        return load_image(args[0], args[1])
    except Exception:  # noqa: BLE001 - any decode failure means "skip this image"
        return None


def _caption_fallback(attrs01: np.ndarray, varied: tuple[str, ...], seed: int, image_id: str) -> list[str]:
    return captions_for(np.where(attrs01 > 0, 1, -1), caption_rng(seed, image_id), 5, varied)


class _LazyCaptions:
    """list[list[str]]-like: captions made from attributes on first access (CelebA has 200k
    images; generating them all up front would cost seconds nobody may need)."""

    def __init__(self, attrs: np.ndarray, ids: list[str], seed: int):
        self._attrs, self._ids, self._seed = attrs, ids, seed
        self._varied = varied_attributes(np.where(attrs > 0, 1, -1))
        self._cache: dict[int, list[str]] = {}

    def __len__(self) -> int:
        return len(self._ids)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        i = range(len(self))[i]
        if i not in self._cache:
            self._cache[i] = _caption_fallback(self._attrs[i], self._varied, self._seed, self._ids[i])
        return self._cache[i]

    def __iter__(self):
        return (self[i] for i in range(len(self)))


# ----------------------------------------------------------------------------- dataset


class FaceDataset(torch.utils.data.Dataset):
    """(image, caption, attributes) samples from any supported layout.

    `options` (DataOptions) say how to read a dataset that does not say it itself: the caption
    column, and the carve-out fractions where it has no split. A caption-only dataset has
    `has_attributes` False and all-zero `attributes`.

    `ds[i]` or `ds[(i, sample_seed)]` -> {"image": (3,S,S) float32 in [-1,1], "caption": str,
    "attributes": (40,) float32 {0,1}, "index": i}, or None for an unreadable image. The sample
    seed (default: i) picks the caption and, with `flip=True`, the horizontal flip.
    """

    def __init__(self, root, split: str = "train", image_size: int = 64, flip: bool = False,
                 captions=None, caption_seed: int = 0, preload: bool = False, workers: int | None = None,
                 options: DataOptions | None = None):
        if split not in ("train", "val", "test", "all"):
            raise ValueError(f"split must be train, val, test or all, got {split!r}")
        if int(image_size) < 8:
            raise ValueError(f"image_size must be >= 8, got {image_size}")
        ann = read_annotations(root, options)
        self.root, self.layout, self.split = Path(root), ann.layout, split
        self.image_size, self.flip = int(image_size), bool(flip)
        self.image_dir = ann.image_dir
        keep = np.arange(len(ann.image_ids)) if split == "all" else np.nonzero(ann.partition == SPLITS[split])[0]
        self.image_ids = [ann.image_ids[i] for i in keep]
        self._image_bytes, self._rows = ann.images, keep  # images inside the annotation files (parquet)
        self.annotation_files = list(ann.files)
        self.split_source = ann.split_source
        self.attributes = np.ascontiguousarray(ann.attributes[keep], dtype=np.float32)
        self.has_attributes = ann.has_attributes
        self.split_counts = {s: int((ann.partition == k).sum()) for s, k in SPLITS.items()}
        self.captions = self._load_captions(ann, keep, captions, caption_seed)
        # Bad-image marks and the warned-once flag live in shared memory: DataLoader workers
        # (forked or spawned) write to the same pages, so `skipped` counts in the main process too.
        self._bad = torch.zeros(len(self.image_ids), dtype=torch.bool).share_memory_()
        self._warned = torch.zeros(1, dtype=torch.bool).share_memory_()
        self.pixels: torch.Tensor | None = None
        self._valid: np.ndarray | None = None
        if (self._image_bytes is None and len(self.image_ids)
                and not any((self.image_dir / i).is_file() for i in self.image_ids[:20])):
            raise FileNotFoundError(f"{self.image_dir}: none of the first listed images exist "
                                    f"(e.g. {self.image_ids[0]!r}); is the image folder right?")
        if preload:
            self._preload(workers)

    # -- captions
    def _load_captions(self, ann: Annotations, keep, captions, seed):
        """Captions per image, from (in order) `captions`, ROOT/captions.json, metadata.jsonl
        texts, or the attributes; sets `caption_source` to say which."""
        default = ann.root / "captions.json"
        if captions is None and default.is_file():
            inside(ann.root, default.name, str(default), what="file")  # an explicit `captions` may be anywhere
            captions = default
        if captions is not None:
            table = load_captions_file(captions, self.image_ids)
            self.caption_source = str(captions)
            self.annotation_files.append(Path(captions))
            return [table[i] for i in self.image_ids]
        if ann.texts is not None:  # the readers refuse empty captions, naming the line or row
            self.caption_source = str(ann.caption_file)
            return [ann.texts[i] for i in keep]
        self.caption_source = f"made from attributes on the fly (caption seed {seed})"
        return _LazyCaptions(self.attributes, self.image_ids, seed)

    # -- preload
    def _cache_key(self) -> str:
        h = hashlib.sha1()
        h.update(f"v1 {self.layout} {self.image_size}\n".encode())
        if self._image_bytes is not None:  # images live in the annotation files
            for f in self.annotation_files:
                st = os.stat(f)
                h.update(f"{f} {st.st_size} {st.st_mtime_ns}\n".encode())
        for i in self.image_ids:
            try:
                st = os.stat(self.image_dir / i)
                h.update(f"{i} {st.st_size} {st.st_mtime_ns}\n".encode())
            except OSError:
                h.update(f"{i} missing\n".encode())
        return h.hexdigest()

    def _preload(self, workers: int | None) -> None:
        S, n = self.image_size, len(self.image_ids)
        cache_dir = self.root / ".t2i_cache"
        npy = cache_dir / f"pixels_{self.split}_{S}.npy"
        meta_path = npy.with_suffix(".json")
        key = self._cache_key()
        if npy.is_file() and meta_path.is_file():
            try:
                meta = json.loads(meta_path.read_text())
                if meta.get("key") == key:
                    arr = np.load(npy, allow_pickle=False)
                    if arr.shape == (n, 3, S, S):
                        valid = meta.get("valid")
                        self._set_pixels(arr, None if valid is None else np.asarray(valid, dtype=bool))
                        return
            except (OSError, ValueError, KeyError):
                pass  # unreadable cache: rebuild it
        arr = np.zeros((n, 3, S, S), dtype=np.uint8)
        valid = np.ones(n, dtype=bool)
        jobs = [(str(self.image_dir / i), S) for i in self.image_ids]
        workers = (os.cpu_count() or 1) if workers is None else workers
        if self._image_bytes is not None:  # in row order: each row group is read once
            for j in range(n):
                self._store(arr, valid, j, _load_or_none((self._read_bytes(j), S)))
        elif workers > 1 and n >= 2000:
            with ProcessPoolExecutor(workers) as ex:
                results = ex.map(_load_or_none, jobs, chunksize=256)
                for j, img in enumerate(results):
                    self._store(arr, valid, j, img)
        else:
            for j, job in enumerate(jobs):
                self._store(arr, valid, j, _load_or_none(job))
        try:
            cache_dir.mkdir(exist_ok=True)
            tmp = npy.with_suffix(".tmp.npy")
            np.save(tmp, arr)
            os.replace(tmp, npy)
            meta = {"key": key, "n": n, "image_size": S, "split": self.split,
                    "valid": valid.tolist() if not valid.all() else None}
            meta_path.write_text(json.dumps(meta))
        except OSError as e:  # read-only dataset: keep the pixels in memory only
            warnings.warn(f"could not write pixel cache {npy}: {e}", stacklevel=3)
        self._set_pixels(arr, valid)

    def _store(self, arr, valid, j, img) -> None:
        if img is None:
            valid[j] = False
            self._bad[j] = True
        else:
            arr[j] = img.transpose(2, 0, 1)

    def _set_pixels(self, arr: np.ndarray, valid: np.ndarray | None) -> None:
        self.pixels = torch.from_numpy(arr)
        self._valid = valid
        if valid is not None:
            self._bad[torch.from_numpy(~valid)] = True

    # -- access
    @property
    def skipped(self) -> int:
        """Distinct images found missing or unreadable so far, by this process or its
        DataLoader workers."""
        return int(self._bad.sum())

    def __len__(self) -> int:
        return len(self.image_ids)

    def count_missing(self) -> int:
        """Listed images of this split with no file on disk (one stat each, nothing decoded;
        images stored inside parquet files are never missing)."""
        if self._image_bytes is not None:
            return 0
        return sum(not os.path.isfile(self.image_dir / i) for i in self.image_ids)

    def _read_bytes(self, i: int) -> bytes:
        """Encoded image i of a dataset that stores images in its annotation files."""
        try:
            return self._image_bytes.read(int(self._rows[i]))
        except (OSError, ValueError):
            return b""  # decodes to nothing: skipped and counted like a corrupt file

    def describe(self, i: int) -> str:
        """Where image i comes from, for messages."""
        if self._image_bytes is not None:
            return self._image_bytes.describe(int(self._rows[i]))
        return str(self.image_dir / self.image_ids[i])

    def _skip(self, i: int, why: str):
        self._bad[i] = True
        if not self._warned[0]:
            self._warned[0] = True
            warnings.warn(f"skipping unreadable image {self.describe(i)} ({why}); "
                          f"further bad images are skipped silently and counted in dataset.skipped", stacklevel=3)
        return None

    def __getitem__(self, key):
        if isinstance(key, tuple):
            i, sample_seed = int(key[0]), int(key[1])
        else:
            i = int(key)
            sample_seed = i
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for a dataset of {n} images")
        i %= n
        if self.pixels is not None:
            if self._valid is not None and not self._valid[i]:
                return self._skip(i, "unreadable at preload")
            chw = self.pixels[i]
        else:
            path = self.image_dir / self.image_ids[i] if self._image_bytes is None else BytesIO(self._read_bytes(i))
            try:
                hwc = load_image(path, self.image_size)
            except FileNotFoundError:
                return self._skip(i, "missing")
            except Exception as e:  # noqa: BLE001 - corrupt/truncated files of any kind
                return self._skip(i, f"{type(e).__name__}: {e}")
            chw = torch.from_numpy(hwc).permute(2, 0, 1)
        rng = random.Random(f"{i}/{sample_seed}")
        caps = self.captions[i]
        caption = caps[rng.randrange(len(caps))]
        img = from_uint8(chw)  # (3, S, S) in [-1, 1]
        if self.flip and rng.random() < 0.5:
            img = img.flip(-1)
        return {"image": img.contiguous(), "caption": caption,
                "attributes": torch.from_numpy(self.attributes[i].copy()), "index": i}

    def summary(self) -> dict:
        return {"root": str(self.root), "layout": self.layout, "split": self.split, "images": len(self),
                "splits": self.split_counts, "split_source": self.split_source, "image_size": self.image_size,
                "has_attributes": self.has_attributes, "skipped": self.skipped, "captions": self.caption_source,
                "preloaded": self.pixels is not None}


def collate_skip_none(batch: list) -> dict | None:
    """Stack a list of samples, dropping the `None`s of unreadable images. Returns None when
    every sample was dropped."""
    batch = [b for b in batch if b is not None]
    if not batch:
        return None
    return {"image": torch.stack([b["image"] for b in batch]),
            "caption": [b["caption"] for b in batch],
            "attributes": torch.stack([b["attributes"] for b in batch]),
            "index": torch.tensor([b["index"] for b in batch], dtype=torch.long)}
