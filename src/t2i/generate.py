"""`t2i generate`: prompts -> PNG files (with their settings in PNG text metadata) + a grid."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from t2i.imaging import captioned_grid
from t2i.pipeline import (
    DEFAULT_GUIDANCE,
    DEFAULT_SAMPLER,
    DEFAULT_STEPS,
    T2IPipeline,
    interpolate,
    parse_prompts,
)

# The demo grid: attribute sets rendered through the caption templates, so the prompts use
# the training vocabulary (see `t2i.data.captions.complete_caption`).
DEMO_ATTRIBUTES: list[dict[str, bool]] = [
    {"Male": False, "Smiling": True, "Blond_Hair": True, "Young": True},
    {"Male": True, "Black_Hair": True, "Eyeglasses": True, "No_Beard": True, "Young": True},
    {"Male": True, "Bald": True, "Mustache": True, "No_Beard": False},
    {"Male": False, "Brown_Hair": True, "Wearing_Hat": True, "Wearing_Lipstick": True, "Young": True},
    {"Male": True, "Gray_Hair": True, "Smiling": True, "No_Beard": True},
    {"Male": False, "Black_Hair": True, "Bangs": True, "Eyeglasses": True, "Young": True},
]


def demo_prompts() -> list[str]:
    import numpy as np

    from t2i.attributes import ATTRIBUTE_INDEX, NUM_ATTRIBUTES
    from t2i.data.captions import complete_caption

    prompts = []
    for spec in DEMO_ATTRIBUTES:
        attrs = -np.ones(NUM_ATTRIBUTES, dtype=np.int8)
        attrs[ATTRIBUTE_INDEX["No_Beard"]] = 1  # CelebA's default: no beard unless asked
        for name, present in spec.items():
            attrs[ATTRIBUTE_INDEX[name]] = 1 if present else -1
        prompts.append(complete_caption(attrs))
    return prompts


def png_metadata(**fields) -> PngInfo:
    info = PngInfo()
    for key, value in fields.items():
        info.add_text(key, str(value))
    info.add_text("t2i", json.dumps(fields))
    return info


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("prompt", nargs="*",
                        help="one or more prompts (quote each); compose terms with AND, NOT and :weight, "
                             "e.g. 'a woman AND wearing glasses AND NOT a hat :1.5'")
    parser.add_argument("--model", required=True, help="model directory")
    parser.add_argument("-n", "--num-images", type=int, default=4, help="images per prompt")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    parser.add_argument("--guidance", type=float, default=DEFAULT_GUIDANCE)
    parser.add_argument("--sampler", default=DEFAULT_SAMPLER)
    parser.add_argument("--seed", type=int, default=0,
                        help="image k of the run uses seed SEED + k (saved in its PNG), so any one image "
                             "regenerates alone with --seed SEED+k -n 1")
    parser.add_argument("--negative", default=None, help="negative prompt")
    parser.add_argument("--out", default="outputs",
                        help="output directory; each run writes a new numbered folder in it (0001, 0002, ...)")
    parser.add_argument("--init-image", default=None, metavar="PATH",
                        help="img2img: start from this picture (centre square crop, resized to the model's size)")
    parser.add_argument("--strength", type=float, default=0.8,
                        help="img2img: share of the steps re-run on the noised picture (0 keeps it, 1 ignores it)")
    parser.add_argument("--interpolate", nargs=2, default=None, metavar=("A", "B"),
                        help="frames morphing from prompt A (seed SEED) to prompt B (seed SEED+1)")
    parser.add_argument("--frames", type=int, default=8, help="frames for --interpolate")
    parser.add_argument("--device", default=None, help="cpu | cuda | mps (default: best available)")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                        help="auto = bf16 on CUDA, fp32 elsewhere; bf16 is also faster on CPUs with AVX512-BF16")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the UNet: pays ~40 s once, then large batches run ~1.6x faster on CPU")
    parser.add_argument("--grid-prompts", action="store_true", help="add the demo's prompt set")


def next_number(out_dir: Path) -> int:
    """One more than the highest NNNN prefix in the folder, so a new run never overwrites."""
    numbers = [int(p.name[:4]) for p in out_dir.iterdir() if p.name[:4].isdigit()] if out_dir.is_dir() else []
    return max(numbers, default=0) + 1


def new_run_dir(out: Path) -> Path:
    """A new numbered folder out/NNNN (created here: two runs started at once get different ones)."""
    out.mkdir(parents=True, exist_ok=True)
    while True:
        run_dir = out / f"{next_number(out):04d}"
        try:
            run_dir.mkdir()
            return run_dir
        except FileExistsError:
            continue


class ProgressBar:
    """`step 7/20 [#######.............] 1.3 s` on one stderr line, redrawn after each sampler
    step (the pipeline's `callback(step, total, x, x0)`)."""

    def __init__(self, label: str = "step", width: int = 30, stream=None):
        self.label, self.width, self.stream = label, width, stream or sys.stderr
        self.t0 = time.perf_counter()

    def __call__(self, step: int, total: int, x=None, x0=None) -> None:
        done = step + 1
        filled = self.width * done // total
        bar = "#" * filled + "." * (self.width - filled)
        end = "\n" if done == total else ""
        self.stream.write(f"\r{self.label} {done}/{total} [{bar}] {time.perf_counter() - self.t0:.1f} s{end}")
        self.stream.flush()


def open_init_image(path: str) -> Image.Image:
    """The --init-image picture, loaded now so a bad file is a clear error before sampling."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"--init-image: no such file: {path}")
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (OSError, SyntaxError) as e:  # PIL raises these for truncated/unknown images
        raise ValueError(f"--init-image: {path} is not a readable image ({e})") from None


def run(args: argparse.Namespace) -> int:
    prompts = list(args.prompt) + (demo_prompts() if args.grid_prompts else [])
    if args.interpolate and (prompts or args.init_image or args.negative):
        raise ValueError("--interpolate A B takes its two prompts itself: give no other prompt, --init-image "
                         "or --negative")
    if not prompts and not args.interpolate:
        raise ValueError("give at least one prompt (or --grid-prompts, or --interpolate A B)")
    for prompt, parsed in zip(prompts, parse_prompts(prompts)):  # syntax errors before the model loads
        if not parsed.is_plain:
            print(f"composed prompt {prompt!r}: {parsed.describe()}")
    init_image = open_init_image(args.init_image) if args.init_image else None
    pipe = T2IPipeline.from_pretrained(args.model, device=args.device, precision=args.precision)
    if args.compile:
        pipe.compile()
    warn_about_prompts(pipe, args.interpolate or prompts, args.negative)
    out = new_run_dir(Path(args.out))
    settings = dict(steps=args.steps, guidance=args.guidance, sampler=args.sampler, model=pipe.model_id)
    t0 = time.perf_counter()
    if args.interpolate:
        images, captions = write_interpolation(pipe, args, out, settings)
        cols = len(images)
    else:
        images, captions = write_images(pipe, args, prompts, init_image, out, settings)
        cols = args.num_images
    per_image = (time.perf_counter() - t0) / len(images)
    grid_path = out / "grid.png"
    captioned_grid(images, captions, cols=cols).save(grid_path)
    print(grid_path)
    print(f"{len(images)} images, {per_image:.3f} s per image ({args.steps} steps, {args.sampler}, "
          f"guidance {args.guidance}, {pipe.device}) in {out}")
    return 0


def warn_about_prompts(pipe, prompts: list[str], negative: str | None, stream=None) -> int:
    """Print the pipeline's warnings for each prompt (words the model never saw, with the
    closest word it knows; prompts longer than it reads) to stderr. Returns how many."""
    stream = stream or sys.stderr
    lines = []
    for text in dict.fromkeys(prompts):
        lines += [f"warning: {text!r}: {w['message']}" for w in pipe.prompt_warnings(text)]
    if negative:
        lines += [f"warning: negative prompt {negative!r}: {w['message']}"
                  for w in pipe.prompt_warnings(negative, "negative_prompt")]
    for line in lines:
        print(line, file=stream)
    return len(lines)


def write_images(pipe, args, prompts, init_image, out: Path, settings: dict) -> tuple[list, list[str]]:
    images = pipe(prompts, negative_prompt=args.negative, num_images=args.num_images, seed=args.seed,
                  init_image=init_image, strength=args.strength, callback=ProgressBar(), steps=args.steps,
                  guidance=args.guidance, sampler=args.sampler)
    captions = []
    img2img = dict(init_image=args.init_image, strength=args.strength) if init_image is not None else {}
    for i, image in enumerate(images):
        prompt = prompts[i // args.num_images]
        captions.append(prompt)
        # Image i drew its noise from seed + i: that seed alone regenerates it.
        meta = dict(prompt=prompt, negative_prompt=args.negative or "", seed=args.seed + i,
                    index=i % args.num_images, **settings, **img2img)
        path = out / f"{i // args.num_images:02d}_{i % args.num_images:02d}.png"
        image.save(path, pnginfo=png_metadata(**meta))
        print(path)
    return images, captions


def write_interpolation(pipe, args, out: Path, settings: dict) -> tuple[list, list[str]]:
    prompt_a, prompt_b = args.interpolate
    frames = interpolate(pipe, prompt_a, prompt_b, seed_a=args.seed, seed_b=args.seed + 1, frames=args.frames,
                         steps=args.steps, guidance=args.guidance, sampler=args.sampler, callback=ProgressBar())
    weights = [k / max(len(frames) - 1, 1) for k in range(len(frames))]
    for k, (frame, w) in enumerate(zip(frames, weights)):
        meta = dict(prompt=prompt_a, prompt_b=prompt_b, weight=round(w, 4), seed=args.seed,
                    seed_b=args.seed + 1, index=k, **settings)
        path = out / f"frame_{k:02d}.png"
        frame.save(path, pnginfo=png_metadata(**meta))
        print(path)
    return frames, [f"{1 - w:.2f} A + {w:.2f} B" for w in weights]
