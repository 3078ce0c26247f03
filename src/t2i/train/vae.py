"""Stage 1: train the KL-VAE (`t2i train vae`).

Loss (LDM's first stage, Rombach et al. 2022, minus LPIPS which needs downloaded VGG weights):
    L_vae  = w_rec * |x - D(z)|_1 + w_kl * KL(q(z|x) || N(0, I)) + lambda * w_disc * (-D_patch(D(z)))
    L_disc = hinge(D_patch(x), D_patch(D(z).detach()))
with lambda the adaptive weight (gradient-norm ratio at the decoder's last layer, clamped);
the GAN terms switch on at `loss.disc_start`. One scalar (L_vae + L_disc) goes back to the
shared loop: the generator term runs the discriminator with detached weights and the
discriminator sees detached reconstructions, so each term only reaches its own module.

Training uses random crops aligned to the latent grid (the model is fully convolutional, so it
encodes whole images afterwards at a fraction of the cost per step). After the last step,
`finish` measures the latent scale/shift over training images, PSNR/SSIM on the validation
split, and writes `MODEL_DIR/vae/{config.json, model.safetensors, metrics.json}`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.func import functional_call

from t2i.checkpoint import atomic_write_json, save_component
from t2i.config import replace
from t2i.data.tensors import spread_indices
from t2i.imaging import image_grid, tensor_to_pil
from t2i.models.vae import VAE, VAEConfig
from t2i.models.vae_losses import (
    DiscriminatorConfig,
    PatchDiscriminator,
    VAELossConfig,
    adaptive_weight,
    generator_loss,
    gradient_difference_loss,
    hinge_d_loss,
    reconstruction_loss,
)
from t2i.train.loop import (
    Context,
    LoopConfig,
    Stage,
    StepOutput,
    add_loop_arguments,
    add_stage_recipe_arguments,
    loop_config_from_args,
    record_recipe,
    stage_recipe,
    train,
)


@dataclass
class VAEPreset:
    model: VAEConfig
    loss: VAELossConfig
    loop: LoopConfig
    image_size: int = 64  # images are resized to this by the dataset
    crop_size: int = 32  # random training crop, aligned to the latent grid; 0 = whole images
    flip: bool = True  # random horizontal flips
    val_images: int = 512  # validation images for PSNR/SSIM
    stats_images: int = 2048  # training images for the latent scale/shift
    sample_images: int = 8  # columns of the reconstruction grid


PRESETS: dict[str, VAEPreset] = {
    # Seconds on CPU; for tests and smoke runs. The GAN switches on at step 2 so even a 3-step
    # run exercises every loss term.
    "tiny": VAEPreset(
        model=VAEConfig(channels=(8, 16, 16), num_res_blocks=1),
        loss=VAELossConfig(disc_start=2, disc_warmup=0,
                           discriminator=DiscriminatorConfig(channels=8, n_layers=2)),
        loop=LoopConfig(steps=20, batch_size=8, lr=1e-3, warmup_steps=2, log_every=5,
                        ckpt_every=10, sample_every=0),
        image_size=32, crop_size=16, val_images=16, stats_images=32, sample_images=4,
    ),
    # The one-command demo's VAE: SynthFaces 64px -> 4x16x16 (f=4), 0.92M parameters, 1000
    # steps of 16 random 32px crops. MSE because the target is PSNR and it gets there in fewer
    # steps than L1 (docs/vae.md has the measurements); no GAN (too slow for the budget).
    "synth64": VAEPreset(
        model=VAEConfig(channels=(32, 64, 64), num_res_blocks=1),
        loss=VAELossConfig(reconstruction="mse", disc_start=10**9),
        loop=LoopConfig(steps=1000, batch_size=16, lr=2e-3, warmup_steps=50, log_every=50,
                        ckpt_every=500, sample_every=500),
        image_size=64, crop_size=32, val_images=256, stats_images=512,
    ),
    # CelebA 128px -> 4x16x16 (f=8, the baseline's latent size) for a GPU: four levels of two
    # blocks, L1 + the PatchGAN after 20k steps (LDM's recipe minus LPIPS). Crops of 64px;
    # no attention, which would see a different context on crops than on whole images.
    "celeba128": VAEPreset(
        model=VAEConfig(channels=(64, 128, 256, 256), num_res_blocks=2),
        loss=VAELossConfig(disc_start=20_000, disc_warmup=2000, disc_weight=0.5),
        loop=LoopConfig(steps=100_000, batch_size=32, lr=4.5e-4, warmup_steps=500,
                        log_every=100, ckpt_every=2000, sample_every=2000),
        image_size=128, crop_size=64, val_images=2048, stats_images=4096,
    ),
}


class VAEStage(Stage):
    name = "vae"

    def __init__(self, preset: VAEPreset, train_set, val_set=None):
        self.preset = preset
        self.train_set, self.val_set = train_set, val_set
        f = preset.model.downsample_factor
        for what, size in (("image_size", preset.image_size), ("crop_size", preset.crop_size)):
            if size and size % f:
                raise ValueError(f"{what}={size} is not divisible by the VAE's downsampling factor f={f}")
        if preset.crop_size > preset.image_size:
            raise ValueError(f"crop_size={preset.crop_size} is larger than image_size={preset.image_size}")
        sample_src = val_set if val_set is not None and len(val_set) else train_set
        n = min(preset.sample_images, len(sample_src))
        self.sample_batch = torch.stack([sample_src[i]["image"] for i in range(n)])  # (n, 3, S, S)

    def build(self):
        # channels_last: oneDNN's fast conv layout on CPU (and tensor cores' on GPU); ChannelNorm
        # is a plain layer_norm in it. Measured 2-2.7x faster VAE encoding on this CPU.
        vae = VAE(self.preset.model).to(memory_format=torch.channels_last)
        modules = {"vae": vae}
        if self.preset.loss.disc_start < self.preset.loop.steps:
            modules["disc"] = PatchDiscriminator(self.preset.loss.discriminator)
        return modules

    def lr_scale(self, name: str) -> float:
        return self.preset.loss.disc_lr_scale if name == "disc" else 1.0

    def _crop(self, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        """Random crops whose offsets are multiples of f, so crop latents line up with the
        latent grid of whole images."""
        B, C, H, W = x.shape
        c, f = self.preset.crop_size, self.preset.model.downsample_factor
        if not c or c >= min(H, W):
            return x
        oy = (ctx.randint(0, (H - c) // f + 1, B) * f).tolist()
        ox = (ctx.randint(0, (W - c) // f + 1, B) * f).tolist()
        return torch.stack([x[i, :, oy[i] : oy[i] + c, ox[i] : ox[i] + c] for i in range(B)])

    def training_step(self, batch, ctx: Context) -> StepOutput:
        lc = self.preset.loss
        x = self._crop(batch["image"], ctx)  # (B, 3, c, c) in [-1, 1]
        x = x.contiguous(memory_format=torch.channels_last)
        B, _, H, W = x.shape
        latent = self.preset.model.latent_channels
        f = self.preset.model.downsample_factor
        noise = ctx.randn(B, latent, H // f, W // f)  # reparameterisation eps, seeded per step
        recon, posterior = ctx.models["vae"](x, noise=noise)

        rec = lc.rec_weight * reconstruction_loss(recon, x, lc.reconstruction)
        kl = posterior.kl().mean() / (latent * (H // f) * (W // f))  # per latent element
        logs = {"rec": rec.detach(), "kl": kl.detach(),
                "posterior_std": posterior.std.detach().float().mean()}
        if lc.grad_weight:
            gdl = gradient_difference_loss(recon, x)
            rec = rec + lc.grad_weight * gdl  # part of the reconstruction term the GAN's weight balances
            logs["gdl"] = gdl.detach()
        loss = rec + lc.kl_weight * kl

        if ctx.step >= lc.disc_start + lc.disc_warmup:
            disc = ctx.unwrap("disc")
            # Generator term: the discriminator with detached weights (gradient reaches the
            # VAE through `recon`, never the discriminator's parameters).
            frozen = {k: v.detach() for k, v in disc.named_parameters()}
            g = generator_loss(functional_call(disc, frozen, (recon,)))
            lam = adaptive_weight(rec, g, ctx.unwrap("vae").last_layer, lc.adaptive_weight_max)
            loss = loss + lc.disc_weight * lam * g
            logs.update(g=g.detach(), adaptive_weight=lam)
        if ctx.step >= lc.disc_start:
            # Discriminator term: one forward over real and (detached) fake patches.
            logits = ctx.models["disc"](torch.cat([x, recon.detach()]))
            logits_real, logits_fake = logits[:B], logits[B:]
            d = hinge_d_loss(logits_real, logits_fake)
            loss = loss + d
            logs.update(d=d.detach(), logits_real=logits_real.detach().mean(),
                        logits_fake=logits_fake.detach().mean())
        return StepOutput(loss, logs)

    def sample(self, ctx: Context, path: Path) -> None:
        vae = ctx.ema("vae")
        was_training = vae.training
        vae.eval()
        x = self.sample_batch.to(ctx.device)
        recon = vae.decode(vae.encode(x).mode()).float().clamp(-1, 1)
        save_grid(torch.cat([x.cpu(), recon.cpu()]), path, nrow=len(x))
        vae.train(was_training)

    def finish(self, ctx: Context) -> dict:
        vae = ctx.ema("vae").eval()
        p = self.preset
        t0 = time.perf_counter()
        stats_idx = spread_indices(len(self.train_set), p.stats_images)
        shift, scale, summary = latent_stats(vae, _batches(self.train_set, stats_idx, ctx.device))
        vae.set_latent_stats(shift, scale, how="posterior_samples")
        metrics = {"latent_stats_images": len(stats_idx), "latent": summary}
        # Without a validation split, PSNR/SSIM are measured on training images (and say so).
        has_val = self.val_set is not None and len(self.val_set) > 0
        eval_set = self.val_set if has_val else self.train_set
        val_idx = spread_indices(len(eval_set), p.val_images)
        metrics.update(evaluate(vae, _batches(eval_set, val_idx, ctx.device)),
                       metrics_split="val" if has_val else "train")
        metrics.update(params=vae.num_params(), eval_seconds=round(time.perf_counter() - t0, 1),
                       image_size=p.image_size, latent_shape=list(vae.latent_shape(p.image_size)))
        out = ctx.out_dir / "vae"
        save_component(out, vae, vae.config, "vae", extra={"training": _preset_dict(p)})
        atomic_write_json(out / "metrics.json", metrics)
        return metrics


# ---------------------------------------------------------------------------------------------
# Latent statistics and evaluation


class LatentStats:
    """Per-channel statistics of posterior *samples* z = mean + std * eps, computed in closed
    form from the posterior parameters (no sampling noise): E[z] = E[mean] and, by the law of
    total variance, Var[z] = Var[mean] + E[std^2]. These are the latents the UNet trains on."""

    def __init__(self, channels: int):
        self.n = 0
        self.sum_mean = torch.zeros(channels, dtype=torch.float64)
        self.sum_mean_sq = torch.zeros(channels, dtype=torch.float64)
        self.sum_var = torch.zeros(channels, dtype=torch.float64)

    def update(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        m = mean.detach().double().transpose(0, 1).flatten(1)  # (C, B*h*w)
        s = std.detach().double().transpose(0, 1).flatten(1)
        self.n += m.shape[1]
        self.sum_mean += m.sum(1)
        self.sum_mean_sq += m.pow(2).sum(1)
        self.sum_var += s.pow(2).sum(1)

    def result(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(E[z], Std[z], E[std^2]) per channel."""
        if self.n == 0:
            raise ValueError("no latents seen: the dataset is empty")
        mu = self.sum_mean / self.n
        var_of_means = (self.sum_mean_sq / self.n - mu.pow(2)).clamp_min(0)
        mean_var = self.sum_var / self.n
        return mu, (var_of_means + mean_var).sqrt(), mean_var


