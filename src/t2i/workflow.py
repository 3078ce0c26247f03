"""`t2i train all`: every stage in order, skipping the ones that are up to date.

    data check -> vae -> clip -> encode -> unet -> judge -> eval

On data without attribute labels (captions only) the judge is skipped with one line, and eval
measures with the model's own CLIP (t2i.eval.caption_eval).

A stage is up to date when its output exists and was made from the same inputs: its
fingerprint (preset, dataset, seed and the fingerprints of the stages it reads) is recorded
in MODEL_DIR/model_index.json. A stage that was interrupted resumes from its last checkpoint
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
from t2i.config import config_to_dict
from t2i.data.celeba import FaceDataset
from t2i.data.options import DataOptions
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


@dataclass
class StageSpec:
    name: str
    output: str  # path under MODEL_DIR whose existence marks the stage done
    depends: tuple[str, ...]
    argv: list[str]  # `t2i` arguments


def plan(data: str, out: str, preset: str, seed: int, max_steps: int | None = None) -> list[StageSpec]:
    """The stages in order. `max_steps` caps every training stage's optimizer steps (a short
    check that a recipe runs end to end, or a measurement of its steps/s)."""
    common = ["--data", data, "--out", out, "--preset", preset, "--seed", str(seed)]

    def train(stage: str) -> list[str]:
        steps = []
        if max_steps is not None:
            steps = ["--steps", str(min(max_steps, preset_config(stage, preset)["loop"]["steps"]))]
        return ["train", stage, *common, *steps]

    return [
        StageSpec("vae", "vae/model.safetensors", (), train("vae")),
        StageSpec("clip", "clip/model.safetensors", (), train("clip")),
        StageSpec("encode", "latents/index.json", ("vae",),
                  ["encode", "--vae", out, "--data", data, "--out", str(Path(out) / "latents"), "--flip"]),
        StageSpec("unet", "unet/model.safetensors", ("vae", "clip", "encode"), train("unet")),
        StageSpec("judge", "judge/model.safetensors", (), train("judge")),
        StageSpec("eval", "eval/report.json", ("vae", "clip", "unet", "judge"),
                  ["eval", "--model", out, "--data", data, "--seed", str(seed), "--preset", preset]),
    ]


def preset_config(stage: str, preset: str) -> dict:
    """A stage's preset as plain data. It is part of the stage's fingerprint, so a recipe that
    changed (say, in a new t2i release) retrains the stage instead of reusing stale weights."""
    presets = getattr(STAGE_COMMANDS[stage][1], "PRESETS", {})
    config = presets.get(preset, {})
    return config if isinstance(config, dict) else config_to_dict(config)


def recipe_bases(preset: str) -> dict:
    """Every section of a recipe, as the preset has them."""
    return {"data": DataOptions(), "vae": vae.PRESETS[preset], "clip": clip.PRESETS[preset],
            "unet": unet.PRESETS[preset], "judge": judge.PRESETS[preset],
            "eval": eval_run.recipe_bases(preset)["eval"]}


def data_fingerprint(data: Path) -> str:
    """Cheap identity of a dataset: its attribute/partition/metadata files' sizes and mtimes."""
    parts = []
    for p in sorted(data.rglob("*")):
        if p.is_file() and p.suffix in (".txt", ".csv", ".jsonl", ".json") and ".t2i_cache" not in p.parts:
            st = p.stat()
            parts.append(f"{p.relative_to(data)}:{st.st_size}:{int(st.st_mtime)}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def check_data(data: Path) -> dict:
    summary = {}
    for split in ("train", "val", "test"):
        ds = FaceDataset(data, split=split)
        summary[split] = len(ds)
        summary["layout"] = ds.layout
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


def run_all(data: str, out: str, preset: str, seed: int = 0, skip: tuple[str, ...] = (),
            max_steps: int | None = None) -> dict:
    data_path, out_path = Path(data), Path(out)
    out_path.mkdir(parents=True, exist_ok=True)
    index_path = out_path / INDEX_NAME
    index = read_model_index(out_path)
    index.update(format="t2i-model", version=__version__, id=index.get("id", out_path.name))
    stages = index.setdefault("stages", {})

    t0 = time.perf_counter()
    print(f"[all] checking data in {data}")
    summary = check_data(data_path)
    print(f"[all] data: {summary['layout']} layout, {summary['train']}/{summary['val']}/{summary['test']} "
          f"train/val/test images, {len(summary['attributes'])} attributes vary")
    index["attributes"] = summary["attributes"]
    base = f"{preset}:{seed}:{data_fingerprint(data_path)}"
    if max_steps is not None:  # a capped run is a different recipe: never "up to date" for a full one
        base += f":max_steps={max_steps}"
    fingerprints: dict[str, str] = {}
    report = {"data": summary, "stages": {}}
    for spec in plan(str(data_path), str(out_path), preset, seed, max_steps):
        if spec.name in NEEDS_ATTRIBUTES and not summary["attributes"]:
            print(f"[all] {spec.name}: skipped: no attribute labels vary in {data} (the judge learns them); "
                  "eval measures with the model's CLIP instead: R-precision, CLIP score, FD on CLIP features")
            report["stages"][spec.name] = {"seconds": 0.0, "status": "skipped: no attribute labels"}
            stages.pop(spec.name, None)
            continue
        upstream = "|".join(fingerprints.get(d, "-") for d in spec.depends)
        recipe = json.dumps(preset_config(spec.name, preset), sort_keys=True)
        fp = hashlib.sha256(f"{spec.name}|{base}|{recipe}|{upstream}".encode()).hexdigest()[:16]
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
    parser.add_argument("--data", required=True, help="dataset directory")
    parser.add_argument("--out", required=True, help="model directory")
    parser.add_argument("--preset", default="synth64", choices=["tiny", "synth64", "celeba128"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip", nargs="*", default=[], choices=["vae", "clip", "encode", "unet", "judge", "eval"],
                        help="stages not to run")
    parser.add_argument("--max-steps", type=int, metavar="N",
                        help="cap every training stage at N optimizer steps (a quick end-to-end check of a "
                             "preset, or a measurement of its speed; the result is not a finished model)")


def run(args: argparse.Namespace) -> int:
    if args.max_steps is not None and args.max_steps < 1:
        raise ValueError(f"--max-steps must be >= 1, got {args.max_steps}")
    run_all(args.data, args.out, args.preset, args.seed, tuple(args.skip), args.max_steps)
    return 0
