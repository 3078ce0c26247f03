"""`t2i export MODEL_DIR OUT_DIR`: hand someone just the model.

    t2i export runs/demo exported                          # model + model card
    t2i export runs/demo space --space                     # a ready Hugging Face Space
    t2i export runs/demo exported --push-to-hub user/faces # ... and publish it ([hub] extra)

The export is what `T2IPipeline.save_pretrained` writes (tokenizer, text encoder, UNet EMA
weights, VAE with its latent scale/shift, configs, model_index.json; no checkpoints, latent
cache or logs) plus a README.md model card with Hugging Face front matter: the training data
and recipe, the eval headline table when MODEL_DIR/eval/report.json exists, limitations and a
usage snippet. `--space` writes a Space instead: README front matter (sdk: gradio), app.py,
requirements.txt, .gitattributes, the model under model/ and the t2i package beside app.py.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import shutil
from pathlib import Path

from t2i import __version__
from t2i.files import atomic_write_text
from t2i.pipeline import DEFAULT_SAMPLER, DEFAULT_STEPS, T2IPipeline, check_export_target

CARD_NAME = "README.md"
REPORT_PATH = Path("eval") / "report.json"  # inside a training dir, where `t2i eval` writes it
# Git LFS for everything binary, as a Hub repo's own .gitattributes does.
GITATTRIBUTES = "".join(f"*.{ext} filter=lfs diff=lfs merge=lfs -text\n"
                        for ext in ("safetensors", "png", "jpg", "jpeg", "gif", "webp"))
SPACE_APP = '''"""Hugging Face Space: the t2i web demo for the model in ./model (`t2i export --space`).

Limits come from T2I_MAX_STEPS, T2I_MAX_IMAGES, T2I_MAX_PROMPT_CHARS, T2I_CONCURRENCY and
T2I_QUEUE_SIZE (defaults as `t2i serve`). The host and port are gradio's (GRADIO_SERVER_NAME /
GRADIO_SERVER_PORT, which Spaces set; 127.0.0.1:7860 otherwise).

    python app.py
"""

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))  # the t2i package beside this file: the version that wrote the model

from t2i.app.limits import limits_from_env  # noqa: E402
from t2i.app.server import create_app  # noqa: E402

demo, launch_kwargs = create_app(os.environ.get("T2I_MODEL_DIR", str(ROOT / "model")), limits_from_env())

if __name__ == "__main__":
    demo.launch(**launch_kwargs)
'''


def export(model_dir: str | Path, out_dir: str | Path, space: bool = False, license: str = "mit",
           repo_id: str | None = None) -> Path:
    """Write the export (or the Space, with the model in OUT_DIR/model) and return its folder."""
    model_dir, out = Path(model_dir), Path(out_dir)
    if out.resolve() == model_dir.resolve() or model_dir.resolve() in out.resolve().parents:
        raise ValueError(f"export into {out}: choose a folder outside the model directory {model_dir}")
    pipe = T2IPipeline.from_pretrained(model_dir, device="cpu", precision="fp32")
    target = out / "model" if space else out
    if space:
        _check_space_target(out)
    pipe.save_pretrained(target)
    report = read_report(model_dir)
    where = repo_id if repo_id and not space else str(target)
    atomic_write_text(target / CARD_NAME, model_card(pipe, model_dir, report, license, where,
                                                          title=repo_id or pipe.model_id))
    atomic_write_text(target / ".gitattributes", GITATTRIBUTES)
    if space:
        write_space(out, pipe, license)
    return out


def read_report(model_dir: Path) -> dict | None:
    path = model_dir / REPORT_PATH
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None


# -- the model card ----------------------------------------------------------------------------


def model_card(pipe: T2IPipeline, model_dir: Path, report: dict | None, license: str, where: str,
               title: str) -> str:
    """README.md for the exported folder: Hugging Face model-card front matter, then what the
    model is, how to use it (loading it from `where`: a Hub repo id or a path), what it was
    trained on and how, how it measures, and its limits."""
    sections = [
        _front_matter({"license": license, "library_name": "t2i", "pipeline_tag": "text-to-image",
                       "tags": ["text-to-image", "latent-diffusion", "t2i", "faces"]}),
        f"# {title}\n\n{_summary(pipe)}",
        _usage(where),
        _data_section(pipe, model_dir),
        _recipe_section(pipe, model_dir),
        _eval_section(report),
        _limitations(pipe),
    ]
    return "\n\n".join(s.strip() for s in sections) + "\n"


def _front_matter(fields: dict) -> str:
    lines = ["---"]
    for key, value in fields.items():
        if isinstance(value, list):
            lines.append(f"{key}:")
            lines.extend(f"- {v}" for v in value)
        else:
            lines.append(f"{key}: {value}")
    return "\n".join(lines + ["---"])


def _params(module) -> str:
    n = sum(p.numel() for p in module.parameters())
    return f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n / 1e3:.0f}k"


def _summary(pipe: T2IPipeline) -> str:
    c, h, w = pipe.latent_shape()
    unet = getattr(pipe.unet, "_orig_mod", pipe.unet)
    return (
        f"A text-to-image model trained from scratch with t2i {__version__}: it draws "
        f"{pipe.image_size}x{pipe.image_size} px faces from English descriptions. Three networks: "
        f"a KL-VAE ({_params(pipe.vae)} parameters; images <-> {c}x{h}x{w} latents), a CLIP-style text "
        f"encoder ({_params(pipe.text_encoder.clip)}) and a conditional latent-diffusion UNet "
        f"({_params(unet)}, the EMA weights; {pipe.prediction}-prediction, "
        f"{pipe.schedule.kind} schedule, T={pipe.schedule.T}), sampled with {DEFAULT_SAMPLER} in {DEFAULT_STEPS} "
        "steps by default. Weights are safetensors; loading never unpickles anything."
    )


def _usage(where: str) -> str:
    return f"""## Use

