"""A small CLIP (Radford et al. 2021, "Learning Transferable Visual Models From Natural
Language Supervision"): a transformer text tower and a ResNet image tower trained with a
symmetric contrastive loss into one joint embedding space.

The text tower is what the denoiser conditions on: it returns per-token hidden states (for
cross-attention, after the final LayerNorm, as Stable Diffusion uses CLIP's last layer) and a
pooled embedding taken at the EOS token and projected into the joint space.

Text attention is *bidirectional* with a padding mask, not causal as in CLIP: every token's
hidden state then sees the whole caption ("... without eyeglasses" changes the state of
"eyeglasses" *and* of the words before it), which is what cross-attention wants, and the EOS
token still summarises everything for the pooled embedding. Padding never leaks in: keys at
padded positions are masked out, so a prompt encodes the same alone or in a batch.

The image tower reads pixels in [-1, 1] at any size; it resizes them (antialiased) to its own
`image_size` first, so it can score dataset images and generated images alike, and can be
trained at a lower resolution than the data (cheap on CPU).

The contrastive loss lives here too (`contrastive_loss`, `positive_mask`) because it is a
property of the model, not of a training script.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from t2i.models.layers import Downsample, ResBlock, TransformerBlock, group_norm


@dataclass
class CLIPConfig:
    # text tower
    vocab_size: int = 1024
    context_length: int = 64
    text_width: int = 128
    text_layers: int = 3
    text_heads: int = 4
    # image tower: ResNet stages (one Downsample between stages), at `image_size` pixels
    image_size: int = 32
    image_channels: tuple[int, ...] = (32, 64, 128)
    image_blocks: int = 1  # ResBlocks per stage
    # joint space
    embed_dim: int = 128
    logit_scale_init: float = math.log(1 / 0.07)  # CLIP's initial temperature 0.07
    logit_scale_max: float = 100.0  # CLIP clamps exp(logit_scale) at 100

    def __post_init__(self):
        self.image_channels = tuple(int(c) for c in self.image_channels)  # JSON gives a list
        if self.text_width % self.text_heads:
            raise ValueError(
                f"text_width={self.text_width} is not divisible by text_heads={self.text_heads}"
            )
        if self.image_size % 2 ** (len(self.image_channels) - 1):
            raise ValueError(
                f"image_size={self.image_size} is not divisible by 2**{len(self.image_channels) - 1}"
            )


class TextTransformer(nn.Module):
    """Token + learned positional embeddings, pre-LN transformer blocks, final LayerNorm."""

    def __init__(self, config: CLIPConfig):
        super().__init__()
        c = config
        self.token_embedding = nn.Embedding(c.vocab_size, c.text_width)
        self.positional_embedding = nn.Parameter(torch.zeros(c.context_length, c.text_width))
        self.blocks = nn.ModuleList(
            TransformerBlock(c.text_width, c.text_heads) for _ in range(c.text_layers)
        )
        self.ln_final = nn.LayerNorm(c.text_width)
        self.projection = nn.Linear(c.text_width, c.embed_dim, bias=False)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ids, mask (B, L) -> hidden (B, L, W), pooled (B, E) (not normalised).

        L may be shorter than the context length (training trims trailing padding); the EOS
        token is the last real token of each row."""
        B, L = ids.shape
        if L > self.positional_embedding.shape[0]:
            raise ValueError(f"sequence length {L} exceeds context_length "
                             f"{self.positional_embedding.shape[0]}")
        mask = mask.bool()
        x = self.token_embedding(ids) + self.positional_embedding[:L]  # (B, L, W)
        for block in self.blocks:
            x = block(x, self_mask=mask)
        hidden = self.ln_final(x)  # (B, L, W)
        eos = mask.sum(dim=1).clamp(min=1) - 1  # (B,) index of the last real token
        pooled = self.projection(hidden[torch.arange(B, device=ids.device), eos])  # (B, E)
        return hidden, pooled


