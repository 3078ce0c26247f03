"""Batch normalisation over the global batch when training on several processes.

With one process, `GlobalBatchNorm` is `nn.BatchNorm{1,2,3}d` (same parameters, buffers and
state-dict keys, same numbers). In training under an initialised process group with more than
one process it normalises with the mean and variance of the whole global batch, gathered with
differentiable all-reduces, so N processes holding B/N samples each compute what one process
holding all B computes (Ioffe & Szegedy 2015 over the global batch; the math of PyTorch's
SyncBatchNorm, which runs on GPUs only, while this also runs on CPU processes over gloo).
Plain BatchNorm under DDP would normalise each process's slice by its own statistics: the
gradients of 2 processes then differ from those of 1 with the same global batch.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.nn.functional import all_reduce


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm for (B, C) or (B, C, *spatial) inputs whose training statistics span every
    process. Drop-in for nn.BatchNorm1d/2d/3d (checkpoints load either way)."""

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"GlobalBatchNorm expects (B, C, ...) input, got shape {tuple(x.shape)}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and _world_size() > 1):
            return super().forward(x)
        self._check_input_dim(x)
        C = x.shape[1]
        dims = [0, *range(2, x.dim())]  # every dim but the channels
        shape = (1, C) + (1,) * (x.dim() - 2)
        xf = x.float()  # statistics in fp32 whatever the autocast dtype
        # Two passes (mean, then squared deviations) for the same accuracy as one process.
        count = torch.tensor([x.numel() // C], dtype=torch.float32, device=x.device)
        sums = all_reduce(torch.cat([xf.sum(dims), count]))  # (C + 1,) summed over processes
        n = sums[C]
        mean = sums[:C] / n  # (C,)
        var = all_reduce(((xf - mean.view(shape)) ** 2).sum(dims)) / n  # (C,) biased, as BatchNorm
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = (1.0 / float(self.num_batches_tracked) if self.momentum is None
                            else self.momentum)
                unbiased = var * (n / (n - 1).clamp(min=1))
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), momentum)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), momentum)
        y = (xf - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)
