"""Classifier-free guidance (Ho & Salimans 2022): out = uncond + scale * (cond - uncond),
and its composable form (Liu et al. 2022): out = uncond + scale * sum_i w_i (cond_i - uncond).

`cfg_model` wraps a conditional network `net(x, t, context, context_mask, pooled)` into the
`model_fn(x, t)` that `samplers.make_denoiser` takes. The conditional and unconditional
branches run in ONE batched forward (the batch is [cond; uncond]): one kernel launch per
layer instead of two, which is what matters at batch 1. The unconditional branch reads the
negative prompt's text states (the empty prompt's for plain CFG). Guidance is linear in the
network output, so guiding v, eps or x0 gives the same x0 estimate.

`composed_model` is the conjunction / negation of Liu et al. 2022 ("Compositional Visual
Generation with Composable Diffusion Models", ECCV, eq. 10-11 with one guidance scale times a
per-term weight, as the Stable Diffusion web UIs' `AND` does). Every term of every image and
the unconditional branch run as ONE batched forward per step. The combination has
coefficients (1 - scale * sum w_i) on uncond and scale * w_i on term i, which sum to 1: it
commutes with the affine map from the network's output (v, eps or x0) to x0, so combining v
predictions is the same as combining eps (the paper's space), as for `cfg_model`.

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


def composed_model(
    net: Net,
    scale: float,
    context: torch.Tensor,
    context_mask: torch.Tensor | None,
    pooled: torch.Tensor | None,
    term_image: torch.Tensor,
    term_weight: torch.Tensor,
    uncond_context: torch.Tensor,
    uncond_mask: torch.Tensor | None = None,
    uncond_pooled: torch.Tensor | None = None,
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Return `model_fn(x, t)` for N images whose prompts are weighted sums of terms:

        out_n = uncond_n + scale * sum_{r: term_image[r] = n} term_weight[r] * (cond_r - uncond_n)

    Images may have different numbers of terms: the R terms of all images are one flat batch
    (segmented by `term_image`, no padding rows), so a step is one forward of R + N rows.

    context (R, L, D), context_mask (R, L), pooled (R, E): each term's text states.
    term_image (R,) long: the image (latent row, 0..N-1) each term belongs to; every image has
    at least one term. term_weight (R,): the term's weight (negative for NOT).
    uncond_* (N or 1 rows): the negative (or empty) prompt's, the baseline every term is
    measured against. With one term of weight 1 per image this equals `cfg_model` exactly."""
    R = context.shape[0]
    if term_image.shape != (R,) or term_weight.shape != (R,):
        raise ValueError(f"term_image {tuple(term_image.shape)} and term_weight {tuple(term_weight.shape)} "
                         f"must both be ({R},), one entry per term")
    counts = torch.bincount(term_image.cpu())
    N = counts.numel()
    if R == 0 or (counts == 0).any():
        raise ValueError("every image needs at least one term (term_image must cover 0..N-1)")
    if (pooled is None) != (uncond_pooled is None):
        raise ValueError("pass pooled and uncond_pooled together (or neither)")
    L = max(context.shape[1], uncond_context.shape[1])
    c, cm = _pad_tokens(context, context_mask, L)  # (R, L, D), (R, L)
    u, um = _pad_tokens(_expand(uncond_context, N), _expand(uncond_mask, N), L)  # (N, L, D), (N, L)
    # Built once, outside the sampling loop: [terms; uncond] text for the one forward.
    ctx = torch.cat([c, u])  # (R+N, L, D)
    mask = torch.cat([cm, um])  # (R+N, L)
    pool = None if pooled is None else torch.cat([pooled, _expand(uncond_pooled, N)])  # (R+N, E)
    rows = term_image.to(context.device)  # (R,)

    def composed(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if x.shape[0] != N:
            raise ValueError(f"latent batch {x.shape[0]} does not match the {N} images the terms describe")
        out = net(torch.cat([x[rows], x]), torch.cat([t[rows], t]), ctx, mask, pool)  # one forward, R+N
        cond, uncond = out[:R], out[R:]  # (R, C, h, w), (N, C, h, w)
        w = term_weight.to(out.device, out.dtype).reshape(R, *[1] * (out.ndim - 1))
        delta = torch.zeros_like(uncond).index_add_(0, rows, w * (cond - uncond[rows]))  # (N, C, h, w)
        return uncond + scale * delta

    return composed
