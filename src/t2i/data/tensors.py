"""Picking and stacking dataset items: evenly spread samples, and a split held in memory as
tensors (the labelled images the judge and eval score)."""

from __future__ import annotations

import numpy as np
import torch

from t2i.attributes import NUM_ATTRIBUTES


def spread_indices(n: int, k: int) -> list[int]:
    """k indices spread evenly over range(n) (deterministic, covers the whole set)."""
    k = min(k, n)
    return np.linspace(0, n - 1, k).round().astype(int).tolist() if k else []


def split_tensors(dataset, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """All readable items of a FaceDataset (in order) as (images (N,3,S,S) in [-1,1], attributes (N,40))."""
    n = len(dataset) if limit is None else min(len(dataset), limit)
    items = [dataset[i] for i in range(n)]
    items = [x for x in items if x is not None]
    if not items:
        S = dataset.image_size
        return torch.zeros(0, 3, S, S), torch.zeros(0, NUM_ATTRIBUTES)
    return torch.stack([x["image"] for x in items]), torch.stack([x["attributes"] for x in items])
