"""A generation as an iterator of frames: the predicted clean image after each denoising step,
then the final images. Used by the web app (a generator function streams the frames to the
page) and by `t2i live` (the terminal draws them).

The pipeline reports progress through a callback, so it runs in a worker thread and the
callback hands the predicted clean latent x0 to the consumer through a queue. The consumer
decodes a latent only when it is about to show it: when the sampler is faster than the
display, stale steps are skipped instead of decoded (`every_step=True` decodes all of them,
for an animation). Closing the iterator (the client went away, Ctrl-C) cancels the job at the
next step and waits for the worker to stop, so a cancelled job releases its slot only when
its compute has stopped.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

from PIL import Image

from t2i.app.limits import GenerationRequest
from t2i.imaging import image_grid, tensor_to_pil
from t2i.pipeline import T2IPipeline


class GenerationCancelled(Exception):
    """Raised inside the sampler's callback to stop a job whose consumer went away."""


@dataclass
class Frame:
    step: int  # denoising steps done, 1..total
    total: int
    elapsed: float  # seconds since the job started
    preview: Image.Image | None = None  # decoded x0 of every image, tiled (None if not decoded)
    images: list[Image.Image] | None = None  # the final images; set on the last frame only

    @property
    def done(self) -> bool:
        return self.images is not None


def tile(images: list[Image.Image]) -> Image.Image:
    """Images side by side (a near-square grid for more than 4), 2 pixels apart on dark grey."""
    return image_grid(images, gap=2, background=(24, 24, 24))


def truncation_note(pipe: T2IPipeline, prompt: str) -> str | None:
    """A warning when the prompt is longer than the text encoder's context (the encoder then
    reads only the start of it), else None."""
    return next((w["message"] for w in pipe.prompt_warnings(prompt) if w["kind"] == "truncated"), None)


def request_warnings(pipe: T2IPipeline, request: GenerationRequest) -> list[dict]:
    """The pipeline's structured warnings for the request's prompt and negative prompt: words
    the model never saw (named, with the closest known word), prompts longer than it reads."""
    return (pipe.prompt_warnings(request.prompt, "prompt")
            + (pipe.prompt_warnings(request.negative_prompt, "negative_prompt") if request.negative_prompt else []))


def warning_lines(warnings: list[dict]) -> list[str]:
    """One line per warning, saying which field it is about when it is not the prompt."""
    return [(w["message"] if w["field"] == "prompt" else f"negative prompt: {w['message']}") for w in warnings]


def stream_generation(
    pipe: T2IPipeline,
    request: GenerationRequest,
    every_step: bool = False,
    decode: bool = True,
) -> Iterator[Frame]:
    """Yield a Frame per shown step, then a final Frame with `images` set.

    `decode=False` yields progress frames without previews (nothing is decoded but the
    result). Errors in the pipeline are re-raised in the consumer."""
    events: queue.Queue = queue.Queue()
    cancel = threading.Event()
    t0 = time.perf_counter()

    def callback(i, total, x, x0):
        if cancel.is_set():
            raise GenerationCancelled
        # A copy: the sampler reuses its buffers. (N, C, h, w), a few KB per image.
        events.put(("step", i + 1, total, x0.detach().clone() if decode else None))

    def work():
        try:
            images = pipe(
                request.prompt, negative_prompt=request.negative_prompt, num_images=request.num_images,
                steps=request.steps, guidance=request.guidance, sampler=request.sampler, seed=request.seed,
                callback=callback, output_type="pil",
            )
            events.put(("done", images))
        except BaseException as e:  # noqa: B036 - handed to the consumer, which re-raises
            events.put(("error", e))

    worker = threading.Thread(target=work, name="t2i-generate", daemon=True)
    worker.start()
    try:
        while True:
            kind, *payload = events.get()
            if kind == "step" and not every_step:
                # Skip to the newest step already queued; keep a terminal event if one follows.
                while True:
                    try:
                        newer = events.get_nowait()
                    except queue.Empty:
                        break
                    if newer[0] != "step":
                        events.put(newer)  # nothing else produces once done/error is queued
                        break
                    kind, *payload = newer
            if kind == "step":
                step, total, x0 = payload
                preview = tile(tensor_to_pil(pipe.decode_latents(x0))) if x0 is not None else None
                yield Frame(step, total, time.perf_counter() - t0, preview=preview)
            elif kind == "done":
                (images,) = payload
                yield Frame(request.steps, request.steps, time.perf_counter() - t0, preview=tile(images),
                            images=images)
                return
            else:
                (error,) = payload
                raise error
    finally:
        cancel.set()
        worker.join()
