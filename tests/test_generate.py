"""`t2i generate`: numbered run folders, per-image seeds that regenerate one image alone, the
progress bar, img2img and interpolation from the command line."""

import json

import numpy as np
import pytest
from PIL import Image

from image_checks import same_image
from t2i.cli import main


def generate(model, out, *args) -> int:
    return main(["generate", "--model", str(model), "--steps", "3", "--out", str(out), *args])


def pixels(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def test_runs_never_overwrite_and_image_3_regenerates_from_its_seed(tiny_model, tmp_path, capsys):
    out = tmp_path / "gen"
    assert generate(tiny_model, out, "a smiling man", "-n", "4", "--seed", "40", "--sampler", "euler-a") == 0
    err = capsys.readouterr().err
    assert "3/3 [" in err  # the progress bar reached the last step
    fourth = out / "0001" / "00_03.png"
    with Image.open(fourth) as im:
        meta = json.loads(im.text["t2i"])
    assert meta["seed"] == 43 and meta["index"] == 3

    # Its metadata's seed alone gives the same image (to float rounding), in a new run folder.
    assert generate(tiny_model, out, "a smiling man", "-n", "1", "--seed", str(meta["seed"]),
                    "--sampler", "euler-a") == 0
    assert sorted(p.name for p in out.iterdir()) == ["0001", "0002"]
    assert same_image(pixels(out / "0002" / "00_00.png"), pixels(fourth))
    assert not same_image(pixels(out / "0002" / "00_00.png"), pixels(out / "0001" / "00_02.png"))
    assert len(list((out / "0001").glob("00_*.png"))) == 4  # the first run is untouched


def test_init_image_and_strength(tiny_model, tmp_path):
    start = tmp_path / "start.png"
    Image.new("RGB", (50, 40), (200, 30, 30)).save(start)
    assert generate(tiny_model, tmp_path / "keep", "a woman", "-n", "1", "--init-image", str(start),
                    "--strength", "0") == 0
    assert generate(tiny_model, tmp_path / "redo", "a woman", "-n", "1", "--init-image", str(start),
                    "--strength", "1") == 0
    kept = pixels(tmp_path / "keep" / "0001" / "00_00.png").astype(float)
    redone = pixels(tmp_path / "redo" / "0001" / "00_00.png").astype(float)
    red = np.array([200, 30, 30], dtype=float)
    # strength 0 is the picture through the VAE (a tiny one: roughly red); strength 1 ignores it.
    assert np.abs(kept - red).mean() < np.abs(redone - red).mean()
    with Image.open(tmp_path / "keep" / "0001" / "00_00.png") as im:
        meta = json.loads(im.text["t2i"])
    assert meta["init_image"] == str(start) and meta["strength"] == 0.0


def test_interpolate_writes_frames_from_a_to_b(tiny_model, tmp_path):
    out = tmp_path / "morph"
    assert generate(tiny_model, out, "--interpolate", "a smiling man", "a bald woman", "--frames", "3",
                    "--seed", "9") == 0
    frames = sorted((out / "0001").glob("frame_*.png"))
    assert [p.name for p in frames] == ["frame_00.png", "frame_01.png", "frame_02.png"]
    assert (out / "0001" / "grid.png").is_file()
    # Frame 0 is prompt A with seed 9; the last frame is prompt B with seed 10.
    assert generate(tiny_model, tmp_path / "a", "a smiling man", "-n", "1", "--seed", "9") == 0
    assert np.abs(pixels(frames[0]).astype(int) - pixels(tmp_path / "a" / "0001" / "00_00.png")).max() <= 1
    assert not np.array_equal(pixels(frames[0]), pixels(frames[2]))


@pytest.mark.parametrize(
    "args,message",
    [
        (["a man", "--init-image", "missing.png"], "--init-image: no such file: missing.png"),
        (["a man", "--init-image", "{bad}"], "is not a readable image"),
        (["a man", "--interpolate", "x", "y"], "--interpolate A B takes its two prompts itself"),
        (["--interpolate", "x", "y", "--negative", "z"], "--interpolate A B takes its two prompts itself"),
        ([], "give at least one prompt"),
        (["a man", "--init-image", "{good}", "--strength", "2"], "strength must be in [0, 1]"),
    ],
)
def test_bad_input_is_one_clear_line(tiny_model, tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    Image.new("RGB", (8, 8)).save(tmp_path / "good.png")
    args = [a.format(bad=tmp_path / "bad.png", good=tmp_path / "good.png") for a in args]
    assert generate(tiny_model, tmp_path / "out", *args) == 2
    assert message in capsys.readouterr().err
