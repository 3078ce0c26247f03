"""What a dataset is, as hashes: which stages of `t2i train all` must retrain after it changed.

- `images`: every image's name and split. The VAE reads nothing else.
- `labels`: the attribute labels (the judge reads these and the images).
- `files`: the *content* of every annotation file the reader reads (captions.json,
  metadata.jsonl/csv, parquet/arrow files, attribute and partition files). Editing a caption
  changes it; touching a file (a new mtime, same bytes) does not.

Hashing a big parquet file reads it once: a file's hash is cached by (size, mtime), so an
untouched file is not read again and a touched one is re-read and found unchanged.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from t2i.data.celeba import read_annotations
from t2i.data.options import DataOptions


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def files_fingerprint(files: list[Path], cache: dict | None = None) -> str:
    """sha256 over the files' names and contents; `cache` ({path: {size, mtime_ns, sha256}})
    is read and updated in place."""
    cache = {} if cache is None else cache
    h = hashlib.sha256()
    for path in sorted(set(files)):
        st = path.stat()
        key = str(path.resolve())
        entry = cache.get(key)
        if not entry or entry.get("size") != st.st_size or entry.get("mtime_ns") != st.st_mtime_ns:
            entry = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": file_sha256(path)}
            cache[key] = entry
        h.update(f"{path.name}\0{entry['sha256']}\n".encode())
    return h.hexdigest()[:16]


def dataset_fingerprints(data: str | Path, options: DataOptions | None = None,
                         cache: dict | None = None) -> dict[str, str]:
    """{"images", "labels", "files"} hashes of the dataset at `data` read with `options`.
    `cache` keeps the per-file content hashes between runs (see files_fingerprint)."""
    ann = read_annotations(data, options)
    files = list(ann.files)
    captions = ann.root / "captions.json"  # FaceDataset's default captions file
    if captions.is_file():
        files.append(captions)
    images = hashlib.sha256()
    for name, split in zip(ann.image_ids, ann.partition.tolist()):
        images.update(f"{split} {name}\n".encode())
    labels = hashlib.sha256(bytes([ann.has_attributes]) + ann.attributes.tobytes())
    return {"images": images.hexdigest()[:16], "labels": labels.hexdigest()[:16],
            "files": files_fingerprint(files, cache)}
