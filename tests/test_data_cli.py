"""`t2i data synth|captions|show` through `t2i.cli.main`, as a user would run them."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from t2i.cli import main


def test_data_synth_captions_show(tmp_path, capsys):
    out = tmp_path / "faces"
    assert main(["data", "synth", "--out", str(out), "--n", "24", "--seed", "3", "--workers", "1"]) == 0
    printed = capsys.readouterr().out
    assert "img/s" in printed
    assert len(list((out / "img_align_celeba").glob("*.jpg"))) == 24
    summary = json.loads((out / "synthfaces.json").read_text())
    assert summary["n"] == 24 and summary["images_per_second"] > 0
    first = json.loads((out / "captions.json").read_text())

    # regenerating captions with the same seed reproduces what synth wrote; another seed differs
    assert main(["data", "captions", "--data", str(out), "--seed", "3"]) == 0
    assert json.loads((out / "captions.json").read_text()) == first
    assert main(["data", "captions", "--data", str(out), "--seed", "4", "--per-image", "2"]) == 0
    second = json.loads((out / "captions.json").read_text())
    assert second != first and all(len(v) == 2 for v in second.values())

    grid = tmp_path / "grid.png"
    assert main(["data", "show", "--data", str(out), "--out", str(grid), "--split", "all", "--n", "6"]) == 0
    printed = capsys.readouterr().out
    assert "layout      celeba" in printed and "skipped     0" in printed
    with Image.open(grid) as im:
        w, h = im.size
    assert w > 3 * 128 and h > 2 * 128  # 6 tiles at 2x with caption text under each

    assert f"captions    {out / 'captions.json'}" in printed
    # a user's captions file (same shape) is shown instead; one that misses images is an error
    mine = tmp_path / "mine.json"
    mine.write_text(json.dumps({k: [f"my caption of {k}"] for k in first}))
    assert main(["data", "show", "--data", str(out), "--out", str(grid), "--n", "2", "--captions", str(mine)]) == 0
    printed = capsys.readouterr().out
    assert f"captions    {mine}" in printed and "  - my caption of " in printed
    mine.write_text(json.dumps({"000001.jpg": ["only one"]}))
    assert main(["data", "show", "--data", str(out), "--captions", str(mine)]) == 2
    assert "mine.json: no captions for" in capsys.readouterr().err

    # listed images missing on disk are counted over the whole split, not only the ones read
    for name in ("000004.jpg", "000017.jpg"):
        (out / "img_align_celeba" / name).unlink()
    assert main(["data", "show", "--data", str(out), "--out", str(grid), "--split", "all", "--n", "2"]) == 0
    printed = capsys.readouterr().out
    assert "missing     2 of the 24 listed image(s)" in printed
    with pytest.warns(UserWarning, match="skipping unreadable image"):
        assert main(["data", "show", "--data", str(out), "--out", str(grid), "--split", "all", "--n", "30"]) == 0
    printed = capsys.readouterr().out
    assert "skipped     2 unreadable/missing image(s) among the 24 read" in printed
    assert "wrote " + str(grid) + " (22 samples)" in printed


def test_data_synth_size_option(tmp_path):
    out = tmp_path / "small"
    assert main(["data", "synth", "--out", str(out), "--n", "3", "--size", "64x80", "--workers", "1"]) == 0
    with Image.open(out / "img_align_celeba" / "000001.jpg") as im:
        assert im.size == (64, 80)


def test_data_commands_report_user_errors(tmp_path, capsys):
    assert main(["data", "synth", "--out", str(tmp_path / "x"), "--n", "2", "--size", "big"]) == 2
    assert "--size" in capsys.readouterr().err
    assert main(["data", "show", "--data", str(tmp_path / "missing")]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["data", "captions", "--data", str(tmp_path / "missing")]) == 2


def test_captioned_grid_shows_long_captions_whole():
    import numpy as np
    from PIL import Image

    from t2i.data.captions import MAX_WORDS
    from t2i.imaging import captioned_grid, load_font, wrap_text

    long = ("a picture of a youthful gentleman with a smile, a slightly open mouth and wavy black hair, "
            "wearing a hat and spectacles, no rosy cheeks, without a necklace")
    assert len(long.split()) <= MAX_WORDS
    font = load_font(11)
    lines = wrap_text(long, font, 128)
    assert " ".join(lines) == long and len(lines) > 5  # nothing lost; more than the old 5-line cell
    assert all(font.getlength(ln) <= 128 for ln in lines)
    img = Image.fromarray(np.full((64, 64, 3), 255, dtype=np.uint8))
    grid = np.asarray(captioned_grid([img, img], ["short", long], cols=2).convert("L"))
    th, line_h = 128, 14
    last = grid[6 + th + 3 + (len(lines) - 1) * line_h: 6 + th + 3 + len(lines) * line_h]
    assert (last < 128).any()  # the last line is drawn inside the cell
    assert grid.shape[0] >= 6 + th + 6 + len(lines) * line_h
