"""Fréchet distance (FD) between the features of two image sets (judge or CLIP features).

FD = |mu_1 - mu_2|^2 + Tr(S_1 + S_2 - 2 (S_1 S_2)^(1/2)) between Gaussians fitted to the
features (Heusel et al. 2017, "GANs trained by a two time-scale update rule"). FID uses
Inception-v3 features; those weights cannot be downloaded here, so this uses the penultimate
features of the project's own judge, through torchmetrics' `FrechetInceptionDistance` with a
custom feature module (`JudgeFeatures` here; the project CLIP's image tower, for datasets
without attribute labels, in `t2i.eval.clip_metrics`). The numbers are therefore NOT
comparable to published FIDs, only to each other (same feature network, same number of
images: FD is biased upwards at small sample sizes, which is why the report always shows the
real-vs-real value at the same size beside it).
"""

from __future__ import annotations

import torch
from torch import nn

from t2i.models.judge import Judge


class JudgeFeatures(nn.Module):
    """The judge's pooled penultimate features as a torchmetrics feature extractor: images
    (B, 3, H, W) float in [-1, 1] -> (B, F)."""

    def __init__(self, judge: Judge):
        super().__init__()
        self.judge = judge.eval().requires_grad_(False)
        self.num_features = judge.num_features  # read by torchmetrics instead of a dummy forward

    def train(self, mode: bool = True) -> JudgeFeatures:
        super().train(False)  # torchmetrics may call .train(); the judge stays in eval mode
        return self

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.judge.features(images)


class FDMeter:
    """Real-image statistics computed once; `fd(images)` for each generated set.

        meter = FDMeter(judge, real_test_images)      # judge features
        meter = FDMeter(extractor, real_test_images)  # any module with `num_features`, forward -> (B, F)
        meter.fd(generated_images)   # -> float
    """

    def __init__(self, features: Judge | nn.Module, real_images: torch.Tensor, batch_size: int = 256):
        from torchmetrics.image.fid import FrechetInceptionDistance

        if real_images.shape[0] < 2:
            raise ValueError(f"FD needs at least 2 real images, got {real_images.shape[0]}")
        if callable(getattr(features, "features", None)):  # a judge: its penultimate features
            features = JudgeFeatures(features)
        self.batch_size = batch_size
        self.device = next(features.parameters()).device
        self.metric = FrechetInceptionDistance(
            feature=features, reset_real_features=False, normalize=False
        ).to(self.device)
        self.n_real = int(real_images.shape[0])
        self._update(real_images, real=True)

    @torch.no_grad()
    def _update(self, images: torch.Tensor, real: bool) -> None:
        for i in range(0, images.shape[0], self.batch_size):
            self.metric.update(images[i : i + self.batch_size].to(self.device).float(), real=real)

    @torch.no_grad()
    def fd(self, images: torch.Tensor) -> float:
        if images.shape[0] < 2:
            raise ValueError(f"FD needs at least 2 generated images, got {images.shape[0]}")
        self.metric.reset()  # drops the previous fake set; the real statistics are kept
        self._update(images, real=False)
        return float(self.metric.compute())
