"""Building blocks shared by the VAE, UNet, CLIP towers and the judge.

Conventions: images are (B, C, H, W); token sequences are (B, L, D); a padding mask is
(B, L) bool with True = a real token. Attention always goes through
`F.scaled_dot_product_attention` so the fastest kernel for the device is used.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def group_norm(channels: int, max_groups: int = 32) -> nn.GroupNorm:
    """GroupNorm with the largest group count <= max_groups that divides `channels`."""
    groups = math.gcd(channels, max_groups)
    return nn.GroupNorm(groups, channels, eps=1e-6)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps, (B,) -> (B, dim).
    Transformer positional encoding (Vaswani et al. 2017) as used by DDPM (Ho et al. 2020)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]  # (B, half)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class ResBlock(nn.Module):
    """Pre-activation residual block (GroupNorm, SiLU, 3x3 conv) x 2.

    With `emb_dim`, an embedding (timestep [+ pooled text]) modulates the second norm as
    scale and shift ("adaptive group norm", Dhariwal & Nichol 2021, improved-diffusion).
    """

    def __init__(self, in_channels: int, out_channels: int, emb_dim: int | None = None):
        super().__init__()
        self.norm1 = group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.emb_proj = nn.Linear(emb_dim, 2 * out_channels) if emb_dim else None
        self.norm2 = group_norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = (
            nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()
        )
        # Zero-init the last conv so every residual block starts as the identity.
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))  # (B, C_out, H, W)
        h = self.norm2(h)
        if self.emb_proj is not None:
            scale, shift = self.emb_proj(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
            h = h * (1 + scale) + shift
        h = self.conv2(F.silu(h))
        return self.skip(x) + h


class Downsample(nn.Module):
    """Halve H and W with a strided 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Double H and W: nearest-neighbour then a 3x3 conv (no checkerboard artefacts)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Attention(nn.Module):
    """Multi-head attention. Self-attention uses one fused QKV projection; cross-attention
    projects queries from `x` and fused keys/values from `context`.

    mask: (B, L_ctx) bool, True where the context token is real (padding is ignored).
    """

    def __init__(self, dim: int, heads: int, context_dim: int | None = None):
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention dim {dim} is not divisible by heads={heads}")
        self.heads = heads
        self.is_cross = context_dim is not None
        if self.is_cross:
            self.to_q = nn.Linear(dim, dim, bias=False)
            self.to_kv = nn.Linear(context_dim, 2 * dim, bias=False)
        else:
            self.to_qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.out = nn.Linear(dim, dim)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        causal: bool = False,
    ) -> torch.Tensor:
        B, L, D = x.shape
        if self.is_cross:
            q = self.to_q(x)
            k, v = self.to_kv(context).chunk(2, dim=-1)
        else:
            q, k, v = self.to_qkv(x).chunk(3, dim=-1)
        # (B, L, D) -> (B, heads, L, D/heads)
        q, k, v = (t.unflatten(-1, (self.heads, -1)).transpose(1, 2) for t in (q, k, v))
        attn_mask = None if mask is None else mask[:, None, None, :]  # (B, 1, 1, L_ctx)
        h = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=causal)
        h = h.transpose(1, 2).reshape(B, L, D)  # (B, L, D)
        return self.out(h)


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, dim * mult), nn.GELU(), nn.Linear(dim * mult, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TransformerBlock(nn.Module):
    """Pre-LayerNorm transformer block: self-attention, optional cross-attention, MLP."""

    def __init__(self, dim: int, heads: int, context_dim: int | None = None, mlp_mult: int = 4):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.self_attn = Attention(dim, heads)
        self.norm_cross = nn.LayerNorm(dim) if context_dim else None
        self.cross_attn = Attention(dim, heads, context_dim) if context_dim else None
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = FeedForward(dim, mlp_mult)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
        self_mask: torch.Tensor | None = None,
        causal: bool = False,
    ) -> torch.Tensor:
        x = x + self.self_attn(self.norm1(x), mask=self_mask, causal=causal)
        if self.cross_attn is not None:
            x = x + self.cross_attn(self.norm_cross(x), context, mask=context_mask)
        return x + self.mlp(self.norm2(x))


class AttentionBlock2d(nn.Module):
    """Single self-attention layer over a feature map (the VAE's mid block, as in LDM)."""

    def __init__(self, channels: int, heads: int = 1):
        super().__init__()
        self.norm = group_norm(channels)
        self.attn = Attention(channels, heads)
        nn.init.zeros_(self.attn.out.weight)
        nn.init.zeros_(self.attn.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        h = self.norm(x).flatten(2).transpose(1, 2)  # (B, HW, C)
        h = self.attn(h).transpose(1, 2).reshape(B, C, H, W)
        return x + h
