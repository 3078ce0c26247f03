"""`t2i serve`: the web demo and its streaming API, safe by default.

    t2i serve --model runs/demo                 # http://127.0.0.1:7860
    t2i serve --model runs/demo --host 0.0.0.0  # reachable from the network: say so loudly

Binds to localhost unless told otherwise; caps prompt length, steps, images per request, jobs
running at once and jobs waiting (more are refused as busy); gradio's analytics and Hugging
Face telemetry are off; no file path comes from the client (the app has no upload or path
input, and serves no directory). gradio is imported only when the command runs, so `t2i --help`
stays fast and works without the [app] extra.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
from pathlib import Path

from t2i.app.limits import Limits
from t2i.checkpoint import read_model_index

# Requests gradio may hold beyond the admitted jobs while the handler decides on them; only a
# flood of simultaneous requests reaches gradio's own "queue full" answer.
QUEUE_BACKSTOP = 32

ENV_DEFAULTS = {
    "GRADIO_ANALYTICS_ENABLED": "False",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_OFFLINE": "1",
}


def quiet_environment() -> None:
    """No analytics, no telemetry, no hub look-ups. Must run before gradio is imported."""
    for key, value in ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)


def model_attributes(model_dir: str | Path) -> list[str] | None:
    """The attributes the model's training data varies, as its model_index.json records them
    (key "attributes", written by `t2i train all`): [] for a model trained on captions without
    attribute labels (the app then shows no attribute helpers); None when nothing is recorded
    (every captioned attribute is offered)."""
    try:  # a model_index.json symlinked out of the model dir is not read
        return recorded_attributes(read_model_index(model_dir))
    except (OSError, ValueError):
        return None


def recorded_attributes(model_index: dict) -> list[str] | None:
    """`model_attributes` from an already-read model_index.json (a pipeline's `model_index`,
    which also covers a model loaded by Hub repo id)."""
    names = model_index.get("attributes")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        return None
    return list(names)


def create_app(model_dir: str | Path, limits: Limits | None = None, device: str | None = None):
    """(demo, launch_kwargs) for a model directory: used by `t2i serve` and the Space's app.py."""
    quiet_environment()
    from t2i.app.ui import build_demo, launch_kwargs
    from t2i.pipeline import T2IPipeline

    limits = limits or Limits()
    pipe = T2IPipeline.from_pretrained(model_dir, device=device)
    demo = build_demo(pipe, limits, attributes=recorded_attributes(pipe.model_index))
    # The generate handler admits `concurrency` running + `queue_size` waiting jobs itself
    # (t2i.app.admission); gradio's queue only holds requests for the moment before the
    # handler admits or refuses them, and a waiting job holds a worker thread.
    capacity = limits.concurrency + limits.queue_size
    demo.queue(default_concurrency_limit=limits.concurrency, max_size=capacity + QUEUE_BACKSTOP)
    kwargs = launch_kwargs() | dict(
        max_threads=max(40, capacity + QUEUE_BACKSTOP),
        show_error=False,  # unexpected exceptions stay in the server log; gr.Error messages still show
        max_file_size="1mb",  # there is no upload input; refuse large bodies to the upload route anyway
        enable_monitoring=False,
        ssr_mode=False,
        mcp_server=False,
        run_history=False,  # no run log in the browser, and no option to push runs to a hub bucket
    )
    return demo, kwargs


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = Limits()
    parser.add_argument("--model", required=True, help="model directory")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1: this machine only; 0.0.0.0 exposes it)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--device", default=None, help="cpu | cuda | mps (default: best available)")
    parser.add_argument("--max-steps", type=int, default=d.max_steps, help="most denoising steps per request")
    parser.add_argument("--max-images", type=int, default=d.max_images, help="most images per request")
    parser.add_argument("--max-prompt-chars", type=int, default=d.max_prompt_chars, help="longest prompt accepted")
    parser.add_argument("--concurrency", type=int, default=d.concurrency, help="jobs running at once")
    parser.add_argument("--queue-size", type=int, default=d.queue_size,
                        help="jobs waiting; further requests are refused as busy")


def run(args: argparse.Namespace) -> int:
    from t2i.errors import CLIError

    limits = Limits(max_steps=args.max_steps, max_images=args.max_images, max_prompt_chars=args.max_prompt_chars,
                    concurrency=args.concurrency, queue_size=args.queue_size)
    if not 1 <= args.port <= 65535:
        raise ValueError(f"--port must be in [1, 65535], got {args.port}")
    try:
        demo, kwargs = create_app(args.model, limits, device=args.device)
    except ModuleNotFoundError as e:
        if e.name and e.name.split(".")[0] in ("gradio", "gradio_client"):
            raise CLIError("t2i serve needs the web extra: pip install 't2i[app]'") from None
        raise
    if not _is_loopback(args.host):
        print(f"t2i serve: warning: binding {args.host}: anyone who can reach this machine can use the app",
              file=sys.stderr)
    print(f"t2i serve: limits: {limits.max_steps} steps, {limits.max_images} images, "
          f"{limits.max_prompt_chars} prompt characters, {limits.concurrency} job(s) at once, "
          f"{limits.queue_size} waiting", flush=True)
    demo.launch(server_name=args.host, server_port=args.port, **kwargs)
    return 0


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
