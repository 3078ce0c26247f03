"""Losses for training the KL-VAE: reconstruction + small KL + a PatchGAN discriminator with
hinge loss and the adaptive generator weight of taming-transformers / LDM
(Esser et al. 2021, eq. 7; Rombach et al. 2022). No perceptual (LPIPS) term: its pretrained
VGG weights cannot be downloaded here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from t2i.models.layers import group_norm


@dataclass
class DiscriminatorConfig:
    in_channels: int = 3
    channels: int = 64  # width of the first conv; doubled per layer up to 8x
    n_layers: int = 3  # strided 4x4 convs; receptive field 70px at 3 (pix2pix's 70x70 PatchGAN)


@dataclass
class VAELossConfig:
    reconstruction: str = "l1"  # "l1" or "mse", mean over pixels
    rec_weight: float = 1.0
    # Weight of the gradient difference loss (`gradient_difference_loss`): a per-pixel loss
    # lets thin details (earring rings, hair strands) blur; this one penalises their lost edges.
    grad_weight: float = 0.0
    # KL(q(z|x) || N(0, I)) averaged per latent element. Only meant to keep the latent scale
    # bounded (LDM uses 1e-6 on per-sample sums, which is about 1e-5..1e-6 per element here).
    kl_weight: float = 1e-6
    disc_weight: float = 0.5  # multiplies the adaptive weight (taming's discriminator_weight)
    disc_start: int = 1_000_000  # step at which the discriminator starts training (off by default)
    # The generator term joins `disc_warmup` steps later: a random discriminator's gradient is
    # noise, and the adaptive weight scales it up to half the reconstruction gradient
    # (measured: rec L1 0.077 -> 0.148 when both started together).
    disc_warmup: int = 500
    # Discriminator LR = loop LR x this. At the VAE's 2e-3 the PatchGAN collapsed to a constant
    # output (hinge loss stuck at 1.0); at 2e-4 it separated real from decoded crops (0.29).
    disc_lr_scale: float = 0.1
    adaptive_weight_max: float = 1e4  # taming clamps the adaptive weight to [0, 1e4]
    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)

    def __post_init__(self):
        if self.reconstruction not in ("l1", "mse"):
            raise ValueError(f"reconstruction must be 'l1' or 'mse', got {self.reconstruction!r}")


class PatchDiscriminator(nn.Module):
    """PatchGAN (Isola et al. 2017, pix2pix; taming's NLayerDiscriminator): a stack of 4x4
    convs that scores overlapping patches as real/fake, (B, 3, H, W) -> (B, 1, h, w) logits.
    GroupNorm instead of BatchNorm so scores do not depend on the batch or need a DDP sync."""

    def __init__(self, config: DiscriminatorConfig):
        super().__init__()
        ch = config.channels
        layers: list[nn.Module] = [
            nn.Conv2d(config.in_channels, ch, 4, stride=2, padding=1),
            nn.LeakyReLU(0.2),
        ]
        prev = ch
        for n in range(1, config.n_layers + 1):
            width = ch * min(2**n, 8)
            stride = 2 if n < config.n_layers else 1  # the last one keeps the resolution
            layers += [
                nn.Conv2d(prev, width, 4, stride=stride, padding=1, bias=False),
                group_norm(width),
                nn.LeakyReLU(0.2),
            ]
            prev = width
        layers.append(nn.Conv2d(prev, 1, 4, stride=1, padding=1))
        self.net = nn.Sequential(*layers)
        # pix2pix/taming initialise convs from N(0, 0.02).
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def reconstruction_loss(recon: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "l1":
        return F.l1_loss(recon.float(), target.float())
    if kind == "mse":
        return F.mse_loss(recon.float(), target.float())
    raise ValueError(f"unknown reconstruction loss {kind!r} (expected 'l1' or 'mse')")


def gradient_difference_loss(recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Gradient difference loss (Mathieu et al. 2016, "Deep multi-scale video prediction beyond
    mean square error", eq. 5 with alpha = 1): the mean of | |d recon| - |d target| | over the
    neighbouring-pixel differences d along both image axes. Zero when the edges match, whatever
    the flat regions do; a blurred edge costs what it lost in contrast."""
    r, t = recon.float(), target.float()  # (B, C, H, W)
    dy = (r.diff(dim=-2).abs() - t.diff(dim=-2).abs()).abs().mean()  # (B, C, H-1, W) -> ()
    dx = (r.diff(dim=-1).abs() - t.diff(dim=-1).abs()).abs().mean()  # (B, C, H, W-1) -> ()
    return dx + dy


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """Discriminator hinge loss (Lim & Ye 2017; as in taming): 0.5 * (E[relu(1 - D(x))] +
    E[relu(1 + D(G(z)))])."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def generator_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """Generator side of the hinge GAN: -E[D(G(z))]."""
    return -logits_fake.mean()


def adaptive_weight(
    rec_loss: torch.Tensor,
    g_loss: torch.Tensor,
    last_layer: torch.Tensor,
    max_weight: float = 1e4,
    eps: float = 1e-4,
) -> torch.Tensor:
    """lambda = ||grad_L(rec)|| / (||grad_L(gan)|| + eps), clamped to [0, max] and detached,
    with L the decoder's last layer (Esser et al. 2021, eq. 7). Balances the two gradients
    where they meet the image, so the GAN can neither swamp nor vanish beside the
    reconstruction term.

    With several processes the two gradients are averaged over them first, so lambda is that of
    the global batch (the same as one process holding it all), not each process's own."""
    rec_grad = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        both = torch.stack([rec_grad, g_grad])  # (2, *last_layer.shape)
        dist.all_reduce(both)  # each process's losses are means over its slice: average them
        rec_grad, g_grad = both / dist.get_world_size()
    weight = rec_grad.norm() / (g_grad.norm() + eps)
    return weight.clamp(0.0, max_weight).detach()
