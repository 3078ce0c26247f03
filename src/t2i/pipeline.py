"""Text -> image inference: tokenizer + text encoder, UNet (EMA weights), VAE, a sampler.

    pipe = T2IPipeline.from_pretrained("runs/demo")
    images = pipe("a smiling woman with blond hair wearing eyeglasses", num_images=4, seed=0)

`__call__` reads as the four steps of latent diffusion (Rombach et al. 2022): encode the
prompt, initialise latents, denoise with classifier-free guidance, decode. Loading reads
safetensors + JSON only. This module never imports `t2i.data` or `t2i.train`.

Prompts may be composed (Liu et al. 2022, "Composable Diffusion"; syntax in
`t2i.prompt_syntax`): `a woman with blond hair AND wearing glasses AND NOT a hat`. Each term is
its own conditional branch; with guidance scale s, weights w_i and the negative (or empty)
prompt n as the unconditional branch, the denoiser follows

    out = out(x, n) + s * sum_i w_i * (out(x, term_i) - out(x, n))

which for one term of weight 1 is classifier-free guidance exactly. A prompt without `AND`,
`NOT` or a weight is sampled exactly as a plain prompt always was.
"""

from __future__ import annotations

import math
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from t2i import __version__
from t2i.checkpoint import (
    CONFIG_NAME,
    INDEX_NAME,
    atomic_write_json,
    inside,
    load_component,
    read_component_config,
    read_model_index,
    resolve_component,
    save_component,
)
from t2i.diffusion.guidance import cfg_model, composed_model
from t2i.diffusion.samplers import SAMPLERS, img2img_start, make_denoiser, timesteps
from t2i.diffusion.schedule import NoiseSchedule
from t2i.imaging import pil_to_tensor, tensor_to_pil
from t2i.models.unet import UNet, UNetConfig
from t2i.models.vae import VAE, VAEConfig
from t2i.prompt_syntax import ComposedPrompt, PromptSyntaxError, parse_prompt
from t2i.text_encoder import TOKENIZER_NAME, TextEncoder
from t2i.vocabulary import VOCABULARY_NAME, UnseenWord, Vocabulary, unseen_message

# Chosen by `t2i eval --sweep` on the demo model (384 test rows a setting, paired 95% intervals):
# Euler ancestral got all attributes right on 0.805 of images at 20 steps against DPM-Solver++'s
# 0.747 (gap 0.057 [0.016, 0.099]), and 10 steps scored as 20 (0.823; gap -0.018 [-0.050, 0.013])
# in half the time. Guidance 5 gained 0.009 balanced but raised FD from 15.4 to 22.7.
DEFAULT_STEPS = 10
DEFAULT_GUIDANCE = 3.0
DEFAULT_SAMPLER = "euler-a"
MAX_STEPS = 1000
MAX_IMAGES_PER_CALL = 256
OUTPUT_TYPES = ("pil", "np", "pt", "latent")
# UNet rows per step a call may run: classifier-free guidance at the image limit runs 2 per
# image; a composed prompt runs (terms + 1) per image, so it may ask for fewer images.
MAX_UNET_ROWS = 2 * MAX_IMAGES_PER_CALL
# Largest image side a model config may ask for: a 4096px image is already a 512x512 latent;
# a hostile or mistyped config.json must fail at load, not when the first latents are allocated.
MAX_IMAGE_SIZE = 4096
# model_index.json's `_class_name` in an export: diffusers looks this name up in its own module
# and fails with it in the message.
PIPELINE_CLASS_NAME = "t2i.pipeline.T2IPipeline"
HUB_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")


