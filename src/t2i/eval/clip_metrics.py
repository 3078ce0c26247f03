"""Caption-only measures with the project's own CLIP: CLIP score, R-precision, FD on CLIP image
features and feature diversity, each beside its real-image reference and a shuffled control.

They need no attribute labels, only images and their captions, so every dataset gets them
(an imagefolder or parquet set of captioned photos as much as CelebA). They are only as good
as the CLIP that measures them: the real-image rows (real images with their own captions as
ceiling, with shuffled captions as floor) say how much that CLIP can see, and a generated
number is read against them.

Each function takes the pipeline's `TextEncoder` (its `image_features` / `text_features` /
`score`) and image tensors (N, 3, H, W) in [-1, 1].
"""

from __future__ import annotations

import re

import numpy as np
import torch
from torch import nn

from t2i.eval.faithfulness import group_mean_pairwise_distance
from t2i.eval.rprecision import N_DISTRACTORS, r_precision, shuffled_texts

FD_FEATURES = "project CLIP image embedding ({dims} dims, before normalisation); not Inception, not comparable to FID"


class ClipImageFeatures(nn.Module):
    """The project CLIP's image embedding (before L2 normalisation) as a torchmetrics feature
    extractor for FD: images (B, 3, H, W) in [-1, 1] -> (B, E). The same kind of features as
    "FD with CLIP features" (Kynkaenniemi et al. 2023, "The Role of ImageNet Classes in FID"),
    here from a CLIP trained on the data itself."""

    def __init__(self, text_encoder):
        super().__init__()
        self.clip = text_encoder.clip
        self.num_features = self.clip.config.embed_dim  # read by torchmetrics instead of a dummy forward

    def train(self, mode: bool = True) -> ClipImageFeatures:
        super().train(False)  # BatchNorm in the image tower must keep its running statistics
        return self

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.clip.encode_image(images.to(self.clip.logit_scale.device).float()).float()  # (B, E)


def clip_scores(text_encoder, generated: torch.Tensor, prompts: list[str], real: torch.Tensor,
                captions: list[str], seed: int) -> dict:
    """Mean CLIP score (100 * max(cos, 0)) of generated images with their prompts, of real images
    with their own captions (reference) and with shuffled captions (floor)."""
    return {
        "generated": float(text_encoder.score(generated, prompts).mean()) if len(prompts) else None,
        "real": float(text_encoder.score(real, captions).mean()),
        "real_shuffled": float(text_encoder.score(real, shuffled_texts(captions, seed)).mean()),
    }


def r_precision_scores(text_encoder, generated: torch.Tensor, prompts: list[str], real: torch.Tensor,
                       captions: list[str], seed: int, n_distractors: int = N_DISTRACTORS) -> dict:
    """R-precision of generated images against their prompts, with the real images' value as
    ceiling (own captions) and floor (shuffled captions). The distractors of all three come from
    the same pool: `captions`, one per real test image.

    Returns {"generated", "real", "real_shuffled"} (each r_precision()'s dict) plus "chance"."""
    pool = text_encoder.text_features(captions)  # (M, E)
    real_features = text_encoder.image_features(real)  # (M, E)
    wrong = shuffled_texts(captions, seed)
    out = {
        "generated": None,
        "real": r_precision(real_features, pool, captions, pool, captions, n_distractors, seed),
        "real_shuffled": r_precision(real_features, text_encoder.text_features(wrong), wrong, pool, captions,
                                     n_distractors, seed),
    }
    if len(prompts):
        out["generated"] = r_precision(text_encoder.image_features(generated), text_encoder.text_features(prompts),
                                       prompts, pool, captions, n_distractors, seed)
    out["chance"] = out["real"]["chance"]
    return out


_PHRASE_BREAK = re.compile(r",\s*|\s+(?:and|with|wearing)\s+")


def phrase_shuffled(captions: list[str], seed: int) -> list[str]:
    """The FD control for free-text captions: each caption keeps its first phrase (the subject)
    and takes its k-th further phrase from another caption's k-th phrase (a seeded shuffle per
    position). Phrases break at commas and at "and" / "with" / "wearing". Like shuffling
    attribute columns, this keeps how often each phrase is asked for and breaks which phrases
    go together, so a model that reads the text draws a different set of pictures (FD rises);
    one that ignores the text does not notice."""
    split = [[p for p in _PHRASE_BREAK.split(c.strip()) if p] or [c] for c in captions]
    rng = np.random.default_rng(seed)
    depth = max(len(s) for s in split) if split else 0
    for k in range(1, depth):
        holders = [i for i, s in enumerate(split) if len(s) > k]
        moved = [split[i][k] for i in rng.permutation(holders)] if holders else []
        for i, phrase in zip(holders, moved):
            split[i][k] = phrase
    return [", ".join(s) for s in split]


def mean_pairwise_distance(features: torch.Tensor, max_images: int = 512, seed: int = 0) -> float | None:
    """Mean L2 distance between the features of distinct images of a set (a random subset of
    `max_images`): how spread out the real images are, the reference for diversity."""
    n = features.shape[0]
    if n < 2:
        return None
    if n > max_images:
        features = features[torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:max_images]]
        n = max_images
    f = features.double()
    return round(float(torch.cdist(f, f).sum() / (n * (n - 1))), 4)


def clip_diversity(text_encoder, generated: torch.Tensor, per_prompt: int, real: torch.Tensor,
                   seed: int) -> dict:
    """Diversity in the CLIP image embedding: mean pairwise distance between the images of one
    prompt (prompt-major), and between distinct real images (the spread of the data)."""
    features = ClipImageFeatures(text_encoder)
    gen = torch.cat([features(generated[i : i + 256]) for i in range(0, len(generated), 256)]) \
        if len(generated) else torch.zeros(0, features.num_features)
    ref = torch.cat([features(real[i : i + 256]) for i in range(0, len(real), 256)])
    return {"generated": group_mean_pairwise_distance(gen.cpu(), per_prompt),
            "real_distinct_images": mean_pairwise_distance(ref.cpu(), seed=seed)}
