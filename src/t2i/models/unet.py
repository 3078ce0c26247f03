"""The conditional latent-diffusion UNet (Ronneberger et al. 2015 as used by DDPM, Ho et al. 2020,
with the text cross-attention of Latent Diffusion, Rombach et al. 2022).

    eps/v/x0 prediction = UNet(x_t (B,C,h,w), t (B,), context (B,L,D), context_mask (B,L), pooled (B,E))

The network never sees the noise schedule (diffusers' split): it maps (x_t, t, text) to the
tensor the training stage regresses. Layout, per resolution level `i` (width `channels[i]`):
`blocks[i]` ResBlocks on the way down, each followed by a transformer block over the pixels
(self-attention, cross-attention on the text tokens with the padding mask, MLP) when `i` is
in `attention_levels`; a Downsample between levels; a mid block (ResBlock, transformer,
ResBlock); and on the way up `blocks[i] + 1` blocks per level, each eating one skip (LDM's
layout). The timestep embedding (+ the projected pooled text embedding) modulates every
ResBlock's second GroupNorm (scale-shift, Dhariwal & Nichol 2021).

Speed (CPU, batch 1 and small latents, where per-op overhead dominates): the transformer runs
directly on the pixel tokens with its own pre-LayerNorms; LDM's extra GroupNorm + proj_in +
proj_out around it would add three ops per site and a second, redundant normalisation.
Attention uses the fused QKV / KV projections of `t2i.models.layers` and SDPA. In sampling,
the text K/V projections are computed once per prompt batch and reused at every step
(`TextKVCache`), since the text does not change between steps. Parameters cost about
2*h*w FLOPs per image, so wide coarse levels are cheap and wide fine levels expensive.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from t2i.models.layers import (
    Downsample,
    ResBlock,
    TransformerBlock,
    Upsample,
    group_norm,
    timestep_embedding,
)


@dataclass
class UNetConfig:
    in_channels: int = 4
    out_channels: int = 4
    # Defaults are the synth64 preset.
    channels: tuple[int, ...] = (64, 128, 128)  # width per resolution level (level 0 = input size)
    blocks: int | tuple[int, ...] = 1  # ResBlocks per level on the way down (up: one more)
    attention_levels: tuple[int, ...] = (0, 1, 2)  # levels with a transformer after each ResBlock
    mid_attention: bool = True  # transformer in the mid block (lowest resolution)
    head_dim: int = 32  # attention heads = width // head_dim (ignored when num_heads > 0)
    num_heads: int = 0  # a fixed head count for every level instead of head_dim
    context_dim: int = 128  # text token width for cross-attention (0 = no cross-attention)
    # Cross-attend to the text encoder's input token embeddings beside its final states
    # (TextEncoder.token_embeddings; context_dim is then twice the text width).
    text_token_embeddings: bool = False
    pooled_dim: int = 128  # pooled text embedding width, added to the time embedding (0 = off)
    time_embed_dim: int = 0  # 0 = 4 * channels[0] (DDPM / ADM)
    mlp_mult: int = 2  # transformer MLP width = mlp_mult * channels
    gradient_checkpointing: bool = False

    def __post_init__(self):
        self.channels = tuple(int(c) for c in self.channels)  # JSON gives lists
        self.attention_levels = tuple(int(i) for i in self.attention_levels)
        if not isinstance(self.blocks, int):
            self.blocks = tuple(int(b) for b in self.blocks)
        n = len(self.channels)
        if n == 0 or any(c <= 0 for c in self.channels):
            raise ValueError(f"UNetConfig.channels must be positive widths, got {self.channels!r}")
        if isinstance(self.blocks, tuple) and len(self.blocks) != n:
            raise ValueError(
                f"UNetConfig.blocks has {len(self.blocks)} entries but channels has {n} levels"
            )
        if any(b < 1 for b in self.level_blocks):
            raise ValueError(f"UNetConfig.blocks must be >= 1 per level, got {self.blocks!r}")
        for field in ("in_channels", "out_channels", "mlp_mult"):
            if getattr(self, field) < 1:
                raise ValueError(f"UNetConfig.{field} must be >= 1, got {getattr(self, field)}")
        for field in ("context_dim", "pooled_dim", "time_embed_dim", "num_heads"):
            if getattr(self, field) < 0:
                raise ValueError(f"UNetConfig.{field} must be >= 0, got {getattr(self, field)}")
        bad = [i for i in self.attention_levels if not 0 <= i < n]
        if bad:
            raise ValueError(
                f"UNetConfig.attention_levels {bad} out of range for {n} levels (0..{n - 1})"
            )
        levels = sorted(set(self.attention_levels) | ({n - 1} if self.mid_attention else set()))
        for i in levels:
            c = self.channels[i]
            if self.num_heads:
                if c % self.num_heads:
                    raise ValueError(
                        f"UNetConfig.channels[{i}]={c} is not divisible by num_heads={self.num_heads}"
                    )
            elif self.head_dim < 1 or c % self.head_dim:
                raise ValueError(
                    f"UNetConfig.channels[{i}]={c} is not divisible by head_dim={self.head_dim}"
                )

    @property
    def level_blocks(self) -> tuple[int, ...]:
        b = self.blocks
        return (b,) * len(self.channels) if isinstance(b, int) else b

    @property
    def emb_dim(self) -> int:
        return self.time_embed_dim or 4 * self.channels[0]

    @property
    def downsample_factor(self) -> int:
        """Latent height/width must be divisible by this."""
        return 2 ** (len(self.channels) - 1)

    def heads(self, channels: int) -> int:
        return self.num_heads or channels // self.head_dim


class TextKVCache(nn.Linear):
    """The cross-attention K/V projection of the text tokens, reused across sampling steps.

    The text states are the same tensor at every denoising step, so in inference (no grad)
    the projection is computed once per prompt batch and reused while the caller passes the
    same, unmodified tensor (checked by identity and its in-place version counter) under the
    same autocast setting. Training, anything with grad enabled, torch.compile'd code and
    inference-mode tensors (which have no version counter) compute it every call. Same parameters and state-dict keys as the nn.Linear it replaces.
    A CUDA graph captured after a warm-up call bakes in the cached K/V of that prompt: capture
    per prompt batch, or call `UNet.set_text_kv_cache(False)` first."""

    enabled: bool = True

    def forward(self, context: torch.Tensor) -> torch.Tensor:
        w = self.weight
        if (not self.enabled or torch.is_grad_enabled() or torch.compiler.is_compiling()
                or context.is_inference() or w.is_inference()):  # no version counter to check
            return super().forward(context)
        dev = context.device.type
        key = (context._version, w.data_ptr(), w.dtype, w._version,
               torch.is_autocast_enabled(dev), torch.get_autocast_dtype(dev))
        memo = self.__dict__.get("_memo")
        if memo is not None and memo[0] is context and memo[1] == key:
            return memo[2]
        out = super().forward(context)
        self.__dict__["_memo"] = (context, key, out)  # plain attribute: not a buffer, not saved
        return out


def _cache_text_kv(attn: nn.Module) -> None:
    """Swap a cross-attention's `to_kv` Linear for a TextKVCache sharing its weight."""
    old = attn.to_kv
    new = TextKVCache(old.in_features, old.out_features, bias=False, device="meta")
    new.weight = old.weight
    attn.to_kv = new


