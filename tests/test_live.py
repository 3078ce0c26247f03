"""`t2i live`: the session commands, the half-block renderer, and the real command driven
through a pipe (scripted use), a pseudo-terminal (interactive use) and SIGINT (Ctrl-C)."""

from __future__ import annotations

import io
import json
import os
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from t2i.app.limits import RequestError
from t2i.live import QUIT, HalfBlockImage, Settings, apply_command, next_number

sys.path.insert(0, str(Path(__file__).parent))
from tiny_model import tiny_model_fixture  # noqa: E402

ENTRY = "import sys; from t2i.cli import main; sys.exit(main(sys.argv[1:]))"


@pytest.fixture(scope="session")
def live_model(tmp_path_factory, synth_dir):
    return tiny_model_fixture(tmp_path_factory, synth_dir)


def live_cmd(model, out, *extra):
    return [sys.executable, "-c", ENTRY, "live", "--model", str(model), "--out", str(out), "--history", "", *extra]


def child_env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    return env | {"PYTHONUNBUFFERED": "1", "PYTHONIOENCODING": "utf-8", "OMP_NUM_THREADS": "1"} | extra


def meta(path: Path) -> dict:
    with Image.open(path) as im:
        im.load()
        return dict(im.text), im.size


# -- units ---------------------------------------------------------------------------------------


def test_commands_change_settings_and_reject_bad_values():
    s = Settings()
    s, msg = apply_command(":steps 30", s)
    assert s.steps == 30 and "30 steps" in msg
    s, _ = apply_command(":guidance 4", s)
    s, _ = apply_command(":seed 7", s)
    s, _ = apply_command(":n 4", s)
    s, _ = apply_command(":sampler ddim", s)
    s, _ = apply_command(":negative eyeglasses,\tbeard", s)
    s, _ = apply_command(":gif on", s)
    assert (s.steps, s.guidance, s.seed, s.n, s.sampler, s.negative, s.gif) == (
        30, 4.0, 7, 4, "ddim", "eyeglasses, beard", True)
    s, _ = apply_command(":seed random", s)
    s, _ = apply_command(":negative", s)
    assert s.seed is None and s.negative == ""
    assert "steps N" in apply_command(":help", s)[1]
    assert apply_command(":quit", s) is QUIT and apply_command(":q", s) is QUIT
    for bad, needle in ((":steps 0", "steps"), (":steps many", "steps"), (":guidance nan", "guidance"),
                        (":sampler plms", "plms"), (":n 10000", "n must"), (":gif maybe", "gif"),
                        (":frobnicate 1", "unknown command"), (":steps", "needs a value")):
        with pytest.raises(RequestError, match=needle):
            apply_command(bad, s)


def test_half_block_renderer_uses_truecolor_foreground_and_background():
    from rich.console import Console

    img = Image.new("RGB", (3, 4))
    img.putpixel((0, 0), (255, 0, 0))  # top-left cell: red over blue
    img.putpixel((0, 1), (0, 0, 255))
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, color_system="truecolor", width=40, height=30)
    console.print(HalfBlockImage(img))
    out = buf.getvalue()
    assert "\x1b[38;2;255;0;0;48;2;0;0;255m▀" in out  # fg = upper pixel, bg = lower pixel
    lines = [line for line in out.split("\n") if "▀" in line]
    assert len(lines) == 2 and all(line.count("▀") == 3 for line in lines)  # 3x4 px -> 3 cols x 2 rows


def test_half_block_renderer_shrinks_to_the_terminal():
    from rich.console import Console

    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, color_system="truecolor", width=16, height=100)
    console.print(HalfBlockImage(Image.new("RGB", (64, 64), (9, 9, 9))))
    lines = [line for line in buf.getvalue().split("\n") if "▀" in line]
    assert len(lines) == 8 and max(line.count("▀") for line in lines) == 16


def test_next_number_never_overwrites(tmp_path):
    assert next_number(tmp_path) == 1
    (tmp_path / "0007_0.png").touch()
    (tmp_path / "notes.txt").touch()
    assert next_number(tmp_path) == 8


# -- the command ---------------------------------------------------------------------------------


