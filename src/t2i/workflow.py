"""`t2i train all`: every stage in order, skipping the ones that are up to date.

    data check -> vae -> clip -> encode -> unet -> judge -> eval

(encode before clip when CLIP's image tower reads VAE latents: it trains on the latent cache.)

On data without attribute labels (captions only) the judge is skipped with one line, and eval
measures with the model's own CLIP (t2i.eval.caption_eval).

A stage is up to date when its output exists and was made from the same inputs: its
fingerprint (its sections of the resolved recipe, the seed, the content of the data it reads —
t2i.data.fingerprint — and the fingerprints of the stages it reads) is recorded in
MODEL_DIR/model_index.json. The resolved recipe is MODEL_DIR/recipe.json; every stage reads it
(`--config`). A stage that was interrupted resumes from its last checkpoint
(the shared loop does that); a stage whose inputs changed starts over.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from t2i import __version__
from t2i.attributes import CELEBA_ATTRIBUTES
from t2i.checkpoint import INDEX_NAME, atomic_write_json, read_model_index
from t2i.config import (
    add_recipe_arguments,
    recipe_fingerprint,
    recipe_from_args,
    recipe_to_dict,
    resolve_recipe,
)
from t2i.data.celeba import FaceDataset
from t2i.data.fingerprint import dataset_fingerprints
from t2i.data.options import (
    DataOptions,
    add_data_arguments,
    data_option_argv,
    data_options_from_args,
)
from t2i.errors import CLIError, run_command
from t2i.eval import run as eval_run
from t2i.eval.report import eval_headline
from t2i.train import clip, encode, judge, unet, vae

# Each stage's `t2i` command words and the module that runs it.
STAGE_COMMANDS = {
    "vae": (("train", "vae"), vae), "clip": (("train", "clip"), clip), "encode": (("encode",), encode),
    "unet": (("train", "unet"), unet), "judge": (("train", "judge"), judge), "eval": (("eval",), eval_run),
}


# Stages that learn from attribute labels: skipped, with one line, on captions-only data.
NEEDS_ATTRIBUTES = ("judge",)
RECIPE_NAME = "recipe.json"


@dataclass
class StageSpec:
    name: str
    output: str  # path under MODEL_DIR whose existence marks the stage done
    depends: tuple[str, ...]
    argv: list[str]  # `t2i` arguments
    # What of the data and the recipe the stage reads (its fingerprint): parts of
    # dataset_fingerprints ("images": names and splits, "labels", "files": annotation content)
    # and recipe sections.
    data: tuple[str, ...] = ("files",)
    sections: tuple[str, ...] = ()


def plan(data: str, out: str, recipe: dict, seed: int, max_steps: int | None = None) -> list[StageSpec]:
    """The stages in order, reading `recipe` (written to OUT/recipe.json). `max_steps` caps every
    training stage's optimizer steps (a short check that a recipe runs end to end, or a
    measurement of its steps/s)."""
    preset = recipe["preset"]
    config = ["--config", str(Path(out) / RECIPE_NAME)]
    common = ["--data", data, "--out", out, "--preset", preset, "--seed", str(seed), *config]

    def train(stage: str) -> list[str]:
        steps = []
        if max_steps is not None:
            steps = ["--steps", str(min(max_steps, recipe[stage].loop.steps))]
        return ["train", stage, *common, *steps]

    # A CLIP whose image tower reads VAE latents trains on the latent cache: encode runs first.
    clip_reads_latents = recipe["clip"].model.image_input == "latents"
    clip_stage = StageSpec("clip", "clip/model.safetensors", ("vae", "encode") if clip_reads_latents else (),
                           train("clip"), sections=("data", "clip"))
    encode_stage = StageSpec("encode", "latents/index.json", ("vae",),
                             ["encode", "--vae", out, "--data", data, "--out", str(Path(out) / "latents"),
                              "--flip", *data_option_argv(recipe["data"])], sections=("data",))
    return [
        StageSpec("vae", "vae/model.safetensors", (), train("vae"), ("images",), ("vae",)),
        *((encode_stage, clip_stage) if clip_reads_latents else (clip_stage, encode_stage)),
        StageSpec("unet", "unet/model.safetensors", ("vae", "clip", "encode"), train("unet"),
                  sections=("data", "unet")),
        StageSpec("judge", "judge/model.safetensors", (), train("judge"), ("images", "labels"), ("judge",)),
        StageSpec("eval", "eval/report.json", ("vae", "clip", "unet", "judge"),
                  ["eval", "--model", out, "--data", data, "--seed", str(seed), "--preset", preset, *config],
                  sections=("data", "eval")),
    ]


def recipe_bases(preset: str) -> dict:
    """Every section of a recipe, as the preset has them."""
    return {"data": DataOptions(), "vae": vae.PRESETS[preset], "clip": clip.PRESETS[preset],
            "unet": unet.PRESETS[preset], "judge": judge.PRESETS[preset],
            "eval": eval_run.recipe_bases(preset)["eval"]}


def check_data(data: Path, data_options: DataOptions | None = None) -> dict:
    summary = {}
    for split in ("train", "val", "test"):
        ds = FaceDataset(data, split=split, options=data_options)
        summary[split] = len(ds)
        summary.update(layout=ds.layout, split_source=ds.split_source, has_attributes=ds.has_attributes)
        if split == "train":
            if len(ds) == 0:
                raise ValueError(f"{data}: the train split is empty")
            frequency = ds.attributes.mean(0)
            # Attributes that take both values: the ones the model can learn (and the app offers).
            summary["attributes"] = [a for a, f in zip(CELEBA_ATTRIBUTES, frequency.tolist()) if 0 < f < 1]
    return summary


def run_stage(spec: StageSpec) -> int:
    """Run a stage's command with its arguments (`spec.argv`); returns its exit code."""
    words, module = STAGE_COMMANDS[spec.name]
    if tuple(spec.argv[: len(words)]) != words:
        raise ValueError(f"stage {spec.name}: expected `t2i {' '.join(words)} ...`, got {spec.argv}")
    parser = argparse.ArgumentParser(prog="t2i " + " ".join(words))
    module.add_arguments(parser)
    return run_command(module.run, parser.parse_args(spec.argv[len(words) :]))


