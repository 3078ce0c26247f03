"""The benchmarks run (on tiny models); their numbers are not checked here."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

from t2i.cli import main

ROOT = Path(__file__).resolve().parents[1]


def load_bench(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_time_to_quality_records_one_point_per_evaluation(tiny_model, synth_dir, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_model, model, ignore=shutil.ignore_patterns("checkpoints", "unet"))
    assert main(["train", "judge", "--data", str(synth_dir), "--out", str(model), "--preset", "tiny",
                 "--steps", "3"]) == 0
    out = tmp_path / "ttq.json"
    bench = load_bench("time_to_quality")
    result = bench.main(["--model", str(model), "--data", str(synth_dir), "--preset", "tiny", "--steps", "4",
                         "--every", "2", "--eval-prompts", "2", "--fd-images", "4", "--max-real", "16",
                         "--work", str(tmp_path / "work"), "--out", str(out)])
    (run,) = json.loads(out.read_text())["runs"]
    points = run["points"]
    assert run == result["runs"][0] and run["clip"] == str(model)
    assert [p["step"] for p in points] == [2, 4]  # the final step is evaluated once
    assert 0 < points[0]["train_seconds"] < points[1]["train_seconds"]
    # The whole pipeline's clock: the VAE's and CLIP's recorded training time come first.
    upstream = run["upstream_seconds"]
    assert upstream["vae"] > 0 and upstream["clip"] > 0
    for p in points:
        assert 0 <= p["faithfulness_balanced"] <= 1 and p["fd_judge"] >= 0
        assert p["pipeline_seconds"] == pytest.approx(sum(upstream.values()) + p["train_seconds"], abs=0.1)
    assert out.with_suffix(".png").stat().st_size > 0


def test_text_probe_reports_every_context_and_attribute(tiny_model, synth_dir, tmp_path):
    out = tmp_path / "probe.json"
    result = load_bench("text_probe").main(["--model", str(tiny_model), "--data", str(synth_dir),
                                            "--captions", "60", "--out", str(out)])
    assert json.loads(out.read_text()) == result
    table = result["per_attribute"]
    assert list(table)[0] == "token embeddings" and "final states (UNet context)" in table
    assert len({len(t) for t in table.values()}) == 1 and len(table["token embeddings"]) > 5
    # Complete captions name every attribute, so the (context-free) embeddings always hold it.
    assert result["mean"]["token embeddings"] > 0.9


def test_compose_bench_times_plain_batched_and_per_term(tiny_model, tmp_path):
    import torch

    out = tmp_path / "compose.json"
    threads = torch.get_num_threads()
    result = load_bench("compose").main(["--model", str(tiny_model), "--images", "2", "--steps", "2",
                                         "--repeats", "1", "--threads", str(threads + 1), "--out", str(out)])
    assert result["threads"] == threads + 1 and torch.get_num_threads() == threads  # set for the run only
    assert json.loads(out.read_text()) == result
    (row,) = result["rows"]
    assert row["images"] == 2 and all(row[k] > 0 for k in row if k.endswith("_ms_per_image"))
    # The reference that calls the UNet per term computes the same images.
    assert row["max_abs_difference_batched_vs_per_term"] < 1e-4


def test_vae_round_trip_ranks_vaes_by_what_survives(tiny_model, synth_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    model = tmp_path / "model"
    shutil.copytree(tiny_model, model, ignore=shutil.ignore_patterns("checkpoints", "unet"))
    assert main(["train", "judge", "--data", str(synth_dir), "--out", str(model), "--preset", "tiny",
                 "--steps", "3"]) == 0
    # A peer whose decoder paints every pixel white (output bias +5, clamped to 1): its round
    # trips must score a far lower PSNR than the trained VAE's.
    broken = tmp_path / "broken" / "vae"
    shutil.copytree(model / "vae", broken)
    weights = load_file(broken / "model.safetensors")
    weights["decoder.conv_out.weight"].zero_()
    weights["decoder.conv_out.bias"].fill_(5.0)
    save_file(weights, broken / "model.safetensors")

    out = tmp_path / "vrt.json"
    result = load_bench("vae_round_trip").main(["--model", str(model), "--data", str(synth_dir), "--vae", str(model),
                                                "--vae", str(broken), "--out", str(out), "--worst", "3"])
    assert json.loads(out.read_text()) == result
    rows = result["results"]
    assert list(rows) == ["real images", str(model), str(broken)]
    trained, zeroed = rows[str(model)], rows[str(broken)]
    assert trained["psnr_db"] > zeroed["psnr_db"] + 3
    for row in (trained, zeroed):
        assert 0 <= row["macro_balanced"] <= 1 and len(row["weakest"]) == 3
        assert all(set(w) == {"balanced", "real"} for w in row["weakest"].values())