class ImageEncoder(nn.Module):
    """Small ResNet (pre-activation ResBlocks) -> global average pool -> linear to the joint
    space. Global pooling makes the tower indifferent to where on the grid a feature sits."""

    def __init__(self, config: CLIPConfig):
        super().__init__()
        c = config
        self.image_size = c.image_size
        chans = c.image_channels
        self.stem = nn.Conv2d(3, chans[0], 3, padding=1)
        layers: list[nn.Module] = []
        ch = chans[0]
        for i, out_ch in enumerate(chans):
            for _ in range(c.image_blocks):
                layers.append(ResBlock(ch, out_ch))
                ch = out_ch
            if i < len(chans) - 1:
                layers.append(Downsample(ch))
        self.body = nn.Sequential(*layers)
        self.norm = group_norm(ch)
        self.projection = nn.Linear(ch, c.embed_dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W) in [-1, 1], any H, W -> (B, E) (not normalised)."""
        B, C, H, W = images.shape
        if C != 3:
            raise ValueError(f"expected RGB images (B, 3, H, W), got shape {tuple(images.shape)}")
        S = self.image_size
        if (H, W) != (S, S):
            images = F.interpolate(images, size=(S, S), mode="bilinear", antialias=True,
                                   align_corners=False)  # (B, 3, S, S)
        h = self.body(self.stem(images))  # (B, C_last, S / 2^(n-1), ...)
        h = F.silu(self.norm(h)).mean(dim=(2, 3))  # (B, C_last)
        return self.projection(h)


class CLIP(nn.Module):
    def __init__(self, config: CLIPConfig):
        super().__init__()
        self.config = config
        self.text = TextTransformer(config)
        self.image = ImageEncoder(config)
        self.logit_scale = nn.Parameter(torch.tensor(float(config.logit_scale_init)))
        self.initialize_weights()

    def initialize_weights(self) -> None:
        # GPT-2/CLIP-style small normal init for the text tower and projections; the
        # ResBlocks keep their own init (zero-initialised second conv -> identity at start).
        for name, m in self.named_modules():
            if name.startswith("image.body"):
                continue
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, std=0.02)
        nn.init.normal_(self.text.positional_embedding, std=0.01)

    def scale(self) -> torch.Tensor:
        """exp(logit_scale) clamped at logit_scale_max (CLIP: "clipped to prevent scaling the
        logits by more than 100")."""
        return self.logit_scale.exp().clamp(max=self.config.logit_scale_max)

    def encode_text(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.text(ids, mask)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self.image(images)

    def forward(
        self, images: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> (image features (B, E), text features (B, E), both L2-normalised; logit scale)."""
        img = F.normalize(self.encode_image(images), dim=-1)
        _, pooled = self.encode_text(ids, mask)
        txt = F.normalize(pooled, dim=-1)
        return img, txt, self.scale()


def positive_mask(
    captions: list[str] | None = None, attributes: torch.Tensor | None = None
) -> torch.Tensor:
    """(B, B) bool: True where items i and j are positives for each other, i.e. i == j, their
    captions are identical, or their attribute vectors are identical."""
    if captions is None and attributes is None:
        raise ValueError("positive_mask needs captions, attributes or both")
    B = len(captions) if captions is not None else attributes.shape[0]
    device = attributes.device if attributes is not None else None
    pos = torch.eye(B, dtype=torch.bool, device=device)
    if captions is not None:
        index: dict[str, int] = {}
        cap_ids = torch.tensor([index.setdefault(c, len(index)) for c in captions], device=device)
        pos |= cap_ids[:, None] == cap_ids[None, :]
    if attributes is not None:
        a = attributes.reshape(B, -1)
        pos |= (a[:, None, :] == a[None, :, :]).all(dim=-1)
    return pos


def contrastive_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    scale: torch.Tensor,
    positives: torch.Tensor | None = None,
) -> torch.Tensor:
    """Symmetric contrastive loss over a batch of L2-normalised features (B, E).

    positives=None is CLIP's InfoNCE: cross-entropy towards the diagonal, averaged over the
    image->text and text->image directions. With a (B, B) bool `positives` mask the target of
    each row is uniform over its positives (multi-positive soft targets, as in SupCon,
    Khosla et al. 2020, and the soft-target CLIP variants), so two images with the same
    caption are not pushed apart. With an identity mask both are the same number.
    """
    logits = scale * image_features @ text_features.t()  # (B_img, B_txt)
    if positives is None:
        labels = torch.arange(logits.shape[0], device=logits.device)
        return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels))
    pos = positives.to(logits.dtype)
    t_i2t = pos / pos.sum(dim=1, keepdim=True)  # each row sums to 1
    t_t2i = pos.t() / pos.t().sum(dim=1, keepdim=True)
    loss_i2t = -(t_i2t * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
    loss_t2i = -(t_t2i * F.log_softmax(logits.t(), dim=1)).sum(dim=1).mean()
    return 0.5 * (loss_i2t + loss_t2i)
