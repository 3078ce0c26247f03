"""Caption-only datasets in the layouts people bring (Hugging Face imagefolder with
metadata.jsonl or metadata.csv, parquet shards), made from the synth_dir fixture's images and
captions, with no attribute columns. Shared by the data-reader and end-to-end tests."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

SPLIT_FOLDERS = {"0": "train", "1": "validation", "2": "test"}


def synth_records(synth_dir: Path, n: int | None = None) -> list[dict]:
    """[{"file_name", "text" (list of captions), "split" ("0"/"1"/"2")}] of synth_dir's images."""
    captions = json.loads((synth_dir / "captions.json").read_text())
    parts = dict(ln.split() for ln in (synth_dir / "list_eval_partition.txt").read_text().splitlines())
    names = sorted(captions)[:n]
    return [{"file_name": name, "text": captions[name], "split": parts[name]} for name in names]


def make_imagefolder(synth_dir: Path, root: Path, n: int | None = None, fmt: str = "jsonl",
                     splits: bool = False, nested: str = "photos/a") -> Path:
    """An imagefolder at `root`: images under `nested/` (or under split folders train/,
    validation/, test/ when `splits`), one metadata.jsonl or metadata.csv per folder."""
    groups: dict[str, list[dict]] = {}
    for rec in synth_records(synth_dir, n):
        folder = SPLIT_FOLDERS[rec["split"]] if splits else ""
        groups.setdefault(folder, []).append(rec)
    for folder, recs in groups.items():
        base = root / folder
        (base / nested).mkdir(parents=True, exist_ok=True)
        for rec in recs:
            shutil.copy(synth_dir / "img_align_celeba" / rec["file_name"], base / nested / rec["file_name"])
        rows = [{"file_name": f"{nested}/{r['file_name']}", "text": r["text"]} for r in recs]
        if fmt == "jsonl":
            (base / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        else:  # one caption per cell, the first (complete) one
            buf = io.StringIO()
            w = csv.writer(buf, lineterminator="\n")
            w.writerow(["file_name", "text"])
            w.writerows([r["file_name"], r["text"][0]] for r in rows)
            (base / "metadata.csv").write_text(buf.getvalue())
    return root


def make_parquet(synth_dir: Path, root: Path, n: int | None = None, shards: int = 2,
                 row_group_size: int = 8, split_names: bool = False) -> Path:
    """`datasets`-style parquet shards under root/data/: an `image` column of {"bytes", "path"}
    structs and a `text` column of caption lists. With `split_names`, one shard set per split
    (`train-00000-of-00002.parquet`, `validation-...`, `test-...`); else `train-*` only, holding
    every image (so the carve-out splits them)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    records = synth_records(synth_dir, n)
    groups: dict[str, list[dict]] = {}
    for rec in records:
        groups.setdefault(SPLIT_FOLDERS[rec["split"]] if split_names else "train", []).append(rec)
    (root / "data").mkdir(parents=True, exist_ok=True)
    for split, recs in groups.items():
        k = min(shards, len(recs))
        for s in range(k):
            part = recs[s::k]
            table = pa.table({
                "image": [{"bytes": (synth_dir / "img_align_celeba" / r["file_name"]).read_bytes(),
                           "path": r["file_name"]} for r in part],
                "text": [r["text"] for r in part],
            })
            pq.write_table(table, root / "data" / f"{split}-{s:05d}-of-{k:05d}.parquet",
                           row_group_size=row_group_size)
    return root
