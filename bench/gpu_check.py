"""The GPU path in one command: CUDA tests, side-by-side benchmarks, the celeba128 recipe.

    make gpu-check                  # python bench/gpu_check.py (one CUDA GPU, under 8 minutes)
    make gpu-check DRY=1            # python bench/gpu_check.py --dry-run (CPU, tiny sizes, ~1 minute)

Five parts, each a child process with its own time box inside one overall budget (a part that
fails or runs out of time is recorded and the next one starts):

  1. cuda-tests   pytest -m cuda tests/test_cuda.py: every stage under bf16/fp16 autocast with
                  the real loss scaler, fused AdamW, fp16 overflow skip, bitwise UNet resume,
                  compiled training and CUDA-graph sampling against eager, bf16 against fp32
  2. unet-bench   bench/unet.py --device cuda: t2i's UNet beside diffusers' UNet2DConditionModel
                  in the reference project's denoiser config, bf16: train img/s at batch 256
                  eager and compiled, ms/step at batch 1 and 16 eager and as a CUDA-graph
                  replay, peak memory, achieved TFLOP/s
  3. pipeline     bench/pipeline.py --device cuda: seconds per image end to end (20 guided
                  steps + decode) at batch 1 and 64, eager against compiled + CUDA graphs, for
                  the demo's shapes and celeba128's (random weights unless --demo-model is given)
  4. celeba128    SynthFaces (rendered at CelebA's 178x218, read at 128 px), `t2i train all
                  --preset celeba128 --max-steps N --skip eval`, `t2i generate`, and the measured
                  steps/s of each stage turned into a projected wall time for the full recipe
  5. torchrun     the UNet stage under `torchrun --nproc_per_node 1` (NCCL), stopped and resumed

It writes bench/results/gpu_check.{json,md} (the dry run: gpu_check_dry_run.{json,md}) and
prints the headline. `--dry-run` runs the same parts on the CPU with tiny sizes and a few steps;
what needs CUDA (the CUDA tests, compiled and CUDA-graph timings) is reported as
"not run (no CUDA)". Exit code: 0 when no part failed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "a smiling young woman with blond hair wearing eyeglasses"
NOT_RUN_NO_CUDA = "not run (no CUDA)"
# CelebA: 202,599 images, 162,770 of them in the train split (the part the encode stage reads).
CELEBA_TRAIN_IMAGES = 162_770
TARGET_RECIPE_HOURS = 8.0


@dataclass
class Sizes:
    """What each part runs: the GPU sizes, or tiny ones for the dry run."""

    budget_s: float  # all parts together
    boxes: dict[str, float]  # part -> its own time box
    reserve: dict[str, float]  # part -> time kept back for it while earlier parts run
    unet_bench: list[str]  # bench/unet.py arguments (eager run)
    unet_models: str
    unet_compiled: list[str] | None  # the compiled + CUDA-graph run (None: needs CUDA)
    pipeline_shapes: dict[str, str]  # label -> training preset whose shapes are timed
    pipeline_args: list[str]
    synth_images: int
    recipe_preset: str
    recipe_steps: int
    torchrun_steps: int


GPU = Sizes(
    budget_s=470,  # 7 min 50 s: the whole check stays under 8 minutes
    boxes={"cuda-tests": 140, "unet-bench": 130, "pipeline": 110, "celeba128": 130, "torchrun": 60},
    reserve={"cuda-tests": 0, "unet-bench": 80, "pipeline": 70, "celeba128": 90, "torchrun": 40},
    unet_bench=["--device", "cuda", "--bf16", "--rounds", "3"],
    unet_models="diffusers-baseline,t2i-equal,t2i-equal-nokv",
    # compiled training; sampling replays a CUDA graph of the eager forward (compiling the
    # sampling shapes too would cost more compile time than the window has; part 3 times
    # compiled + CUDA-graph sampling end to end)
    unet_compiled=["--device", "cuda", "--bf16", "--compile", "--eager-sampling", "--cuda-graphs", "--rounds", "3"],
    pipeline_shapes={"demo (synth64)": "synth64", "celeba128": "celeba128"},
    pipeline_args=["--device", "cuda", "--compare-compile", "--settings", "default", "--batches", "1", "64",
                   "--repeats", "3"],
    synth_images=2048,  # >= celeba128's largest batch (CLIP/UNet 256) in the train split
    recipe_preset="celeba128", recipe_steps=200, torchrun_steps=20,
)
DRY = Sizes(
    budget_s=600,
    boxes={"cuda-tests": 120, "unet-bench": 180, "pipeline": 120, "celeba128": 240, "torchrun": 120},
    reserve={name: 0 for name in ("cuda-tests", "unet-bench", "pipeline", "celeba128", "torchrun")},
    unet_bench=["--device", "cpu", "--tiny", "--quick", "--rounds", "1", "--train-batch", "2", "--sample-batches", "1,2"],
    unet_models="diffusers-baseline,t2i-equal",
    unet_compiled=None,
    pipeline_shapes={"tiny": "tiny"},
    pipeline_args=["--device", "cpu", "--settings", "default", "--batches", "1", "2", "--repeats", "1"],
    synth_images=64, recipe_preset="tiny", recipe_steps=3, torchrun_steps=2,
)


@dataclass
class Part:
    name: str
    status: str = "not run"  # passed | failed | timed out | not run (...)
    seconds: float = 0.0
    summary: str = ""
    details: dict = field(default_factory=dict)
    logs: list[str] = field(default_factory=list)


class Runner:
    """Runs child processes inside the overall deadline, logging each to the work dir."""

    def __init__(self, work: Path, deadline: float, env: dict[str, str]):
        self.work, self.deadline, self.env = work, deadline, env
        self.part_deadline = deadline

    def left(self) -> float:
        return min(self.deadline, self.part_deadline) - time.monotonic()

    def run(self, name: str, argv: list[str], part: Part) -> subprocess.CompletedProcess | None:
        """Run argv; None if it ran out of time (the part is then marked timed out)."""
        log = self.work / f"{name}.log"
        part.logs.append(str(log))
        timeout = self.left()
        if timeout <= 1:
            part.status = "timed out"
            return None
        with open(log, "w") as f:
            f.write("$ " + " ".join(argv) + "\n")
            f.flush()
            # A new session: on a timeout the whole tree (torchrun's workers too) is killed.
            proc = subprocess.Popen(argv, cwd=ROOT, env=self.env, stdout=f, stderr=subprocess.STDOUT,
                                    start_new_session=True)
            try:
                rc = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                part.status = "timed out"
                return None
        return subprocess.CompletedProcess(argv, rc, log.read_text(errors="replace"))


def tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def python(*args: str) -> list[str]:
    return [sys.executable, *args]


def t2i(*args: str) -> list[str]:
    return python("-m", "t2i.cli", *args)


def check_rc(result, part: Part, what: str) -> bool:
    if result is None:
        part.summary = f"{what}: ran out of time"
        return False
    if result.returncode != 0:
        part.status = "failed"
        part.summary = f"{what}: exit code {result.returncode}"
        part.details.setdefault("errors", []).append({"step": what, "log_tail": tail(result.stdout)})
        return False
    return True


# -- 1. the CUDA tests ------------------------------------------------------------------------


def part_cuda_tests(run: Runner, sizes: Sizes, cuda: bool, part: Part, state: dict) -> None:
    junit = run.work / "cuda_tests.xml"
    result = run.run("cuda_tests", python("-m", "pytest", "-m", "cuda", "tests/test_cuda.py", "-q", "-rs",
                                          "-p", "no:cacheprovider", f"--junitxml={junit}"), part)
    if result is None:
        part.summary = "pytest ran out of time"
        return
    tests = parse_junit(junit) if junit.is_file() else []
    counts = {k: sum(t["outcome"] == k for t in tests) for k in ("passed", "failed", "skipped")}
    part.details = {"tests": tests, **counts}
    if result.returncode not in (0, 5) or counts["failed"]:
        part.status = "failed"
        failed = [t["name"] for t in tests if t["outcome"] == "failed"]
        part.summary = f"{counts['failed']} of {len(tests)} failed: {', '.join(failed) or tail(result.stdout, 3)}"
    elif not cuda:
        part.status = NOT_RUN_NO_CUDA
        part.summary = f"{len(tests)} CUDA tests collected, all skipped without a GPU"
    elif counts["skipped"]:
        part.status = "failed"  # on a GPU nothing here may skip
        part.summary = f"{counts['skipped']} of {len(tests)} skipped on a GPU"
    else:
        part.status = "passed"
        part.summary = f"{counts['passed']} of {len(tests)} passed"


def parse_junit(path: Path) -> list[dict]:
    tests = []
    for case in ET.parse(path).iter("testcase"):
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            node = case.find(tag)
            if node is not None:
                outcome = "skipped" if tag == "skipped" else "failed"
                message = (node.get("message") or "")[:500]
        tests.append({"name": case.get("name"), "outcome": outcome, "seconds": float(case.get("time", 0)),
                      "message": message})
    return tests


# -- 2. the UNet beside diffusers' --------------------------------------------------------------


def part_unet_bench(run: Runner, sizes: Sizes, cuda: bool, part: Part, state: dict) -> None:
    runs = {"eager": sizes.unet_bench + ["--models", sizes.unet_models]}
    if sizes.unet_compiled is not None:
        runs["compiled"] = sizes.unet_compiled + ["--models", "diffusers-baseline,t2i-equal"]
    tables = {}
    for mode, args in runs.items():
        out = run.work / f"unet_{mode}.json"
        result = run.run(f"unet_{mode}", python("bench/unet.py", *args, "--out", str(out)), part)
        if not check_rc(result, part, f"bench/unet.py ({mode})"):
            break
        tables[mode] = json.loads(out.read_text())
    part.details = {"runs": {m: {"command": t["command"], "results": t["results"], "machine": t["machine"]}
                             for m, t in tables.items()},
                    "compiled": "ran" if sizes.unet_compiled is not None else NOT_RUN_NO_CUDA}
    if "eager" not in tables:
        return
    rows = unet_rows(tables)
    part.details["rows"] = rows
    base = next((r for r in rows if r["model"] == "diffusers-baseline" and r["mode"] == "eager"), None)
    best = max((r for r in rows if r["model"] == "t2i-equal"), key=lambda r: r["train_img_per_s"], default=None)
    if base and best:
        part.details["train_speedup_vs_diffusers_eager"] = round(best["train_img_per_s"] / base["train_img_per_s"], 2)
        part.summary = (f"train: t2i-equal {best['train_img_per_s']:,.0f} img/s ({best['mode']}) vs diffusers "
                        f"{base['train_img_per_s']:,.0f} eager = {part.details['train_speedup_vs_diffusers_eager']}x")
    if part.status == "not run":
        part.status = "passed" if cuda else "passed (CPU, eager only; compiled + CUDA graphs: not run (no CUDA))"


def unet_rows(tables: dict) -> list[dict]:
    rows = []
    for mode, table in tables.items():
        for model, res in table["results"].items():
            row = {"model": model, "mode": mode, "params_m": round(res["params"] / 1e6, 2),
                   "train_img_per_s": res["train_img_per_s"], "train_tflops": res["train_tflops"]}
            row.update({k: v for k, v in res.items() if k.startswith("sample_ms_per_step_b") and not k.endswith("best")})
            if "peak_mem_mib" in res:
                row["peak_train_mib"] = res["peak_mem_mib"].get("train")
            rows.append(row)
    return rows


# -- 3. the pipeline end to end -------------------------------------------------------------------


def part_pipeline(run: Runner, sizes: Sizes, cuda: bool, part: Part, state: dict) -> None:
    results = {}
    for label, preset in sizes.pipeline_shapes.items():
        out = run.work / f"pipeline_{preset}.json"
        source = ["--random-init", preset]
        if state.get("demo_model") and preset == "synth64":
            source = ["--model", state["demo_model"]]
        result = run.run(f"pipeline_{preset}", python("bench/pipeline.py", *source, *sizes.pipeline_args,
                                                      "--out", str(out)), part)
        if not check_rc(result, part, f"bench/pipeline.py ({label})"):
            break
        results[label] = json.loads(out.read_text())
    part.details = {"models": results, "compiled": "ran" if cuda else NOT_RUN_NO_CUDA}
    one = []
    for label, res in results.items():
        best = min((r for r in res["rows"] if r["batch"] == 1), key=lambda r: r["seconds_per_image"])
        one.append(f"{label} {best['seconds_per_image'] * 1e3:.1f} ms/image at batch 1 ({best['mode']})")
    part.summary = "; ".join(one)
    if part.status == "not run":
        part.status = "passed" if cuda else "passed (CPU, eager only; compiled + CUDA graphs: not run (no CUDA))"


# -- 4. the celeba128 recipe ----------------------------------------------------------------------


def part_recipe(run: Runner, sizes: Sizes, cuda: bool, part: Part, state: dict) -> None:
    data, model = run.work / "synthfaces", run.work / f"{sizes.recipe_preset}_model"
    # One process for the three commands (as a user types them): imports and CUDA start once.
    commands = [
        ["data", "synth", "--out", str(data), "--n", str(sizes.synth_images), "--seed", "0"],
        ["train", "all", "--data", str(data), "--out", str(model), "--preset", sizes.recipe_preset,
         "--max-steps", str(sizes.recipe_steps), "--skip", "eval"],
        ["generate", PROMPT, "--model", str(model), "-n", "4", "--seed", "0", "--out", str(run.work / "generated")],
    ]
    result = run.run("recipe", cli_sequence(commands), part)
    if check_rc(result, part, "t2i data synth, train all, generate"):
        state["recipe_model"], state["recipe_data"] = model, data
    if (model / "model_index.json").is_file():
        part.details = project_recipe(model, data, sizes)
        images = [p for p in (run.work / "generated").rglob("*.png") if p.name != "grid.png"]
        part.details["generated_images"] = len(images)
        if images:
            from PIL import Image

            part.details["generated_size"] = list(Image.open(images[0]).size)
    if part.status == "not run":
        d = part.details
        part.status = "passed"
        part.summary = (f"{sizes.recipe_preset} ({d['image_size']} px) ran every stage for {sizes.recipe_steps} steps "
                        f"and generated {d['generated_images']} images of {d.get('generated_size')}; full recipe "
                        f"projected at {d['projected_hours']:.2f} h (dominated by {d['dominant_stage']})")


def cli_sequence(commands: list[list[str]], launcher: list[str] | None = None, info: Path | None = None) -> list[str]:
    """A child (started by `launcher`, default python) that runs `t2i` commands one after
    another, stopping at the first failure; with `info`, it records each run's process group."""
    return [*(launcher or python()), str(ROOT / "bench" / "gpu_check.py"), "--cli-sequence", json.dumps(commands),
            *(["--info", str(info)] if info else [])]


