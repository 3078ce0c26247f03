"""The datasets people already have: Hugging Face imagefolder (metadata.jsonl / metadata.csv,
split folders, nested images, optional attribute columns), parquet and arrow files, the
hash carve-out for datasets without a split, and bad input named with file and line/row."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from caption_datasets import make_imagefolder, make_parquet, synth_records
from t2i.data.celeba import FaceDataset, collate_skip_none, read_annotations
from t2i.data.options import DataOptions, split_of

pa = pytest.importorskip("pyarrow")
import pyarrow.parquet as pq  # noqa: E402

N = 24


def _counts(root, options=None) -> list[int]:
    return [len(FaceDataset(root, split=s, options=options)) for s in ("train", "val", "test")]


# ----------------------------------------------------------------------------- imagefolder


def test_imagefolder_jsonl_caption_only(synth_dir, tmp_path):
    root = make_imagefolder(synth_dir, tmp_path / "folder", n=N)
    recs = synth_records(synth_dir, N)
    ds = FaceDataset(root, split="all")
    assert ds.layout == "imagefolder" and len(ds) == N and not ds.has_attributes
    assert ds.image_ids[0] == f"photos/a/{recs[0]['file_name']}"  # nested folders
    assert ds.captions[5] == recs[5]["text"]  # a list of captions per image
    assert ds[5]["caption"] in recs[5]["text"] and ds[5]["image"].shape == (3, 64, 64)
    assert not ds.attributes.any() and ds.summary()["has_attributes"] is False
    train, val, test = _counts(root)
    assert train + val + test == N and train > val + test
    assert "carved out" in ds.split_source


def test_imagefolder_csv_with_split_folders(synth_dir, tmp_path):
    root = make_imagefolder(synth_dir, tmp_path / "folder", n=N, fmt="csv", splits=True)
    assert sorted(p.name for p in root.iterdir()) == ["test", "train", "validation"]
    expected = [sum(r["split"] == k for r in synth_records(synth_dir, N)) for k in "012"]
    assert _counts(root) == expected
    val = FaceDataset(root, split="val")
    assert all(i.startswith("validation/photos/a/") for i in val.image_ids)
    first = next(r for r in synth_records(synth_dir, N) if r["split"] == "1")
    assert val.captions[0] == [first["text"][0]]
    # `val/` is another name `datasets` accepts for the validation folder
    (root / "validation").rename(root / "val")
    assert _counts(root) == expected


def test_split_folders_without_test_carve_it_out_of_train(synth_dir, tmp_path):
    root = make_imagefolder(synth_dir, tmp_path / "folder", n=N, splits=True)
    shutil.rmtree(root / "test")
    n_train, n_val = _counts(root, DataOptions(test_fraction=0.0))[:2]
    train, val, test = _counts(root, DataOptions(test_fraction=0.3))
    assert val == n_val and test > 0 and train + test == n_train


def test_csv_cells_may_hold_a_json_list_of_captions(synth_dir, tmp_path):
    root = make_imagefolder(synth_dir, tmp_path / "folder", n=4, fmt="csv")
    lines = (root / "metadata.csv").read_text().splitlines()
    name = lines[1].split(",")[0]
    lines[1] = f'{name},"[""a red face"", ""a face, smiling""]"'
    (root / "metadata.csv").write_text("\n".join(lines) + "\n")
    assert FaceDataset(root, split="all").captions[0] == ["a red face", "a face, smiling"]


def test_attribute_columns_are_optional_labels(synth_dir, tmp_path):
    root = make_imagefolder(synth_dir, tmp_path / "folder", n=6)
    meta = root / "metadata.jsonl"
    recs = [json.loads(ln) for ln in meta.read_text().splitlines()]
    for k, rec in enumerate(recs):
        rec.update(Smiling=1 if k % 2 else -1, Eyeglasses=bool(k % 3 == 0), source="camera")
    meta.write_text("".join(json.dumps(r) + "\n" for r in recs))
    ds = FaceDataset(root, split="all")
    from t2i.attributes import ATTRIBUTE_INDEX

    assert ds.has_attributes
    assert ds.attributes[:, ATTRIBUTE_INDEX["Smiling"]].tolist() == [0, 1, 0, 1, 0, 1]
    assert ds.attributes[:, ATTRIBUTE_INDEX["Eyeglasses"]].tolist() == [1, 0, 0, 1, 0, 0]
    assert ds.captions[0] == recs[0]["text"]  # captions still come from the text column


def test_caption_column_by_name(synth_dir, tmp_path):
    root = make_imagefolder(synth_dir, tmp_path / "folder", n=4)
    meta = root / "metadata.jsonl"
    recs = [json.loads(ln) for ln in meta.read_text().splitlines()]
    meta.write_text("".join(json.dumps({"file_name": r["file_name"], "description": r["text"][0],
                                        "label": 3}) + "\n" for r in recs))
    with pytest.raises(ValueError, match=r"metadata.jsonl:1: no caption column: .*\['file_name', 'description', 'label'\]"):
        FaceDataset(root, split="all")
    ds = FaceDataset(root, split="all", options=DataOptions(caption_column="description"))
    assert ds.captions[2] == [recs[2]["text"][0]]
    with pytest.raises(ValueError, match=r"no caption column 'caption_en'; the columns are"):
        FaceDataset(root, split="all", options=DataOptions(caption_column="caption_en"))


# ----------------------------------------------------------------------------- carve-out


def test_carve_out_is_a_stable_hash_of_the_file_name():
    names = [f"img_{i:05d}.jpg" for i in range(20000)]
    opts = DataOptions(val_fraction=0.1, test_fraction=0.2, split_seed=3)
    splits = np.array([split_of(n, opts) for n in names])
    shares = np.bincount(splits, minlength=3) / len(names)
    assert abs(shares[1] - 0.1) < 0.01 and abs(shares[2] - 0.2) < 0.01
    # the same name lands in the same split whatever else is in the list, and another seed
    # draws another split
    assert [split_of(n, opts) for n in reversed(names[:500])] == splits[:500][::-1].tolist()
    other = np.array([split_of(n, DataOptions(val_fraction=0.1, test_fraction=0.2, split_seed=4)) for n in names])
    assert (other != splits).mean() > 0.2


def test_adding_images_keeps_every_earlier_split(synth_dir, tmp_path):
    root = make_imagefolder(synth_dir, tmp_path / "folder", n=N)
    before = {s: set(FaceDataset(root, split=s).image_ids) for s in ("train", "val", "test")}
    make_imagefolder(synth_dir, tmp_path / "more", n=N + 30)  # same images plus 30 more, appended
    after = {s: set(FaceDataset(tmp_path / "more", split=s).image_ids) for s in ("train", "val", "test")}
    for s in before:
        assert before[s] <= after[s]
    assert sum(map(len, after.values())) == N + 30


@pytest.mark.parametrize("bad", [dict(val_fraction=1.0), dict(test_fraction=-0.1),
                                 dict(val_fraction=0.5, test_fraction=0.5)])
def test_bad_fractions_are_refused(bad):
    with pytest.raises(ValueError, match="data\\.(val|test)_fraction"):
        DataOptions(**bad)


# ----------------------------------------------------------------------------- parquet


def test_parquet_shards_with_split_names(synth_dir, tmp_path):
    root = make_parquet(synth_dir, tmp_path / "pq", n=N, split_names=True, row_group_size=3)
    expected = [sum(r["split"] == k for r in synth_records(synth_dir, N)) for k in "012"]
    assert _counts(root) == expected
    ds = FaceDataset(root, split="all")
    assert ds.layout == "parquet" and not ds.has_attributes
    # the same pixels as the image files they were made from
    folder = FaceDataset(make_imagefolder(synth_dir, tmp_path / "folder", n=N), split="all")
    by_name = {Path(i).name: k for k, i in enumerate(folder.image_ids)}
    train = FaceDataset(root, split="train")
    recs = [r for r in synth_records(synth_dir, N) if r["split"] == "0"]
    shard0 = recs[0::2]  # make_parquet deals rows round-robin over 2 shards
    assert train.captions[1] == shard0[1]["text"]
    assert np.array_equal(train[1]["image"].numpy(), folder[by_name[shard0[1]["file_name"]]]["image"].numpy())


def test_parquet_is_read_by_row_group_not_whole(synth_dir, tmp_path, monkeypatch):
    root = make_parquet(synth_dir, tmp_path / "pq", n=N, shards=1, row_group_size=4)
    assert pq.ParquetFile(next((root / "data").glob("*.parquet"))).num_row_groups == N // 4

    def refuse(*a, **k):
        raise AssertionError("the whole file was read")

    monkeypatch.setattr(pq.ParquetFile, "read", refuse)
    monkeypatch.setattr(pq, "read_table", refuse)
    seen = []
    real = pq.ParquetFile.read_row_group
    monkeypatch.setattr(pq.ParquetFile, "read_row_group", lambda self, g, columns=None, **k: (
        seen.append((g, tuple(columns or ()))), real(self, g, columns=columns, **k))[1])
    ds = FaceDataset(root, split="all", preload=True)
    assert ds.pixels is not None and ds.skipped == 0
    # one pass over the caption column, then one over the image column: each group read twice
    assert sorted(g for g, _ in seen) == sorted(list(range(N // 4)) * 2)
    assert {c for _, c in seen} == {("text", "image.path"), ("image",)}
    carved = _counts(root)
    assert sum(carved) == N and carved[0] > 0


def test_parquet_single_file_with_paths(synth_dir, tmp_path):
    recs = synth_records(synth_dir, 6)
    root = tmp_path / "pq"
    (root / "imgs").mkdir(parents=True)
    for r in recs:
        shutil.copy(synth_dir / "img_align_celeba" / r["file_name"], root / "imgs" / r["file_name"])
    table = pa.table({"image": [f"imgs/{r['file_name']}" for r in recs],
                      "caption": [r["text"][0] for r in recs]})
    pq.write_table(table, root / "faces.parquet")
    ds = FaceDataset(root / "faces.parquet", split="all")  # a single file works too
    assert len(ds) == 6 and ds.captions[2] == [recs[2]["text"][0]]
    assert ds[2]["image"].shape == (3, 64, 64) and ds.skipped == 0


def test_save_to_disk_arrow_files(synth_dir, tmp_path):
    recs = synth_records(synth_dir, 5)
    table = pa.table({"image": [{"bytes": (synth_dir / "img_align_celeba" / r["file_name"]).read_bytes(),
                                 "path": None} for r in recs],
                      "text": [r["text"] for r in recs]})
    (tmp_path / "ds" / "train").mkdir(parents=True)
    with pa.ipc.new_stream(tmp_path / "ds" / "train" / "data-00000-of-00001.arrow", table.schema) as w:
        for batch in table.to_batches(max_chunksize=2):
            w.write_batch(batch)
    ds = FaceDataset(tmp_path / "ds", split="all")
    assert ds.layout == "parquet" and len(ds) == 5 and ds.captions[4] == recs[4]["text"]
    assert ds[4]["image"].shape == (3, 64, 64)


# ----------------------------------------------------------------------------- bad input


def _rewrite(meta: Path, k: int, **changes) -> None:
    recs = [json.loads(ln) for ln in meta.read_text().splitlines()]
    recs[k].update(changes)
    recs[k] = {key: v for key, v in recs[k].items() if v is not None}
    meta.write_text("".join(json.dumps(r) + "\n" for r in recs))


def test_missing_caption_column_names_the_columns(synth_dir, tmp_path):
    root = make_imagefolder(synth_dir, tmp_path / "folder", n=4, fmt="csv")
    meta = root / "metadata.csv"
    meta.write_text(meta.read_text().replace("file_name,text", "file_name,words"))
    with pytest.raises(ValueError, match=r"metadata.csv:1: no caption column.*\['file_name', 'words'\]"):
        FaceDataset(root, split="all")
    root = make_imagefolder(synth_dir, tmp_path / "folder2", n=4)
    _rewrite(root / "metadata.jsonl", 2, text=None)
    with pytest.raises(ValueError, match=r"metadata.jsonl:3: no 'text' caption; this record has \['file_name'\]"):
        FaceDataset(root, split="all")
    pq_root = tmp_path / "pq"
    pq_root.mkdir()
    pq.write_table(pa.table({"image": [b"x"], "title": ["t"]}), pq_root / "train.parquet")
    with pytest.raises(ValueError, match=r"train.parquet: no caption column.*\['image', 'title'\]"):
        FaceDataset(pq_root, split="all")


def test_empty_caption_names_the_line_or_row(synth_dir, tmp_path):
    root = make_imagefolder(synth_dir, tmp_path / "folder", n=4)
    _rewrite(root / "metadata.jsonl", 1, text="   ")
    with pytest.raises(ValueError, match=r"metadata.jsonl:2: empty caption"):
        FaceDataset(root, split="all")
    root = make_imagefolder(synth_dir, tmp_path / "csv", n=4, fmt="csv")
    lines = (root / "metadata.csv").read_text().splitlines()
    lines[3] = lines[3].split(",")[0] + ","
    (root / "metadata.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"metadata.csv:4: empty caption"):
        FaceDataset(root, split="all")
    pq_root = tmp_path / "pq"
    pq_root.mkdir()
    pq.write_table(pa.table({"image": [b"x", b"y", b"z"], "text": ["a", "b", ""]}), pq_root / "train.parquet")
    with pytest.raises(ValueError, match=r"train.parquet: row 2: empty caption"):
        FaceDataset(pq_root, split="all")


def test_image_path_escaping_the_root(synth_dir, tmp_path):
    root = make_imagefolder(synth_dir, tmp_path / "folder", n=4, fmt="csv", splits=True)
    meta = next(root.glob("*/metadata.csv"))
    lines = meta.read_text().splitlines()
    lines[1] = "../../outside.jpg,a caption"
    meta.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"metadata.csv:2: file_name '../../outside.jpg' points outside"):
        FaceDataset(root, split="all")
    pq_root = tmp_path / "pq"
    pq_root.mkdir()
    pq.write_table(pa.table({"image": ["ok.jpg", "/etc/passwd"], "text": ["a", "b"]}), pq_root / "x.parquet")
    with pytest.raises(ValueError, match=r"x.parquet: row 1: image path '/etc/passwd' must be a relative path"):
        FaceDataset(pq_root, split="all")


def test_duplicate_file_names(synth_dir, tmp_path):
    root = make_imagefolder(synth_dir, tmp_path / "folder", n=5)
    first = json.loads((root / "metadata.jsonl").read_text().splitlines()[1])["file_name"]
    _rewrite(root / "metadata.jsonl", 4, file_name=first)
    with pytest.raises(ValueError, match=rf"metadata.jsonl:5: duplicate file name '{first}' \(first listed at .*metadata.jsonl:2\)"):
        FaceDataset(root, split="all")
    pq_root = tmp_path / "pq"
    pq_root.mkdir()
    pq.write_table(pa.table({"image": ["a.jpg", "b.jpg", "a.jpg"], "text": ["a", "b", "c"]}), pq_root / "x.parquet")
    with pytest.raises(ValueError, match=r"x.parquet: row 2: duplicate file name 'a.jpg'"):
        FaceDataset(pq_root, split="all")


def test_undecodable_images_are_skipped_and_counted(synth_dir, tmp_path):
    root = make_imagefolder(synth_dir, tmp_path / "folder", n=6)
    ds = FaceDataset(root, split="all")
    (root / ds.image_ids[1]).write_bytes(b"not an image")
    (root / ds.image_ids[4]).write_bytes(b"")
    for preload in (False, True):
        ds = FaceDataset(root, split="all", preload=preload)
        with pytest.warns(UserWarning, match="skipping unreadable image"):
            batch = collate_skip_none([ds[i] for i in range(len(ds))])
        assert len(batch["caption"]) == 4 and ds.skipped == 2
    # parquet: bad bytes in one row
    recs = synth_records(synth_dir, 4)
    cells = [{"bytes": (synth_dir / "img_align_celeba" / r["file_name"]).read_bytes(), "path": r["file_name"]}
             for r in recs]
    cells[2]["bytes"] = b"\x89PNG broken"
    pq_root = tmp_path / "pq"
    pq_root.mkdir()
    pq.write_table(pa.table({"image": cells, "text": [r["text"] for r in recs]}), pq_root / "train.parquet")
    ds = FaceDataset(pq_root, split="all", preload=True)
    with pytest.warns(UserWarning, match=r"train.parquet row 2"):
        assert ds[2] is None
    assert ds[1] is not None and ds.skipped == 1


def test_metadata_at_the_top_and_in_split_folders_is_ambiguous(synth_dir, tmp_path):
    root = make_imagefolder(synth_dir, tmp_path / "folder", n=N, splits=True)
    shutil.copy(root / "train" / "metadata.jsonl", root / "metadata.jsonl")
    with pytest.raises(ValueError, match="keep one arrangement"):
        read_annotations(root)
    (root / "metadata.jsonl").unlink()
    (root / "train" / "metadata.csv").write_text("file_name,text\n")
    with pytest.raises(ValueError, match="both metadata.jsonl and metadata.csv"):
        read_annotations(root)
