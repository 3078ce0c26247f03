"""The Gradio page: prompt and settings on the left, the image forming step by step and the
results on the right. `build_demo(pipe, limits)` returns the Blocks; the generate event is
also the named API endpoint `/generate` (see docs/app.md for a gradio_client example).

Every input is validated by `t2i.app.limits` inside the handler (the sliders' own bound
checks are replaced so that errors name the field), and errors shown to the client never
contain server paths or tracebacks: those go to the server log only.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Iterator

import gradio as gr

from t2i.app.admission import Admission, Busy
from t2i.app.compose import (
    AGE_CHOICES,
    NEGATABLE_ATTRIBUTES,
    PRESENT_ATTRIBUTES,
    SEX_CHOICES,
    choices,
    compose_prompt,
)
from t2i.app.limits import MAX_SEED, GenerationRequest, Limits, RequestError, validate_request
from t2i.app.stream import request_warnings, stream_generation, warning_lines
from t2i.pipeline import (
    DEFAULT_GUIDANCE,
    DEFAULT_SAMPLER,
    DEFAULT_STEPS,
    SAMPLERS,
    T2IPipeline,
    parse_prompt,
)

log = logging.getLogger("t2i.app")

# Small images shown large: keep the pixels square instead of blurring them.
CSS = """
.t2i-pixels img { image-rendering: pixelated; }
#t2i-preview img { width: 100%; height: 100%; object-fit: contain; }
#t2i-info { min-height: 3em; }
"""
# System fonts only: the default theme would fetch Google Fonts, a request to a third party
# on every page load (and a stall where there is no network).
THEME_FONTS = dict(font=["ui-sans-serif", "system-ui", "sans-serif"],
                   font_mono=["ui-monospace", "SFMono-Regular", "monospace"])


def _Slider(*args, **kwargs) -> gr.Slider:
    """A gr.Slider whose out-of-range values reach the handler, which rejects them with a
    message naming the field (gradio's own check says only "Value 9999 is greater than
    maximum value 50", without saying which field). The override is per instance: a
    Slider subclass would make gradio write a .pyi stub next to this file."""
    slider = gr.Slider(*args, **kwargs)
    slider.preprocess = _unchecked
    return slider


def _unchecked(payload):
    return payload


def launch_kwargs() -> dict:
    """Arguments for `demo.launch()` that belong to the page (gradio 6 takes them there)."""
    return dict(theme=gr.themes.Default(**THEME_FONTS), css=CSS)


def _safe(message: str) -> str:
    # gr.Error renders its message as HTML; our messages may quote client input.
    return html.escape(message, quote=False)


def build_demo(pipe: T2IPipeline, limits: Limits, attributes=None, title: str = "t2i") -> gr.Blocks:
    """The app. `attributes` are the attributes the model's training data varies (as
    model_index.json records them): the checkboxes offer only those; an empty list (a model
    trained on captions without attribute labels) shows no attribute helpers at all; None
    (not recorded) offers every captioned CelebA attribute."""
    helpers = attributes is None or len(attributes) > 0
    model_note = f"model `{pipe.model_id}` · {pipe.image_size}×{pipe.image_size} px · {pipe.device.type}"
    admission = Admission(limits.concurrency, limits.queue_size)

    def generate(prompt, negative_prompt, steps, guidance, sampler, seed, random_seed, num_images) -> Iterator:
        try:
            request = validate_request(limits, prompt, negative_prompt, steps, guidance, sampler, seed,
                                       bool(random_seed), num_images)
        except RequestError as e:
            raise gr.Error(_safe(str(e)), title="Invalid request", print_exception=False) from None
        try:
            with admission.admit():  # refuses at once when `limits` jobs run and wait already
                yield from _frames(pipe, request)
        except Busy as e:  # an error event: it ends a client's streaming loop, unlike "queue full"
            raise gr.Error(_safe(str(e)), title="Busy", print_exception=False) from None

    with gr.Blocks(title=title, analytics_enabled=False, delete_cache=(1800, 3600)) as demo:
        gr.Markdown(f"# {title}: text to image\n{model_note}. The preview shows, at each denoising step, "
                    "the image the model currently predicts.")
        with gr.Row():
            with gr.Column(scale=1):
                prompt = gr.Textbox(label="Prompt", lines=2, elem_id="t2i-prompt",
                                    info="compose terms with AND, NOT and :weight" + (
                                        ", e.g. a woman with blond hair AND wearing glasses AND NOT a hat :1.5"
                                        if helpers else ""),
                                    placeholder=("a photo of a smiling young woman with blond hair wearing glasses"
                                                 if helpers else "describe the picture"),
                                    max_length=limits.max_prompt_chars)
                if helpers:
                    _attribute_helpers(prompt, attributes)
                # value="": the API then treats the negative prompt as optional (no value = required).
                negative = gr.Textbox("", label="Negative prompt", lines=1, max_length=limits.max_prompt_chars,
                                      placeholder="what to steer away from" + (", e.g. eyeglasses" if helpers else ""))
                with gr.Row():
                    steps = _Slider(1, limits.max_steps, value=min(DEFAULT_STEPS, limits.max_steps), step=1,
                                    label="Steps", elem_id="t2i-steps")
                    guidance = _Slider(0, limits.max_guidance, value=min(DEFAULT_GUIDANCE, limits.max_guidance),
                                       step=0.5, label="Guidance")
                with gr.Row():
                    sampler = gr.Dropdown(sorted(SAMPLERS), value=DEFAULT_SAMPLER, label="Sampler")
                    num_images = _Slider(1, limits.max_images, value=1, step=1, label="Images", elem_id="t2i-images")
                with gr.Row():
                    # No gradio bounds: the handler checks [0, MAX_SEED] with a message naming the field.
                    seed = gr.Number(value=0, precision=0, label=f"Seed (0 to {MAX_SEED})")
                    random_seed = gr.Checkbox(value=True, label="Random seed")
                with gr.Row():
                    run = gr.Button("Generate", variant="primary", elem_id="t2i-generate")
                    stop = gr.Button("Stop", variant="secondary")
            with gr.Column(scale=1):
                preview = gr.Image(label="Preview", type="pil",
                                   format="png", interactive=False, height=320, elem_id="t2i-preview",
                                   elem_classes="t2i-pixels", buttons=["download"])
                info = gr.Markdown(label="Status", elem_id="t2i-info")
                # The API's structured warnings ([{"field", "kind", "message", "words"?}]); the
                # page shows the same warnings as lines of the status text.
                warnings = gr.JSON(label="Warnings", visible=False, elem_id="t2i-warnings")
                gallery = gr.Gallery(label="Results", format="png", columns=4, fit_columns=False, height=260,
                                     object_fit="contain", interactive=False,
                                     elem_id="t2i-gallery", elem_classes="t2i-pixels",
                                     buttons=["download", "fullscreen"])

        inputs = [prompt, negative, steps, guidance, sampler, seed, random_seed, num_images]
        # The button, Enter in the prompt box and the API share one handler, whose admission
        # gate bounds the jobs running and waiting whichever way they arrive; gradio starts
        # every request at once so that a refusal is immediate.
        shared = dict(concurrency_limit=None, concurrency_id="generate", show_progress="minimal")
        outputs = [preview, gallery, info, warnings]
        clicked = run.click(generate, inputs, outputs, api_name="generate", **shared)
        submitted = prompt.submit(generate, inputs, outputs, api_visibility="private", **shared)
        stop.click(None, None, None, cancels=[clicked, submitted], api_visibility="private", queue=False)
    return demo


def _attribute_helpers(prompt: gr.Textbox, attributes) -> None:
    """The "Compose the prompt from attributes" accordion, offering only `attributes` (None:
    every captioned one); ticking writes the canonical caption into `prompt`."""
    present_names = [a for a in PRESENT_ATTRIBUTES if attributes is None or a in attributes]
    negatable_names = [a for a in NEGATABLE_ATTRIBUTES if a in present_names]
    # Sex and age are offered where the data varies them (Male, Young), like the checkboxes.
    has_sex = attributes is None or "Male" in attributes
    has_age = attributes is None or "Young" in attributes

    def compose(sex, age, present, absent):
        try:
            for name, value, offered in (("sex", sex, has_sex), ("age", age, has_age)):
                if value != "any" and not offered:
                    raise RequestError(f"{name}: this model's training data does not vary it")
            return compose_prompt(sex, age, present, absent, allowed=present_names)
        except RequestError as e:
            raise gr.Error(_safe(str(e)), print_exception=False) from None

    with gr.Accordion("Compose the prompt from attributes", open=False):
        with gr.Row():
            sex = gr.Radio(list(SEX_CHOICES), value="any", label="Sex", visible=has_sex)
            age = gr.Radio(list(AGE_CHOICES), value="any", label="Age", visible=has_age)
        present = gr.CheckboxGroup(choices(present_names), label="Has", elem_id="t2i-has")
        absent = gr.CheckboxGroup(choices(negatable_names), label="Explicitly without", elem_id="t2i-without")
    # One listener for all four boxes: `always_last` orders replies within a listener only, so
    # separate listeners could let an older reply overwrite the prompt a newer click wrote.
    gr.on([box.change for box in (sex, age, present, absent)], compose, [sex, age, present, absent], prompt,
          queue=False, show_progress="hidden", trigger_mode="always_last", api_name="compose_prompt")


def _frames(pipe: T2IPipeline, request: GenerationRequest) -> Iterator:
    """(preview, gallery, info, warnings) tuples: a preview per shown step, then the results.
    The warnings (words the model never saw, a prompt longer than it reads) come with the first
    frame, so the user reads them while the image forms."""
    first = True
    warnings = request_warnings(pipe, request)
    warned = "".join(f"  \n⚠ {_md(line)}" for line in warning_lines(warnings))
    try:
        for frame in stream_generation(pipe, request):
            if not frame.done:
                note = f"step {frame.step}/{frame.total} · {frame.elapsed:.1f} s" + warned
                # Clear the previous results on the first frame, then leave the gallery alone.
                yield frame.preview, ([] if first else gr.skip()), note, (warnings if first else gr.skip())
                first = False
                continue
            per_image = frame.elapsed / len(frame.images)
            results = []
            for i, image in enumerate(frame.images):
                # gradio writes str-valued `info` entries into the PNG it serves, so a
                # downloaded image carries its settings like `t2i generate`'s files.
                meta = request.metadata(model=pipe.model_id, index=i)
                image.info.update({k: str(v) for k, v in meta.items()})
                results.append((image, f"#{i}"))
            note = (f"model `{_md(pipe.model_id)}` · sampler {request.sampler} · {request.steps} steps · "
                    f"guidance {request.guidance:g} · seed {request.seed} · "
                    f"**{per_image:.2f} s per image** ({frame.elapsed:.1f} s for {len(frame.images)})")
            composed = parse_prompt(request.prompt)
            if not composed.is_plain:
                note += f"  \ncomposed prompt, {_md(composed.describe())}"
            yield frame.preview, results, note + warned, warnings
    except gr.Error:
        raise
    except Exception:
        # The details (which may include paths) go to the server log, not to the client.
        log.exception("generation failed")
        raise gr.Error("generation failed: internal error (details are in the server log)",
                       print_exception=False) from None


def _md(text: str) -> str:
    return str(text).replace("`", "'")
