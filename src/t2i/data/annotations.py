"""What every dataset reader returns (`Annotations`), and the checks they share: text files
read with their quirks removed, paths that must stay inside the dataset root, and the
CelebA attribute columns a caption dataset may carry beside its captions."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from t2i.attributes import ATTRIBUTE_INDEX, NUM_ATTRIBUTES


class ImageBytes(Protocol):
    """Images stored inside the annotation files (parquet, arrow) rather than as files."""

    def read(self, index: int) -> bytes: ...

    def describe(self, index: int) -> str: ...


@dataclass
class Annotations:
    """Everything read from a dataset's annotation files (no image is decoded)."""

    root: Path  # the directory holding the annotation files
    layout: str
    image_dir: Path
    image_ids: list[str]  # file names relative to image_dir (or row names when `images` is set)
    # (N, 40) float32 in {0, 1}. A caption-only dataset has no labels: all zeros, and
    # `has_attributes` False; code that needs labels (the judge, attribute eval) checks the flag.
    attributes: np.ndarray
    partition: np.ndarray | None  # (N,) int8 0/1/2, or None when the layout has no splits
    has_attributes: bool
    texts: list[list[str]] | None = None  # captions from the annotation files, one list per image
    images: ImageBytes | None = None  # None: images are files under image_dir
    files: list[Path] = field(default_factory=list)  # the annotation files read (the data's identity)
    split_source: str = "split file"  # where the partition came from, for summaries
    caption_file: Path | None = None  # the file `texts` came from


def read_lines(path: Path) -> list[str]:
    """Lines of a text file with BOM, CRLF and trailing whitespace removed."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e})") from None
    return [ln.rstrip() for ln in text.splitlines()]


def inside(root: Path, rel: str, where: str, what: str = "file_name") -> str:
    """Reject file names that escape `root` (../, absolute paths, symlinks pointing out)."""
    if not rel or os.path.isabs(rel) or rel.startswith(("/", "\\")) or ":" in rel.split("/")[0]:
        raise ValueError(f"{where}: {what} {rel!r} must be a relative path inside {root}")
    real_root = root.resolve()
    target = (root / rel).resolve()
    if target != real_root and real_root not in target.parents:
        raise ValueError(f"{where}: {what} {rel!r} points outside the dataset root {root} (to {target})")
    return rel


def attribute_value(value, where: str, name: str) -> float:
    """One attribute cell: -1/0/1, booleans, or their strings (CSV cells are text)."""
    if isinstance(value, str):
        value = value.strip().lower()
        table = {"1": 1.0, "+1": 1.0, "true": 1.0, "-1": 0.0, "0": 0.0, "false": 0.0}
        if value in table:
            return table[value]
    elif isinstance(value, (bool, int, float, np.integer, np.floating)) and float(value) in (-1.0, 0.0, 1.0):
        return float(float(value) > 0)
    raise ValueError(f"{where}: attribute {name!r} value {value!r} is not -1, 0 or 1")


def attributes_row(record: dict, columns: list[str], where: str) -> np.ndarray:
    """(40,) float32 from a record's CelebA attribute columns (`columns`, a subset of the 40
    names) and/or its `attributes` field (a {name: value} dict or a list of 40 values)."""
    row = np.zeros(NUM_ATTRIBUTES, dtype=np.float32)
    for name in columns:
        if record.get(name) is not None:
            row[ATTRIBUTE_INDEX[name]] = attribute_value(record[name], where, name)
    attrs = record.get("attributes")
    if isinstance(attrs, dict):
        for k, v in attrs.items():
            if k not in ATTRIBUTE_INDEX:
                raise ValueError(f"{where}: unknown attribute {k!r}")
            row[ATTRIBUTE_INDEX[k]] = attribute_value(v, where, k)
    elif isinstance(attrs, list) and len(attrs) == NUM_ATTRIBUTES:
        row[:] = [attribute_value(v, where, f"attributes[{i}]") for i, v in enumerate(attrs)]
    elif attrs is not None:
        raise ValueError(f"{where}: 'attributes' must be a dict or a list of {NUM_ATTRIBUTES}")
    return row


def caption_list(value, where: str, column: str) -> list[str]:
    """A caption cell as a non-empty list of non-empty captions (a string or a list of strings)."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(t, str) for t in value):
        raise ValueError(f"{where}: {column!r} must be a string or a list of strings, got {type(value).__name__}")
    texts = [t.strip() for t in value if t.strip()]
    if not texts:
        raise ValueError(f"{where}: empty caption in column {column!r}")
    return texts


def pick_caption_column(columns: list[str], requested: str, where: str, has_attributes: bool) -> str | None:
    """The caption column among `columns`: `requested`, else `text`, else `caption`. None when
    there is none and attributes can make captions instead; otherwise a ValueError naming the
    columns that do exist."""
    if requested:
        if requested not in columns:
            raise ValueError(f"{where}: no caption column {requested!r}; the columns are {columns}")
        return requested
    for name in ("text", "caption"):
        if name in columns:
            return name
    if has_attributes:
        return None
    raise ValueError(f"{where}: no caption column: expected 'text' or 'caption' (or name one with "
                     f"--caption-column); the columns are {columns}")


def check_duplicates(names: list[str], wheres: list[str]) -> None:
    """A file listed twice is a mistake (two captions lists for one image): name both places."""
    first: dict[str, str] = {}
    for name, where in zip(names, wheres):
        if name in first:
            raise ValueError(f"{where}: duplicate file name {name!r} (first listed at {first[name]})")
        first[name] = where