@torch.no_grad()
def latent_stats(vae: VAE, batches) -> tuple[list[float], list[float], dict]:
    """Per-channel shift = E[z] and scale = 1 / Std[z] over the batches' posterior samples."""
    stats = LatentStats(vae.config.latent_channels)
    for x in batches:
        post = vae.encode(x)
        stats.update(post.mean, post.std)
    mu, sd, mean_var = stats.result()
    if (sd <= 0).any():
        raise ValueError(f"latent channel(s) with zero variance: std={sd.tolist()}")
    shift, scale = mu.tolist(), (1.0 / sd).tolist()
    summary = {"kind": "posterior_samples", "mean": shift, "std": sd.tolist(),
               "posterior_std_rms": mean_var.sqrt().tolist()}
    return shift, scale, summary


@torch.no_grad()
def evaluate(vae: VAE, batches) -> dict:
    """PSNR (dB, per image then averaged) and SSIM of mean reconstructions, in [0, 1] range,
    plus the per-channel mean/std of the *normalised* latents (should be near 0 and 1)."""
    from torchmetrics.functional.image import (
        peak_signal_noise_ratio,
        structural_similarity_index_measure,
    )

    psnr, ssim, count = 0.0, 0.0, 0
    stats = LatentStats(vae.config.latent_channels)
    for x in batches:
        post = vae.encode(x)
        recon = vae.decode(post.mode()).float().clamp(-1, 1)
        a, b = (recon + 1) / 2, (x.float() + 1) / 2
        psnr += peak_signal_noise_ratio(a, b, data_range=1.0, reduction="none", dim=(1, 2, 3)).sum().item()
        ssim += structural_similarity_index_measure(a, b, data_range=1.0, reduction="none").sum().item()
        count += len(x)
        # Normalised latents (z - shift) * scale: mean -> normalize(mean), std -> std * scale.
        scale, _ = vae.latent_scale_shift(post.std)
        stats.update(vae.normalize(post.mean), post.std * scale)
    mu, sd, _ = stats.result()
    return {"val_images": count, "psnr": round(psnr / count, 3), "ssim": round(ssim / count, 4),
            "normalized_latent_mean": [round(v, 4) for v in mu.tolist()],
            "normalized_latent_std": [round(v, 4) for v in sd.tolist()]}


