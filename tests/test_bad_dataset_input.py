"""Bad CelebA-layout and image-folder input: each error names the file and, where there is
one, the line, as docs/data.md promises."""

from __future__ import annotations

import json
import shutil

import pytest

from t2i.data.celeba import FaceDataset
from test_celeba import N, make_imagefolder, make_kaggle, make_official


def test_image_name_error_names_its_line_in_the_kaggle_csv(synth_dir, tmp_path):
    root = make_kaggle(synth_dir, tmp_path / "k", quirks=False)
    csv = root / "list_attr_celeba.csv"
    lines = csv.read_text().splitlines()
    lines[5] = "sub/" + lines[5]
    csv.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"list_attr_celeba.csv:6: image name 'sub/\d+.jpg' must be a plain file"):
        FaceDataset(root)


@pytest.mark.parametrize("name", ["list_attr_celeba.txt", "list_eval_partition.txt"])
def test_non_utf8_annotation_file(synth_dir, tmp_path, name):
    root = make_official(synth_dir, tmp_path / "latin1", quirks=False)
    path = root / name
    path.write_bytes(path.read_bytes().replace(b"000003.jpg", "000003_caf\u00e9.jpg".encode("latin-1")))
    with pytest.raises(ValueError, match=rf"{name}: not UTF-8 text"):
        FaceDataset(root)


@pytest.mark.parametrize("edit,match", [
    (lambda h: h.replace("image_id", "filename", 1), r"list_attr_celeba.csv:1: expected the first column to be 'image_id', got 'filename'"),
    (lambda h: h.replace("Smiling", "Grinning"), r"list_attr_celeba.csv:1: expected the 40 CelebA attribute names.*unknown \['Grinning'\].*missing \['Smiling'\]"),
    (lambda h: h.rsplit(",", 1)[0], r"list_attr_celeba.csv:1: expected the 40 CelebA attribute names, got 39"),
])
def test_kaggle_attribute_header_errors(synth_dir, tmp_path, edit, match):
    root = make_kaggle(synth_dir, tmp_path / "k", quirks=False)
    csv = root / "list_attr_celeba.csv"
    header, *rows = csv.read_text().splitlines()
    csv.write_text("\n".join([edit(header), *rows]) + "\n")
    with pytest.raises(ValueError, match=match):
        FaceDataset(root)


def test_kaggle_empty_attribute_file_and_bad_partition_header(synth_dir, tmp_path):
    root = make_kaggle(synth_dir, tmp_path / "k", quirks=False)
    part = root / "list_eval_partition.csv"
    part.write_text(part.read_text().replace("image_id,partition", "image,split", 1))
    with pytest.raises(ValueError, match=r"list_eval_partition.csv:1: expected the header 'image_id,partition'"):
        FaceDataset(root)
    (root / "list_attr_celeba.csv").write_text("")
    with pytest.raises(ValueError, match=r"list_attr_celeba.csv: empty file"):
        FaceDataset(root)


def test_images_without_a_partition_row(synth_dir, tmp_path):
    root = make_official(synth_dir, tmp_path / "parts", quirks=False)
    part = root / "list_eval_partition.txt"
    lines = part.read_text().splitlines()
    dropped = [ln.split()[0] for ln in lines[4:7]]
    part.write_text("\n".join(lines[:4] + lines[7:]) + "\n")
    with pytest.raises(ValueError, match=rf"list_eval_partition.txt: no partition for 3 image\(s\), e.g. '{dropped[0]}'"):
        FaceDataset(root)


def test_metadata_with_neither_text_nor_caption(synth_dir, tmp_path):
    root = make_imagefolder(synth_dir, tmp_path / "folder")
    meta = root / "metadata.jsonl"
    records = [json.loads(ln) for ln in meta.read_text().splitlines()]
    meta.write_text("".join(json.dumps({"file_name": r["file_name"], "words": r["text"]}) + "\n" for r in records))
    with pytest.raises(ValueError, match=r"metadata.jsonl:1: no caption column: expected 'text' or 'caption'.*'words'"):
        FaceDataset(root)


def test_a_dataset_with_no_images(synth_dir, tmp_path):
    root = make_official(synth_dir, tmp_path / "none", quirks=False)
    attr = root / "list_attr_celeba.txt"
    attr.write_text("0\n" + attr.read_text().splitlines()[1] + "\n")
    (root / "list_eval_partition.txt").write_text("")
    with pytest.raises(ValueError, match=r"list_attr_celeba.txt: no images listed"):
        FaceDataset(root)
    folder = make_imagefolder(synth_dir, tmp_path / "folder")
    (folder / "metadata.jsonl").write_text("\n")
    with pytest.raises(ValueError, match=r"metadata.jsonl: no images listed"):
        FaceDataset(folder)
    shutil.rmtree(folder / "imgs")  # listed images that are not there at all
    (folder / "metadata.jsonl").write_text(
        "".join(json.dumps({"file_name": f"imgs/{k:06d}.jpg", "text": "a face"}) + "\n" for k in range(1, N + 1)))
    with pytest.raises(FileNotFoundError, match="none of the first listed images exist"):
        FaceDataset(folder, split="all")
