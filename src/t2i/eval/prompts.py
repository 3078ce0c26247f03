"""The prompt suite `t2i eval` generates from.

Two groups, both rendered with `complete_caption` (every present captioned attribute is named,
so an unnamed attribute is a request for its absence; about a quarter of the prompts also deny
one absent attribute explicitly, "without eyeglasses"):

- "test": attribute rows of the test split, drawn at random, so the combinations follow the
  data. Each prompt records whether its exact combination occurs in the training split.
- "heldout": combinations of the scored attributes that never occur in the training split
  (compositional generalisation). First test rows whose combination is new; if there are not
  enough, a test row with one attribute flipped. A candidate is kept only if every pair of its
  (attribute, value) choices does occur together somewhere in the data, so the set holds
  *unseen* combinations of *possible* ones (never "a woman with a beard" when the data has none).

`composed_text` writes a prompt's request in the composable syntax (Liu et al. 2022): one
term per attribute and a `NOT` term per explicit denial, so `t2i eval` can measure the same
requests both ways.

Scoring is restricted to the attributes that vary in the training split and that captions can
mention (`scored_attributes`; for SynthFaces, the 21 rendered ones).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np
import torch

from t2i.attributes import ATTRIBUTE_INDEX, NUM_ATTRIBUTES
from t2i.data.captions import (
    DENIAL_WEIGHT,
    TWO_SIDED,
    VOCAB,
    complete_caption,
    denied_caption,
    negatable_attributes,
    salient_mentions,
    varied_attributes,
)
from t2i.prompt_syntax import MAX_TERMS, ComposedPrompt, Term

GROUPS = ("test", "heldout")


@dataclass
class Prompt:
    text: str
    requested: np.ndarray  # (40,) bool: the value the prompt asks for (meaningful on scored attributes)
    group: str  # "test" | "heldout"
    negated: tuple[str, ...] = ()  # attributes the prompt denies explicitly
    source: int = -1  # index of the test-split row it came from
    flipped: str | None = None  # heldout built by flipping this attribute of the source row
    seen_in_train: bool = False  # its scored combination occurs in the training split
    coverage: bool = False  # added so that a rare attribute value is requested at all

    def to_dict(self, scored: tuple[str, ...]) -> dict:
        return {
            "text": self.text, "group": self.group, "negated": list(self.negated), "source": self.source,
            "flipped": self.flipped, "seen_in_train": self.seen_in_train, "coverage": self.coverage,
            "requested": {a: bool(self.requested[ATTRIBUTE_INDEX[a]]) for a in scored},
        }


@dataclass
class PromptSuite:
    prompts: list[Prompt]
    scored: tuple[str, ...]  # attribute names that are scored
    info: dict = field(default_factory=dict)

    def group(self, name: str) -> list[int]:
        return [i for i, p in enumerate(self.prompts) if p.group == name]

    def texts(self, indices: list[int] | None = None) -> list[str]:
        idx = range(len(self.prompts)) if indices is None else indices
        return [self.prompts[i].text for i in idx]

    def requested(self, indices: list[int] | None = None) -> np.ndarray:
        idx = range(len(self.prompts)) if indices is None else indices
        return np.stack([self.prompts[i].requested for i in idx]) if len(idx) else np.zeros((0, NUM_ATTRIBUTES), bool)


def as_bool(rows) -> np.ndarray:
    """(N, 40) in {0,1} or {-1,+1} -> bool."""
    rows = np.asarray(rows)
    if rows.ndim != 2 or rows.shape[1] != NUM_ATTRIBUTES:
        raise ValueError(f"attribute rows must be (N, {NUM_ATTRIBUTES}), got {rows.shape}")
    return rows > 0


def scored_attributes(train_rows) -> tuple[str, ...]:
    """Captioned attributes that take both values in the training split."""
    return varied_attributes(np.where(as_bool(train_rows), 1, -1))


def _keys(rows: np.ndarray, idx: list[int]) -> list[bytes]:
    return [np.packbits(r[idx]).tobytes() for r in rows]


def _literals(rows: np.ndarray, idx: list[int]) -> np.ndarray:
    """(N, 2k) bool: for each scored attribute, one column "is present" and one "is absent"."""
    r = rows[:, idx]
    return np.concatenate([r, ~r], axis=1)


def _caption(row: np.ndarray, rng: random.Random, scored: tuple[str, ...], negate_prob: float) -> tuple[str, tuple]:
    signed = np.where(row, 1, -1)
    negatable = negatable_attributes(row, scored)
    negate = (rng.choice(negatable),) if negatable and rng.random() < negate_prob else ()
    # rng=None: the canonical wording. Varying the template would test the text encoder's
    # robustness, not the picture; the explicit negations are the one variation we keep.
    return complete_caption(signed, None, negate=negate, attributes=scored), negate


def build_suite(train_rows, test_rows, n_prompts: int = 64, n_heldout: int = 32, seed: int = 0,
                negate_prob: float = 0.25, all_rows=None, min_per_class: int = 4) -> PromptSuite:
    """Draw `n_prompts` test rows and `n_heldout` unseen combinations (fewer if the data has
    fewer). Then, for each scored attribute requested fewer than `min_per_class` times either
    way, add test rows that request it (marked `coverage`): at random a rare attribute (bald,
    3%) would often never be asked for, and then never measured. A test split with fewer such
    rows has some asked for again (each prompt gets new images). `all_rows` (default
    train + test) decides which value pairs are possible."""
    train_b, test_b = as_bool(train_rows), as_bool(test_rows)
    if len(test_b) == 0:
        raise ValueError("the test split is empty: eval needs test images to draw prompts from")
    if n_prompts < 0 or n_heldout < 0:
        raise ValueError(f"n_prompts and n_heldout must be >= 0, got {n_prompts}, {n_heldout}")
    scored = scored_attributes(train_b)
    if not scored:
        raise ValueError("no captioned attribute varies in the training split: nothing to score")
    idx = [ATTRIBUTE_INDEX[a] for a in scored]
    rng = random.Random(f"t2i-eval/{seed}")
    seen = set(_keys(train_b, idx))
    test_keys = _keys(test_b, idx)

    drawn = rng.sample(range(len(test_b)), min(n_prompts, len(test_b)))
    added: list[int] = []
    if min_per_class > 0 and drawn:
        rarity = test_b[:, idx].mean(axis=0)
        for j in sorted(idx, key=lambda j: min(rarity[idx.index(j)], 1 - rarity[idx.index(j)])):
            for value in (True, False):
                have = sum(bool(test_b[i, j]) == value for i in drawn + added)
                if have >= min_per_class:
                    continue
                taken = set(drawn + added)
                pool = [i for i in range(len(test_b)) if bool(test_b[i, j]) == value and i not in taken]
                added += rng.sample(pool, min(min_per_class - have, len(pool)))
                have += min(min_per_class - have, len(pool))
                if have < min_per_class:  # too few such test rows: ask for some again (new images)
                    rows_with = [i for i in range(len(test_b)) if bool(test_b[i, j]) == value]
                    added += [rng.choice(rows_with) for _ in range(min_per_class - have)] if rows_with else []
    prompts: list[Prompt] = []
    for i in drawn + added:
        text, neg = _caption(test_b[i], rng, scored, negate_prob)
        prompts.append(Prompt(text, test_b[i].copy(), "test", neg, i, None, test_keys[i] in seen,
                              coverage=i in added))

    # Held-out combinations: first unseen test rows, then single flips of test rows.
    everything = as_bool(all_rows) if all_rows is not None else np.concatenate([train_b, test_b])
    lit = torch.from_numpy(_literals(everything, idx).astype(np.float32))
    possible = ((lit.T @ lit) > 0).numpy()  # (2k, 2k): this pair of (attribute, value) choices occurs somewhere
    chosen: set[bytes] = set()
    held: list[Prompt] = []
    order = rng.sample(range(len(test_b)), len(test_b))
    for i in order:
        if len(held) >= n_heldout:
            break
        if test_keys[i] not in seen and test_keys[i] not in chosen:
            chosen.add(test_keys[i])
            text, neg = _caption(test_b[i], rng, scored, negate_prob)
            held.append(Prompt(text, test_b[i].copy(), "heldout", neg, i, None, False))
    tries = 0
    while len(held) < n_heldout and tries < 50 * max(1, n_heldout):
        tries += 1
        i = rng.randrange(len(test_b))
        a = rng.choice(scored)
        row = test_b[i].copy()
        row[ATTRIBUTE_INDEX[a]] = not row[ATTRIBUTE_INDEX[a]]
        key = _keys(row[None], idx)[0]
        if key in seen or key in chosen:
            continue
        lits = _literals(row[None], idx)[0]
        if not possible[np.ix_(lits, lits)].all():
            continue
        chosen.add(key)
        text, neg = _caption(row, rng, scored, negate_prob)
        held.append(Prompt(text, row, "heldout", neg, i, a, False))
    prompts += held

    info = {
        "scored_attributes": list(scored),
        "train_rows": int(len(train_b)), "test_rows": int(len(test_b)),
        "distinct_train_combinations": len(seen),
        "test_prompts": sum(p.group == "test" for p in prompts),
        "coverage_prompts": len(added),
        "test_prompts_seen_in_train": sum(p.group == "test" and p.seen_in_train for p in prompts),
        "heldout_prompts": len(held),
        "heldout_from_test_rows": sum(p.flipped is None for p in held),
        "heldout_from_flips": sum(p.flipped is not None for p in held),
        "negated_prompts": sum(bool(p.negated) for p in prompts),
    }
    return PromptSuite(prompts, scored, info)


def shuffled_rows(rows: np.ndarray, seed: int) -> np.ndarray:
    """The rows moved along one random cycle, so none keeps its own attributes: the "shuffled
    captions" floor."""
    n = len(rows)
    if n < 2:
        return rows.copy()
    cycle = np.random.default_rng(seed).permutation(n)
    source = np.empty(n, dtype=np.int64)
    source[cycle] = np.roll(cycle, -1)  # position cycle[k] takes row cycle[k+1]
    return rows[source]


