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
`image_size` first, so it can score dataset images and generated images alike. Or it reads
the VAE's latents (`image_input="latents"`), as the reference project's image tower did: 16x
fewer positions than 64 px pixels, and the latent cache makes training never touch a pixel.
Such a CLIP still scores pixels: `encode_image` runs them through the VAE's encoder first
(`attach_vae`).

The contrastive loss lives here too (`contrastive_loss`, `positive_mask`) because it is a
property of the model, not of a training script.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from t2i.models.batch_norm import GlobalBatchNorm
from t2i.models.layers import Downsample, ResBlock, TransformerBlock, group_norm


@dataclass
class CLIPConfig:
    # text tower
    vocab_size: int = 1024
    context_length: int = 64
    text_width: int = 128
    text_layers: int = 3
    text_heads: int = 4
    # Pooled text embedding: "eos" (CLIP: the EOS token's final state) or "mean" (masked mean
    # of the real tokens' final states). Both reach the same accuracy here once the image
    # features are batch-normalised; see docs/clip.md.
    text_pool: str = "eos"
    # image tower: inputs are resized to `image_size`; a stem conv with stride `stem_stride`
    # (a learned, patchify-like downsampling: full-resolution input at the cost of a smaller
    # one) then ResNet stages with one Downsample between stages.
    image_size: int = 64
    # What the image tower reads: "pixels" (RGB in [-1, 1]) or "latents" (the VAE's normalised
    # latents, `latent_channels` x image_size x image_size; `encode_image` makes them from pixels).
    image_input: str = "pixels"
    latent_channels: int = 4  # training sets it to the VAE's
    stem_stride: int = 2
    image_channels: tuple[int, ...] = (32, 64, 128)
    image_blocks: int = 1  # ResBlocks per stage
    # GroupNorm groups in the image tower. Few groups on purpose: with one channel per group
    # (layers.group_norm's default for <= 32 channels) GroupNorm is InstanceNorm, which
    # removes each channel's image-wide mean -- the colour cues (hair colour, pale skin) and
    # all content of a flat image.
    image_norm_groups: int = 8
    # BatchNorm on the pooled image features (as SimCLR's projection head). At init every
    # image's pooled vector points the same way (mean pairwise cosine 0.998 measured), and
    # contrastive training crawls until the towers grow the differences; centering over the
    # batch removes that common direction from the first step. Eval uses running statistics.
    image_pool_norm: bool = True
    # Pool the last feature map by its mean and its max, concatenated. Average pooling
    # dilutes a feature that fires on a few pixels (an earring, wavy hair edges); the max
    # keeps it (supervised probe, 400 steps: wavy hair 0.80 -> 0.95 balanced accuracy).
    image_pool_max: bool = True
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
        if self.text_pool not in ("eos", "mean"):
            raise ValueError(f"text_pool must be 'eos' or 'mean', got {self.text_pool!r}")
        if self.image_input not in ("pixels", "latents"):
            raise ValueError(f"image_input must be 'pixels' or 'latents', got {self.image_input!r}")
        if self.stem_stride not in (1, 2, 4):
            raise ValueError(f"stem_stride must be 1, 2 or 4, got {self.stem_stride}")
        factor = self.stem_stride * 2 ** (len(self.image_channels) - 1)
        if self.image_size % factor:
            raise ValueError(f"image_size={self.image_size} is not divisible by the image tower's "
                             f"downsampling factor {factor}")


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
        self.pool = c.text_pool

    def forward(
        self, ids: torch.Tensor, mask: torch.Tensor, buckets: int = 1
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """ids, mask (B, L) -> hidden (B, L, W), pooled (B, E) (not normalised).

        L may be shorter than the context length (training trims trailing padding); the EOS
        token is the last real token of each row. `buckets` > 1 sorts the prompts by length
        and runs them in that many groups, each trimmed to its own longest prompt: the same
        outputs (a prompt never sees padding) for less work (~15% of a training step's text
        time with caption lengths 5-41 tokens, measured)."""
        B, L = ids.shape
        if ids.device.type == "cpu":
            # PyTorch's CPU flash-attention kernel is slow for these short sequences (its
            # backward took 59 ms per call here, half the text tower's step); the plain
            # "math" kernel computes the same attention 1.8x faster (bf16, measured).
            with sdpa_kernel([SDPBackend.MATH]):
                return self._bucketed(ids, mask, buckets)
        return self._bucketed(ids, mask, buckets)

    def _bucketed(self, ids: torch.Tensor, mask: torch.Tensor, buckets: int):
        B, L = ids.shape
        if buckets > 1 and B > buckets:
            lengths = mask.sum(dim=1)
            order = lengths.argsort()  # (B,) shortest first
            hidden, pooled = [], []
            for chunk in order.chunk(buckets):
                n = int(lengths[chunk].max())
                h, p = self._forward(ids[chunk, :n], mask[chunk, :n])
                hidden.append(F.pad(h, (0, 0, 0, L - n)))  # back to (b, L, W)
                pooled.append(p)
            inverse = order.argsort()
            return torch.cat(hidden)[inverse], torch.cat(pooled)[inverse]
        return self._forward(ids, mask)

    def _forward(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, L = ids.shape
        if L > self.positional_embedding.shape[0]:
            raise ValueError(f"sequence length {L} exceeds context_length "
                             f"{self.positional_embedding.shape[0]}")
        mask = mask.bool()
        x = self.token_embedding(ids) + self.positional_embedding[:L]  # (B, L, W)
        for block in self.blocks:
            x = block(x, self_mask=mask)
        hidden = self.ln_final(x)  # (B, L, W)
        if self.pool == "eos":
            eos = mask.sum(dim=1).clamp(min=1) - 1  # (B,) index of the last real token
            pooled = hidden[torch.arange(B, device=ids.device), eos]  # (B, W)
        else:
            w = mask.to(hidden.dtype)[:, :, None]  # (B, L, 1)
            pooled = (hidden * w).sum(dim=1) / w.sum(dim=1).clamp(min=1)  # (B, W)
        return hidden, self.projection(pooled)  # (B, L, W), (B, E)


class ImageEncoder(nn.Module):
    """Small ResNet (pre-activation ResBlocks) -> global mean+max pool -> BatchNorm -> linear
    to the joint space. Global pooling makes the tower indifferent to where on the grid a
    feature sits."""

    def __init__(self, config: CLIPConfig):
        super().__init__()
        c = config
        self.image_size = c.image_size
        self.pixels = c.image_input == "pixels"
        self.in_channels = 3 if self.pixels else c.latent_channels
        chans = c.image_channels
        s = c.stem_stride
        # stride 1: 3x3 conv; stride s > 1: 2s x 2s kernel, overlapping patches (S -> S / s)
        self.stem = (nn.Conv2d(self.in_channels, chans[0], 3, padding=1) if s == 1
                     else nn.Conv2d(self.in_channels, chans[0], 2 * s, stride=s, padding=s // 2))
        layers: list[nn.Module] = []
        ch = chans[0]
        for i, out_ch in enumerate(chans):
            for _ in range(c.image_blocks):
                block = ResBlock(ch, out_ch)
                block.norm1 = group_norm(ch, c.image_norm_groups)  # see image_norm_groups
                block.norm2 = group_norm(out_ch, c.image_norm_groups)
                layers.append(block)
                ch = out_ch
            if i < len(chans) - 1:
                layers.append(Downsample(ch))
        self.body = nn.Sequential(*layers)
        self.norm = group_norm(ch, c.image_norm_groups)
        self.pool_max = c.image_pool_max
        pooled = 2 * ch if c.image_pool_max else ch
        self.pool_norm = GlobalBatchNorm(pooled) if c.image_pool_norm else nn.Identity()  # (B, pooled)
        self.projection = nn.Linear(pooled, c.embed_dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """What the tower reads -> (B, E) (not normalised): images (B, 3, H, W) in [-1, 1], any
        H, W; or normalised latents (B, latent_channels, S, S)."""
        B, C, H, W = images.shape
        S = self.image_size
        if self.pixels and C != 3:
            raise ValueError(f"expected RGB images (B, 3, H, W), got shape {tuple(images.shape)}")
        if not self.pixels and (C, H, W) != (self.in_channels, S, S):
            raise ValueError(f"this image tower reads VAE latents ({self.in_channels}, {S}, {S}), got "
                             f"shape {tuple(images.shape)}; score pixels with CLIP.encode_image")
        if (H, W) != (S, S):
            images = F.interpolate(images, size=(S, S), mode="bilinear", antialias=True,
                                   align_corners=False)  # (B, 3, S, S)
        h = self.body(self.stem(images))  # (B, C_last, S / (stem_stride * 2^(n-1)), ...)
        h = F.silu(self.norm(h))
        pooled = h.mean(dim=(2, 3))  # (B, C_last)
        if self.pool_max:
            pooled = torch.cat([pooled, h.amax(dim=(2, 3))], dim=1)  # (B, 2 C_last)
        return self.projection(self.pool_norm(pooled))


class CLIP(nn.Module):
    def __init__(self, config: CLIPConfig):
        super().__init__()
        self.config = config
        self.text = TextTransformer(config)
        self.image = ImageEncoder(config)
        self.logit_scale = nn.Parameter(torch.tensor(float(config.logit_scale_init)))
        self._vae = None  # the latent tower's pixel encoder; see attach_vae
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

    def attach_vae(self, vae) -> CLIP:
        """Give a latent-reading CLIP the (frozen) VAE whose latents it was trained on, so
        `encode_image` can score pixels. The VAE is not a submodule: its weights stay in the
        VAE's own component, not in CLIP's."""
        # Set past nn.Module.__setattr__, which would register it as a submodule.
        self.__dict__["_vae"] = vae.eval().requires_grad_(False)
        return self

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W) in [-1, 1] -> (B, E) (not normalised), whatever the tower reads."""
        if self.image.pixels:
            return self.image(images)
        if self._vae is None:
            raise RuntimeError("this CLIP reads VAE latents: attach its VAE (CLIP.attach_vae) to score pixels")
        size = self.config.image_size * self._vae.downsample_factor
        if images.shape[-2:] != (size, size):
            images = F.interpolate(images, size=(size, size), mode="bilinear", antialias=True,
                                   align_corners=False)  # (B, 3, size, size)
        with torch.no_grad():
            vae = self._vae.to(images.device)
            latents = vae.normalize(vae.encode(images.float()).mean)  # (B, C, S, S)
        return self.image(latents.to(images.dtype))

    def forward(
        self, images: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor, text_buckets: int = 1
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """images: what the image tower reads (pixels, or normalised latents for
        image_input="latents") -> (image features (B_img, E), text features (B_txt, E), both
        L2-normalised; logit scale). `text_buckets`: see TextTransformer.forward."""
        img = F.normalize(self.image(images), dim=-1)
        _, pooled = self.text(ids, mask, buckets=text_buckets)
        txt = F.normalize(pooled, dim=-1)
        return img, txt, self.scale()


def positive_mask(
    captions: list[str] | torch.Tensor | None = None,
    attributes: torch.Tensor | None = None,
    owner: torch.Tensor | None = None,
    text_attributes: torch.Tensor | None = None,
) -> torch.Tensor:
    """(B_img, B_txt) bool: True where image i and text j are positives of each other.

    Text j belongs to image `owner[j]` (default: text j to image j, a square batch; -1: to no
    image, e.g. a hard-negative caption). Image i and text j are positives when j belongs to
    i, when i's attribute vector equals the one j describes (`text_attributes[j]`, by default
    that of j's image), or when j's caption is identical to a caption that belongs to i.

    `captions` (per text) may be strings or an integer tensor of caption keys (e.g. hashes,
    which can cross process boundaries in a gather); `attributes` is (B_img, A)."""
    if captions is None and attributes is None and owner is None:
        raise ValueError("positive_mask needs captions, attributes or owner")
    device = next((t.device for t in (owner, attributes, captions) if isinstance(t, torch.Tensor)), None)
    if owner is None:
        n = len(captions) if captions is not None else attributes.shape[0]
        owner = torch.arange(n, device=device)
    N = owner.shape[0]
    B = attributes.shape[0] if attributes is not None else int(owner.max()) + 1
    own = owner[None, :] == torch.arange(B, device=device)[:, None]  # (B, N) text j is image i's
    pos = own
    if attributes is not None:
        a = attributes.reshape(B, -1)
        if text_attributes is None:
            if (owner < 0).any():
                raise ValueError("texts without an owner need text_attributes")
            text_attributes = a[owner]
        pos = pos | (a[:, None, :] == text_attributes[None, :, :]).all(dim=-1)  # same attributes
    if captions is not None:
        if isinstance(captions, torch.Tensor):
            cap_ids = captions.reshape(N)
        else:
            index: dict[str, int] = {}
            cap_ids = torch.tensor([index.setdefault(c, len(index)) for c in captions], device=device)
        same_text = cap_ids[:, None] == cap_ids[None, :]  # (N, N)
        pos = pos | ((own.float() @ same_text.float()) > 0)  # i owns a text identical to j
    return pos


def contrastive_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    scale: torch.Tensor,
    positives: torch.Tensor | None = None,
) -> torch.Tensor:
    """Symmetric contrastive loss between L2-normalised image (B_img, E) and text (B_txt, E)
    features.

    positives=None is CLIP's InfoNCE (square batch): cross-entropy towards the diagonal,
    averaged over the image->text and text->image directions. With a (B_img, B_txt) bool
    `positives` mask the target of each row (and of each column, for text->image) is uniform
    over its positives (multi-positive soft targets, as in SupCon, Khosla et al. 2020, and
    the soft-target CLIP variants), so two images with the same caption are not pushed
    apart, and an image may come with several captions. A text with no positive image (a
    hard-negative caption, NegCLIP, Yuksekgonul et al. 2023) only enlarges the image->text
    softmax. With an identity mask both are the same number.
    """
    logits = scale * image_features @ text_features.t()  # (B_img, B_txt)
    if positives is None:
        labels = torch.arange(logits.shape[0], device=logits.device)
        return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels))
    pos = positives.to(logits.dtype)
    if (pos.sum(dim=1) == 0).any():
        raise ValueError("every image needs at least one positive text")
    t_i2t = pos / pos.sum(dim=1, keepdim=True)  # each row sums to 1
    loss_i2t = -(t_i2t * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
    # Texts that describe no image in the batch (hard negatives) only compete in image->text.
    has = pos.sum(dim=0) > 0  # (B_txt,)
    pos_t = pos.t()[has]  # (B_txt', B_img)
    t_t2i = pos_t / pos_t.sum(dim=1, keepdim=True)
    loss_t2i = -(t_t2i * F.log_softmax(logits.t()[has], dim=1)).sum(dim=1).mean()
    return 0.5 * (loss_i2t + loss_t2i)
