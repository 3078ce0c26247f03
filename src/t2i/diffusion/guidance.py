"""Classifier-free guidance (Ho & Salimans 2022): out = uncond + scale * (cond - uncond).

`cfg_model` wraps a conditional network `net(x, t, context, context_mask, pooled)` into the
`model_fn(x, t)` that `samplers.make_denoiser` takes. The conditional and unconditional
branches run in ONE batched forward (the batch is [cond; uncond]): one kernel launch per
layer instead of two, which is what matters at batch 1. The unconditional branch reads the
negative prompt's text states (the empty prompt's for plain CFG). Guidance is linear in the
network output, so guiding v, eps or x0 gives the same x0 estimate.

Never imports `t2i.models`: the network is any callable with that signature.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

Net = Callable[..., torch.Tensor]


def _pad_tokens(
    states: torch.Tensor, mask: torch.Tensor | None, length: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad (B, L, D) text states and their (B, L) mask to `length` tokens; padding is masked."""
    B, L, _ = states.shape
    if mask is None:
        mask = torch.ones(B, L, dtype=torch.bool, device=states.device)
    if L < length:
        states = F.pad(states, (0, 0, 0, length - L))
        mask = F.pad(mask, (0, length - L), value=False)
    return states, mask


def _expand(x: torch.Tensor | None, B: int) -> torch.Tensor | None:
    """Broadcast a batch-1 text tensor (one prompt for the whole batch) to B rows."""
    if x is None or x.shape[0] == B:
        return x
    if x.shape[0] != 1:
        raise ValueError(f"text batch {x.shape[0]} does not match latent batch {B}")
    return x.expand(B, *x.shape[1:])


def cfg_model(
    net: Net,
    scale: float,
    context: torch.Tensor,
    uncond_context: torch.Tensor | None = None,
    context_mask: torch.Tensor | None = None,
    uncond_mask: torch.Tensor | None = None,
    pooled: torch.Tensor | None = None,
    uncond_pooled: torch.Tensor | None = None,
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Return `model_fn(x, t)` with classifier-free guidance at `scale`.

    context / context_mask / pooled: the prompt's text states (B or 1 rows); uncond_*: the
    negative (or empty) prompt's. scale 1 is the conditional model alone (one forward of
    batch B, no uncond branch); scale 0 the unconditional one; > 1 extrapolates."""
    if scale == 1.0 or uncond_context is None:
        if scale != 1.0:
            raise ValueError(f"guidance scale {scale} needs uncond_context (the negative prompt)")

        def conditional(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            B = x.shape[0]
            return net(x, t, _expand(context, B), _expand(context_mask, B), _expand(pooled, B))

        return conditional

    # Pad both prompts to one length once, outside the sampling loop.
    L = max(context.shape[1], uncond_context.shape[1])
    c, cm = _pad_tokens(context, context_mask, L)
    u, um = _pad_tokens(uncond_context, uncond_mask, L)
    if (pooled is None) != (uncond_pooled is None):
        raise ValueError("pass pooled and uncond_pooled together (or neither)")

    text: dict[int, tuple] = {}  # batched text per latent batch size, built on first use

    def text_for(B: int) -> tuple:
        if B not in text:
            ctx = torch.cat([_expand(c, B), _expand(u, B)])  # (2B, L, D): [cond; uncond]
            mask = torch.cat([_expand(cm, B), _expand(um, B)])  # (2B, L)
            pool = None
            if pooled is not None:
                pool = torch.cat([_expand(pooled, B), _expand(uncond_pooled, B)])  # (2B, E)
            text[B] = (ctx, mask, pool)
        return text[B]

    def guided(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ctx, mask, pool = text_for(x.shape[0])
        out = net(torch.cat([x, x]), torch.cat([t, t]), ctx, mask, pool)  # one forward, 2B
        cond, uncond = out.chunk(2)
        return uncond + scale * (cond - uncond)

    return guided