def column_shuffled(rows: np.ndarray, scored: tuple[str, ...], seed: int) -> np.ndarray:
    """Each scored attribute's column permuted independently: the same marginal frequencies,
    but combinations that ignore the data's correlations (the FD control's prompts)."""
    out = rows.copy()
    rng = np.random.default_rng(seed)
    for a in scored:
        j = ATTRIBUTE_INDEX[a]
        out[:, j] = out[rng.permutation(len(out)), j]
    return out


def caption_rows(rows: np.ndarray, scored: tuple[str, ...]) -> list[str]:
    """Canonical complete captions for (N, 40) bool rows (no negations)."""
    return [complete_caption(np.where(r, 1, -1), None, attributes=scored) for r in rows]


def composed_text(prompt: Prompt, scored: tuple[str, ...]) -> str:
    """`prompt`'s request as composed terms, each in the captions' canonical wording:

        a photo of a young woman with blond hair AND a photo of a young woman wearing eyeglasses
        AND NOT a photo of a person wearing a hat

    One term per requested attribute, each keeping the subject (sex, age) as the training's
    partial captions do; hair colour and texture share one term ("wavy blond hair"), as in a
    caption. Each explicit denial becomes a NOT term naming the attribute without the subject
    (`denied_caption`). Every weight is 1, as people write `AND`. A request of the subject alone
    is one term; terms beyond MAX_TERMS are merged into the last positive term. This is the
    conjunction of Liu et al. 2022; `denial_text` composes only the denials."""
    signed = np.where(prompt.requested, 1, -1)
    subject = [a for a in TWO_SIDED if a in scored]
    groups: list[list[str]] = []
    hair: list[str] = []
    for a in salient_mentions(signed, scored):
        if a in subject:
            continue
        if VOCAB[a].kind == "hair":
            if not hair:
                groups.append(hair)
            hair.append(a)
        else:
            groups.append([a])
    groups = groups or [[]]
    while len(groups) + len(prompt.negated) > MAX_TERMS and len(groups) > 1:
        groups[-2:] = [groups[-2] + groups[-1]]
    terms = [Term(complete_caption(signed, attributes=subject + g)) for g in groups]
    terms += [Term(denied_caption(a), -1.0) for a in prompt.negated]
    return str(ComposedPrompt(tuple(terms)))


def denial_text(prompt: Prompt, scored: tuple[str, ...], weight: float = DENIAL_WEIGHT) -> str:
    """`prompt`'s request as its description in one term and a NOT term per explicit denial:

        a photo of a young woman with blond hair AND NOT a photo of a person wearing a hat :0.5

    A prompt without a denial is its plain text, sampled exactly as the plain prompt."""
    signed = np.where(prompt.requested, 1, -1)
    terms = [Term(complete_caption(signed, attributes=scored))]
    terms += [Term(denied_caption(a), -weight) for a in prompt.negated]
    return str(ComposedPrompt(tuple(terms)))
