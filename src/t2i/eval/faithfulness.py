"""Attribute faithfulness: does the judge find in each image what its prompt asked for?

For every scored attribute, the judge's verdict (probability > 0.5) on each image is compared
with the value the prompt requested. Per attribute:

    hit rate       = P(judge says present | prompt asks for it)
    rejection rate = P(judge says absent  | prompt does not ask for it)
    balanced       = mean of the two (a class with no prompts is skipped)

A generator that ignores the text scores 0.5 balanced whatever each attribute's frequency
(chance level), and the macro average over attributes is the headline. The
all-attributes-correct rate is the share of images on which *every* scored attribute matches
(its chance level is far below 0.5: the product of per-attribute chances). The judge's own
score on real test images against their true attributes is the ceiling; on real images
against shuffled captions, the floor.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from t2i.attributes import ATTRIBUTE_INDEX
from t2i.checkpoint import load_component, resolve_component
from t2i.models.judge import Judge, JudgeConfig, balanced_accuracy

THRESHOLD = 0.5


def load_judge(path: str | Path, device: str | torch.device = "cpu") -> tuple[Judge, dict]:
    """A trained judge from a model dir (holding judge/) or the judge dir itself."""
    directory = resolve_component(path, "judge")
    return load_component(directory, Judge, JudgeConfig, "judge", device=device)


@torch.no_grad()
def judge_images(judge: Judge, images: torch.Tensor, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """images (N, 3, H, W) in [-1, 1] -> (verdicts (N, 40) bool, features (N, F)), on CPU."""
    probs, feats = judge.predict(images, batch_size=batch_size)
    return probs > THRESHOLD, feats


def _num(x) -> float | None:
    x = float(x)
    return None if x != x else round(x, 4)


def faithfulness(
    verdicts, requested, scored: tuple[str, ...] | list[str], negated: list[tuple[str, ...]] | None = None
) -> dict:
    """Score boolean verdicts (N, 40) against requested values (N, 40) on the `scored` attributes.

    Returns {"per_attribute": {name: {balanced, hit_rate, rejection_rate, n_pos, n_neg}},
    "macro_balanced" (over the `macro_attributes` attributes requested both ways),
    "all_correct_rate", "accuracy", "images"} plus, when `negated` (per image,
    the attributes its prompt denied explicitly) is given, "negations_obeyed": how often the
    image obeys an explicit denial ("without glasses", "clean-shaven").
    """
    v = torch.as_tensor(np.asarray(verdicts)).bool()
    r = torch.as_tensor(np.asarray(requested)).bool()
    if v.shape != r.shape:
        raise ValueError(f"verdicts {tuple(v.shape)} and requested {tuple(r.shape)} differ in shape")
    idx = [ATTRIBUTE_INDEX[a] for a in scored]
    stats = balanced_accuracy(v[:, idx], r[:, idx])
    per = {
        a: {"balanced": _num(stats["balanced"][j]), "hit_rate": _num(stats["hit_rate"][j]),
            "rejection_rate": _num(stats["rejection_rate"][j]),
            "n_pos": int(stats["n_pos"][j]), "n_neg": int(stats["n_neg"][j])}
        for j, a in enumerate(scored)
    }
    match = v[:, idx] == r[:, idx]  # (N, k)
    # The macro average only takes attributes requested both ways: with one class, "balanced"
    # is a single rate, and a text-blind model scores 0 or 1 on it instead of 0.5.
    both = (stats["n_pos"] > 0) & (stats["n_neg"] > 0)
    out = {
        "per_attribute": per,
        "macro_balanced": _num(stats["balanced"][both].mean()) if bool(both.any()) else None,
        "macro_attributes": int(both.sum()),
        "all_correct_rate": _num(match.all(dim=1).double().mean()) if len(v) else None,
        "accuracy": _num(match.double().mean()) if len(v) else None,
        "images": int(v.shape[0]),
    }
    if negated is not None:
        if len(negated) != v.shape[0]:
            raise ValueError(f"negated has {len(negated)} entries for {v.shape[0]} images")
        # A denial asks for the non-salient value ("clean-shaven" is No_Beard = +1), which
        # is the requested value: the denial is obeyed when the verdict matches it.
        denied = [(i, ATTRIBUTE_INDEX[a]) for i, names in enumerate(negated) for a in names]
        out["negations"] = len(denied)
        out["negations_obeyed"] = (
            _num(np.mean([bool(v[i, j] == r[i, j]) for i, j in denied])) if denied else None)
    return out


def group_mean_pairwise_distance(features: torch.Tensor, group_size: int) -> float | None:
    """Diversity: mean L2 distance between the features of images of the same prompt, for
    consecutive groups of `group_size` rows (images are prompt-major), averaged over groups."""
    N, F = features.shape
    if group_size < 2 or N < group_size:
        return None
    g = features[: N - N % group_size].double().view(-1, group_size, F)  # (P, K, F)
    d = torch.cdist(g, g)  # (P, K, K)
    K = group_size
    return round(float(d.sum(dim=(1, 2)).mean() / (K * (K - 1))), 4)


def same_attribute_diversity(features: torch.Tensor, rows: np.ndarray, scored: tuple[str, ...],
                             max_groups: int = 200, seed: int = 0) -> float | None:
    """Reference diversity of real images: mean pairwise feature distance among real images that
    share the same scored-attribute vector (what one prompt "should" spread over)."""
    idx = [ATTRIBUTE_INDEX[a] for a in scored]
    keys: dict[bytes, list[int]] = {}
    for i, row in enumerate(np.asarray(rows)[:, idx]):
        keys.setdefault(np.packbits(row).tobytes(), []).append(i)
    groups = [g for g in keys.values() if len(g) >= 2]
    if not groups:
        return None
    rng = np.random.default_rng(seed)
    if len(groups) > max_groups:
        groups = [groups[i] for i in rng.choice(len(groups), max_groups, replace=False)]
    values = []
    for g in groups:
        f = features[g[:16]].double()
        K = f.shape[0]
        values.append(float(torch.cdist(f, f).sum() / (K * (K - 1))))
    return round(float(np.mean(values)), 4)
