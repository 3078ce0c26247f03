"""Captions edited one attribute at a time: the prompt pairs CLIP's zero-shot accuracy is
measured with, and the hard-negative captions CLIP trains against (NegCLIP, Yuksekgonul et
al. 2023). Built from the caption generator's own vocabulary and rules (`t2i.data.captions`).
"""

from __future__ import annotations

import random

import numpy as np

from t2i.attributes import ATTRIBUTE_INDEX
from t2i.data.captions import (
    TWO_SIDED,
    VOCAB,
    caption_mentions,
    complete_caption,
    negatable_attributes,
)

# Attributes that exclude each other (one hair colour, or none when bald).
EXCLUSIVE_GROUPS = (("Bald", "Black_Hair", "Blond_Hair", "Brown_Hair", "Gray_Hair"),)


def _exclusive_with(attribute: str) -> tuple[str, ...]:
    for group in EXCLUSIVE_GROUPS:
        if attribute in group:
            return tuple(a for a in group if a != attribute)
    return ()


def _deniable(attribute: str, attrs: np.ndarray) -> bool:
    """Whether training captions may deny `attribute` for a face with attribute vector `attrs`
    (where it has its non-salient value): the caption generator's own rule."""
    return attribute in negatable_attributes(attrs, (attribute,))


def attribute_prompt_pair(attrs: np.ndarray, attribute: str, varied: tuple[str, ...]) -> tuple[str, str]:
    """(prompt with `attribute` set, prompt with it unset) for one image: the image's complete
    canonical caption with only that attribute changed. The unset side denies the attribute
    explicitly ("without eyeglasses", "clean-shaven") where training captions would (not hair
    words: "no black hair" never occurs in them; not "a woman without a mustache"). For a
    hair colour or Bald, the other members of that exclusive group are left out of both
    prompts (else the "set" prompt of a grey-haired face would read "black gray hair")."""
    j = ATTRIBUTE_INDEX[attribute]
    on, off = attrs.copy(), attrs.copy()
    on[j], off[j] = 1.0, 0.0
    for other in _exclusive_with(attribute):  # no "black gray hair": one hair colour at a time
        on[ATTRIBUTE_INDEX[other]] = off[ATTRIBUTE_INDEX[other]] = 0.0
    # Which side has the non-salient value (normally "off"; for No_Beard, +1 = no beard).
    neg_side = "off" if VOCAB[attribute].salient else "on"
    deny = _deniable(attribute, off if neg_side == "off" else on)
    p_on = complete_caption(on, attributes=varied, negate=(attribute,) if deny and neg_side == "on" else ())
    p_off = complete_caption(off, attributes=varied, negate=(attribute,) if deny and neg_side == "off" else ())
    return p_on, p_off


def hard_negative_caption(attrs: np.ndarray, caption: str, varied: tuple[str, ...],
                          rng: random.Random) -> tuple[str, np.ndarray]:
    """A false caption for an image: `caption`'s claims with one attribute of `varied` flipped
    and stated explicitly (added when `caption` did not mention it). Returns (caption, the
    attribute vector it describes, (40,) float32 {0,1}). The flipped value must be sayable:
    a present attribute ("with glasses"), a two-sided one ("a woman"), or an absent one that
    training captions deny ("without glasses") -- omitting a phrase would claim nothing, and
    a denial that only ever occurs in false captions would be a shortcut."""
    on = np.asarray(attrs, dtype=np.float32).reshape(-1) > 0

    def flipped(a: str) -> np.ndarray:
        v = on.astype(np.float32)
        v[ATTRIBUTE_INDEX[a]] = 1.0 - v[ATTRIBUTE_INDEX[a]]
        return v

    candidates = [a for a in varied
                  if a in TWO_SIDED or (not on[ATTRIBUTE_INDEX[a]]) == VOCAB[a].salient
                  or _deniable(a, flipped(a))]
    if not candidates:
        raise ValueError(f"no attribute of {varied} can be flipped into a false claim")
    a = rng.choice(candidates)
    v = flipped(a)
    said = caption_mentions(caption)
    if v[ATTRIBUTE_INDEX[a]]:  # a new hair colour (or baldness) replaces the old one
        for other in _exclusive_with(a):
            v[ATTRIBUTE_INDEX[other]] = 0.0
            said.pop(other, None)
    mention = set(said) | {a}
    # Non-salient values are only said as explicit denials: keep the caption's, add the flip's.
    negate = [b for b in mention if b not in TWO_SIDED and VOCAB[b].neg
              and bool(v[ATTRIBUTE_INDEX[b]]) != VOCAB[b].salient and (b in said or b == a)]
    text = complete_caption(v, rng=rng, negate=sorted(negate), attributes=sorted(mention))
    return text, v