class PixelTransformer(nn.Module):
    """A pre-LN transformer block (self-attention, masked cross-attention, MLP) over the pixels
    of a feature map, residual. (B, C, H, W) -> tokens (B, HW, C) -> block -> back.

    Unlike LDM's SpatialTransformer there is no GroupNorm / proj_in / proj_out around the
    block: its LayerNorms already normalise each token. For a channels_last map both reshapes
    are free views."""

    def __init__(self, channels: int, heads: int, context_dim: int, mlp_mult: int):
        super().__init__()
        self.block = TransformerBlock(channels, heads, context_dim or None, mlp_mult)
        if self.block.cross_attn is not None:
            _cache_text_kv(self.block.cross_attn)

    def forward(self, x, context=None, context_mask=None):
        B, C, H, W = x.shape
        h = x.flatten(2).transpose(1, 2)  # (B, HW, C)
        h = self.block(h, context, context_mask)
        return h.transpose(1, 2).reshape(B, C, H, W)


class UNetBlock(nn.Module):
    """One ResBlock (timestep-modulated), optionally followed by a PixelTransformer."""

    def __init__(self, cin: int, cout: int, cfg: UNetConfig, attention: bool):
        super().__init__()
        self.res = ResBlock(cin, cout, cfg.emb_dim)
        self.attn = (
            PixelTransformer(cout, cfg.heads(cout), cfg.context_dim, cfg.mlp_mult) if attention else None
        )

    def forward(self, x, emb, context=None, context_mask=None):
        x = self.res(x, emb)
        if self.attn is not None:
            x = self.attn(x, context, context_mask)
        return x


