"""Datasets stored as parquet (or arrow) files, as Hugging Face `datasets` writes them:
`to_parquet`, a hub repository's `data/train-00000-of-00002.parquet` shards, or `save_to_disk`
(`data-00000-of-00001.arrow`). Read with pyarrow one row group at a time: the captions are read
up front (only their column), image bytes when an image is loaded.

- image column: `image` (else the only column that looks like an image), holding
  `{"bytes": ..., "path": ...}` structs (the `datasets` Image feature), raw bytes, or a path
  relative to the dataset root;
- caption column: `text`, else `caption`, else `--caption-column` (a string or a list of strings);
- attribute columns named like CelebA's (optional), as in an imagefolder's metadata;
- splits from the shard names (`train-*`, `validation-*`/`val-*`, `test-*`) or folders
  (`train/`, ...); shards without one are split by `DataOptions` (a hash of the image path,
  or of the row number when rows carry bytes only).
"""

from __future__ import annotations

import re
from collections import OrderedDict
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
)
from t2i.data.options import DataOptions, split_of

SPLIT_WORDS = {"train": 0, "training": 0, "validation": 1, "valid": 1, "val": 1, "dev": 1, "test": 2, "testing": 2}


def _pyarrow():
    try:
        import pyarrow
        import pyarrow.parquet  # noqa: F401
    except ModuleNotFoundError:
        raise ModuleNotFoundError("reading parquet datasets needs pyarrow: pip install 't2i[train]' "
                                  "(or pip install pyarrow)") from None
    return pyarrow


def find_shards(root: Path) -> list[Path]:
    """The parquet files under `root` (or `root` itself), else its arrow files; sorted."""
    if root.is_file():
        return [root] if root.suffix in (".parquet", ".arrow") else []
    for suffix in ("*.parquet", "*.arrow"):
        found = sorted(p for p in root.rglob(suffix) if ".t2i_cache" not in p.parts)
        if found:
            return found
    return []


def shard_split(path: Path, root: Path) -> int | None:
    """0/1/2 from the shard's name (`train-00000-of-00002.parquet`) or a folder above it."""
    rel = path.relative_to(root).parts if path != root else (path.name,)
    first_word = re.split(r"[-_.]", rel[-1], maxsplit=1)[0].lower()
    if first_word in SPLIT_WORDS:
        return SPLIT_WORDS[first_word]
    for folder in reversed(rel[:-1]):
        if folder.lower() in SPLIT_WORDS:
            return SPLIT_WORDS[folder.lower()]
    return None


class _Shard:
    """One parquet or arrow file, read by row group (arrow: by record batch, memory-mapped)."""

    def __init__(self, path: Path):
        pa = _pyarrow()
        self.path = path
        if path.suffix == ".parquet":
            try:
                self._pq = pa.parquet.ParquetFile(path)
            except (pa.ArrowInvalid, OSError) as e:
                raise ValueError(f"{path}: not a readable parquet file ({e})") from None
            self.schema = self._pq.schema_arrow
            self.group_rows = [self._pq.metadata.row_group(g).num_rows for g in range(self._pq.num_row_groups)]
        else:
            try:
                self._batches = pa.ipc.open_stream(pa.memory_map(str(path))).read_all().to_batches()
            except (pa.ArrowInvalid, OSError) as e:
                raise ValueError(f"{path}: not a readable arrow file ({e})") from None
            self.schema = self._batches[0].schema if self._batches else pa.schema([])
            self.group_rows = [b.num_rows for b in self._batches]

    def read_group(self, g: int, columns: list[str]) -> dict[str, list]:
        """Columns of row group `g` as Python lists; "image.path" names a struct's child."""
        if hasattr(self, "_pq"):
            table = self._pq.read_row_group(g, columns=columns)  # "image.path" reads that child only
            out = {}
            for c in columns:
                top, _, child = c.partition(".")
                col = table.column(top).combine_chunks()
                out[c] = (col.field(child) if child else col).to_pylist()
            return out
        batch = self._batches[g]
        out = {}
        for c in columns:
            top, _, child = c.partition(".")
            col = batch.column(batch.schema.get_field_index(top))
            out[c] = (col.field(child) if child else col).to_pylist()
        return out


def _image_column(schema, path: Path) -> tuple[str, str]:
    """(column, kind) with kind "struct" ({bytes, path}), "bytes" or "path"."""
    pa = _pyarrow()

    def kind(field):
        t = field.type
        if pa.types.is_struct(t) and any(t.field(i).name == "bytes" for i in range(t.num_fields)):
            return "struct"
        if pa.types.is_binary(t) or pa.types.is_large_binary(t):
            return "bytes"
        if pa.types.is_string(t) or pa.types.is_large_string(t):
            return "path"
        return None

    fields = {f.name: f for f in schema}
    if "image" in fields and kind(fields["image"]):
        return "image", kind(fields["image"])
    candidates = [n for n, f in fields.items() if kind(f) in ("struct", "bytes")]
    if len(candidates) == 1:
        return candidates[0], kind(fields[candidates[0]])
    raise ValueError(f"{path}: no image column: expected 'image' (bytes, a path, or a {{bytes, path}} struct); "
                     f"the columns are {list(fields)}")


