"""Hugging Face imagefolder datasets: images in (nested) folders beside a `metadata.jsonl` or
`metadata.csv` that lists `file_name` and a caption column, as `datasets` reads them.

    root/metadata.jsonl                   {"file_name": "photos/0001.jpg", "text": "a red door"}
    root/metadata.csv                     file_name,text   (one of the two per folder)
    root/train/metadata.jsonl, root/validation/metadata.jsonl (or val/, valid/, dev/),
    root/test/metadata.jsonl              split folders, each listing its own images

The caption column is `text`, else `caption`, else the one named by `--caption-column`; a cell
may hold one caption or a list of them (in CSV, a JSON list such as `["a", "b"]`). Columns
named like CelebA attributes (`Smiling`, `Eyeglasses`: -1/0/1 or true/false) or an
`attributes` field ({name: value}, or 40 values) are the image's attribute labels; without
them the dataset is caption-only. Other columns are ignored.

Images without a split folder are split by `DataOptions` (a hash of the file name); a dataset
with split folders but no validation (or test) folder has that split carved out of train.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np

from t2i.attributes import CELEBA_ATTRIBUTES
from t2i.data.annotations import (
    Annotations,
    attributes_row,
    caption_list,
    check_duplicates,
    inside,
    pick_caption_column,
    read_lines,
)
from t2i.data.options import DataOptions, split_of

METADATA_NAMES = ("metadata.jsonl", "metadata.csv")
# Folder names `datasets` maps to each split (datasets.data_files.SPLIT_KEYWORDS, minus "eval").
SPLIT_FOLDERS = {0: ("train", "training"), 1: ("validation", "valid", "val", "dev"), 2: ("test", "testing")}


def _metadata_in(folder: Path) -> Path | None:
    found = [folder / n for n in METADATA_NAMES if (folder / n).is_file()]
    if len(found) > 1:
        raise ValueError(f"{folder}: both metadata.jsonl and metadata.csv; keep one of them")
    return found[0] if found else None


def find_metadata(root: Path) -> list[tuple[int | None, Path]]:
    """(split or None, metadata file) pairs of an imagefolder at `root`; [] when it is none."""
    top = _metadata_in(root)
    per_split = []
    for split, names in SPLIT_FOLDERS.items():
        for name in names:
            meta = _metadata_in(root / name) if (root / name).is_dir() else None
            if meta is not None:
                if any(s == split for s, _ in per_split):
                    other = next(p for s, p in per_split if s == split)
                    raise ValueError(f"{root}: two folders for one split: {other.parent.name}/ and {name}/")
                per_split.append((split, meta))
    if top is not None and per_split:
        raise ValueError(f"{root}: metadata at the top ({top.name}) and in split folders "
                         f"({', '.join(p.parent.name + '/' for _, p in per_split)}); keep one arrangement")
    if top is not None:
        return [(None, top)]
    if per_split and not any(s == 0 for s, _ in per_split):
        raise ValueError(f"{root}: split folders {[p.parent.name for _, p in per_split]} but no train/ folder")
    return per_split


def _jsonl_records(path: Path) -> list[tuple[str, dict]]:
    out = []
    for lineno, line in enumerate(read_lines(path), start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: not valid JSON ({e.msg})") from None
        if not isinstance(rec, dict):
            raise ValueError(f"{where}: expected a JSON object, got {type(rec).__name__}")
        out.append((where, rec))
    return out


def _csv_records(path: Path) -> list[tuple[str, dict]]:
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e})") from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = [h.strip() for h in reader.fieldnames or []]
    if "file_name" not in header:
        raise ValueError(f"{path}:1: no 'file_name' column; the columns are {header}")
    reader.fieldnames = header
    out, start = [], 2
    for rec in reader:
        where = f"{path}:{start}"  # the record's first line (a quoted caption may span lines)
        start = reader.line_num + 1
        if not any((v or "").strip() for k, v in rec.items() if k is not None):
            continue
        if None in rec:
            raise ValueError(f"{where}: more cells than the {len(header)} columns of the header")
        rec = {k: (v.strip() if isinstance(v, str) else v) for k, v in rec.items()}
        for k, v in rec.items():  # a JSON list in a cell is a list of captions
            if isinstance(v, str) and v.startswith("["):
                try:
                    parsed = json.loads(v)
                except json.JSONDecodeError:
                    continue
                if isinstance(parsed, list):
                    rec[k] = parsed
        out.append((where, rec))
    return out


def read_metadata(path: Path, root: Path, folder: str, options: DataOptions):
    """One metadata file -> (image ids relative to `root`, caption lists or None, attribute rows,
    has_attributes, wheres). `folder` is the metadata's directory relative to `root` ("" or a
    split folder name)."""
    inside(root, str(path.relative_to(root)), str(path), what="file")  # a link out would read another list
    records = _jsonl_records(path) if path.suffix == ".jsonl" else _csv_records(path)
    if not records:
        raise ValueError(f"{path}: no images listed")
    columns = list(dict.fromkeys(k for _, rec in records for k in rec))
    attr_columns = [c for c in columns if c in CELEBA_ATTRIBUTES]
    has_attributes = bool(attr_columns) or "attributes" in columns
    caption_column = pick_caption_column(columns, options.caption_column, f"{path}:1", has_attributes)
    base = path.parent
    ids, texts, rows, wheres = [], [], [], []
    for where, rec in records:
        name = rec.get("file_name")
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"{where}: expected a string 'file_name', got {name!r}")
        rel = inside(base, name.strip(), where)
        inside(root, f"{folder}/{rel}" if folder else rel, where)
        ids.append(f"{folder}/{rel}" if folder else rel)
        wheres.append(where)
        if caption_column is not None:
            if rec.get(caption_column) is None:
                raise ValueError(f"{where}: no {caption_column!r} caption; this record has {sorted(rec)}")
            texts.append(caption_list(rec[caption_column], where, caption_column))
        rows.append(attributes_row(rec, attr_columns, where))
    check_duplicates(ids, wheres)
    return ids, (texts if caption_column is not None else None), np.stack(rows), has_attributes


def read_imagefolder(root: Path, options: DataOptions | None = None) -> Annotations:
    options = options or DataOptions()
    found = find_metadata(root)
    if not found:
        raise FileNotFoundError(f"{root}: no metadata.jsonl or metadata.csv (at the top or in train/, "
                                f"validation/, test/)")
    ids, texts, rows, parts, files = [], [], [], [], []
    any_attributes, all_texts = False, True
    splits_present = {s for s, _ in found}
    # Splits that have no folder of their own are carved out of the images without a split.
    carve = DataOptions(val_fraction=options.val_fraction if 1 not in splits_present else 0.0,
                        test_fraction=options.test_fraction if 2 not in splits_present else 0.0,
                        split_seed=options.split_seed)
    for split, meta in found:
        folder = "" if split is None else meta.parent.name
        f_ids, f_texts, f_rows, f_has = read_metadata(meta, root, folder, options)
        ids += f_ids
        rows.append(f_rows)
        any_attributes |= f_has
        if f_texts is None:
            all_texts = False
        else:
            texts += f_texts
        files.append(meta)
        if split in (None, 0):  # the hash uses the name inside the split folder: moving a file
            names = [i.split("/", 1)[1] if folder else i for i in f_ids]  # into train/ keeps its split
            parts += [split_of(n, carve) for n in names]
        else:
            parts += [split] * len(f_ids)
    if not all_texts and not any_attributes:
        raise ValueError(f"{root}: no captions and no attribute labels")
    if found[0][0] is None:
        how = f"carved out by file-name hash (val {options.val_fraction}, test {options.test_fraction}, " \
              f"seed {options.split_seed})"
    else:
        folders = ", ".join(m.parent.name + "/" for _, m in found)
        missing = [n for s, n in ((1, "val"), (2, "test")) if s not in splits_present]
        how = f"folders {folders}" + (f"; {' and '.join(missing)} carved out of train by file-name hash "
                                      f"(seed {options.split_seed})" if missing else "")
    return Annotations(root, "imagefolder", root, ids, np.concatenate(rows).astype(np.float32),
                       np.asarray(parts, dtype=np.int8), any_attributes,
                       texts=texts if all_texts else None, files=files, split_source=how,
                       caption_file=files[0] if len(files) == 1 else root)