def _batches(dataset, indices: list[int], device, batch_size: int = 64):
    for start in range(0, len(indices), batch_size):
        items = [dataset[i] for i in indices[start : start + batch_size]]
        items = [it for it in items if it is not None]
        if items:
            x = torch.stack([it["image"] for it in items]).to(device)
            yield x.contiguous(memory_format=torch.channels_last)


def save_grid(images: torch.Tensor, path: str | Path, nrow: int) -> None:
    """(N, 3, H, W) in [-1, 1] -> a PNG grid with `nrow` images per row and a 2px border."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    image_grid(tensor_to_pil(images), cols=nrow, gap=2, margin=2).save(path)


def _preset_dict(p: VAEPreset) -> dict:
    d = dataclasses.asdict(p)
    d.pop("model")  # already the component's config
    return d


# ---------------------------------------------------------------------------------------------
# CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="dataset directory (CelebA layout or SynthFaces)")
    parser.add_argument("--out", required=True, help="model directory; the VAE goes to OUT/vae/")
    parser.add_argument("--preset", default="synth64", choices=sorted(PRESETS))
    parser.add_argument("--image-size", type=int, help="resize images to this (pixels)")
    parser.add_argument("--crop-size", type=int, help="random training crop (0 = whole images)")
    parser.add_argument("--reconstruction", choices=["l1", "mse"], help="reconstruction loss")
    parser.add_argument("--kl-weight", type=float)
    parser.add_argument("--grad-weight", type=float,
                        help="weight of the gradient difference loss, which keeps thin edges (default 0: off)")
    parser.add_argument("--disc-start", type=int, help="step at which the PatchGAN switches on")
    parser.add_argument("--disc-warmup", type=int, help="steps the discriminator trains alone")
    parser.add_argument("--disc-weight", type=float)
    parser.add_argument("--val-images", type=int)
    parser.add_argument("--stats-images", type=int)
    parser.add_argument("--no-preload", action="store_true", help="read images from disk each step")
    add_loop_arguments(parser)
    add_stage_recipe_arguments(parser)


def preset_from_args(args: argparse.Namespace, base: VAEPreset | None = None) -> VAEPreset:
    """`base` (default: the preset) with the stage's flags that were given."""
    p = base or PRESETS[args.preset]
    loop = loop_config_from_args(p.loop, args)
    loss = replace(p.loss, reconstruction=args.reconstruction, kl_weight=args.kl_weight,
                   grad_weight=args.grad_weight, disc_start=args.disc_start, disc_warmup=args.disc_warmup,
                   disc_weight=args.disc_weight)
    return replace(p, loop=loop, loss=loss, image_size=args.image_size, crop_size=args.crop_size,
                   val_images=args.val_images, stats_images=args.stats_images)


