"""Validation of everything a client sends to the web app (and of `t2i live` settings).

The server trusts nothing from the client: every field is checked here, before any work is
queued, and every error names the field and the bad value without echoing server state
(paths, tracebacks). Prompts are cleaned rather than rejected when they contain odd but
harmless characters (control and format characters, lone surrogates from a broken client,
unusual Unicode forms), and rejected only when they are too long or empty.

No gradio import here: `t2i live` and the tests use this module without the [app] extra.
"""

from __future__ import annotations

import math
import os
import secrets
import unicodedata
from dataclasses import dataclass

from t2i.pipeline import (
    DEFAULT_GUIDANCE,
    DEFAULT_SAMPLER,
    DEFAULT_STEPS,
    MAX_IMAGES_PER_CALL,
    MAX_STEPS,
    SAMPLERS,
    PromptSyntaxError,
    check_unet_rows,
    parse_prompt,
)

MAX_SEED = 2**31 - 1
# Categories dropped from prompts: Cc control (NUL, ESC, DEL, ...), Cf format (zero-width
# joiners, bidi overrides, BOM), Cs lone surrogates (cannot be UTF-8 encoded), Co private use,
# Cn unassigned. None of them can be in the training captions, so dropping them loses nothing.
_DROPPED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn"})


class RequestError(ValueError):
    """A client sent a value outside the server's limits. The message is safe to show."""


@dataclass(frozen=True)
class Limits:
    """Server-side caps. The defaults suit a shared CPU or single-GPU demo."""

    max_steps: int = 50
    max_images: int = 4
    max_prompt_chars: int = 500
    max_guidance: float = 20.0
    concurrency: int = 1  # jobs running at once (t2i.app.admission)
    queue_size: int = 8  # jobs waiting; more are refused at once as busy

    def __post_init__(self):
        for name, lo, hi in (("max_steps", 1, MAX_STEPS), ("max_images", 1, MAX_IMAGES_PER_CALL),
                             ("max_prompt_chars", 1, 100_000), ("concurrency", 1, 64), ("queue_size", 0, 10_000)):
            value = getattr(self, name)
            if not isinstance(value, int) or not lo <= value <= hi:
                raise ValueError(f"{name} must be an integer in [{lo}, {hi}], got {value!r}")
        if not (isinstance(self.max_guidance, (int, float)) and 0 < self.max_guidance < 1000):
            raise ValueError(f"max_guidance must be a number in (0, 1000), got {self.max_guidance!r}")


@dataclass(frozen=True)
class GenerationRequest:
    """One validated generation job."""

    prompt: str
    negative_prompt: str = ""
    steps: int = DEFAULT_STEPS
    guidance: float = DEFAULT_GUIDANCE
    sampler: str = DEFAULT_SAMPLER
    seed: int = 0
    num_images: int = 1

    def metadata(self, model: str, index: int = 0) -> dict:
        """The PNG text fields saved with image `index` of the job: its own seed (the job's seed
        + index, the pipeline's per-image noise stream) regenerates it alone."""
        return dict(prompt=self.prompt, negative_prompt=self.negative_prompt, seed=self.seed + index,
                    index=index, steps=self.steps, guidance=self.guidance, sampler=self.sampler, model=model)


def clean_text(text, field: str, max_chars: int) -> str:
    """A prompt as the model should see it: NFKC-normalised (full-width letters, ligatures and
    compatibility forms become plain ones), control/format/unassigned characters removed,
    whitespace runs (tabs, newlines) collapsed to one space. Emoji and other printable
    Unicode stay: the byte-level tokenizer encodes anything.

    The length check runs on the raw input first, so a 100k-character prompt is refused in
    O(1) without being normalised."""
    if text is None:
        return ""
    if not isinstance(text, str):
        raise RequestError(f"{field} must be text, got {type(text).__name__}")
    if len(text) > max_chars:
        raise RequestError(f"{field} is {len(text):,} characters long; the limit is {max_chars:,}")
    # Lone surrogates make normalize() and UTF-8 encoding fail; drop them before anything else.
    text = "".join(ch for ch in text if not 0xD800 <= ord(ch) <= 0xDFFF)
    text = unicodedata.normalize("NFKC", text)
    kept = []
    for ch in text:
        if ch.isspace():
            kept.append(" ")
        elif unicodedata.category(ch) not in _DROPPED_CATEGORIES:
            kept.append(ch)
    text = " ".join("".join(kept).split())
    if len(text) > max_chars:  # NFKC can lengthen text (e.g. a ligature becomes two letters)
        raise RequestError(f"{field} is {len(text):,} characters long after normalisation; the limit is {max_chars:,}")
    return text


