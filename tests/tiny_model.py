"""A tiny trained model directory for the app/live tests, made with the real CLI stages
(`train vae`, `train clip`, `train unet` with the tiny preset) on the synth_dir fixture.

Test modules call `build_tiny_model` from a session- or module-scoped fixture; the result is
cached per pytest session in a shared folder so the three modules that need it train once.
"""

from __future__ import annotations

import fcntl
from pathlib import Path


def build_tiny_model(data_dir: str | Path, out_dir: str | Path, steps: int = 6) -> Path:
    """Train the three tiny stages into `out_dir` (once: a finished dir is reused)."""
    from t2i.cli import main

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # A lock: pytest-xdist workers (or two modules) asking at once train only once.
    with open(out_dir.parent / f".{out_dir.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (out_dir / "unet" / "model.safetensors").is_file():
            return out_dir
        # Few steps: the tests need a model that loads and samples, not a good one.
        common = ["--data", str(data_dir), "--out", str(out_dir), "--preset", "tiny", "--seed", "0",
                  "--steps", str(steps)]
        for stage in ("vae", "clip", "unet"):
            rc = main(["train", stage, *common])
            assert rc == 0, f"t2i train {stage} (tiny) failed with exit code {rc}"
    return out_dir


def tiny_model_fixture(tmp_path_factory, synth_dir) -> Path:
    """The body of a session-scoped `tiny_model` fixture: one model per pytest session."""
    root = tmp_path_factory.getbasetemp()
    return build_tiny_model(synth_dir, root / "t2i_tiny_model")
