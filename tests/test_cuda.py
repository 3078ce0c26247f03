"""The GPU path (`pytest -m cuda`; `make gpu-check` runs these first on one GPU).

Every training stage under bf16 and fp16 autocast with the real fp16 loss scaler and fused
AdamW; an fp16 overflow skipped once with the lowered scale checkpointed and restored; the UNet
stage resumed bitwise-exactly with deterministic algorithms (CUDA generator restored);
`--compile` training against eager; CUDA-graph sampling against eager; the pipeline's bf16
output against fp32. Tolerances are stated beside each check.

Without a CUDA device every test here skips. `T2I_CUDA_TESTS_ON_CPU=1` runs them on the CPU
instead, as a rehearsal: each test runs up to its first CUDA-only check (the loss scaler, fused
AdamW, CUDA graphs, the compiler's GPU kernels) and skips there, so the tests themselves cannot
rot between GPU runs.
"""

from __future__ import annotations

import json
import os
import shutil
import signal

# cuBLAS picks deterministic GEMM algorithms only with a fixed workspace, read when its first
# handle is created: set before any test touches the GPU.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from t2i.checkpoint import load_latest_training_state, load_tensors  # noqa: E402
from t2i.cli import main  # noqa: E402
from t2i.train import loop  # noqa: E402

ON_CPU = os.environ.get("T2I_CUDA_TESTS_ON_CPU") == "1"
HAS_CUDA = torch.cuda.is_available()
pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not HAS_CUDA and not ON_CPU, reason="needs a CUDA device"),
]
STAGES = ("vae", "clip", "unet", "judge")
PROMPT = "a smiling man with black hair wearing eyeglasses"


def device_type() -> str:
    return "cuda" if HAS_CUDA else "cpu"


def needs_cuda(what: str) -> None:
    """Skip here when rehearsing on the CPU: everything before this line ran."""
    if not HAS_CUDA:
        pytest.skip(f"{what} needs CUDA (rehearsal on CPU stops here)")


def train_cli(stage: str, data, out, *extra: str, base=None) -> int:
    argv = ["train", stage, "--data", str(data), "--out", str(out), "--preset", "tiny", "--seed", "0", *extra]
    if stage == "unet" and base is not None:  # the VAE, text encoder and latent cache of `base`
        argv += ["--vae", str(base), "--clip", str(base), "--cache", str(base / "latents")]
    return main(argv)


@pytest.fixture(scope="module")
def base_model(tmp_path_factory, synth_dir):
    """A tiny VAE + CLIP + UNet trained in fp32 on this device: the UNet stage's inputs and the
    pipeline the sampling tests use."""
    out = tmp_path_factory.mktemp("cuda_base") / "model"
    for stage in ("vae", "clip", "unet"):
        assert train_cli(stage, synth_dir, out, "--steps", "4", "--mixed-precision", "no") == 0
    return out


def read_run(out, stage: str) -> dict:
    return json.loads((out / "logs" / stage / "run.json").read_text())


def logged_losses(out, stage: str) -> list[float]:
    lines = (out / "logs" / stage / "train_log.jsonl").read_text().splitlines()
    return [json.loads(line)["loss"] for line in lines]


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("stage", STAGES)
def test_every_stage_trains_under_autocast(stage, precision, synth_dir, base_model, tmp_path):
    # 6 steps: fp16's first steps may overflow at the scaler's initial scale (2^16) and be skipped.
    steps = 6
    out = tmp_path / "model"
    assert train_cli(stage, synth_dir, out, "--steps", str(steps), "--mixed-precision", precision,
                     "--log-every", "1", base=base_model) == 0
    run = read_run(out, stage)
    assert run["mixed_precision"] == precision
    assert run["device"].startswith(device_type())
    assert run["skipped_steps"] < steps, "every step was skipped: nothing was trained"
    losses = logged_losses(out, stage)
    assert losses and all(torch.isfinite(torch.tensor(losses))), losses
    _, state = load_latest_training_state(out / "checkpoints" / stage)
    if stage == "vae":  # the tiny preset switches the PatchGAN discriminator on at step 2
        assert set(state["models"]) == {"vae", "disc"}
        assert state["optimizers"]["disc"]["state"], "the discriminator was never updated"
    assert (out / stage / "model.safetensors").is_file()

    needs_cuda("fused AdamW and the fp16 loss scaler")
    for name, opt in state["optimizers"].items():
        assert opt["param_groups"][0]["fused"] is True, f"{stage}/{name}: AdamW is not the fused kernel"
    if precision == "fp16":  # the real GradScaler ran, and its scale is in the checkpoint
        assert float(state["scaler"]["scale"]) > 0
    else:
        assert "scaler" not in state


