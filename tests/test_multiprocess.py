"""Every training stage computes with 2 processes what it computes with 1: the VAE without and
with its discriminator (adaptive GAN weight on), CLIP (features gathered across processes,
gradients back through the gather, batch-normalised pooling), the judge (BatchNorm) and the
UNet, each trained one step through `t2i train` as 2 CPU processes of batch 4 (torchrun, gloo)
and as 1 process of batch 8.

The comparison is of the gradients the optimizer steps with (after DDP's averaging; clipping
off, see tests/stage_gradients.py), not of weights after AdamW steps: Adam's first update is
about lr * sign(gradient), so weights would agree even if the processes summed their
gradients instead of averaging them. Float summation order differs between the runs, so the
gradients agree to ~1e-5 of each tensor's largest entry (1e-3 where batch normalisation's
gradient cancels); a factor-of-2 or a per-process statistic is far outside the tolerance.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from test_train_unet import parts_dir

HERE = Path(__file__).resolve().parent
TOLERANCE = 1e-2  # of each gradient tensor's largest entry

# label -> (stage, extra flags)
STAGES = {
    "vae": ("vae", ["--disc-start", "1000"]),  # no discriminator within the one step
    "vae_gan": ("vae", ["--disc-start", "0", "--disc-warmup", "0"]),  # discriminator + adaptive weight
    "clip": ("clip", []),
    "judge": ("judge", []),
    "unet": ("unet", []),
}


def spec(root: Path, synth_dir: Path, unet_dir: Path, batch_size: int) -> Path:
    """The runs of one launch: every stage for one step, each into its own output dir."""
    common = ["--data", str(synth_dir), "--preset", "tiny", "--steps", "1", "--mixed-precision", "no",
              "--seed", "1", "--batch-size", str(batch_size)]
    runs = []
    for label, (stage, extra) in STAGES.items():
        out = unet_dir if stage == "unet" else root / label
        runs.append({"label": label, "argv": ["train", stage, "--out", str(out), *common, *extra]})
    path = root / "spec.json"
    path.write_text(json.dumps({"grads_dir": str(root / "grads"), "runs": runs}))
    return path


def run_json(root: Path, unet_dir: Path, label: str) -> dict:
    stage = STAGES[label][0]
    out = unet_dir if stage == "unet" else root / label
    return json.loads((out / "logs" / stage / "run.json").read_text())


def gradients(root: Path, label: str, rank: int) -> list[dict[str, torch.Tensor]]:
    files = sorted((root / "grads" / label).glob(f"rank{rank}_opt*.safetensors"))
    return [load_file(f) for f in files]


def worst_mismatch(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> tuple[float, str]:
    """The largest |a - b| over a tensor, relative to that tensor's largest |a|, and its key."""
    assert a.keys() == b.keys()
    return max(((a[k] - b[k]).abs().max().item() / (a[k].abs().max().item() + 1e-12), k) for k in a)


def test_two_processes_step_with_the_gradients_of_one(tiny_model, synth_dir, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir(), two.mkdir()
    unet_one, unet_two = parts_dir(tiny_model, one / "model"), parts_dir(tiny_model, two / "model")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    script = str(HERE / "stage_gradients.py")
    proc = subprocess.run([sys.executable, script, str(spec(one, synth_dir, unet_one, 8))],
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    torchrun = Path(sys.executable).parent / "torchrun"
    proc = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", script,
                           str(spec(two, synth_dir, unet_two, 4))],
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]

    failures = []
    for label in STAGES:
        runs = run_json(one, unet_one, label), run_json(two, unet_two, label)
        assert [r["world_size"] for r in runs] == [1, 2], label
        assert [r["global_batch"] for r in runs] == [8, 8], label
        single, rank0, rank1 = gradients(one, label, 0), gradients(two, label, 0), gradients(two, label, 1)
        assert len(single) == len(rank0) == len(rank1) >= 1, label  # one file per optimizer
        expected_optimizers = 2 if label in ("vae_gan", "clip") else 1  # + discriminator / attribute head
        assert len(single) == expected_optimizers, (label, len(single))
        for k, (a, b, c) in enumerate(zip(single, rank0, rank1)):
            assert any(t.abs().max() > 0 for t in a.values()), (label, k)  # real gradients
            assert all(torch.equal(b[key], c[key]) for key in b), (label, k)  # DDP synchronised them
            worst, key = worst_mismatch(a, b)
            if worst > TOLERANCE:
                failures.append(f"{label} optimizer {k}: parameter {key} off by {worst:.3g} of its largest gradient")
    assert not failures, "2 processes differ from 1:\n" + "\n".join(failures)


def test_global_batch_norm_is_plain_batch_norm_in_one_process():
    """Same numbers, buffers and checkpoint keys as nn.BatchNorm1d/2d when there is one process."""
    from t2i.models.batch_norm import GlobalBatchNorm

    torch.manual_seed(0)
    for plain, x in ((torch.nn.BatchNorm1d(6), torch.randn(5, 6)), (torch.nn.BatchNorm2d(6), torch.randn(5, 6, 4, 4))):
        plain.weight.data.uniform_(0.5, 1.5)
        ours = GlobalBatchNorm(6)
        ours.load_state_dict(plain.state_dict())
        assert ours.state_dict().keys() == plain.state_dict().keys()
        for train in (True, False):
            plain.train(train), ours.train(train)
            assert torch.equal(ours(x), plain(x))
        assert torch.equal(ours.running_var, plain.running_var)
    with pytest.raises(ValueError, match="expects \\(B, C, ...\\) input"):
        GlobalBatchNorm(6)(torch.randn(6))
