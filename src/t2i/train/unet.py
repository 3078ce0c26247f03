"""Stage 3: the conditional latent-diffusion UNet, trained on the VAE's latent cache with the
frozen CLIP text encoder (or, with `--train-text-encoder`, fine-tuning it jointly as LDM does).

Loss (one screen, minRF-style): sample a latent from the cached posterior, pick t, noise it,
regress the v (or eps) target, weight by min-SNR-gamma (Hang et al. 2023); 10% of captions are
replaced by "" so the same network is also the unconditional model for classifier-free
guidance (Ho & Salimans 2022).
"""

from __future__ import annotations

import argparse
import json
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from t2i.checkpoint import atomic_write_json, resolve_component, save_component
from t2i.config import config_to_dict, replace
from t2i.data.celeba import FaceDataset
from t2i.data.latents import LatentCache
from t2i.diffusion.schedule import NoiseSchedule
from t2i.imaging import image_grid
from t2i.models.unet import UNET_PRESETS, UNet, UNetConfig
from t2i.prompt_syntax import escape
from t2i.text_encoder import TextEncoder
from t2i.train.encode import check_cache_matches, encode_data, load_vae
from t2i.train.loop import (
    LoopConfig,
    Stage,
    StepOutput,
    add_loop_arguments,
    add_stage_recipe_arguments,
    distributed_state,
    loop_config_from_args,
    record_recipe,
    stage_recipe,
    train,
)


@dataclass
class DiffusionConfig:
    schedule: str = "cosine"  # cosine (squaredcos_cap_v2) | linear | scaled_linear
    T: int = 1000
    prediction: str = "v"  # v (Salimans & Ho 2022) | eps | x0
    min_snr_gamma: float = 5.0  # 0 = unweighted MSE
    caption_dropout: float = 0.1  # probability a caption is replaced by "" (CFG)


@dataclass
class UNetStageConfig:
    unet: UNetConfig = field(default_factory=UNetConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)
    # How often an image's first caption is used; the rest of the time one of the others. t2i's
    # captions put the complete one first (it names every present attribute, so an unnamed
    # attribute is absent) and the others name a subset. Drawn uniformly (1 / 5), the model
    # learns that an unnamed attribute may well be there, and a prompt that lists what it wants
    # gets extras (time_to_quality's all-attributes-correct rate with 0.5 instead: 0.11 -> 0.22
    # at 600 steps, 0.24 -> 0.41 at 1200; balanced faithfulness 0.89 -> 0.93 at 1200).
    complete_caption_prob: float = 0.0  # 0 = uniform over all of an image's captions
    train_text_encoder: bool = False
    text_lr_scale: float = 0.1  # LR multiplier for the text encoder when fine-tuned jointly
    sample_prompts: int = 8  # validation grid: this many fixed captions x 2 seeds


PRESETS: dict[str, UNetStageConfig] = {
    "tiny": UNetStageConfig(
        unet=UNET_PRESETS["tiny"],
        loop=LoopConfig(steps=20, batch_size=8, lr=1e-3, warmup_steps=2, ckpt_every=10,
                        log_every=5, ema_decay=0.9, mixed_precision="no"),
        sample_prompts=2, complete_caption_prob=0.5,
    ),
    "synth64": UNetStageConfig(
        unet=UNET_PRESETS["synth64"],
        # 13 minutes on 2 idle CPU cores (bf16 autocast, 0.44 s/step): under a short budget
        # the limit is steps x learning rate, so a high LR with a short EMA window (~200 steps).
        loop=LoopConfig(steps=1800, batch_size=64, lr=2e-3, warmup_steps=100, min_lr_ratio=0.05,
                        ckpt_every=300, log_every=50, sample_every=0, ema_decay=0.995),
        # make demo: 0.5 gave all-correct 0.45, 0.75 gave 0.75 (with a longer-trained CLIP too,
        # so not a clean comparison; balanced 0.944 -> 0.966).
        complete_caption_prob=0.75,
    ),
    "celeba128": UNetStageConfig(
        unet=UNET_PRESETS["celeba128"],
        loop=LoopConfig(steps=100_000, batch_size=256, lr=3e-4, warmup_steps=1000, min_lr_ratio=0.1,
                        ckpt_every=2000, log_every=100, sample_every=5000, ema_decay=0.9999,
                        num_workers=4),
        complete_caption_prob=0.5,
    ),
}