def test_piped_session_two_prompts_settings_change_and_metadata(live_model, tmp_path):
    out = tmp_path / "out"
    script = "\n".join([
        "a photo of a smiling woman with blond hair",
        ":steps 3", ":n 2", ":seed 7", ":sampler ddim", ":guidance 4.5", ":gif on",
        ":bogus",
        "a bald man \x1b[31mwearing\x00 glasses 🕶️",
        ":quit",
        "never generated",
    ]) + "\n"
    proc = subprocess.run(live_cmd(live_model, out, "--steps", "4", "--seed", "11", "--window"), input=script,
                          capture_output=True, text=True, encoding="utf-8", timeout=300, env=child_env())
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "--window: no display" in proc.stderr  # a clear message, and the session still runs
    assert "error: unknown command :bogus" in proc.stdout
    # Progress lines when piped (steps that finish while a frame is shown are coalesced, so
    # which step numbers appear depends on timing; at least one per image does).
    assert re.search(r"step [1-4]/4 ", proc.stdout) and re.search(r"step [1-3]/3 ", proc.stdout)
    size = json.loads((live_model / "unet" / "config.json").read_text()).get("image_size")

    files = sorted(p.name for p in out.iterdir())
    assert files == ["0001_0.png", "0002.gif", "0002_0.png", "0002_1.png"], files
    first, first_size = meta(out / "0001_0.png")
    assert first["prompt"] == "a photo of a smiling woman with blond hair"
    assert (first["seed"], first["steps"], first["sampler"], first["guidance"]) == ("11", "4", "euler-a", "3.0")
    assert first["model"] == live_model.name
    assert json.loads(first["t2i"])["steps"] == 4
    second, second_size = meta(out / "0002_1.png")
    # The control characters are gone, the emoji stays.
    assert second["prompt"] == "a bald man [31mwearing glasses 🕶️"
    assert (second["seed"], second["steps"], second["sampler"], second["guidance"], second["index"]) == (
        "8", "3", "ddim", "4.5", "1")  # image 1 of a seed-7 job has its own seed, 7 + 1
    assert first_size == second_size and (size is None or first_size == (size, size))
    with Image.open(out / "0002.gif") as gif:
        # A preview per step + the final images (PIL merges the last preview, which equals the
        # final image, into one frame).
        assert gif.n_frames >= 3 and gif.size[1] >= 96
    assert "never generated" not in proc.stdout
    # The escape sequence glued "m" to "wearing": a word the model never saw, named with the
    # word it knows; the first prompt uses only training words and gets no warning.
    assert proc.stdout.count("warning: ") == 1
    warning = next(line for line in proc.stdout.splitlines() if line.startswith("warning: "))
    assert warning.startswith("warning: the model never saw the word") and '"mwearing" (try "wearing")' in warning


def test_ctrl_c_cancels_the_image_not_the_session(live_model, tmp_path):
    out = tmp_path / "out"
    # A terminal delivers Ctrl-C with SIGINT at its default disposition; a test runner started as
    # a background job inherits it ignored, and Python then installs no KeyboardInterrupt handler.
    proc = subprocess.Popen(live_cmd(live_model, out, "--steps", "1000"), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8",
                            env=child_env(), preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        proc.stdin.write("a very slow picture\n")
        proc.stdin.flush()
        seen = ""
        deadline = time.monotonic() + 240
        while not re.search(r"step \d+/1000 ", seen):  # the first progress line (any step)
            assert time.monotonic() < deadline and proc.poll() is None, seen
            seen += proc.stdout.readline()
        proc.send_signal(signal.SIGINT)
        rest, err = proc.communicate(":steps 2\na quick picture\n", timeout=240)
    finally:
        proc.kill()
    assert proc.returncode == 0, err[-2000:]
    assert "cancelled" in rest
    assert "step 1000/1000" not in seen + rest
    names = sorted(p.name for p in out.iterdir())
    assert names == ["0001_0.png"], names  # only the second image was saved
    assert meta(out / "0001_0.png")[0]["prompt"] == "a quick picture"


def test_interactive_terminal_draws_half_blocks(live_model, tmp_path):
    """Through a pseudo-terminal: the readline prompt, the inline truecolor preview with a
    step counter, and :quit."""
    import pty

    out = tmp_path / "out"
    master, slave = pty.openpty()
    os.set_blocking(master, False)
    env = child_env(TERM="xterm-256color", COLORTERM="truecolor", COLUMNS="100", LINES="60")
    proc = subprocess.Popen(live_cmd(live_model, out, "--steps", "3"), stdin=slave, stdout=slave, stderr=slave,
                            env=env, close_fds=True)
    os.close(slave)
    buf = b""

    def read_until(needle: bytes, timeout=240):
        nonlocal buf
        deadline = time.monotonic() + timeout
        while needle not in buf:
            assert time.monotonic() < deadline and proc.poll() is None, buf[-3000:]
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    buf += os.read(master, 65536)
                except OSError:
                    break

    try:
        read_until(b"t2i> ")
        os.write(master, b"a woman with a smile\r")
        read_until(b"saved ")
        read_until(b"t2i> ")
        os.write(master, b":quit\r")
        proc.wait(timeout=60)
    finally:
        proc.kill()
        os.close(master)
    text = buf.decode("utf-8", "replace")
    assert proc.returncode == 0, text[-2000:]
    assert "▀" in text and "\x1b[38;2;" in text and ";48;2;" in text  # truecolor half blocks
    assert "step 3/3" in text
    assert (out / "0001_0.png").is_file()


def test_window_view_draws_each_frame_offscreen():
    """The --window view's drawing, with matplotlib's Agg backend instead of a display."""
    from t2i.app.stream import Frame
    from t2i.live import PlainView, WindowView

    lines = io.StringIO()
    view = WindowView(PlainView(out=lines), backend="Agg")
    a, b = Image.new("RGB", (8, 4), (255, 0, 0)), Image.new("RGB", (8, 4), (0, 0, 255))
    view.frame(Frame(1, 2, 0.1, preview=a))
    assert view.im.get_array()[0, 0].tolist() == [255, 0, 0]
    view.frame(Frame(2, 2, 0.2, preview=b))
    assert view.im.get_array()[0, 0].tolist() == [0, 0, 255] and view.ax.get_title() == "step 2/2"
    assert "step 1/2" in lines.getvalue()
    view.plt.close(view.fig)