class UNet(nn.Module):
    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = cfg = config
        ch = cfg.channels
        n = len(ch)
        E = cfg.emb_dim
        self.time_embed = nn.Sequential(nn.Linear(ch[0], E), nn.SiLU(), nn.Linear(E, E))
        self.pooled_proj = nn.Linear(cfg.pooled_dim, E) if cfg.pooled_dim else None
        self.conv_in = nn.Conv2d(cfg.in_channels, ch[0], 3, padding=1)

        # Down path; `skip_ch` records the width of every tensor pushed onto the skip stack.
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        skip_ch = [ch[0]]
        c = ch[0]
        for i in range(n):
            attn = i in cfg.attention_levels
            level = nn.ModuleList()
            for _ in range(cfg.level_blocks[i]):
                level.append(UNetBlock(c, ch[i], cfg, attn))
                c = ch[i]
                skip_ch.append(c)
            self.down.append(level)
            if i < n - 1:
                self.downsample.append(Downsample(c))
                skip_ch.append(c)

        self.mid = UNetBlock(c, c, cfg, cfg.mid_attention)
        self.mid_res = ResBlock(c, c, E)

        # Up path, deepest level first; stored in level order so up[i] matches down[i].
        up: list[nn.ModuleList] = [None] * n  # type: ignore[list-item]
        for i in reversed(range(n)):
            attn = i in cfg.attention_levels
            level = nn.ModuleList()
            for _ in range(cfg.level_blocks[i] + 1):
                level.append(UNetBlock(c + skip_ch.pop(), ch[i], cfg, attn))
                c = ch[i]
            up[i] = level
        self.up = nn.ModuleList(up)
        self.upsample = nn.ModuleList(Upsample(ch[i]) for i in range(1, n))  # upsample[i-1]: i -> i-1

        self.norm_out = group_norm(ch[0])
        self.conv_out = nn.Conv2d(ch[0], cfg.out_channels, 3, padding=1)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        # Convs and linears keep PyTorch's default (Kaiming-uniform, fan-in scaled): with the
        # zero-initialised residual branches below, activations keep their scale at any depth.
        # Time-embedding MLP: N(0, 0.02) as in DiT, so the embedding starts small and smooth.
        for m in self.time_embed:
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        for m in self.modules():
            # Every residual branch starts as the identity (ADM / LDM / DiT's adaLN-Zero idea):
            # the ResBlocks' last conv (already zero in layers.ResBlock), and each
            # transformer's attention and MLP output projections.
            if isinstance(m, TransformerBlock):
                for lin in (m.self_attn.out, m.mlp.net[-1]) + (
                    (m.cross_attn.out,) if m.cross_attn is not None else ()
                ):
                    nn.init.zeros_(lin.weight)
                    nn.init.zeros_(lin.bias)
        # Zero the output conv: the untrained model predicts 0, the mean of the v / eps target,
        # so the initial loss is the target variance and the first steps are stable.
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def set_text_kv_cache(self, enabled: bool) -> None:
        """Turn the inference-time reuse of the text K/V projections on or off (default on)."""
        for m in self.modules():
            if isinstance(m, TextKVCache):
                m.enabled = enabled
                m.__dict__.pop("_memo", None)

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def _run(self, block: nn.Module, *args):
        if self.config.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(block, *args, use_reentrant=False)
        return block(*args)

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        context: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
        pooled: torch.Tensor | None = None,
    ) -> torch.Tensor:
        B, C, H, W = x.shape
        cfg = self.config
        f = cfg.downsample_factor
        if H % f or W % f:
            raise ValueError(f"latent size {H}x{W} is not divisible by {f} (2 ** (levels - 1))")
        if cfg.context_dim and context is None:
            raise ValueError("this UNet has cross-attention (context_dim > 0) but got context=None")
        if self.pooled_proj is not None and pooled is None:
            raise ValueError("this UNet was built with pooled_dim > 0 but got pooled=None")
        t = t.reshape(-1).expand(B) if t.numel() == 1 else t

        t_freq = timestep_embedding(t, cfg.channels[0]).to(self.conv_in.weight.dtype)
        emb = self.time_embed(t_freq)  # (B, E)
        if self.pooled_proj is not None:
            emb = emb + self.pooled_proj(pooled)

        h = self.conv_in(x)  # (B, ch[0], H, W)
        skips = [h]
        for i, level in enumerate(self.down):
            for block in level:
                h = self._run(block, h, emb, context, context_mask)
                skips.append(h)
            if i < len(self.downsample):
                h = self.downsample[i](h)  # (B, ch[i], H / 2^(i+1), W / 2^(i+1))
                skips.append(h)

        h = self._run(self.mid, h, emb, context, context_mask)
        h = self._run(self.mid_res, h, emb)

        for i in reversed(range(len(self.up))):
            for block in self.up[i]:
                h = self._run(block, torch.cat([h, skips.pop()], dim=1), emb, context, context_mask)
            if i > 0:
                h = self.upsample[i - 1](h)  # (B, ch[i], H / 2^(i-1), W / 2^(i-1))

        return self.conv_out(F.silu(self.norm_out(h)))  # (B, out_channels, H, W)


