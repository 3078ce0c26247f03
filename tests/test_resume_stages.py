"""Every training stage resumes exactly: N steps straight == N/2, SIGTERM, resume, N/2.

The signal is sent from inside step 2 (as a scheduler pre-empting the job would); the loop
finishes that step, writes a checkpoint, and the CLI exits with 143. Rerunning the same command
resumes; the final weights must be bitwise identical on CPU.
"""

import os
import signal

import pytest
import torch

from t2i.checkpoint import load_tensors
from t2i.cli import main
from t2i.train import loop


def run_cli(stage: str, data, out, signal_at: int | None, monkeypatch) -> int:
    original = loop.train

    def train_with_signal(st, dataset, cfg, out_dir):
        step_fn = st.training_step

        def step(batch, ctx):
            if ctx.step == signal_at:
                os.kill(os.getpid(), signal.SIGTERM)
            return step_fn(batch, ctx)

        st.training_step = step
        return original(st, dataset, cfg, out_dir)

    with monkeypatch.context() as m:
        m.setattr(loop, "train", train_with_signal)
        # The stage modules imported `train` by name: patch their references too.
        import importlib

        module = importlib.import_module(f"t2i.train.{stage}")
        m.setattr(module, "train", train_with_signal)
        return main(["train", stage, "--data", str(data), "--out", str(out), "--preset", "tiny",
                     "--steps", "4", "--seed", "0", "--mixed-precision", "no"])


@pytest.mark.parametrize("stage", ["vae", "clip", "judge"])
def test_stage_resume_is_exact(stage, synth_dir, tmp_path, monkeypatch):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert run_cli(stage, synth_dir, straight, None, monkeypatch) == 0
    assert run_cli(stage, synth_dir, resumed, 2, monkeypatch) == 128 + signal.SIGTERM
    assert not (resumed / stage / "model.safetensors").exists()
    assert run_cli(stage, synth_dir, resumed, None, monkeypatch) == 0
    a = load_tensors(straight / stage / "model.safetensors")
    b = load_tensors(resumed / stage / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{stage}: {k} differs after resume"