class LatentDataset(torch.utils.data.Dataset):
    """Items of a latent cache: the posterior (mean, std), one caption and the attributes.
    The sample seed from the loop's batch sampler picks the caption and the flip variant."""

    def __init__(self, cache: LatentCache, complete_caption_prob: float = 0.0):
        if cache.captions is None:
            raise ValueError(f"latent cache {cache.directory} has no captions; re-encode a captioned dataset")
        if not 0.0 <= complete_caption_prob <= 1.0:
            raise ValueError(f"complete_caption_prob must be in [0, 1], got {complete_caption_prob}")
        self.cache = cache
        self.complete_caption_prob = complete_caption_prob
        # The whole cache is small (20k x 2 x 4x16x16 fp16 = 40 MB): load it once.
        self.mean = torch.tensor(np.asarray(cache.mean), dtype=torch.float32)  # (V, N, C, h, w)
        self.std = torch.tensor(np.asarray(cache.std), dtype=torch.float32)
        self.captions = cache.captions

    def __len__(self) -> int:
        return len(self.cache)

    def __getitem__(self, key):
        i, seed = key if isinstance(key, tuple) else (key, key)
        rng = random.Random(seed)
        variant = rng.randrange(self.mean.shape[0])
        captions = self.captions[i]
        if self.complete_caption_prob and len(captions) > 1:
            caption = captions[0] if rng.random() < self.complete_caption_prob else rng.choice(captions[1:])
        else:
            caption = rng.choice(captions)
        return {"mean": self.mean[variant, i], "std": self.std[variant, i], "caption": caption}


class UNetStage(Stage):
    name = "unet"

    def __init__(self, cfg: UNetStageConfig, text_encoder: TextEncoder, cache: LatentCache,
                 vae_dir: Path, image_size: int):
        self.cfg = cfg
        self.text_encoder = text_encoder
        self.cache = cache
        self.vae_dir = vae_dir
        self.image_size = image_size
        self.schedule = NoiseSchedule(cfg.diffusion.schedule, cfg.diffusion.T)
        # The UNet's text widths come from the text encoder it is trained with.
        if text_encoder.token_embeddings != cfg.unet.text_token_embeddings:
            raise ValueError(f"the UNet config has text_token_embeddings={cfg.unet.text_token_embeddings} but the "
                             f"text encoder was built with token_embeddings={text_encoder.token_embeddings}")
        self.unet_config = replace(cfg.unet, in_channels=cache.latent_shape[0], out_channels=cache.latent_shape[0],
                                   context_dim=text_encoder.hidden_dim,
                                   pooled_dim=text_encoder.embed_dim if cfg.unet.pooled_dim else 0)
        self.sample_captions = [c[0] for c in cache.captions[: cfg.sample_prompts]]

    def build(self):
        modules = {"unet": UNet(self.unet_config)}
        if self.cfg.train_text_encoder:
            self.text_encoder.frozen = False
            self.text_encoder.clip.requires_grad_(True)
            modules["text"] = self.text_encoder
        return modules

    def lr_scale(self, name):
        return self.cfg.text_lr_scale if name == "text" else 1.0

    def collate(self, items):
        items = [x for x in items if x is not None]
        return {"mean": torch.stack([x["mean"] for x in items]), "std": torch.stack([x["std"] for x in items]),
                "caption": [x["caption"] for x in items]}

    def training_step(self, batch, ctx):
        d = self.cfg.diffusion
        B = batch["mean"].shape[0]
        shape = batch["mean"].shape[1:]
        # Fresh posterior sample each time: z = mean + std * eps, then the VAE's normalisation.
        z = self.cache.normalize(batch["mean"] + batch["std"] * ctx.randn(B, *shape))  # (B, C, h, w)
        t = ctx.randint(0, d.T, B)
        noise = ctx.randn(B, *shape)
        x_t = self.schedule.add_noise(z, noise, t)
        target = self.schedule.training_target(z, noise, t, d.prediction)
        drop = (ctx.rand(B) < d.caption_dropout).tolist()
        captions = ["" if dropped else c for c, dropped in zip(batch["caption"], drop)]
        text = ctx.models["text"] if "text" in ctx.models else self.text_encoder
        hidden, mask, pooled = text.encode(captions)
        pred = ctx.models["unet"](x_t, t, hidden, mask, pooled if self.unet_config.pooled_dim else None)
        mse = (pred.float() - target.float()).pow(2).mean(dim=(1, 2, 3))  # (B,)
        weight = self.schedule.min_snr_weight(t, d.min_snr_gamma, d.prediction) if d.min_snr_gamma else 1.0
        loss = (mse * weight).mean()
        return StepOutput(loss, {"mse": mse.mean().detach()})

    def _pipeline(self, ctx):
        from t2i.pipeline import T2IPipeline
        vae = load_vae(self.vae_dir, device=ctx.device)
        return T2IPipeline(vae, self.text_encoder, ctx.ema("unet"), self.schedule, self.cfg.diffusion.prediction,
                           self.image_size).to(ctx.device)

    def sample(self, ctx, path):
        """A grid of fixed captions x 2 seeds with the EMA weights (20 DPM-Solver++ steps)."""
        pipe = self._pipeline(ctx)
        was_training = pipe.unet.training
        # Dataset captions are literal text: escaped, so an "AND" or "score: 5" in one is not syntax.
        images = pipe([escape(c) for c in self.sample_captions], num_images=2, steps=20, seed=0)
        pipe.unet.train(was_training)
        self.text_encoder.eval()
        image_grid(images, cols=4).save(path)
        (path.with_suffix(".txt")).write_text("\n".join(self.sample_captions) + "\n")

    def finish(self, ctx):
        unet_dir = ctx.out_dir / "unet"
        extra = {
            "diffusion": {"schedule": self.schedule.to_dict(), "prediction": self.cfg.diffusion.prediction},
            "image_size": self.image_size,
            "latent_shape": list(self.cache.latent_shape),
            "vae_hash": self.cache.vae_hash,
            "train_text_encoder": self.cfg.train_text_encoder,
            "stage_config": config_to_dict(self.cfg),
        }
        save_component(unet_dir, ctx.ema("unet"), self.unet_config, "unet", extra=extra)
        if self.cfg.train_text_encoder:  # the fine-tuned text tower replaces the CLIP weights
            clip = ctx.unwrap("text").clip
            save_component(ctx.out_dir / "clip", clip, clip.config, "clip", extra={"fine_tuned_with_unet": True})
        metrics = {"parameters": sum(p.numel() for p in ctx.ema("unet").parameters())}
        atomic_write_json(unet_dir / "metrics.json", metrics)
        return metrics