def run_all(data: str, out: str, preset: str | None = None, seed: int = 0, skip: tuple[str, ...] = (),
            max_steps: int | None = None, recipe: dict | None = None) -> dict:
    """Train every stage of `recipe` (default: the preset's) on `data` into `out`."""
    recipe = recipe or resolve_recipe(recipe_bases, preset)
    data_path, out_path = Path(data), Path(out)
    out_path.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_path / RECIPE_NAME, recipe_to_dict(recipe))
    index_path = out_path / INDEX_NAME
    index = read_model_index(out_path)
    index.update(format="t2i-model", version=__version__, id=index.get("id", out_path.name))
    stages = index.setdefault("stages", {})

    t0 = time.perf_counter()
    print(f"[all] checking data in {data}")
    summary = check_data(data_path, recipe["data"])
    print(f"[all] data: {summary['layout']} layout, {summary['train']}/{summary['val']}/{summary['test']} "
          f"train/val/test images (split: {summary['split_source']}), {len(summary['attributes'])} attributes vary")
    index["attributes"] = summary["attributes"]
    # Content hashes of the annotation files, cached by (size, mtime) so big files are re-read
    # only when touched.
    hash_cache_path = out_path / "checkpoints" / "data_hashes.json"
    hash_cache = json.loads(hash_cache_path.read_text()) if hash_cache_path.is_file() else {}
    data_fp = dataset_fingerprints(data_path, recipe["data"], hash_cache)
    atomic_write_json(hash_cache_path, hash_cache)
    # A capped run is a different recipe: never "up to date" for a full one.
    capped = f"|max_steps={max_steps}" if max_steps is not None else ""
    fingerprints: dict[str, str] = {}
    report = {"data": summary, "stages": {}}
    for spec in plan(str(data_path), str(out_path), recipe, seed, max_steps):
        if spec.name in NEEDS_ATTRIBUTES and not summary["attributes"]:
            print(f"[all] {spec.name}: skipped: no attribute labels vary in {data} (the judge learns them); "
                  "eval measures with the model's CLIP instead: R-precision, CLIP score, FD on CLIP features")
            report["stages"][spec.name] = {"seconds": 0.0, "status": "skipped: no attribute labels"}
            stages.pop(spec.name, None)
            continue
        upstream = "|".join(fingerprints.get(d, "-") for d in spec.depends)
        reads = "|".join([*(data_fp[k] for k in spec.data), recipe_fingerprint(recipe, *spec.sections)])
        fp = hashlib.sha256(f"{spec.name}|{seed}|{reads}|{upstream}{capped}".encode()).hexdigest()[:16]
        fingerprints[spec.name] = fp
        record = stages.get(spec.name, {})
        done = (out_path / spec.output).exists() and record.get("fingerprint") == fp
        if spec.name in skip or done:
            why = "skipped by request" if spec.name in skip else "up to date"
            print(f"[all] {spec.name}: {why}")
            report["stages"][spec.name] = {"seconds": 0.0, "status": why}
            continue
        ckpt = out_path / "checkpoints" / spec.name
        if record.get("fingerprint") != fp:
            # Inputs changed (or first run): stale checkpoints and outputs must not be resumed.
            if record:
                shutil.rmtree(ckpt, ignore_errors=True)
            record = {"fingerprint": fp}
            stages[spec.name] = record
            atomic_write_json(index_path, index)
        print(f"[all] {spec.name}: t2i {' '.join(spec.argv)}")
        start = time.perf_counter()
        code = run_stage(spec)
        seconds = time.perf_counter() - start
        # Time spent counts even when the stage stopped: "in total" includes interrupted runs.
        record["seconds"] = round(record.get("seconds", 0.0) + seconds, 1)
        atomic_write_json(index_path, index)
        if code != 0:
            raise CLIError(f"stage {spec.name} stopped with exit code {code}; run the same command again "
                           "to resume it")
        record["finished"] = time.time()
        record["metrics"] = _stage_metrics(out_path, spec.name)
        atomic_write_json(index_path, index)
        report["stages"][spec.name] = {"seconds": round(seconds, 1), "status": "trained"}
    report["total_seconds"] = round(time.perf_counter() - t0, 1)
    _print_summary(out_path, index, report)
    return report


