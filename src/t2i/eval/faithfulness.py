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


# ----------------------------------------------------------------------------- intervals

N_BOOTSTRAP = 1000


def _prompt_counts(verdicts, requested, scored, group_size: int, negated=None) -> dict[str, np.ndarray]:
    """Per-prompt sums over its `group_size` consecutive images (prompt-major): the counts
    every faithfulness figure is a ratio of, so a resample of prompts is a weighted sum."""
    idx = [ATTRIBUTE_INDEX[a] for a in scored]
    v = np.asarray(verdicts, dtype=bool)[:, idx]
    r = np.asarray(requested, dtype=bool)[:, idx]
    N, k = v.shape
    if N % group_size:
        raise ValueError(f"{N} images do not split into prompts of {group_size}")
    P = N // group_size

    def per_prompt(x: np.ndarray) -> np.ndarray:  # (N, ...) -> (P, ...)
        return x.reshape(P, group_size, *x.shape[1:]).sum(axis=1).astype(np.float64)

    out = {"tp": per_prompt(v & r), "pos": per_prompt(r), "tn": per_prompt(~v & ~r), "neg": per_prompt(~r),
           "all": per_prompt((v == r).all(axis=1)), "images": np.full(P, float(group_size))}
    if negated is not None:
        full_v, full_r = np.asarray(verdicts, dtype=bool), np.asarray(requested, dtype=bool)
        denied = np.zeros(N)
        obeyed = np.zeros(N)
        for i, names in enumerate(negated):
            for a in names:
                j = ATTRIBUTE_INDEX[a]
                denied[i] += 1
                obeyed[i] += full_v[i, j] == full_r[i, j]
        out["denied"], out["obeyed"] = per_prompt(denied), per_prompt(obeyed)
    return out


def _resampled_figures(counts: dict[str, np.ndarray], weights: np.ndarray) -> dict[str, np.ndarray]:
    """Each figure for each resample: `weights` (B, P) says how often resample b drew prompt p."""
    with np.errstate(invalid="ignore", divide="ignore"):
        pos, neg = weights @ counts["pos"], weights @ counts["neg"]  # (B, k)
        balanced = ((weights @ counts["tp"]) / pos + (weights @ counts["tn"]) / neg) / 2
        both = (pos > 0) & (neg > 0)  # as in `faithfulness`: only attributes requested both ways
        macro = np.where(both, balanced, 0).sum(axis=1) / both.sum(axis=1)
        figures = {"macro_balanced": macro, "all_correct_rate": (weights @ counts["all"]) / (weights @ counts["images"]),
                   "per_attribute": np.where(both, balanced, np.nan)}
        if "denied" in counts:
            figures["negations_obeyed"] = (weights @ counts["obeyed"]) / (weights @ counts["denied"])
    return figures


def _weights(n_prompts: int, n_boot: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.multinomial(n_prompts, np.full(n_prompts, 1 / n_prompts), size=n_boot).astype(np.float64)


def _interval(samples: np.ndarray) -> list[float] | None:
    samples = samples[np.isfinite(samples)]
    if samples.size < 2:
        return None
    lo, hi = np.percentile(samples, [2.5, 97.5])
    return [round(float(lo), 4), round(float(hi), 4)]


def bootstrap_intervals(verdicts, requested, scored, group_size: int, negated=None,
                        n_boot: int = N_BOOTSTRAP, seed: int = 0) -> dict:
    """95% percentile-bootstrap intervals (Efron & Tibshirani 1993) of the faithfulness figures,
    resampling prompts (each with all of its `group_size` images, since images of one prompt
    are not independent), seeded. {"macro_balanced": [lo, hi], "all_correct_rate": [lo, hi],
    "negations_obeyed": [lo, hi] (with `negated`), "per_attribute": {name: [lo, hi]},
    "prompts", "resamples"}; None where a figure is undefined in most resamples."""
    counts = _prompt_counts(verdicts, requested, scored, group_size, negated)
    P = len(counts["all"])
    if P < 2:
        return {"prompts": P, "resamples": 0}
    figures = _resampled_figures(counts, _weights(P, n_boot, seed))
    out = {name: _interval(figures[name]) for name in ("macro_balanced", "all_correct_rate", "negations_obeyed")
           if name in figures}
    out["per_attribute"] = {a: _interval(figures["per_attribute"][:, j]) for j, a in enumerate(scored)}
    return out | {"prompts": P, "resamples": n_boot}


def bootstrap_gap(verdicts_a, verdicts_b, requested, scored, group_size: int, negated=None,
                  n_boot: int = N_BOOTSTRAP, seed: int = 0) -> dict:
    """The same requests rendered two ways (a: reference wording, b: the variant), images in
    the same prompt-major order: the gap a - b of each headline figure and its 95% paired
    bootstrap interval (both sets resampled with the same prompts)."""
    ca = _prompt_counts(verdicts_a, requested, scored, group_size, negated)
    cb = _prompt_counts(verdicts_b, requested, scored, group_size, negated)
    P = len(ca["all"])
    w = _weights(P, n_boot, seed) if P >= 2 else np.ones((1, P))
    fa, fb = _resampled_figures(ca, w), _resampled_figures(cb, w)
    whole = np.ones((1, P))
    pa, pb = _resampled_figures(ca, whole), _resampled_figures(cb, whole)
    out = {}
    for name in ("macro_balanced", "all_correct_rate", "negations_obeyed"):
        if name in fa:
            gap = float(pa[name][0] - pb[name][0])
            out[name] = {"gap": None if gap != gap else round(gap, 4),
                         "interval": _interval(fa[name] - fb[name]) if P >= 2 else None}
    return out | {"prompts": P, "resamples": n_boot if P >= 2 else 0}