def as_int(value, field: str, lo: int, hi: int) -> int:
    """An integer (or an integral float, as JSON and sliders send) in [lo, hi]."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise RequestError(f"{field} must be an integer in [{lo}, {hi}], got {type(value).__name__}")
    try:
        number = float(value)
    except ValueError:
        raise RequestError(f"{field} must be an integer in [{lo}, {hi}], got {str(value)[:40]!r}") from None
    if not math.isfinite(number) or number != int(number) or not lo <= number <= hi:
        raise RequestError(f"{field} must be an integer in [{lo}, {hi}], got {str(value)[:40]}")
    return int(number)


def as_float(value, field: str, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise RequestError(f"{field} must be a number in [{lo:g}, {hi:g}], got {type(value).__name__}")
    try:
        number = float(value)
    except ValueError:
        raise RequestError(f"{field} must be a number in [{lo:g}, {hi:g}], got {str(value)[:40]!r}") from None
    if not math.isfinite(number) or not lo <= number <= hi:
        raise RequestError(f"{field} must be a number in [{lo:g}, {hi:g}], got {str(value)[:40]}")
    return number


def validate_request(
    limits: Limits,
    prompt,
    negative_prompt=None,
    steps=DEFAULT_STEPS,
    guidance=DEFAULT_GUIDANCE,
    sampler=DEFAULT_SAMPLER,
    seed=0,
    random_seed: bool = False,
    num_images=1,
) -> GenerationRequest:
    """Check every field against `limits`; a random seed is drawn here so the job (and its
    PNG metadata) always carries a seed that reproduces it."""
    prompt = clean_text(prompt, "prompt", limits.max_prompt_chars)
    if not prompt:
        raise RequestError("prompt is empty: type a description or tick some attributes")
    negative = clean_text(negative_prompt, "negative prompt", limits.max_prompt_chars)
    steps = as_int(steps, "steps", 1, limits.max_steps)
    guidance = as_float(guidance, "guidance", 0.0, limits.max_guidance)
    if not isinstance(sampler, str) or sampler not in SAMPLERS:
        shown = sampler[:40] if isinstance(sampler, str) else type(sampler).__name__
        raise RequestError(f"unknown sampler {shown!r}; choose one of {', '.join(sorted(SAMPLERS))}")
    num_images = as_int(num_images, "number of images", 1, limits.max_images)
    # Composed prompts (`a AND b AND NOT c :2`) are checked here, before any work is queued.
    try:
        check_unet_rows([parse_prompt(prompt)], num_images)
    except PromptSyntaxError as e:
        raise RequestError(f"prompt: {e.problem} at column {e.column}") from None
    except ValueError as e:
        raise RequestError(str(e)) from None
    if random_seed or seed is None or (isinstance(seed, (int, float)) and not isinstance(seed, bool) and seed < 0):
        seed = secrets.randbelow(MAX_SEED + 1)
    seed = as_int(seed, "seed", 0, MAX_SEED)
    return GenerationRequest(prompt, negative, steps, guidance, sampler, seed, num_images)


# The environment variables a Space's app.py reads its limits from (defaults as `t2i serve`).
LIMIT_VARIABLES = {"max_steps": "T2I_MAX_STEPS", "max_images": "T2I_MAX_IMAGES",
                   "max_prompt_chars": "T2I_MAX_PROMPT_CHARS", "concurrency": "T2I_CONCURRENCY",
                   "queue_size": "T2I_QUEUE_SIZE"}


def limits_from_env(environ=os.environ) -> Limits:
    """Limits from T2I_MAX_STEPS, T2I_MAX_IMAGES, T2I_MAX_PROMPT_CHARS, T2I_CONCURRENCY and
    T2I_QUEUE_SIZE; unset ones keep their defaults, a non-integer is a clear exit."""
    values = {}
    for field, var in LIMIT_VARIABLES.items():
        raw = environ.get(var)
        if raw is None:
            continue
        try:
            values[field] = int(raw)
        except ValueError:
            raise SystemExit(f"app.py: {var} must be an integer, got {raw!r}") from None
    return Limits(**values)