UNET_PRESETS: dict[str, UNetConfig] = {
    # Tests: ~80k parameters, 2 levels, attention at the lower one.
    "tiny": UNetConfig(
        channels=(16, 16), blocks=1, attention_levels=(1,), head_dim=8, context_dim=16,
        pooled_dim=0, time_embed_dim=32, mlp_mult=2, text_token_embeddings=True,
    ),
    # 4x16x16 latents on CPU, ~6M parameters: widths 64/128/128 with cross-attention at 8x8
    # and 4x4 (+ mid); one ResBlock per level down (two up) and a 2x MLP keep a step cheap,
    # which is what a short CPU budget is limited by. Attention at 16x16 (256 tokens) cost 44%
    # of each training step: without it, 1800 steps took 13 min instead of 1200 in 16 and
    # came out better (bench/time_to_quality.py; numbers in docs/benchmarks.md). Cross-attention
    # also reads CLIP's token embeddings: with the final states alone, words CLIP's image tower
    # barely sees (necklace, open mouth, smile) were ignored (balanced faithfulness 0.58-0.64).
    "synth64": UNetConfig(
        channels=(64, 128, 128), blocks=1, attention_levels=(1, 2), head_dim=32,
        context_dim=128, pooled_dim=128, mlp_mult=2, text_token_embeddings=True,
    ),
    # 128px CelebA on one GPU: 4x16x16 latents from the f=8 VAE, like the baseline's
    # (Text-To-Image-From-Scratch: diffusers UNet2DConditionModel, blocks 64/128/256), so the
    # same three levels (16/8/4) with cross-attention at each; twice the baseline's widths (80.6M
    # parameters, 2.7x its count) for real faces' variety, which a GPU affords at this size.
    "celeba128": UNetConfig(
        channels=(128, 256, 512), blocks=2, attention_levels=(0, 1, 2), head_dim=64,
        context_dim=128, pooled_dim=128, text_token_embeddings=True,
    ),
}


def unet_preset(name: str, **overrides) -> UNetConfig:
    """A copy of a preset with field overrides (e.g. context_dim from the text encoder)."""
    if name not in UNET_PRESETS:
        raise ValueError(f"unknown UNet preset {name!r}; choose from {sorted(UNET_PRESETS)}")
    return dataclasses.replace(UNET_PRESETS[name], **overrides)
