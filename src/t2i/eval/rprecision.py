"""R-precision: does the project's CLIP pick an image's own prompt out of 100?

For each image, its own prompt and `n_distractors` (99) other prompts drawn at random from a
pool (the test split's captions) are ranked by the image-text cosine similarity of a CLIP
trained on the data; R-precision is the share of images whose own prompt ranks first
(Xu et al. 2018, "AttnGAN", section 5; DF-GAN, Tao et al. 2022, uses the same protocol).
A generator that ignores the text scores 1 / (1 + n_distractors) = 1% (chance).

Two details keep the number honest:
- a distractor whose text equals the own prompt (after case and whitespace folding) is never
  drawn: template captions repeat, and an identical "other" prompt cannot be told apart;
- ties count fractionally: an own prompt tied with t distractors at the top scores 1 / (1 + t),
  so a CLIP whose features collapsed scores chance, not 0 or 1.

With fewer than `n_distractors` usable prompts in the pool, every usable one is a distractor
and the chance level rises; `chance` in the result says what it is.
"""

from __future__ import annotations

import numpy as np
import torch

N_DISTRACTORS = 99  # AttnGAN's protocol: the own prompt among 100


def text_key(text: str) -> str:
    """Case- and whitespace-folded caption: two prompts with the same key are the same prompt."""
    return " ".join(text.lower().split())


def r_precision(image_features: torch.Tensor, own_features: torch.Tensor, own_texts: list[str],
                pool_features: torch.Tensor, pool_texts: list[str], n_distractors: int = N_DISTRACTORS,
                seed: int = 0) -> dict:
    """R-precision of N images against their own prompts, with distractors from a pool.

    image_features (N, E), own_features (N, E), pool_features (M, E): L2-normalised CLIP
    embeddings (TextEncoder.image_features / text_features). own_texts (N) and pool_texts (M)
    are the prompts' texts, used only to keep an own prompt out of its own distractors.

    Returns {"r_precision", "chance", "images", "distractors" (fewest drawn for any image),
    "mean_rank" (1 = first; ties at their mean rank)}; values None when there are no images.
    """
    N, M = image_features.shape[0], pool_features.shape[0]
    if own_features.shape[0] != N or len(own_texts) != N:
        raise ValueError(f"{N} images need as many own prompts: got {own_features.shape[0]} features, "
                         f"{len(own_texts)} texts")
    if len(pool_texts) != M:
        raise ValueError(f"pool has {M} features but {len(pool_texts)} texts")
    if n_distractors < 1:
        raise ValueError(f"n_distractors must be >= 1, got {n_distractors}")
    if N == 0:
        return {"r_precision": None, "chance": None, "images": 0, "distractors": 0, "mean_rank": None}
    img = image_features.double().cpu()
    own = (img * own_features.double().cpu()).sum(dim=1).numpy()  # (N,) similarity to the own prompt
    pool = (img @ pool_features.double().cpu().t()).numpy()  # (N, M)
    own_keys = [text_key(t) for t in own_texts]
    pool_keys = np.array([text_key(t) for t in pool_texts], dtype=object)
    rng = np.random.default_rng(seed)
    scores, chances, ranks, drawn = [], [], [], []
    for i in range(N):
        usable = np.nonzero(pool_keys != own_keys[i])[0]
        if len(usable) == 0:
            raise ValueError(f"no distractor for prompt {own_texts[i]!r}: every pool prompt is the same text")
        pick = rng.choice(usable, size=min(n_distractors, len(usable)), replace=False)
        sims = pool[i, pick]
        higher = int((sims > own[i]).sum())
        tied = int((sims == own[i]).sum())
        scores.append(0.0 if higher else 1.0 / (1 + tied))
        ranks.append(1 + higher + tied / 2)
        chances.append(1.0 / (1 + len(pick)))
        drawn.append(len(pick))
    return {"r_precision": round(float(np.mean(scores)), 4), "chance": round(float(np.mean(chances)), 4),
            "images": N, "distractors": int(min(drawn)), "mean_rank": round(float(np.mean(ranks)), 2)}


def shuffled_texts(texts: list[str], seed: int) -> list[str]:
    """The floor's prompts: the same captions, paired with the wrong images (seeded permutation;
    a caption that lands on its own image is swapped with its neighbour's, so that no image
    keeps its own text unless the captions repeat)."""
    n = len(texts)
    perm = np.random.default_rng(seed).permutation(n)
    for i in range(n):
        if n > 1 and perm[i] == i:
            j = (i + 1) % n
            perm[i], perm[j] = perm[j], perm[i]
    return [texts[j] for j in perm]
