"""Your own captioned images, end to end: SynthFaces images with captions only (no attribute
columns) as an imagefolder (metadata.jsonl; metadata.csv with split folders) and as parquet
shards; `t2i train all --preset tiny` trains VAE -> CLIP -> latents -> UNet on them, skips
the judge with one line, and `t2i eval` reports CLIP score, R-precision and FD on CLIP
features with controls that move the right way.

Each set is trained fully (its CLIP twice the tiny width and 300 steps, so that the real-image
R-precision has something to show); the three together take about two minutes of CPU.
"""

import json

import pytest

from caption_datasets import make_imagefolder, make_parquet
from t2i.cli import main

N_IMAGES = 300  # a carved-out test split of ~120 images: 99 distractors for R-precision
SPLIT = ["--val-fraction", "0.1", "--test-fraction", "0.4"]
# The tiny CLIP (20 steps, 32-wide) learns nothing an R-precision ceiling can show. Twice as
# wide and 300 steps (about 35 s of CPU), the own caption of a real test image ranks about 32nd
# of 100 on average (300 steps at the tiny width: 41st; chance 50.5).
# The eval scores every test image (R-precision over ~120, not the preset's 16).
RECIPE = ["--set", "clip.loop.steps=300", "--set", "clip.model.embed_dim=64", "--set", "clip.model.text_width=64",
          "--set", "clip.model.image_channels=[16,32]", "--set", "eval.max_real=200", "--set", "eval.clip_images=200"]


@pytest.fixture(scope="module")
def synth_many(tmp_path_factory):
    from t2i.data.synthfaces import generate

    out = tmp_path_factory.mktemp("caption_only") / "synth"
    generate(out, N_IMAGES, seed=1, workers=1)
    return out


def first_captions_only(root):
    """One caption per image (the complete one), as most captioned sets have."""
    path = root / "metadata.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    path.write_text("".join(json.dumps({"file_name": r["file_name"], "text": r["text"][0]}) + "\n" for r in rows))
    return root


@pytest.fixture(scope="module")
def datasets(synth_many, tmp_path_factory):
    root = tmp_path_factory.mktemp("caption_sets")
    return {
        "jsonl": first_captions_only(make_imagefolder(synth_many, root / "jsonl", fmt="jsonl")),
        "csv": make_imagefolder(synth_many, root / "csv", fmt="csv", splits=True),
        "parquet": make_parquet(synth_many, root / "parquet"),
    }


def train_all(data, out, *extra):
    return main(["train", "all", "--data", str(data), "--out", str(out), "--preset", "tiny", "--seed", "0",
                 *SPLIT, *extra])


def check_caption_report(report):
    """The report holds the caption metrics, measured with the model's CLIP, and the controls
    move the right way: shuffled captions at chance, real images above it. A tiny CLIP ranks a
    real image's own caption first among 100 only a few times in ~120 (1-5%), so beside the
    R-precision itself the own caption's mean rank (50.5 at chance, standard error ~2.6 over
    119 images) carries the statistical weight: ~32 for real images, ~52 for shuffled ones."""
    assert report["mode"] == "captions" and report["faithfulness"] is None and "CLIP" in report["measured_with"]
    rp = report["r_precision"]
    assert rp["chance"] == 0.01 and rp["real"]["distractors"] == 99 and rp["real"]["images"] >= 100
    for key in ("generated", "real", "real_shuffled"):
        assert 0.0 <= rp[key]["r_precision"] <= 1.0
    assert rp["real_shuffled"]["r_precision"] <= 0.03  # near chance
    assert 42 < rp["real_shuffled"]["mean_rank"] < 59
    assert rp["real"]["r_precision"] >= rp["chance"] and rp["real"]["r_precision"] > rp["real_shuffled"]["r_precision"]
    assert rp["real"]["mean_rank"] < 40
    clip = report["clip_score"]
    assert all(isinstance(clip[k], float) for k in ("generated", "real", "real_shuffled"))
    assert clip["real"] > clip["real_shuffled"]
    fd = report["fd"]
    for key in ("generated", "real_vs_real", "vae_reconstruction", "phrase_shuffled_prompts"):
        assert isinstance(fd[key], float) and fd[key] >= 0.0, key
    assert "CLIP" in fd["features"]
    assert isinstance(report["diversity"]["real_distinct_images"], float)


@pytest.fixture(scope="module")
def jsonl_model(datasets, tmp_path_factory):
    out = tmp_path_factory.mktemp("caption_model") / "model"
    return out


def test_train_all_and_eval_on_a_caption_only_imagefolder(datasets, jsonl_model, capsys):
    assert train_all(datasets["jsonl"], jsonl_model, *RECIPE) == 0
    text = capsys.readouterr().out
    skipped = [line for line in text.splitlines() if line.startswith("[all] judge:")]
    assert len(skipped) == 1 and "no attribute labels" in skipped[0], skipped
    index = json.loads((jsonl_model / "model_index.json").read_text())
    assert index["attributes"] == []  # what the web demo reads: no attribute checkboxes
    assert set(index["stages"]) == {"vae", "clip", "encode", "unet", "eval"}
    assert index["stages"]["eval"]["metrics"]["r_precision_real"] is not None
    report = json.loads((jsonl_model / "eval" / "report.json").read_text())
    check_caption_report(report)
    page = (jsonl_model / "eval" / "report.html").read_text()
    assert "R-precision" in page and "own CLIP" in page

    # The same command again: every stage is up to date, the judge still skipped.
    assert train_all(datasets["jsonl"], jsonl_model, *RECIPE) == 0
    text = capsys.readouterr().out
    assert text.count(": up to date\n") == 5 and "[all] judge: skipped" in text


@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_train_all_and_eval_on_csv_and_parquet_sets(kind, datasets, tmp_path):
    out = tmp_path / "model"
    assert train_all(datasets[kind], out, *RECIPE) == 0
    report = json.loads((out / "eval" / "report.json").read_text())
    if kind == "csv":  # its own split folders: SynthFaces' ~9% test split, fewer than 100 images
        rp = report["r_precision"]
        assert rp["chance"] > 0.02 and rp["real"]["mean_rank"] < rp["real_shuffled"]["mean_rank"]
    else:
        check_caption_report(report)