class OverflowStage(loop.Stage):
    """A two-layer net whose loss at step 1 is made large enough that its fp16 backward
    overflows once scaled by the loss scaler; every other step is small and finite."""

    name = "overflow"

    def __init__(self):
        self.seen: dict[int, list[torch.Tensor]] = {}

    def build(self):
        return {"net": nn.Sequential(nn.Linear(8, 16), nn.SiLU(), nn.Linear(16, 1))}

    def training_step(self, batch, ctx):
        net = ctx.unwrap("net")
        self.seen[ctx.step] = [p.detach().clone() for p in net.parameters()]
        out = ctx.models["net"](batch)  # (B, 1), fp16 under autocast
        # 1e-3: gradients stay well inside fp16 at a scale of 2^16. At step 1, 1e6 more: the
        # gradient reaching the fp16 output is ~1e10, past fp16's 65504, so it turns inf.
        loss = out.float().pow(2).mean() * (1e3 if ctx.step == 1 else 1e-3)
        return loop.StepOutput(loss)


class RandomVectors(torch.utils.data.Dataset):
    def __len__(self):
        return 64

    def __getitem__(self, key):
        index, _ = key
        return torch.randn(8, generator=torch.Generator().manual_seed(index))


def test_fp16_overflow_is_skipped_once_and_the_scale_is_checkpointed(tmp_path):
    needs_cuda("the fp16 loss scaler (Accelerate makes none on the CPU)")
    cfg = loop.LoopConfig(steps=4, batch_size=8, lr=1e-2, warmup_steps=1, mixed_precision="fp16",
                          ckpt_every=2, keep_last=5, log_every=1, grad_clip=1.0)
    stage = OverflowStage()
    metrics = loop.train(stage, RandomVectors(), cfg, tmp_path)
    assert metrics["skipped_steps"] == 1
    # step 0 updated the weights; step 1 overflowed, so step 2 starts from step 1's weights
    assert not all(torch.equal(a, b) for a, b in zip(stage.seen[0], stage.seen[1]))
    assert all(torch.equal(a, b) for a, b in zip(stage.seen[1], stage.seen[2]))
    root = tmp_path / "checkpoints" / "overflow"
    _, state = load_latest_training_state(root)
    # GradScaler: initial scale 2^16, halved once on the overflow (growth only after 2000 steps)
    assert float(state["scaler"]["scale"]) == 2.0**15
    # Resume from the step-2 checkpoint: the lowered scale comes back, the run ends the same.
    shutil.rmtree(root / "step_0000004")
    resumed = OverflowStage()
    metrics = loop.train(resumed, RandomVectors(), cfg, tmp_path)
    assert metrics["resumed_from"] == 2
    _, again = load_latest_training_state(root)
    assert float(again["scaler"]["scale"]) == 2.0**15
    for key, value in state["models"]["net"].items():
        assert torch.equal(value, again["models"]["net"][key]), key