def run_cli_sequence(commands: list[list[str]], info_path: str | None = None) -> int:
    """Run each `t2i` command in this process; with `info_path` (under torchrun) also record
    the process group each ran in."""
    sys.path.insert(0, str(ROOT / "src"))
    from t2i.cli import main

    runs = []
    for argv in commands:
        print(f"$ t2i {' '.join(argv)}", flush=True)
        rc = main(argv)
        if info_path:
            import torch.distributed as dist

            runs.append({"rc": rc, "backend": dist.get_backend() if dist.is_initialized() else None,
                         "world_size": dist.get_world_size() if dist.is_initialized() else 1,
                         "rank": int(os.environ.get("RANK", 0))})
            Path(info_path).write_text(json.dumps(runs))
        if rc != 0:
            return rc
    return 0


def project_recipe(model: Path, data: Path, sizes: Sizes) -> dict:
    """Measured steps/s of each stage (between its first and last log records, so start-up and
    the final sample grid are left out) times the preset's full step count."""
    sys.path.insert(0, str(ROOT / "src"))
    # the full recipe as `train all` resolved it (preset + any --config/--set), before --max-steps
    recipe = json.loads((model / "recipe.json").read_text())
    index = json.loads((model / "model_index.json").read_text())
    stages, total = {}, 0.0
    for name in ("vae", "clip", "unet", "judge"):
        log = model / "logs" / name / "train_log.jsonl"
        run_json = model / "logs" / name / "run.json"
        if not run_json.is_file():
            continue
        records = [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []
        run_info = json.loads(run_json.read_text())
        if len(records) >= 2:
            a, b = records[0], records[-1]
            rate = (b["step"] - a["step"]) / max(b["elapsed_s"] - a["elapsed_s"], 1e-9)
            how = f"steps {a['step']}-{b['step']}"
        else:  # too few records: the whole run, start-up included (a pessimistic rate)
            rate = run_info["steps"] / max(run_info["train_seconds"], 1e-9)
            how = "whole run"
        full = recipe[name]["loop"]["steps"]
        stages[name] = {"measured_steps": run_info["steps"], "steps_per_s": round(rate, 3), "rate_from": how,
                        "global_batch": run_info["global_batch"], "mixed_precision": run_info["mixed_precision"],
                        "preset_steps": full, "projected_s": round(full / rate, 1)}
        total += full / rate
    encode_s = index.get("stages", {}).get("encode", {}).get("seconds")
    if encode_s:
        # Encoding scales with the images encoded: CelebA's train split against this run's.
        from t2i.data.celeba import FaceDataset

        n_train = len(FaceDataset(data, split="train"))
        stages["encode"] = {"measured_s": encode_s, "images": n_train,
                            "projected_s": round(encode_s * CELEBA_TRAIN_IMAGES / max(n_train, 1), 1)}
        total += stages["encode"]["projected_s"]
    dominant = max(stages, key=lambda s: stages[s]["projected_s"]) if stages else "-"
    return {"preset": recipe["preset"], "image_size": recipe["vae"]["image_size"], "stages": stages,
            "projected_hours": total / 3600, "dominant_stage": dominant,
            "target_hours": TARGET_RECIPE_HOURS, "eval": "not measured (skipped to fit the time box)"}


# -- 5. torchrun --------------------------------------------------------------------------------


def part_torchrun(run: Runner, sizes: Sizes, cuda: bool, part: Part, state: dict) -> None:
    model = state.get("recipe_model")
    if model is None:
        part.status = "not run (needs part 4's model)"
        return
    out, info = run.work / "torchrun_unet", run.work / "torchrun.json"
    unet = ["train", "unet", "--data", str(state["recipe_data"]), "--out", str(out), "--vae", str(model),
            "--clip", str(model), "--cache", str(model / "latents"), "--preset", sizes.recipe_preset,
            "--ckpt-every", str(sizes.torchrun_steps)]
    # Two runs in one torchrun process: the second finds the first's checkpoint and resumes.
    commands = [[*unet, "--steps", str(sizes.torchrun_steps)], [*unet, "--steps", str(2 * sizes.torchrun_steps)]]
    launcher = python("-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1")
    if not check_rc(run.run("torchrun", cli_sequence(commands, launcher, info), part), part, "torchrun t2i train unet (twice)"):
        return
    runs = json.loads(info.read_text())
    run_info = json.loads((out / "logs" / "unet" / "run.json").read_text())
    part.details = {"runs": runs, "second_run": run_info}
    want = "nccl" if cuda else "gloo"
    problems = [f"backend {r['backend']} (expected {want})" for r in runs if r["backend"] != want]
    problems += [f"world size {r['world_size']}" for r in runs if r["world_size"] != 1]
    if len(runs) != 2:
        problems.append(f"{len(runs)} runs finished, expected 2")
    if run_info["resumed_from"] != sizes.torchrun_steps:
        problems.append(f"second run resumed from {run_info['resumed_from']}, expected {sizes.torchrun_steps}")
    part.status = "failed" if problems else "passed"
    part.summary = "; ".join(problems) or (
        f"UNet stage on {want} (1 process): {sizes.torchrun_steps} steps, then resumed at step "
        f"{run_info['resumed_from']} to {run_info['steps']}")


# -- the report -----------------------------------------------------------------------------------


PARTS: list[tuple[str, str, Callable]] = [
    ("cuda-tests", "1. CUDA tests (pytest -m cuda)", part_cuda_tests),
    ("unet-bench", "2. UNet beside diffusers' UNet2DConditionModel", part_unet_bench),
    ("pipeline", "3. Pipeline end to end", part_pipeline),
    ("celeba128", "4. celeba128 recipe on SynthFaces", part_recipe),
    ("torchrun", "5. torchrun UNet stage, resumed", part_torchrun),
]


def environment(cuda: bool) -> dict:
    import torch

    env = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
           "platform": platform.platform(), "cpu_threads": torch.get_num_threads()}
    if cuda:
        props = torch.cuda.get_device_properties(0)
        env.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                   cudnn=torch.backends.cudnn.version(), bf16=torch.cuda.is_bf16_supported())
    else:
        env["gpu"] = None
    return env