With t2i installed (inference needs only torch, numpy, pillow, safetensors and tokenizers; the
`t2i[hub]` extra loads a Hub repo id):

```python
from t2i.pipeline import T2IPipeline

pipe = T2IPipeline.from_pretrained("{where}")
images = pipe("a smiling woman with blond hair wearing eyeglasses", num_images=4, seed=0)
images[0].save("face.png")   # image k of seed S is seed S + k: each one regenerates alone
```

The call also takes diffusers' names (`num_inference_steps`, `guidance_scale`, `generator`,
`negative_prompt`, `image` + `strength`, `output_type`, `return_dict`). From the command line:
`t2i generate --model {where} "a bald man with a mustache"`; a web demo: `t2i serve --model {where}`."""


def _data_section(pipe: T2IPipeline, model_dir: Path) -> str:
    lines = ["## Training data", ""]
    cache = _read_json(model_dir / "latents" / "index.json")
    if cache.get("n"):
        variants = cache.get("variants") or ["original"]
        lines.append(f"- {cache['n']:,} training images ({' + '.join(variants)}), each with several captions "
                     "written from its attribute labels (CelebA's 40 attribute columns, or SynthFaces, t2i's "
                     "synthetic faces in CelebA's layout).")
    attributes = pipe.model_index.get("attributes")
    if attributes:
        lines.append(f"- Attributes that vary in the data (what prompts can ask for): {', '.join(attributes)}.")
    if len(lines) == 2:
        lines.append("- Not recorded in the model directory this was exported from.")
    return "\n".join(lines)


def _recipe_section(pipe: T2IPipeline, model_dir: Path) -> str:
    configs = pipe.component_configs
    stages = pipe.model_index.get("stages", {})
    loops = {
        "VAE": (configs.get("vae", {}).get("training") or {}).get("loop"),
        "CLIP": (configs.get("clip", {}).get("training") or {}).get("loop"),
        "UNet": (configs.get("unet", {}).get("stage_config") or {}).get("loop"),
    }
    rows = []
    for stage, loop in loops.items():
        if not isinstance(loop, dict):
            continue
        record = stages.get(stage.lower(), {})
        seconds = record.get("seconds")
        # What ran ("auto" resolves per device), as the stage recorded it.
        precision = (record.get("metrics") or {}).get("mixed_precision", loop.get("mixed_precision", "-"))
        rows.append((stage, f"{loop.get('steps', '-')} x {loop.get('batch_size', '-')}", str(loop.get("lr", "-")),
                     str(precision), f"{seconds:.0f} s" if seconds else "-"))
    lines = ["## Training recipe", ""]
    if rows:
        lines += _markdown_table(("stage", "steps x batch", "peak lr", "precision", "time"), rows)
    else:
        lines.append("Not recorded in the model directory this was exported from.")
    vae = _read_json(model_dir / "vae" / "metrics.json")
    clip = _read_json(model_dir / "clip" / "metrics.json")
    notes = []
    if "psnr" in vae:
        notes.append(f"VAE reconstruction on held-out images: PSNR {vae['psnr']} dB, SSIM {vae.get('ssim', '-')}")
    if "zeroshot_mean_balanced_accuracy" in clip:
        notes.append(f"CLIP zero-shot attribute accuracy (balanced): {clip['zeroshot_mean_balanced_accuracy']}")
    if notes:
        lines += [""] + [f"- {n}." for n in notes]
    lines += ["", "Each component's config.json keeps its full training configuration."]
    return "\n".join(lines)


def _eval_section(report: dict | None) -> str:
    lines = ["## Evaluation", ""]
    if report is None:
        lines.append("No eval report was found beside the model (`t2i eval --model MODEL_DIR` writes one).")
        return "\n".join(lines)
    from t2i.eval.report import headline_rows

    s = report.get("settings", {})
    info = (report.get("suite") or {}).get("info", {})
    judge = (report.get("judge") or {}).get("test_mean_balanced_accuracy")
    lines.append(
        f"Measured by `t2i eval` on {report.get('created', 'an unrecorded date')}: "
        f"{info.get('test_prompts', '?')} test prompts + {info.get('heldout_prompts', '?')} held-out attribute "
        f"combinations x {s.get('n_per_prompt', '?')} images each, {s.get('sampler', '?')} sampler, "
        f"{s.get('steps', '?')} steps, guidance {s.get('guidance', '?')}, seed {s.get('seed', '?')}, on "
        f"{report.get('device', '?')}. Faithfulness is judged by an attribute classifier trained on the real "
        f"training images (test balanced accuracy {judge if judge is not None else '-'}); FD is the Frechet distance "
        "of that classifier's features (not Inception FID: not comparable to published FIDs); the CLIP score "
        "uses this model's own CLIP. Real images give the ceiling, shuffled prompts the floor.")
    lines.append("")
    lines += _markdown_table(("metric", "generated", "real (ceiling / reference)", "floor / control"),
                             headline_rows(report))
    return "\n".join(lines)


def _limitations(pipe: T2IPipeline) -> str:
    return f"""## Limitations