def default_device() -> torch.device:
    """cuda > mps > cpu."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


@dataclass(frozen=True)
class TermStates:
    """Text states of composed prompts, one row per term of each image (images prompt-major,
    an image's terms consecutive): what `composed_model` takes."""

    hidden: torch.Tensor  # (R, L, D)
    mask: torch.Tensor  # (R, L)
    pooled: torch.Tensor  # (R, E)
    image: torch.Tensor  # (R,) long: the image each term belongs to
    weight: torch.Tensor  # (R,) float: the term's weight (negative for NOT)


class T2IPipeline:
    def __init__(
        self,
        vae: VAE,
        text_encoder: TextEncoder,
        unet: UNet,
        schedule: NoiseSchedule,
        prediction: str,
        image_size: int,
        model_id: str = "t2i",
        model_dir: str | Path | None = None,
    ):
        check_image_size(image_size, vae.downsample_factor)
        self.vae, self.text_encoder, self.unet = vae.eval(), text_encoder.eval(), unet.eval()
        self.schedule, self.prediction = schedule, prediction
        self.image_size, self.model_id = image_size, model_id
        self.model_dir = Path(model_dir) if model_dir is not None else None  # where from_pretrained loaded it
        self.unet_config = unet.config  # kept: `compile` wraps the module
        self.device = torch.device("cpu")
        self.precision = "fp32"
        self.last_seed: int | None = None
        # What the model dir said beyond the weights (each component's config.json, its
        # model_index.json): `save_pretrained` writes them back, so an export keeps the recipe.
        self.component_configs: dict[str, dict] = {}
        self.model_index: dict = {}
        # The words of the training captions (MODEL_DIR/vocabulary.json); None for a model
        # trained before they were recorded, which then warns about no word.
        self.vocabulary: Vocabulary | None = None

    @classmethod
    def from_pretrained(
        cls, model_dir: str | Path, device: str | torch.device | None = None, precision: str = "auto",
        revision: str | None = None,
    ) -> T2IPipeline:
        """Load a model directory (a training dir or a `save_pretrained` export), or a Hugging
        Face Hub repo id "user/repo" (at `revision`) through huggingface_hub (the [hub] extra),
        which honours HF_HUB_OFFLINE and its cache."""
        if not Path(model_dir).is_dir() and is_hub_repo_id(str(model_dir)):
            from t2i.hub import download_model

            model_dir = download_model(str(model_dir), revision=revision)
        model_dir = Path(model_dir)
        if not model_dir.is_dir():
            raise FileNotFoundError(f"model directory not found: {model_dir}")
        # The UNet's config.json carries the schedule and image size: check them before loading
        # (allocating) any network.
        unet_dir = resolve_component(model_dir, "unet")
        meta = read_component_config(unet_dir, "unet")
        diffusion = meta.get("diffusion", {})
        if not isinstance(diffusion, dict):
            raise ValueError(f"{unet_dir / CONFIG_NAME}: 'diffusion' must be an object, got {diffusion!r}")
        try:
            schedule = NoiseSchedule.from_dict(diffusion.get("schedule", {}))
        except (TypeError, ValueError) as e:
            raise ValueError(f"{unet_dir / CONFIG_NAME}: bad diffusion schedule: {e}") from None
        vae, vae_meta = load_component(resolve_component(model_dir, "vae"), VAE, VAEConfig, "vae")
        image_size = meta.get("image_size", 64)
        try:
            check_image_size(image_size, vae.downsample_factor)
        except ValueError as e:
            raise ValueError(f"{unet_dir / CONFIG_NAME}: {e}") from None
        unet, _ = load_component(unet_dir, UNet, UNetConfig, "unet")
        text_encoder = TextEncoder.from_pretrained(model_dir, token_embeddings=unet.config.text_token_embeddings)
        if unet.config.context_dim != text_encoder.hidden_dim:
            raise ValueError(
                f"{model_dir}: the UNet expects text states of width {unet.config.context_dim} but the "
                f"text encoder gives {text_encoder.hidden_dim}; they come from different trainings"
            )
        index = read_model_index(model_dir)
        pipe = cls(
            vae, text_encoder, unet,
            schedule=schedule,
            prediction=diffusion.get("prediction", "v"),
            image_size=image_size,
            model_id=str(index.get("id", model_dir.name)),
            model_dir=model_dir,
        )
        pipe.model_index = index
        pipe.component_configs = {"vae": vae_meta, "clip": read_component_config(
            resolve_component(model_dir, "clip"), "clip"), "unet": meta}
        vocabulary = model_dir / VOCABULARY_NAME
        if vocabulary.exists() or vocabulary.is_symlink():  # a symlink out of the model dir is refused
            pipe.vocabulary = Vocabulary.load(inside(model_dir, vocabulary))
        return pipe.to(device if device is not None else default_device(), precision)

    def save_pretrained(self, save_directory: str | Path) -> Path:
        """Write an inference-only model dir: tokenizer.json, clip/ (the text encoder), unet/ (the
        weights sampled with: EMA for a trained model), vae/ (with its latent scale/shift),
        each as config.json + model.safetensors, model_index.json and vocabulary.json (when the
        model dir had one). No checkpoints, latent cache or logs. `from_pretrained` on it gives the same pixels for the same seed.

        model_index.json's `_class_name` names t2i's pipeline class, so diffusers pointed at the
        folder fails saying so ("module diffusers has no attribute t2i.pipeline.T2IPipeline")
        instead of misreading it. Refuses a non-empty folder that is not an earlier export."""
        out = Path(save_directory)
        check_export_target(out)
        out.mkdir(parents=True, exist_ok=True)
        unet = getattr(self.unet, "_orig_mod", self.unet)  # the module under torch.compile
        required = {"unet": {"diffusion": {"schedule": self.schedule.to_dict(), "prediction": self.prediction},
                             "image_size": self.image_size}}
        for kind, module in (("vae", self.vae), ("clip", self.text_encoder.clip), ("unet", unet)):
            meta = self.component_configs.get(kind, {})
            extra = {k: v for k, v in meta.items() if k not in ("type", "config")} | required.get(kind, {})
            save_component(out / kind, module, module.config, kind, extra=extra)
        self.text_encoder.tokenizer.save(out / TOKENIZER_NAME)
        if self.vocabulary is not None:
            self.vocabulary.save(out / VOCABULARY_NAME)
        index = {k: v for k, v in self.model_index.items() if k != "stages"}  # training records stay behind
        atomic_write_json(out / INDEX_NAME, {
            "_class_name": PIPELINE_CLASS_NAME,
            "_t2i_version": __version__,
            **index,
            "format": "t2i-model",
            "id": self.model_id,
            # diffusers' (library, class) per component folder, for readers of that layout
            "vae": ["t2i", "t2i.models.vae.VAE"],
            "clip": ["t2i", "t2i.models.clip.CLIP"],
            "unet": ["t2i", "t2i.models.unet.UNet"],
        })
        return out

    def to(self, device: str | torch.device, precision: str = "auto") -> T2IPipeline:
        """Move to `device`. precision: "fp32" | "bf16" | "fp16" autocast for the networks;
        "auto" = bf16 on CUDA (when supported), fp32 elsewhere (the CPU default, as in diffusers)."""
        self.device = torch.device(device)
        if precision == "auto":
            precision = "bf16" if self.device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
        if precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"precision must be fp32, bf16, fp16 or auto, got {precision!r}")
        self.precision = precision
        for module in (self.vae, self.text_encoder, self.unet):
            module.to(self.device)
        if self.device.type == "cpu":
            # channels_last weights make each CPU sampling step ~1.4x faster (bench/unet.py).
            self.unet.to(memory_format=torch.channels_last)
        return self

    def compile(self, mode: str | None = None) -> T2IPipeline:
        """torch.compile the UNet. On CUDA the default mode is "reduce-overhead", which captures
        the fixed-shape sampling step in a CUDA graph (the samplers never sync with the host)."""
        mode = mode or ("reduce-overhead" if self.device.type == "cuda" else "default")
        self.unet = torch.compile(self.unet, mode=mode)
        return self

    def autocast(self):
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)
        return torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None)

    # -- the steps ----------------------------------------------------------------------------

    @torch.no_grad()
    def unseen_words(self, prompt: str) -> list[UnseenWord]:
        """Words of `prompt` the training captions never contained, each with the closest word
        the model knows; [] for a model without a recorded vocabulary."""
        return self.vocabulary.unseen(prompt) if self.vocabulary is not None else []

    def prompt_warnings(self, prompt: str, field: str = "prompt") -> list[dict]:
        """What the user should know about how the model will read `prompt`, as structured
        warnings (the API returns them as they are; the CLI, live and the page show `message`):
        {"field", "kind": "unseen_words", "message", "words": [{"word", "suggestion"}]} for
        words the model never saw (it is likely to ignore them), and {"field", "kind":
        "truncated", "message"} for a prompt longer than the text encoder's context. A composed
        prompt (`field` "prompt") is read as the encoder reads it, term by term: its `AND`/`NOT`
        keywords and weights are not words, and each term has the whole context."""
        texts = [prompt]
        if field == "prompt":
            try:
                texts = [t.text for t in parse_prompt(prompt).terms]
            except PromptSyntaxError:
                pass  # generating reports it, naming the column
        out = []
        unseen = self.unseen_words(" ".join(texts))
        if unseen:
            out.append({"field": field, "kind": "unseen_words", "message": unseen_message(unseen),
                        "words": [u.to_dict() for u in unseen]})
        tokenizer = self.text_encoder.tokenizer
        context = tokenizer.context_length
        for text in texts:
            n = tokenizer.num_tokens(text)
            if n > context:
                what = "the prompt" if len(texts) == 1 else f"the term {text[:40]!r}"
                out.append({"field": field, "kind": "truncated",
                            "message": f"{what} is {n - 2} tokens long; the model reads only the first {context - 2}"})
        return out

    def encode_prompt(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Text states once per prompt: (hidden (P,L,D), mask (P,L), pooled (P,E))."""
        return self.text_encoder.encode(prompts)

    @torch.no_grad()
    def encode_terms(self, parsed: list[ComposedPrompt], num_images: int) -> TermStates:
        """Each distinct term's text states once, laid out per image: image i * num_images + k
        (prompt i, image k) gets rows for every term of prompt i."""
        texts = list(dict.fromkeys(t.text for p in parsed for t in p.terms))
        hidden, mask, pooled = self.encode_prompt(texts)  # (U, L, D), (U, L), (U, E)
        where = {text: u for u, text in enumerate(texts)}
        source, image, weight = [], [], []
        for i, p in enumerate(parsed):
            for k in range(num_images):
                for term in p.terms:
                    source.append(where[term.text])
                    image.append(i * num_images + k)
                    weight.append(term.weight)
        source_t = torch.tensor(source, device=hidden.device)  # (R,)
        return TermStates(hidden[source_t], mask[source_t], pooled[source_t],
                          torch.tensor(image, device=hidden.device), torch.tensor(weight, dtype=torch.float32))

    def latent_shape(self) -> tuple[int, int, int]:
        return self.vae.latent_shape(self.image_size)

    @staticmethod
    def image_generators(n: int, seed: int) -> list[torch.Generator]:
        """One CPU noise stream per image: image k of a call seeded `seed` draws from `seed + k`
        (as the popular web UIs do), so each image is reproducible on its own and a seed gives
        the same start latents on every device."""
        return [torch.Generator().manual_seed(seed + k) for k in range(n)]

    def noise(self, generators: list[torch.Generator]) -> torch.Tensor:
        """(n, C, h, w) standard normal start latents, row k from generators[k] (drawn on that
        generator's device), on the pipeline's device."""
        shape = (1, *self.latent_shape())
        rows = [torch.randn(shape, generator=g, device=g.device).to(self.device) for g in generators]
        return torch.cat(rows)

    def initial_noise(self, n: int, seed: int) -> torch.Tensor:
        """The start latents of a call with `n` images seeded `seed`."""
        return self.noise(self.image_generators(n, seed))

    @torch.no_grad()
    def denoise(
        self,
        latents: torch.Tensor,
        cond: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | TermStates,
        uncond: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        ts: torch.Tensor,
        guidance: float,
        sampler: str,
        generator: torch.Generator | list[torch.Generator] | None = None,
        callback: Callable | None = None,
    ) -> torch.Tensor:
        """Run `sampler` from `latents` at ts[0] to x0 with classifier-free guidance
        (Ho & Salimans 2022). cond/uncond text states are per image (N, ...); `generator` feeds
        the stochastic samplers (one for the batch or a list with one per image)."""

        # A TermStates cond is composed guidance (Liu et al. 2022): one forward of R + N rows.
        u_hidden, u_mask, u_pooled = uncond
        use_pooled = self.unet_config.pooled_dim > 0
        if isinstance(cond, TermStates):
            model_fn = composed_model(
                self.unet, guidance, cond.hidden, cond.mask, cond.pooled if use_pooled else None,
                cond.image, cond.weight, u_hidden, u_mask, u_pooled if use_pooled else None,
            )
        else:
            hidden, mask, pooled = cond
            model_fn = cfg_model(
                self.unet, guidance, hidden, u_hidden, mask, u_mask,
                pooled if use_pooled else None, u_pooled if use_pooled else None,
            )
        denoise = make_denoiser(model_fn, self.schedule, self.prediction)
        with self.autocast():
            return SAMPLERS[sampler](denoise, latents, ts, self.schedule, callback=callback,
                                     generator=generator)

    @torch.no_grad()
    def decode_latents(self, z: torch.Tensor) -> torch.Tensor:
        """Denoiser latents (N,C,h,w) -> images (N,3,H,W) float in [-1, 1]."""
        with self.autocast():
            images = self.vae.decode(self.vae.denormalize(z.float()))
        return images.float().clamp(-1, 1)

    @torch.no_grad()
    def encode_image(self, image) -> torch.Tensor:
        """PIL image or (3,H,W)/(N,3,H,W) tensor in [-1,1] -> normalised latents (posterior mean)."""
        x = image if isinstance(image, torch.Tensor) else pil_to_tensor(image, self.image_size)
        x = x[None] if x.ndim == 3 else x
        return self.vae.normalize(self.vae.encode(x.to(self.device).float()).mean)

    # -- the public call ----------------------------------------------------------------------

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        negative_prompt: str | list[str] | None = None,
        num_images: int | None = None,
        steps: int | None = None,
        guidance: float | None = None,
        sampler: str = DEFAULT_SAMPLER,
        seed: int | None = None,
        init_image=None,
        strength: float = 0.8,
        callback: Callable | None = None,
        output_type: str = "pil",
        *,
        num_images_per_prompt: int | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        image=None,
        callback_on_step_end: Callable | None = None,
        return_dict: bool | None = None,
    ):
        """Images for `prompt` (a string or a list; `num_images` per prompt, prompt-major order).
        A prompt may be composed, `a woman AND wearing glasses AND NOT a hat :0.5` (module
        docstring; `t2i.prompt_syntax`); `negative_prompt` is used as written.

        t2i's names and diffusers' are both accepted (giving both with different values is an
        error): num_images | num_images_per_prompt, steps | num_inference_steps,
        guidance | guidance_scale (the same classifier-free guidance scale), init_image | image
        (img2img from that picture, SDEdit at `strength`).

        Noise: image k of the call uses its own stream, a CPU generator seeded `seed + k`, for its
        start latents and for any sampler noise, so one image regenerates alone from its seed.
        `generator` replaces `seed`: one torch.Generator for the whole batch, or a list with one per
        image (`[torch.Generator().manual_seed(seed + k) for k in range(n)]` equals `seed=seed`).

        output_type: "pil" (list of PIL images), "np" (N,H,W,3) float in [0,1] like diffusers,
        "pt" (N,3,H,W) float in [-1,1] (t2i's convention; diffusers' "pt" is [0,1]), "latent"
        (N,C,h,w) denoiser latents, before the VAE decodes them.
        callback(step, total, x, x0) and callback_on_step_end(pipe, step, timestep, kwargs) with
        kwargs {"latents": x, "x0": x0} run after every step (what callback_on_step_end returns
        is not read back: the samplers' latents cannot be replaced mid-run).
        return_dict: None (default) returns the images themselves; True a T2IPipelineOutput
        (`.images`, `.seeds`); False the tuple (images,) as diffusers does.
        """
        num_images = _either("num_images", num_images, "num_images_per_prompt", num_images_per_prompt, 1)
        steps = _either("steps", steps, "num_inference_steps", num_inference_steps, DEFAULT_STEPS)
        guidance = _either("guidance", guidance, "guidance_scale", guidance_scale, DEFAULT_GUIDANCE)
        init_image = _either("init_image", init_image, "image", image, None)
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        negatives = _broadcast(negative_prompt, len(prompts))
        n = num_images * len(prompts)
        check_settings(steps=steps, guidance=guidance, sampler=sampler, num_images=n, strength=strength)
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {', '.join(OUTPUT_TYPES)}, got {output_type!r}")
        if generator is not None and seed is not None:
            raise ValueError("give seed or generator, not both")
        if generator is None:
            self.last_seed = seed = secrets.randbits(31) if seed is None else int(seed)
            generators, seeds = self.image_generators(n, seed), [seed + k for k in range(n)]
        else:
            self.last_seed, seeds = None, None
            generators = _generator_list(generator, n)

        # 1. Encode the prompts (once each) and the negative/empty prompts, then repeat per image.
        #    Composed prompts: every term once, then one row per term of each image.
        parsed = parse_prompts(prompts)
        if all(p.is_plain for p in parsed):
            cond = _repeat(self.encode_prompt([p.terms[0].text for p in parsed]), num_images)
        else:
            check_unet_rows(parsed, num_images)
            cond = self.encode_terms(parsed, num_images)
        uncond = _repeat(self.encode_prompt(negatives), num_images)

        # 2. Initial latents: noise at the first timestep, or a noised init image (SDEdit).
        ts = timesteps(self.schedule, steps)  # "dpm++2m-karras" re-spaces them itself
        latents = self.noise(generators)
        if init_image is not None:
            x0 = self.encode_image(init_image).expand(n, -1, -1, -1)
            ts, latents = img2img_start(self.schedule, ts, x0, strength, noise=latents)

        # 3. Denoise.
        step_callback = _step_callbacks(self, ts, callback, callback_on_step_end)
        if len(ts):
            latents = self.denoise(latents, cond, uncond, ts, guidance, sampler, generators, step_callback)

        # 4. Decode.
        images = latents if output_type == "latent" else self.decode_latents(latents)
        if output_type == "pil":
            images = tensor_to_pil(images)
        elif output_type == "np":
            images = ((images + 1) / 2).permute(0, 2, 3, 1).cpu().numpy()  # (N, H, W, 3) in [0, 1]
        if return_dict is None:
            return images
        return T2IPipelineOutput(images, seeds) if return_dict else (images,)


@dataclass
class T2IPipelineOutput:
    """What `pipe(..., return_dict=True)` returns; `.images` as in diffusers."""

    images: list[Image.Image] | np.ndarray | torch.Tensor
    seeds: list[int] | None  # image k's noise seed; None when the caller passed generators


def _either(name, value, alias, alias_value, default):
    """One setting given under t2i's name or diffusers' (or neither: `default`)."""
    if value is not None and alias_value is not None and value != alias_value:
        raise ValueError(f"{name}={value!r} and {alias}={alias_value!r} disagree; give one of them")
    if value is not None:
        return value
    return alias_value if alias_value is not None else default


def _generator_list(generator, n: int) -> list[torch.Generator]:
    """A caller's generator(s) as one per image: a single generator is shared by the batch."""
    if isinstance(generator, torch.Generator):
        return [generator] * n
    generators = list(generator)
    if len(generators) != n or not all(isinstance(g, torch.Generator) for g in generators):
        raise ValueError(f"generator must be a torch.Generator or a list of {n} (one per image), "
                         f"got {len(generators)} item(s)")
    return generators


def _step_callbacks(pipe, ts: torch.Tensor, callback, on_step_end) -> Callable | None:
    """The sampler's callback(step, total, x, x0): t2i's `callback` and diffusers'
    `callback_on_step_end(pipe, step, timestep, {"latents": x, "x0": x0})`, in that order."""
    if on_step_end is None:
        return callback

    def both(i, total, x, x0):
        if callback is not None:
            callback(i, total, x, x0)
        on_step_end(pipe, i, ts[i], {"latents": x, "x0": x0})

    return both


def parse_prompts(prompts: list[str]) -> list[ComposedPrompt]:
    """Parse each prompt's composable syntax; an error names the prompt (when there are
    several) and the column."""
    parsed = []
    for i, text in enumerate(prompts):
        try:
            parsed.append(parse_prompt(text))
        except PromptSyntaxError as e:
            if len(prompts) == 1:
                raise
            raise PromptSyntaxError(e.prompt, e.column, f"prompt {i}: {e.problem}") from None
    return parsed


def check_unet_rows(parsed: list[ComposedPrompt], num_images: int) -> None:
    """A composed call runs (terms + 1) UNet rows per image and step; refuse more than
    MAX_UNET_ROWS with a message that says what to reduce."""
    rows = num_images * sum(len(p.terms) + 1 for p in parsed)
    if rows > MAX_UNET_ROWS:
        raise ValueError(f"{num_images * len(parsed)} images of composed prompts with "
                         f"{sum(len(p.terms) for p in parsed)} terms in all need {rows} UNet rows per step; "
                         f"the limit is {MAX_UNET_ROWS}: ask for fewer images or terms")


def is_hub_repo_id(name: str) -> bool:
    """"user/repo" (Hugging Face Hub naming), not a path like "./x", "/x" or "a/b/c"."""
    return bool(HUB_REPO_ID.fullmatch(name)) and ".." not in name


def check_export_target(out: Path) -> None:
    if not out.exists():
        return
    if not out.is_dir():
        raise NotADirectoryError(f"{out} exists and is not a directory")
    if any(out.iterdir()) and read_model_index(out).get("_class_name") != PIPELINE_CLASS_NAME:
        raise ValueError(f"{out} is not empty and holds no earlier t2i export; refusing to write into it "
                         "(an export must not mix with checkpoints or other files)")


def check_image_size(image_size, factor: int) -> int:
    """An image side the VAE can encode/decode: an integer multiple of its downsampling factor
    in [factor, MAX_IMAGE_SIZE]."""
    if (isinstance(image_size, bool) or not isinstance(image_size, int)
            or not factor <= image_size <= MAX_IMAGE_SIZE or image_size % factor):
        raise ValueError(f"image_size must be a multiple of the VAE's downsampling factor {factor} "
                         f"between {factor} and {MAX_IMAGE_SIZE}, got {image_size!r}")
    return image_size


def check_settings(steps: int, guidance: float, sampler: str, num_images: int = 1, strength: float = 0.8) -> None:
    """Validate user-facing generation settings with errors that name the bad value."""
    if not isinstance(steps, int) or not 1 <= steps <= MAX_STEPS:
        raise ValueError(f"steps must be an integer in [1, {MAX_STEPS}], got {steps!r}")
    if not isinstance(guidance, (int, float)) or not math.isfinite(guidance) or guidance < 0:
        raise ValueError(f"guidance must be a finite number >= 0, got {guidance!r}")
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {sorted(SAMPLERS)}")
    if not 1 <= num_images <= MAX_IMAGES_PER_CALL:
        raise ValueError(f"number of images must be in [1, {MAX_IMAGES_PER_CALL}], got {num_images}")
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be in [0, 1], got {strength}")


def _broadcast(negative: str | list[str] | None, n: int) -> list[str]:
    if negative is None:
        return [""] * n
    if isinstance(negative, str):
        return [negative] * n
    if len(negative) != n:
        raise ValueError(f"got {len(negative)} negative prompts for {n} prompts")
    return list(negative)


def _repeat(states: tuple[torch.Tensor, ...], k: int) -> tuple[torch.Tensor, ...]:
    return tuple(s.repeat_interleave(k, dim=0) for s in states)


def slerp(a: torch.Tensor, b: torch.Tensor, w: float) -> torch.Tensor:
    """Spherical interpolation of two noise tensors (keeps the norm of Gaussian noise)."""
    a_flat, b_flat = a.flatten().double(), b.flatten().double()
    omega = torch.arccos((a_flat @ b_flat / (a_flat.norm() * b_flat.norm())).clamp(-1, 1))
    if omega.abs() < 1e-6:
        return torch.lerp(a, b, w)
    so = torch.sin(omega)
    return ((torch.sin((1 - w) * omega) / so) * a.double() + (torch.sin(w * omega) / so) * b.double()).to(a.dtype)


@torch.no_grad()
def interpolate(
    pipe: T2IPipeline, prompt_a: str, prompt_b: str, seed_a: int = 0, seed_b: int = 1, frames: int = 8,
    steps: int = DEFAULT_STEPS, guidance: float = DEFAULT_GUIDANCE, sampler: str = DEFAULT_SAMPLER,
    callback: Callable | None = None,
) -> list[Image.Image]:
    """Images morphing from (prompt_a, seed_a) to (prompt_b, seed_b): slerp on the start noise,
    lerp on the text states. `callback` as in `T2IPipeline.__call__`."""
    check_settings(steps=steps, guidance=guidance, sampler=sampler, num_images=frames)
    ends = parse_prompts([prompt_a, prompt_b])
    if not all(p.is_plain for p in ends):
        raise ValueError("interpolation takes plain prompts, not composed ones (AND / NOT / :weight)")
    prompt_a, prompt_b = (p.terms[0].text for p in ends)
    ha, ma, pa = pipe.encode_prompt([prompt_a])
    hb, mb, pb = pipe.encode_prompt([prompt_b])
    weights = torch.linspace(0, 1, frames).tolist()
    hidden = torch.cat([torch.lerp(ha, hb, w) for w in weights])
    pooled = torch.cat([torch.lerp(pa, pb, w) for w in weights])
    mask = (ma | mb).expand(frames, -1)  # attend to the union of both prompts' tokens
    (stream_a,) = pipe.image_generators(1, seed_a)
    na, nb = pipe.noise([stream_a]), pipe.initial_noise(1, seed_b)
    latents = torch.cat([slerp(na, nb, w) for w in weights])
    uncond = _repeat(pipe.encode_prompt([""]), frames)
    ts = timesteps(pipe.schedule, steps)
    # Every frame continues seed_a's stream from the same state: the stochastic samplers add the
    # same noise to every frame (a smooth morph), and frame 0 is exactly pipe(prompt_a, seed=seed_a).
    generators = [torch.Generator().set_state(stream_a.get_state()) for _ in weights]
    latents = pipe.denoise(latents, (hidden, mask, pooled), uncond, ts, guidance, sampler, generators, callback)
    return tensor_to_pil(pipe.decode_latents(latents))