def _stage_metrics(out: Path, name: str) -> dict:
    path = {"eval": out / "eval" / "report.json"}.get(name, out / name / "metrics.json")
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    if name == "eval":
        return eval_headline(data)
    return data


def _print_summary(out: Path, index: dict, report: dict) -> None:
    print("\n[all] summary")
    for name, rec in index["stages"].items():
        now = report["stages"].get(name, {})
        print(f"  {name:7s} {now.get('seconds', 0):8.1f} s this run ({now.get('status', '')}); "
              f"{rec.get('seconds', 0):.1f} s in total")
    headline = index["stages"].get("eval", {}).get("metrics", {})
    if headline:
        print("  eval headline: " + json.dumps(headline))
    print(f"  total {report['total_seconds']:.1f} s; report: {out / 'eval' / 'report.html'}; "
          f"samples: {out / 'samples'}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", help="dataset directory (required unless --print-config)")
    parser.add_argument("--out", help="model directory (required unless --print-config)")
    parser.add_argument("--preset", choices=["tiny", "synth64", "celeba128"], help="default: synth64")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip", nargs="*", default=[], choices=["vae", "clip", "encode", "unet", "judge", "eval"],
                        help="stages not to run")
    parser.add_argument("--max-steps", type=int, metavar="N",
                        help="cap every training stage at N optimizer steps (a quick end-to-end check of a "
                             "preset, or a measurement of its speed; the result is not a finished model)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved recipe (JSON) and exit")
    add_recipe_arguments(parser)
    add_data_arguments(parser)


def run(args: argparse.Namespace) -> int:
    recipe = recipe_from_args(args, recipe_bases)
    recipe["data"] = data_options_from_args(args, recipe["data"])
    if args.print_config:
        print(json.dumps(recipe_to_dict(recipe), indent=2))
        return 0
    missing = [flag for flag in ("--data", "--out") if getattr(args, flag[2:]) is None]
    if missing:
        raise CLIError(f"train all needs {' and '.join(missing)}")
    if args.max_steps is not None and args.max_steps < 1:
        raise ValueError(f"--max-steps must be >= 1, got {args.max_steps}")
    run_all(args.data, args.out, seed=args.seed, skip=tuple(args.skip), max_steps=args.max_steps, recipe=recipe)
    return 0
