"""`t2i live`: type a prompt, watch the image form step by step, tweak, repeat.

    t2i live --model runs/demo                 # previews drawn in the terminal
    t2i live --model runs/demo --window        # ... and in a desktop window
    printf 'a smiling woman\\n:steps 10\\na bald man\\n' | t2i live --model runs/demo   # scripted

Each step's preview is the decoded predicted clean latent x0 (what the sampler currently
believes the final image is), drawn with truecolor half-block characters: one character cell
holds two pixels, the upper as the foreground colour of '▀' and the lower as the background.
Settings change in the session with `:commands` (`:help` lists them); every final image is
saved as a PNG with its settings in the text metadata, and `:gif on` also saves an animation
of the previews. Ctrl-C cancels the image being made, not the session.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from contextlib import closing
from dataclasses import dataclass, replace
from pathlib import Path

from PIL import Image

from t2i.app.limits import (
    MAX_SEED,
    GenerationRequest,
    Limits,
    RequestError,
    as_float,
    as_int,
    validate_request,
)
from t2i.app.stream import Frame, request_warnings, stream_generation, warning_lines
from t2i.generate import next_number, png_metadata
from t2i.pipeline import (
    DEFAULT_GUIDANCE,
    DEFAULT_SAMPLER,
    DEFAULT_STEPS,
    MAX_IMAGES_PER_CALL,
    MAX_STEPS,
    SAMPLERS,
    T2IPipeline,
    parse_prompt,
)

# A local user may ask for anything the pipeline supports.
LIVE_LIMITS = Limits(max_steps=MAX_STEPS, max_images=MAX_IMAGES_PER_CALL, max_prompt_chars=10_000,
                     max_guidance=100.0)
QUIT = object()
_VALUE_COMMANDS = ("steps", "guidance", "seed", "n", "sampler", "negative", "gif")
HELP = """\
Type a prompt and press Enter to generate; compose terms with AND, NOT and :weight
("a woman with blond hair AND wearing glasses AND NOT a hat :1.5"). Commands:
  :steps N          denoising steps (now {steps})
  :guidance X       classifier-free guidance scale (now {guidance:g})
  :seed N|random    fixed seed, or a new random one per image (now {seed})
  :n N              images per prompt (now {n})
  :sampler NAME     one of {samplers} (now {sampler})
  :negative TEXT    negative prompt; ':negative' alone clears it (now {negative!r})
  :gif on|off       also save an animated GIF of the previews (now {gif})
  :settings         show the settings
  :help             this text
  :quit             leave (Ctrl-D too); Ctrl-C cancels the image being made"""


@dataclass
class Settings:
    steps: int = DEFAULT_STEPS
    guidance: float = DEFAULT_GUIDANCE
    seed: int | None = None  # None: a new random seed per generation
    n: int = 1
    sampler: str = DEFAULT_SAMPLER
    negative: str = ""
    gif: bool = False

    def describe(self) -> str:
        seed = "random" if self.seed is None else self.seed
        neg = f", negative {self.negative!r}" if self.negative else ""
        return (f"{self.steps} steps, guidance {self.guidance:g}, seed {seed}, {self.n} image(s), "
                f"{self.sampler}{neg}, gif {'on' if self.gif else 'off'}")


def apply_command(line: str, settings: Settings) -> tuple[Settings, str] | object:
    """Parse one `:command` line. Returns (new settings, message to print), or QUIT.
    Bad values raise RequestError naming the value; the session prints it and goes on."""
    name, _, arg = line[1:].strip().partition(" ")
    name, arg = name.lower(), arg.strip()
    if name in ("q", "quit", "exit"):
        return QUIT
    if name in ("h", "help", "?"):
        return settings, _help(settings)
    if name == "settings":
        return settings, settings.describe()
    if name not in _VALUE_COMMANDS:
        raise RequestError(f"unknown command :{name[:40]} (:help lists the commands)")
    if name == "negative":
        new = replace(settings, negative=validate_text(arg))
    elif not arg:
        raise RequestError(f":{name} needs a value (:help lists the commands)")
    elif name == "steps":
        new = replace(settings, steps=as_int(arg, "steps", 1, LIVE_LIMITS.max_steps))
    elif name == "guidance":
        new = replace(settings, guidance=as_float(arg, "guidance", 0.0, LIVE_LIMITS.max_guidance))
    elif name == "seed":
        new = replace(settings, seed=None if arg.lower() == "random" else as_int(arg, "seed", 0, MAX_SEED))
    elif name == "n":
        new = replace(settings, n=as_int(arg, "n", 1, LIVE_LIMITS.max_images))
    elif name == "sampler":
        if arg not in SAMPLERS:
            raise RequestError(f"unknown sampler {arg[:40]!r}; choose one of {', '.join(sorted(SAMPLERS))}")
        new = replace(settings, sampler=arg)
    else:  # gif
        if arg.lower() not in ("on", "off"):
            raise RequestError(f":gif takes on or off, got {arg[:20]!r}")
        new = replace(settings, gif=arg.lower() == "on")
    return new, new.describe()


def validate_text(text: str) -> str:
    from t2i.app.limits import clean_text

    return clean_text(text, "negative prompt", LIVE_LIMITS.max_prompt_chars)


def _help(settings: Settings) -> str:
    return HELP.format(steps=settings.steps, guidance=settings.guidance,
                       seed="random" if settings.seed is None else settings.seed, n=settings.n,
                       samplers=", ".join(sorted(SAMPLERS)), sampler=settings.sampler, negative=settings.negative,
                       gif="on" if settings.gif else "off")


# -- drawing -----------------------------------------------------------------------------------


class HalfBlockImage:
    """A rich renderable drawing a PIL image with '▀': foreground = upper pixel, background =
    lower pixel, so a W x H image takes W columns and ceil(H/2) rows. Shrunk (never enlarged)
    to fit `max_rows` and the console width."""

    def __init__(self, image: Image.Image, max_rows: int | None = None):
        self.image = image.convert("RGB")
        self.max_rows = max_rows

    def __rich_console__(self, console, options):
        from rich.color import Color
        from rich.segment import Segment
        from rich.style import Style

        img = self.image
        w, h = img.size
        max_rows = self.max_rows or max(4, (options.height or console.height) - 3)
        scale = min(1.0, options.max_width / w, 2 * max_rows / h)
        if scale < 1.0:
            img = img.resize((max(1, int(w * scale)), max(2, int(h * scale))), Image.Resampling.BOX)
            w, h = img.size
        px = img.load()
        styles: dict = {}
        for y in range(0, h, 2):
            for x in range(w):
                top = px[x, y]
                bottom = px[x, y + 1] if y + 1 < h else None
                key = (top, bottom)
                if key not in styles:
                    styles[key] = Style(color=Color.from_rgb(*top),
                                        bgcolor=Color.from_rgb(*bottom) if bottom else None)
                yield Segment("▀", styles[key])
            yield Segment.line()


class PlainView:
    """Progress as text lines (stdout not a terminal): the first step, then every 10%."""

    needs_previews = False

    def __init__(self, out=None):
        self.out = out or sys.stdout
        self._next = 0.0

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def start(self, request: GenerationRequest) -> None:
        self._next = 0.0
        self.say(f"generating {request.num_images} image(s): {request.prompt!r} (seed {request.seed}, "
                 f"{request.steps} steps, {request.sampler}, guidance {request.guidance:g})")

    def frame(self, frame: Frame) -> None:
        if frame.step / frame.total >= self._next:
            self.say(f"step {frame.step}/{frame.total} {frame.elapsed:.1f}s")
            self._next = (int(frame.step / frame.total * 10) + 1) / 10

    def stop(self) -> None:
        pass


class TerminalView(PlainView):
    """The preview drawn in place (rich Live) with a step counter under it."""

    needs_previews = True

    def __init__(self, console):
        super().__init__()
        self.console = console
        self.live = None

    def say(self, text: str) -> None:
        self.stop()
        self.console.print(text, markup=False, highlight=False)

    def start(self, request: GenerationRequest) -> None:
        from rich.live import Live

        self.live = Live(console=self.console, auto_refresh=False, transient=False)
        self.live.start()

    def frame(self, frame: Frame) -> None:
        from rich.console import Group
        from rich.text import Text

        if self.live is None or frame.preview is None:
            return
        speed = frame.elapsed / max(frame.step, 1)
        counter = Text(f"step {frame.step}/{frame.total}  {frame.elapsed:.1f} s  ({speed * 1000:.0f} ms/step)",
                       style="bold")
        self.live.update(Group(HalfBlockImage(frame.preview), counter), refresh=True)

    def stop(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None


class WindowView:
    """Previews in a matplotlib window as well as in the wrapped terminal/plain view."""

    needs_previews = True

    def __init__(self, inner: PlainView, backend: str = "TkAgg"):
        import matplotlib

        matplotlib.use(backend)  # the tests draw with "Agg" (no display)
        import matplotlib.pyplot as plt

        self.inner, self.plt = inner, plt
        plt.ion()
        self.fig, self.ax = plt.subplots(num="t2i live")
        self.ax.set_axis_off()
        self.im = None

    def say(self, text: str) -> None:
        self.inner.say(text)

    def start(self, request: GenerationRequest) -> None:
        self.inner.start(request)

    def frame(self, frame: Frame) -> None:
        self.inner.frame(frame)
        if frame.preview is None or not self.plt.fignum_exists(self.fig.number):
            return
        if self.im is None or self.im.get_array().shape[:2] != frame.preview.size[::-1]:
            self.ax.clear()
            self.ax.set_axis_off()
            self.im = self.ax.imshow(frame.preview, interpolation="nearest")
        else:
            self.im.set_data(frame.preview)
        self.ax.set_title(f"step {frame.step}/{frame.total}", fontsize=10)
        self.fig.canvas.draw_idle()
        self.fig.canvas.flush_events()

    def stop(self) -> None:
        self.inner.stop()


def display_problem() -> str | None:
    """Why a desktop window cannot open here, or None if it can."""
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return "no display (DISPLAY and WAYLAND_DISPLAY are unset)"
    try:
        import tkinter  # noqa: F401
    except ImportError:
        return "tkinter is not installed"
    return None


def make_view(window: bool, say=print):
    from rich.console import Console

    console = Console()
    view = TerminalView(console) if console.is_terminal else PlainView()
    if window:
        problem = display_problem()
        if problem is not None:
            say(f"t2i live: --window: {problem}; showing previews in the terminal instead")
        else:
            try:
                view = WindowView(view)
            except Exception as e:  # a broken Tk install, a display that refuses connections
                say(f"t2i live: --window: could not open a window ({type(e).__name__}: {e}); "
                    "showing previews in the terminal instead")
    return view


# -- the session -------------------------------------------------------------------------------


class LiveSession:
    def __init__(self, pipe: T2IPipeline, settings: Settings, out_dir: Path, view):
        self.pipe, self.settings, self.out_dir, self.view = pipe, settings, out_dir, view

    def handle(self, line: str):
        """One input line: a command, a prompt, or blank. Returns QUIT to end the session."""
        line = line.strip()
        if not line:
            return None
        if line.startswith(":"):
            try:
                result = apply_command(line, self.settings)
            except RequestError as e:
                self.view.say(f"error: {e}")
                return None
            if result is QUIT:
                return QUIT
            self.settings, message = result
            self.view.say(message)
            return None
        try:
            self.generate(line)
        except RequestError as e:
            self.view.say(f"error: {e}")
        except Exception as e:  # e.g. out of GPU memory: report it and keep the session
            self.view.say(f"error: generation failed: {type(e).__name__}: {e}")
        return None

    def generate(self, prompt: str) -> list[Path]:
        s = self.settings
        request = validate_request(LIVE_LIMITS, prompt, s.negative, s.steps, s.guidance, s.sampler,
                                   seed=s.seed, random_seed=s.seed is None, num_images=s.n)
        previews = []
        composed = parse_prompt(request.prompt)
        if not composed.is_plain:
            self.view.say(f"composed prompt, {composed.describe()}")
        for line in warning_lines(request_warnings(self.pipe, request)):
            self.view.say(f"warning: {line}")
        self.view.start(request)
        final = None
        decode = self.view.needs_previews or s.gif
        # closing(): a Ctrl-C while drawing (outside the generator) still cancels the worker.
        with closing(stream_generation(self.pipe, request, every_step=s.gif, decode=decode)) as frames:
            try:
                for frame in frames:
                    if frame.done:
                        final = frame
                        break
                    self.view.frame(frame)
                    if s.gif and frame.preview is not None:
                        previews.append(frame.preview)
            except KeyboardInterrupt:
                self.view.say("cancelled (Ctrl-C); the session goes on")
                return []
        self.view.frame(final)
        self.view.stop()
        paths = self.save(request, final.images, previews + [final.preview] if s.gif else None)
        per_image = final.elapsed / len(final.images)
        for p in paths:
            self.view.say(f"saved {p}")
        self.view.say(f"{per_image:.2f} s per image (seed {request.seed})")
        return paths

    def save(self, request: GenerationRequest, images: list[Image.Image], frames) -> list[Path]:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        number = next_number(self.out_dir)
        paths = []
        for i, image in enumerate(images):
            path = self.out_dir / f"{number:04d}_{i}.png"
            image.save(path, pnginfo=png_metadata(**request.metadata(model=self.pipe.model_id, index=i)))
            paths.append(path)
        if frames:
            path = self.out_dir / f"{number:04d}.gif"
            save_animation(frames, path)
            paths.append(path)
        return paths


def save_animation(frames: list[Image.Image], path: Path, min_size: int = 192) -> None:
    """An animated GIF of the previews, enlarged (nearest neighbour) to be visible, the final
    frame held for a second."""
    w, h = frames[0].size
    k = max(1, -(-min_size // max(w, h)))
    big = [f.resize((w * k, h * k), Image.Resampling.NEAREST) for f in frames]
    durations = [80] * (len(big) - 1) + [1000]
    big[0].save(path, save_all=True, append_images=big[1:], duration=durations, loop=0)


def read_lines(interactive: bool, history: Path | None, say):
    """Input lines: readline with history when stdin is a terminal, plain lines otherwise.
    Ctrl-C at the prompt clears the line; Ctrl-D (or end of input) ends."""
    if not interactive:
        yield from sys.stdin
        return
    try:
        import readline
    except ImportError:  # Windows without pyreadline
        readline = None
    if readline is not None and history is not None:
        try:
            readline.read_history_file(history)
        except OSError:
            pass
    try:
        while True:
            try:
                yield input("t2i> ")
            except KeyboardInterrupt:
                print()
                say("(Ctrl-D or :quit leaves)")
            except EOFError:
                print()
                return
    finally:
        if readline is not None and history is not None:
            try:
                history.parent.mkdir(parents=True, exist_ok=True)
                readline.set_history_length(1000)
                readline.write_history_file(history)
            except OSError:
                pass


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model directory")
    parser.add_argument("--out", default="outputs/live", help="where images are saved (default outputs/live)")
    parser.add_argument("--window", action="store_true", help="also show previews in a desktop window")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    parser.add_argument("--guidance", type=float, default=DEFAULT_GUIDANCE)
    parser.add_argument("--sampler", default=DEFAULT_SAMPLER, choices=sorted(SAMPLERS))
    parser.add_argument("--seed", type=int, default=None, help="fixed seed (default: a new random one per image)")
    parser.add_argument("-n", "--num-images", type=int, default=1)
    parser.add_argument("--negative", default="", help="negative prompt")
    parser.add_argument("--gif", action="store_true", help="also save an animated GIF of the previews")
    parser.add_argument("--device", default=None, help="cpu | cuda | mps (default: best available)")
    parser.add_argument("--history", default=str(Path.home() / ".t2i_history"),
                        help="prompt history file when interactive ('' for none)")


def run(args: argparse.Namespace) -> int:
    settings = Settings()
    for flag, value in ((":steps", args.steps), (":guidance", args.guidance), (":n", args.num_images),
                        (":sampler", args.sampler), (":negative", args.negative),
                        (":gif", "on" if args.gif else "off")):
        settings, _ = apply_command(f"{flag} {value}", settings)  # same checks as in the session
    if args.seed is not None:
        settings, _ = apply_command(f":seed {args.seed}", settings)

    interactive = sys.stdin.isatty()
    view = make_view(args.window, say=lambda t: print(t, file=sys.stderr))
    t0 = time.perf_counter()
    pipe = T2IPipeline.from_pretrained(args.model, device=args.device)
    view.say(f"t2i live: model {pipe.model_id} ({pipe.image_size}px, {pipe.device}) loaded in "
             f"{time.perf_counter() - t0:.1f} s; saving to {args.out}")
    view.say(f"settings: {settings.describe()}" + ("  (:help for commands)" if interactive else ""))
    session = LiveSession(pipe, settings, Path(args.out), view)
    history = Path(args.history).expanduser() if args.history else None
    for line in read_lines(interactive, history, view.say):
        if session.handle(line) is QUIT:
            break
    view.stop()
    return 0