def headline(report: dict) -> list[str]:
    env, parts = report["environment"], report["parts"]
    where = f"{env['gpu']} (torch {env['torch']}, CUDA {env['cuda']})" if env["gpu"] else \
        f"the CPU, dry run (torch {env['torch']})"
    ok = sum(p["status"].startswith("passed") for p in parts.values())
    lines = [f"gpu-check on {where}: {ok}/{len(parts)} parts passed in {report['seconds']:.0f} s"]
    for name, title, _ in PARTS:
        p = parts[name]
        lines.append(f"  {title}: {p['status']}" + (f" - {p['summary']}" if p["summary"] else ""))
    return lines


def duration(seconds: float) -> str:
    return f"{seconds / 3600:.2f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"


def markdown(report: dict) -> str:
    env = report["environment"]
    lines = [f"# gpu-check ({'dry run on the CPU' if report['dry_run'] else env['gpu']})", "",
             f"Command: `{report['command']}`  ", f"Date: {report['date']}; torch {env['torch']}, CUDA {env['cuda']}, "
             f"Python {env['python']}; {report['seconds']:.0f} s in total.", ""]
    if report["dry_run"]:
        lines += ["A dry run: tiny sizes on the CPU. It proves the check runs end to end; its numbers are "
                  "not GPU numbers.", ""]
    lines += ["| part | status | seconds | summary |", "|---|---|---|---|"]
    for name, title, _ in PARTS:
        p = report["parts"][name]
        lines.append(f"| {title} | {p['status']} | {p['seconds']:.0f} | {p['summary']} |")
    unet = report["parts"]["unet-bench"]["details"].get("rows")
    if unet:
        bs = sorted({k for r in unet for k in r if k.startswith("sample_ms_per_step_b")},
                    key=lambda k: int(k.rsplit("b", 1)[1]))
        lines += ["", "## UNet (bench/unet.py)", "",
                  "| model | mode | params | train img/s | TFLOP/s | " + " | ".join(f"ms/step {k.rsplit('_', 1)[1]}" for k in bs)
                  + " | peak train MiB |", "|---" * (6 + len(bs)) + "|"]
        for r in unet:
            mode = r["mode"] if r["mode"] == "eager" else "compiled training, CUDA-graph sampling"
            lines.append(f"| {r['model']} | {mode} | {r['params_m']}M | {r['train_img_per_s']:,.1f} | "
                         f"{r['train_tflops']:.2f} | " + " | ".join(f"{r.get(k, float('nan')):.2f}" for k in bs)
                         + f" | {r.get('peak_train_mib') or '-'} |")
    pipe = report["parts"]["pipeline"]["details"].get("models")
    if pipe:
        lines += ["", "## Pipeline end to end (bench/pipeline.py; 20 guided steps + decode)", "",
                  "| model | px | mode | batch | s/image | vs eager |", "|---|---|---|---|---|---|"]
        for label, res in pipe.items():
            for r in res["rows"]:
                lines.append(f"| {label}{' (random weights)' if res['random_init'] else ''} | {res['image_size']} | "
                             f"{r['mode']} | {r['batch']} | {r['seconds_per_image']:.4f} | {r.get('speedup_vs_eager', '')} |")
    recipe = report["parts"]["celeba128"]["details"]
    if recipe.get("stages"):
        lines += ["", f"## {recipe['preset']} recipe: measured and projected", "",
                  "| stage | measured | steps/s | preset steps | projected |", "|---|---|---|---|---|"]
        for name, s in recipe["stages"].items():
            if name == "encode":
                lines.append(f"| encode | {s['measured_s']} s for {s['images']} images | | CelebA train split | "
                             f"{duration(s['projected_s'])} |")
            else:
                lines.append(f"| {name} | {s['measured_steps']} steps x {s['global_batch']} ({s['mixed_precision']}) | "
                             f"{s['steps_per_s']} | {s['preset_steps']:,} | {duration(s['projected_s'])} |")
        lines += [f"| **total** | | | | **{recipe['projected_hours']:.2f} h** (target <= {recipe['target_hours']:.0f} h; "
                  f"eval {recipe['eval']}) |"]
    failed = [(n, p) for n, p in report["parts"].items() if p["details"].get("errors")]
    for name, p in failed:
        for e in p["details"]["errors"]:
            lines += ["", f"### {name}: {e['step']} failed", "", "```", e["log_tail"], "```"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--cli-sequence"]:  # a child: see cli_sequence
        info = argv[argv.index("--info") + 1] if "--info" in argv else None
        return run_cli_sequence(json.loads(argv[1]), info)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--dry-run", action="store_true", help="on the CPU: tiny sizes, a few steps")
    parser.add_argument("--results-dir", default=str(ROOT / "bench" / "results"))
    parser.add_argument("--work-dir", help="scratch space (default: a temporary dir, removed afterwards)")
    parser.add_argument("--parts", nargs="+", choices=[p[0] for p in PARTS], default=[p[0] for p in PARTS])
    parser.add_argument("--demo-model", help="a trained demo model dir for part 3 (default: random weights)")
    parser.add_argument("--budget-s", type=float, help="override the overall time budget (seconds)")
    args = parser.parse_args(argv)

    import torch

    cuda = torch.cuda.is_available()
    if not cuda and not args.dry_run:
        print("gpu-check: no CUDA device; `make gpu-check DRY=1` (--dry-run) runs it on the CPU", file=sys.stderr)
        return 2
    sizes = DRY if args.dry_run else GPU
    t0 = time.monotonic()
    deadline = t0 + (args.budget_s or sizes.budget_s)
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="t2i-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")])),
           "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
           "GRADIO_ANALYTICS_ENABLED": "False", "CUBLAS_WORKSPACE_CONFIG": ":4096:8",
           "TORCHINDUCTOR_CACHE_DIR": str(work / "inductor_cache")}
    run = Runner(work, deadline, env)
    state: dict = {"demo_model": args.demo_model}
    parts: dict[str, Part] = {}
    chosen = [p for p in PARTS if p[0] in args.parts]
    for i, (name, title, fn) in enumerate(chosen):
        part = parts[name] = Part(name)
        later = sum(sizes.reserve[n] for n, _, _ in chosen[i + 1:])
        start = time.monotonic()
        run.part_deadline = min(start + sizes.boxes[name], deadline - later)
        print(f"[gpu-check] {title} (up to {max(0, run.left()):.0f} s)", flush=True)
        try:
            fn(run, sizes, cuda, part, state)
        except Exception as e:  # a broken part is a finding, not the end of the check
            part.status = "failed"
            part.summary = f"{type(e).__name__}: {e}"
        part.seconds = round(time.monotonic() - start, 1)
        print(f"[gpu-check]   {part.status} in {part.seconds:.0f} s" + (f": {part.summary}" if part.summary else ""),
              flush=True)
    for name, _title, _ in PARTS:
        parts.setdefault(name, Part(name, status="not run (not selected)"))

    report = {
        "check": "gpu-check", "dry_run": args.dry_run, "date": time.strftime("%Y-%m-%d %H:%M"),
        "command": "python bench/gpu_check.py " + " ".join(argv),
        "environment": environment(cuda), "seconds": round(time.monotonic() - t0, 1),
        "budget_s": args.budget_s or sizes.budget_s,
        "parts": {n: {"status": p.status, "seconds": p.seconds, "summary": p.summary, "details": p.details,
                      "logs": p.logs} for n, p in parts.items()},
    }
    report["headline"] = headline(report)
    results = Path(args.results_dir)
    results.mkdir(parents=True, exist_ok=True)
    stem = "gpu_check_dry_run" if args.dry_run else "gpu_check"
    (results / f"{stem}.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (results / f"{stem}.md").write_text(markdown(report))
    # Every child's log in one file beside the report (the scratch dir goes away).
    with open(results / f"{stem}.log", "w") as log:
        for p in parts.values():
            for path in p.logs:
                if Path(path).is_file():
                    log.write(f"===== {Path(path).name}\n{Path(path).read_text(errors='replace')}\n")
    if not args.work_dir:
        shutil.rmtree(work, ignore_errors=True)
    print("\n".join(report["headline"]))
    print(f"-> {results / stem}.json, {results / stem}.md, {results / stem}.log")
    return 1 if any(p.status in ("failed", "timed out") for p in parts.values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
