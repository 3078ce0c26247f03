"""Hugging Face Space entry point: the same app as `t2i serve`.

Put a model directory (from `t2i train all`) at `model/` beside this file, or point
T2I_MODEL_DIR at one. Limits come from T2I_MAX_STEPS, T2I_MAX_IMAGES, T2I_MAX_PROMPT_CHARS,
T2I_CONCURRENCY and T2I_QUEUE_SIZE (defaults as `t2i serve`). The host and port are gradio's
(GRADIO_SERVER_NAME / GRADIO_SERVER_PORT, which Spaces set; 127.0.0.1:7860 otherwise).

    python app.py            # or: gradio app.py (reloads on edits)
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
try:
    import t2i  # noqa: F401  (installed with `pip install .`)
except ImportError:  # a Space that did not install the package: use the source tree
    sys.path.insert(0, str(ROOT / "src"))

from t2i.app.limits import limits_from_env  # noqa: E402
from t2i.app.server import create_app  # noqa: E402

MODEL_DIR = os.environ.get("T2I_MODEL_DIR", str(ROOT / "model"))
demo, launch_kwargs = create_app(MODEL_DIR, limits_from_env())

if __name__ == "__main__":
    demo.launch(**launch_kwargs)