class ParquetImages:
    """Image bytes of annotation row i, read one row group at a time (a few kept in memory:
    preloading walks rows in order, so each group is read once)."""

    def __init__(self, root: Path, shards: list[Path], column: str, kind: str,
                 refs: np.ndarray, names: list[str]):
        self.root, self.shards, self.column, self.kind = root, shards, column, kind
        self.refs = refs  # (N, 3) int64: shard, row group, row within the group
        self.names = names
        self._open: dict[int, _Shard] = {}
        self._groups: OrderedDict[tuple[int, int], list] = OrderedDict()

    def __getstate__(self):  # DataLoader workers open their own files
        state = dict(self.__dict__)
        state["_open"], state["_groups"] = {}, OrderedDict()
        return state

    def describe(self, index: int) -> str:
        return f"{self.root / self.names[index].rsplit(':', 1)[0]} row {self.names[index].rsplit(':', 1)[1]}"

    def read(self, index: int) -> bytes:
        s, g, r = (int(v) for v in self.refs[index])
        key = (s, g)
        if key not in self._groups:
            shard = self._open.get(s) or self._open.setdefault(s, _Shard(self.shards[s]))
            self._groups[key] = shard.read_group(g, [self.column])[self.column]
            while len(self._groups) > 2:
                self._groups.popitem(last=False)
        cell = self._groups[key][r]
        data, path = (cell.get("bytes"), cell.get("path")) if isinstance(cell, dict) else (
            (cell, None) if self.kind == "bytes" else (None, cell))
        if data:
            return data
        if not path:
            raise ValueError(f"{self.describe(index)}: no image bytes and no path")
        rel = inside(self.root, path, self.describe(index), what="image path")
        return (self.root / rel).read_bytes()


def read_parquet(root: Path, options: DataOptions | None = None) -> Annotations:
    options = options or DataOptions()
    shard_paths = find_shards(root)
    if not shard_paths:
        raise FileNotFoundError(f"{root}: no .parquet or .arrow files")
    base = root if root.is_dir() else root.parent
    splits = [shard_split(p, root) if root.is_dir() else None for p in shard_paths]
    present = {s for s in splits if s is not None}
    carve = DataOptions(val_fraction=options.val_fraction if 1 not in present else 0.0,
                        test_fraction=options.test_fraction if 2 not in present else 0.0,
                        split_seed=options.split_seed)
    image_col = kind = caption_col = None
    ids, hash_keys, texts, rows, parts, refs, wheres, path_only = [], [], [], [], [], [], [], []
    rows_in_split: dict[int | None, int] = {}
    has_attributes = False
    for s, (path, split) in enumerate(zip(shard_paths, splits)):
        shard = _Shard(path)
        columns = list(shard.schema.names)
        col, k = _image_column(shard.schema, path)
        if image_col is None:
            image_col, kind = col, k
            attr_cols = [c for c in columns if c in CELEBA_ATTRIBUTES]
            has_attributes = bool(attr_cols) or "attributes" in columns
            caption_col = pick_caption_column(columns, options.caption_column, str(path), has_attributes)
        elif (col, k) != (image_col, kind):
            raise ValueError(f"{path}: image column {col!r} ({k}) differs from {shard_paths[0]}'s "
                             f"{image_col!r} ({kind})")
        missing = [c for c in [caption_col, *attr_cols] if c is not None and c not in columns]
        if missing:
            raise ValueError(f"{path}: no column(s) {missing}; the columns are {columns}")
        has_path = kind == "path" or (kind == "struct" and any(f.name == "path" for f in shard.schema.field(col).type))
        want = [c for c in [caption_col, *attr_cols, "attributes" if "attributes" in columns else None] if c]
        image_path_col = (col if kind == "path" else f"{col}.path") if has_path else None
        row0 = 0
        for g, n in enumerate(shard.group_rows):
            data = shard.read_group(g, want + ([image_path_col] if image_path_col else []))
            for r in range(n):
                row = row0 + r
                where = f"{path}: row {row}"
                image_path = data[image_path_col][r] if image_path_col else None
                if caption_col is not None:
                    if data[caption_col][r] is None:
                        raise ValueError(f"{where}: no caption in column {caption_col!r}")
                    texts.append(caption_list(data[caption_col][r], where, caption_col))
                rows.append(attributes_row({c: data[c][r] for c in want}, attr_cols, where))
                name = f"{path.relative_to(base)}:{row}"
                ids.append(name)
                wheres.append(where)
                refs.append((s, g, r))
                if kind == "path":
                    path_only.append((inside(base, image_path or "", where, what="image path"), where))
                # The hash key: the image's own path where rows carry one, else its row number
                # in its split, which adding rows at the end does not change.
                hash_keys.append(image_path or f"{split}:{rows_in_split.get(split, 0)}")
                rows_in_split[split] = rows_in_split.get(split, 0) + 1
                parts.append(split if split not in (None, 0) else None)
            row0 += n
    if path_only:
        check_duplicates([p for p, _ in path_only], [w for _, w in path_only])
    partition = np.asarray([p if p is not None else split_of(key, carve) for p, key in zip(parts, hash_keys)],
                           dtype=np.int8)
    named = ", ".join(("train", "val", "test")[k] for k in sorted(present))
    how = (f"shard names ({named})" if present else "none in the files") + \
        ("" if {1, 2} <= present else f"; carved out by hash (val {carve.val_fraction}, "
                                      f"test {carve.test_fraction}, seed {options.split_seed})")
    if not ids:
        raise ValueError(f"{root}: the parquet files hold no rows")
    images = ParquetImages(base, shard_paths, image_col, kind, np.asarray(refs, dtype=np.int64), ids)
    return Annotations(base, "parquet", base, ids, np.stack(rows).astype(np.float32), partition,
                       has_attributes, texts=texts if caption_col is not None else None, images=images,
                       files=list(shard_paths), split_source=how,
                       caption_file=shard_paths[0] if len(shard_paths) == 1 else base)