def test_unet_resume_is_bitwise_exact_with_deterministic_algorithms(synth_dir, base_model, tmp_path, monkeypatch):
    """4 steps straight == 2 steps, SIGTERM, resume, 2 more: identical weights, and the CUDA
    generator continues where it stopped (each step draws from it)."""
    draws: dict[str, dict[int, float]] = {}

    def run(name: str, signal_at: int | None) -> int:
        original = loop.train

        def train(st, dataset, cfg, out_dir):
            step_fn = st.training_step

            def step(batch, ctx):
                # One draw per step from the device's global generator (as dropout would).
                draws.setdefault(name, {})[ctx.step] = torch.rand(1, device=ctx.device).item()
                if ctx.step == signal_at:
                    os.kill(os.getpid(), signal.SIGTERM)
                return step_fn(batch, ctx)

            st.training_step = step
            return original(st, dataset, cfg, out_dir)

        with monkeypatch.context() as m:
            from t2i.train import unet as unet_stage

            m.setattr(loop, "train", train)
            m.setattr(unet_stage, "train", train)
            return train_cli("unet", synth_dir, tmp_path / name, "--steps", "4", "--mixed-precision", "bf16",
                             base=base_model)

    was = torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    try:
        assert run("straight", None) == 0
        assert run("resumed", 2) == 128 + signal.SIGTERM
        assert not (tmp_path / "resumed" / "unet" / "model.safetensors").exists()
        assert run("resumed", None) == 0
    finally:
        torch.use_deterministic_algorithms(was[0])
        torch.backends.cudnn.benchmark = was[1]
    a = load_tensors(tmp_path / "straight" / "unet" / "model.safetensors")
    b = load_tensors(tmp_path / "resumed" / "unet" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after resume"
    assert read_run(tmp_path / "resumed", "unet")["resumed_from"] == 3
    # steps 3.. of the resumed run drew what the straight run drew at the same steps
    assert draws["resumed"][3] == draws["straight"][3]


def _flat(path) -> torch.Tensor:
    tensors = load_tensors(path)
    return torch.cat([tensors[k].float().flatten() for k in sorted(tensors)])


def test_compiled_training_matches_eager(synth_dir, base_model, tmp_path, monkeypatch):
    """fp32 with TF32 off, 4 UNet steps: the compiler fuses and reorders float sums, so the runs
    agree to rounding, not bitwise. Tolerances: mean logged loss within 1e-4 (relative), final
    weights within 1e-3 (relative L2 over all parameters)."""
    needs_cuda("compiled training on the GPU (a CPU compile costs ~50 s per model)")
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    for name, extra in (("eager", ()), ("compiled", ("--compile",))):
        assert train_cli("unet", synth_dir, tmp_path / name, "--steps", "4", "--mixed-precision", "no",
                         *extra, base=base_model) == 0
    eager, compiled = (logged_losses(tmp_path / n, "unet") for n in ("eager", "compiled"))
    assert len(eager) == len(compiled)
    for e, c in zip(eager, compiled):
        assert abs(e - c) <= 1e-4 * abs(e), (eager, compiled)
    a, b = (_flat(tmp_path / n / "unet" / "model.safetensors") for n in ("eager", "compiled"))
    assert ((a - b).norm() / a.norm()).item() < 1e-3


def test_cuda_graph_sampling_matches_eager(base_model):
    """20 guided DPM-Solver++ steps in fp32: compiled in "reduce-overhead" mode, each step
    replays a captured CUDA graph. Tolerance: images in [-1, 1] within 2e-3 (max |diff|)."""
    from t2i.pipeline import T2IPipeline

    pipe = T2IPipeline.from_pretrained(base_model, device=device_type(), precision="fp32")
    eager = pipe(PROMPT, num_images=2, seed=1, output_type="pt")
    assert eager.shape == (2, 3, pipe.image_size, pipe.image_size)
    needs_cuda("CUDA-graph sampling")
    from torch._dynamo.utils import counters

    counters.clear()
    pipe.compile()
    compiled = pipe(PROMPT, num_images=2, seed=1, output_type="pt")
    again = pipe(PROMPT, num_images=2, seed=1, output_type="pt")  # a replay, past the recording run
    # inductor counts each graph it could not capture (a host sync, a CPU tensor, dynamic shapes)
    assert counters["inductor"]["cudagraph_skips"] == 0, dict(counters["inductor"])
    torch.testing.assert_close(compiled, eager, rtol=0, atol=2e-3)
    torch.testing.assert_close(again, compiled, rtol=0, atol=0)


def test_pipeline_bf16_output_is_close_to_fp32(base_model):
    """20 guided steps under bf16 autocast against fp32, images in [-1, 1]. Tolerance: mean
    |diff| below 0.01 (about 1.3 levels of 255): bf16 changes rounding, not the picture."""
    from t2i.pipeline import T2IPipeline

    pipe = T2IPipeline.from_pretrained(base_model, device=device_type(), precision="fp32")
    fp32 = pipe(PROMPT, num_images=4, seed=3, output_type="pt")
    bf16 = pipe.to(device_type(), "bf16")(PROMPT, num_images=4, seed=3, output_type="pt")
    assert torch.isfinite(bf16).all()
    diff = (fp32 - bf16).abs()
    assert diff.mean().item() < 0.01, f"mean |fp32 - bf16| = {diff.mean().item():.4f}"