- It knows faces at {pipe.image_size}x{pipe.image_size} px and the words of its training captions:
  other subjects, styles, resolutions or vocabulary come out as faces that ignore those words.
- Faithfulness and FD are measured by models trained on the same data (a judge, this CLIP), not
  by people, and on that data's distribution.
- Whatever the training set over- or under-represents (age, skin tone, accessories; CelebA is
  celebrities) carries over to the images.
- The weights inherit the terms of their training data: CelebA is for non-commercial research
  only. Set `--license` on `t2i export` to match."""


def _markdown_table(header: tuple, rows: list[tuple]) -> list[str]:
    def row(cells) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return [row(header), row(["---"] * len(header))] + [row(r) for r in rows]


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


# -- the Space -----------------------------------------------------------------------------------


def _check_space_target(out: Path) -> None:
    if out.is_dir() and any(out.iterdir()) and not (out / "app.py").is_file():
        raise ValueError(f"{out} is not empty and holds no earlier Space export; refusing to write into it")
    if (out / "model").exists():
        check_export_target(out / "model")


def write_space(out: Path, pipe: T2IPipeline, license: str) -> None:
    """The Space around OUT_DIR/model: front matter, app.py, requirements.txt, .gitattributes,
    and the t2i package itself (so the Space runs the code that wrote the model)."""
    fields = {"title": f"t2i {pipe.model_id}", "emoji": "🙂", "colorFrom": "indigo", "colorTo": "pink",
              "sdk": "gradio"}
    gradio_version = _installed_version("gradio")
    if gradio_version:
        fields["sdk_version"] = gradio_version
    fields |= {"app_file": "app.py", "pinned": "false", "license": license,
               "tags": ["text-to-image", "t2i"]}
    readme = (f"{_front_matter(fields)}\n\n# t2i: {pipe.model_id}\n\nA web demo of a t2i text-to-image model "
              "(faces from English descriptions): the model and its card are in [model/](model/README.md).\n\n"
              "Run it anywhere with `pip install -r requirements.txt && python app.py`.\n")
    atomic_write_text(out / "README.md", readme)
    atomic_write_text(out / "app.py", SPACE_APP)
    atomic_write_text(out / "requirements.txt", "".join(f"{r}\n" for r in [
        "# t2i's core and [app] dependencies. On CPU hardware, uncomment the next line for torch's",
        "# CPU build (a few hundred MB instead of the CUDA build's few GB):",
        "# --extra-index-url https://download.pytorch.org/whl/cpu",
        *space_requirements()]))
    atomic_write_text(out / ".gitattributes", GITATTRIBUTES)
    package = Path(__file__).resolve().parent
    shutil.rmtree(out / "t2i", ignore_errors=True)
    shutil.copytree(package, out / "t2i", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


def space_requirements() -> list[str]:
    """What the Space installs: t2i's core dependencies and its [app] extra, with the ranges of
    the installed t2i (its package metadata)."""
    try:
        requires = importlib.metadata.requires("t2i") or []
    except importlib.metadata.PackageNotFoundError:
        raise ValueError("t2i export --space reads the dependency ranges from the installed t2i "
                         "package; install it first (pip install -e .)") from None
    wanted = []
    for req in requires:
        spec, _, marker = req.partition(";")
        marker = marker.replace(" ", "").replace("'", '"')
        if not marker or marker == 'extra=="app"':
            wanted.append(spec.strip())
    return wanted


def _installed_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


# -- command line --------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL_DIR", help="trained model directory (or an earlier export)")
    parser.add_argument("out", metavar="OUT_DIR", help="new folder to write (empty, or an earlier export)")
    parser.add_argument("--space", action="store_true",
                        help="write a Hugging Face Space (app.py, requirements.txt, README front matter) "
                             "with the model in OUT_DIR/model")
    parser.add_argument("--license", default="mit",
                        help="license id for the card's front matter (default mit; weights trained on "
                             "CelebA carry its non-commercial terms: e.g. other)")
    parser.add_argument("--push-to-hub", metavar="REPO", default=None,
                        help="then upload OUT_DIR to Hugging Face Hub repo user/name (a Space with "
                             "--space); needs the [hub] extra, network access and a write token")
    parser.add_argument("--private", action="store_true", help="with --push-to-hub: create a private repo")


def run(args: argparse.Namespace) -> int:
    out = export(args.model, args.out, space=args.space, license=args.license, repo_id=args.push_to_hub)
    files = [p for p in out.rglob("*") if p.is_file()]
    size = sum(p.stat().st_size for p in files)
    print(f"wrote {out} ({len(files)} files, {size / 1e6:.1f} MB)")
    if args.push_to_hub:
        from t2i.errors import CLIError
        from t2i.hub import push_folder

        try:
            url = push_folder(out, args.push_to_hub, space=args.space, private=args.private)
        except Exception as e:  # huggingface_hub's: offline mode, no token, no permission, HTTP
            if not type(e).__module__.startswith("huggingface_hub"):
                raise
            raise CLIError(f"pushing {out} to {args.push_to_hub} failed ({type(e).__name__}: {e}); the export "
                           "itself is written. Pushing needs the network (HF_HUB_OFFLINE=0) and a write token "
                           "(hf auth login)") from None
        print(f"pushed to {url}")
    return 0
