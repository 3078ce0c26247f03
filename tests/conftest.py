"""Shared fixtures. Tests are hermetic: no network, no telemetry, tiny data in tmp dirs."""

from __future__ import annotations

import os

# Set before anything imports gradio / huggingface_hub.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
# Tests start subprocesses (torchrun ranks, the web server) beside pytest on 2 cores: OpenMP
# threads that spin while waiting would starve each other (measured: 10-60x slower steps).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402

SYNTH_N = 96


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory):
    """A SynthFaces set of 96 images (seed 0, 178x218) with captions.json, made once per session.
    Treat it as read-only (copy it to tmp_path before changing anything)."""
    from t2i.data.synthfaces import generate

    out = tmp_path_factory.mktemp("synthfaces") / "synth"
    generate(out, SYNTH_N, seed=0, workers=1)
    return out


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, synth_dir):
    """A trained `tiny` model dir (VAE, CLIP, UNet) on synth_dir, built once per session; read-only."""
    from tiny_model import tiny_model_fixture

    return tiny_model_fixture(tmp_path_factory, synth_dir)


@pytest.fixture(scope="module")
def pipe(tiny_model):
    """The tiny model's pipeline on the CPU."""
    from t2i.pipeline import T2IPipeline

    return T2IPipeline.from_pretrained(tiny_model, device="cpu")