def train_vae(data: str | Path, out: str | Path, preset: VAEPreset, preload: bool = True,
              data_options=None) -> dict:
    """Train a VAE on `data` into `out/vae/`; returns the metrics (also in vae/metrics.json)."""
    from t2i.data.celeba import FaceDataset

    data, out = Path(data), Path(out)
    train_set = FaceDataset(data, split="train", image_size=preset.image_size, flip=preset.flip,
                            preload=preload, options=data_options)
    val_set = _optional_split(data, preset.image_size, preload, data_options)
    stage = VAEStage(preset, train_set, val_set)
    metrics = train(stage, train_set, preset.loop, out)
    if metrics:  # the loop adds timing/steps after `finish` wrote its part
        atomic_write_json(out / "vae" / "metrics.json", metrics)
        print(f"[vae] {json.dumps({k: metrics[k] for k in ('psnr', 'ssim', 'train_seconds') if k in metrics})}"
              f" -> {out / 'vae'}")
    return metrics


def _optional_split(data: Path, image_size: int, preload: bool, data_options=None):
    from t2i.data.celeba import FaceDataset

    try:
        val = FaceDataset(data, split="val", image_size=image_size, preload=preload, options=data_options)
    except ValueError as e:
        print(f"[vae] no validation split ({e}); metrics use training images")
        return None
    if len(val) == 0:
        print(f"[vae] {data}: the validation split is empty; metrics use training images")
        return None
    return val


def run(args: argparse.Namespace) -> int:
    recipe = stage_recipe(args, "vae", PRESETS)
    recipe["vae"] = preset = preset_from_args(args, recipe["vae"])
    record_recipe(args.out, "vae", recipe)
    train_vae(args.data, args.out, preset, preload=not args.no_preload, data_options=recipe["data"])
    return 0


__all__ = ["PRESETS", "VAEPreset", "VAEStage", "LatentStats", "latent_stats", "evaluate", "train_vae",
           "save_grid"]
