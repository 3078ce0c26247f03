"""Installing t2i: the core dependencies and extras pyproject.toml declares, and a fresh virtual
environment with only the core (torch, numpy, pillow, safetensors, tokenizers) running an
exported model: the same pixels as the full install.

Slow (a few minutes on 2 cores: it installs torch and builds t2i), so it is marked slow and
`.ci/run` runs it after `make test`. pip installs from the package index it is configured
with, as `make install` does; torch is pinned to the release this suite runs on (the Makefile's
pin, whose CPU wheel lies on the CI machine's disk)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from t2i.cli import main
from t2i.pipeline import T2IPipeline

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "a smiling man with eyeglasses"
NOT_CORE = ("accelerate", "torchmetrics", "tensorboard", "matplotlib", "gradio", "rich", "pyarrow", "scipy")


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=1800, **kw)


@pytest.mark.slow
def test_core_only_venv_runs_an_exported_model(tiny_model, synth_dir, tmp_path):
    exported = tmp_path / "exported"
    assert main(["export", str(tiny_model), str(exported)]) == 0

    # t2i's sources, copied so that building the wheel writes nothing into the checkout.
    source = tmp_path / "t2i-src"
    shutil.copytree(ROOT / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)

    venv = tmp_path / "venv"
    python = venv / "bin" / "python"
    assert run([sys.executable, "-m", "venv", str(venv)]).returncode == 0
    torch_pin = f"torch=={torch.__version__.split('+')[0]}"
    for what in ([torch_pin], [str(source)]):  # torch first, as the README says, then t2i's core
        proc = run([str(python), "-m", "pip", "install", "-q", *what])
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    installed = run([str(python), "-m", "pip", "list", "--format=freeze"]).stdout.lower()
    names = {line.split("==")[0] for line in installed.splitlines()}
    assert {"t2i", "torch", "numpy", "pillow", "safetensors", "tokenizers"} <= names
    assert not names & set(NOT_CORE), names & set(NOT_CORE)

    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path), "HF_HUB_OFFLINE": "1",
           "OMP_WAIT_POLICY": "PASSIVE"}
    out = tmp_path / "images"
    proc = run([str(python), "-m", "t2i", "generate", PROMPT, "--model", str(exported), "-n", "2", "--steps", "4",
                "--seed", "3", "--device", "cpu", "--out", str(out)], env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    expected = T2IPipeline.from_pretrained(exported, device="cpu")(PROMPT, num_images=2, steps=4, seed=3)
    for k, image in enumerate(expected):
        assert np.array_equal(np.asarray(Image.open(out / "0001" / f"00_{k:02d}.png")), np.asarray(image))

    # Training is an extra: the command says which one instead of failing with a traceback.
    proc = run([str(python), "-m", "t2i", "train", "vae", "--data", str(synth_dir), "--out", str(tmp_path / "m"),
                "--preset", "tiny", "--steps", "1"], env=env, cwd=tmp_path)
    assert proc.returncode == 2 and "pip install 't2i[train]'" in proc.stderr, proc.stderr[-2000:]


def declared_extras() -> tuple[list[str], dict[str, set[str]]]:
    """(core requirement names, {extra: requirement names, with t2i[...] includes expanded})."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: the [eval] extra brings tomli
        import tomli as tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

    def name(req: str) -> str:
        return re.split(r"[<>=!;\[ ]", req, maxsplit=1)[0].lower()

    raw = project["optional-dependencies"]

    def expand(extra: str) -> set[str]:
        names = set()
        for req in raw[extra]:
            if name(req) == "t2i":
                for included in re.search(r"\[(.*)\]", req).group(1).split(","):
                    names |= expand(included.strip())
            else:
                names.add(name(req))
        return names

    return [name(r) for r in project["dependencies"]], {extra: expand(extra) for extra in raw}


def test_core_is_what_inference_needs_and_the_cli_names_the_right_extra():
    from t2i.cli import EXTRA_OF_PACKAGE, missing_extra_message

    core, extras = declared_extras()
    assert core == ["torch", "numpy", "pillow", "safetensors", "tokenizers"]
    distribution = {"yaml": "pyyaml", "gradio_client": "gradio"}  # import name -> what provides it
    for package, extra in EXTRA_OF_PACKAGE.items():
        assert distribution.get(package, package) in extras[extra], (package, extra)
    assert extras["eval"] <= extras["train"]  # `train all` ends with eval
    assert set().union(*(extras[e] for e in ("train", "eval", "app", "hub"))) <= extras["dev"]
    assert "scipy" not in set().union(core, *extras.values())
    assert missing_extra_message("accelerate", "train") == (
        "t2i train needs accelerate, which is not installed: pip install 't2i[train]'")
    assert missing_extra_message("torchmetrics", "train").endswith("pip install 't2i[train]'")
    assert missing_extra_message("torchmetrics", "eval").endswith("pip install 't2i[eval]'")
    assert missing_extra_message("gradio", "serve").endswith("pip install 't2i[app]'")
    assert missing_extra_message("numpy", "generate") is None