# -- CLI ------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="dataset directory (used to build the latent cache if missing)")
    parser.add_argument("--out", required=True, help="model directory; the UNet goes to OUT/unet/")
    parser.add_argument("--vae", help="VAE (model dir or vae dir); default: the one in --out")
    parser.add_argument("--clip", help="text encoder (model dir with tokenizer.json + clip/); default: --out")
    parser.add_argument("--cache", help="latent cache dir; default OUT/latents (built with `t2i encode` if missing)")
    parser.add_argument("--preset", default="synth64", choices=sorted(PRESETS))
    parser.add_argument("--prediction", choices=["v", "eps"])
    parser.add_argument("--min-snr-gamma", type=float, help="0 disables min-SNR weighting")
    parser.add_argument("--caption-dropout", type=float)
    parser.add_argument("--complete-caption-prob", type=float,
                        help="how often an image's first (complete) caption is used (0 = uniform; default: preset)")
    parser.add_argument("--train-text-encoder", action="store_true", help="fine-tune the text encoder jointly")
    parser.add_argument("--gradient-checkpointing", action="store_true",
                        help="recompute the UNet blocks' activations in the backward pass (less memory, more compute)")
    add_loop_arguments(parser)
    add_stage_recipe_arguments(parser)


def config_from_args(args: argparse.Namespace, base: UNetStageConfig | None = None) -> UNetStageConfig:
    """`base` (default: the preset) with the stage's flags that were given."""
    cfg = base or PRESETS[args.preset]
    loop = loop_config_from_args(cfg.loop, args)
    diffusion = replace(cfg.diffusion, prediction=args.prediction, min_snr_gamma=args.min_snr_gamma,
                        caption_dropout=args.caption_dropout)
    unet = replace(cfg.unet, gradient_checkpointing=True if args.gradient_checkpointing else None)
    return replace(cfg, unet=unet, loop=loop, diffusion=diffusion, complete_caption_prob=args.complete_caption_prob,
                   train_text_encoder=True if args.train_text_encoder else None)


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    recipe = stage_recipe(args, "unet", PRESETS)
    recipe["unet"] = cfg = config_from_args(args, recipe["unet"])
    record_recipe(out, "unet", recipe)
    vae_dir = resolve_component(args.vae or out, "vae")
    text_encoder = TextEncoder.from_pretrained(args.clip or out, token_embeddings=cfg.unet.text_token_embeddings)
    cache_dir = Path(args.cache) if args.cache else out / "latents"
    # Under torchrun every rank runs this: rank 0 builds a missing cache while the others wait at
    # a barrier, then they find it complete (--out on a filesystem all ranks share).
    with distributed_state().main_process_first():
        if not (cache_dir / "index.json").is_file():
            print(f"[unet] no latent cache at {cache_dir}; encoding {args.data} with {vae_dir}")
            encode_data(args.data, cache_dir, vae=str(vae_dir), flip=True, options=recipe["data"])
    cache = LatentCache.open(cache_dir, expect_vae_hash=load_vae(vae_dir).fingerprint())
    check_cache_matches(cache, FaceDataset(args.data, split=cache.meta.get("split", "train"), options=recipe["data"]))
    stage = UNetStage(cfg, text_encoder, cache, vae_dir, image_size=int(cache.meta.get("image_size", 64)))
    metrics = train(stage, LatentDataset(cache, cfg.complete_caption_prob), cfg.loop, out)
    if metrics:  # the loop adds timing and the precision that ran after `finish` wrote its part
        atomic_write_json(out / "unet" / "metrics.json", metrics)
        print(f"[unet] done: {json.dumps(metrics)}")
    return 0
