"""Structured prompting: attribute checkboxes -> a caption in the training vocabulary.

The model learned from captions assembled by `t2i.data.captions`; a prompt written in the same
phrases is the one it follows best. The web app's checkboxes call `compose_prompt`, which
fills an attribute vector and hands it to `complete_caption` (the canonical, deterministic
wording), mentioning only what the user ticked. What the user rules out becomes a composed
`NOT` term (`t2i.prompt_syntax`) rather than "without ...": `t2i eval` measures both forms,
and on the demo model the NOT term is obeyed far more often (docs/eval.md).
"""

from __future__ import annotations

import numpy as np

from t2i.app.limits import RequestError
from t2i.attributes import ATTRIBUTE_INDEX, NUM_ATTRIBUTES
from t2i.data.captions import (
    CAPTIONED_ATTRIBUTES,
    DENIAL_WEIGHT,
    TWO_SIDED,
    VOCAB,
    complete_caption,
    denied_caption,
)
from t2i.prompt_syntax import ComposedPrompt, Term

SEX_CHOICES = ("any", "man", "woman")
AGE_CHOICES = ("any", "young", "old")
# Named in the caption only when present; `No_Beard` is offered as "Beard" (its salient value).
PRESENT_ATTRIBUTES: tuple[str, ...] = tuple(a for a in CAPTIONED_ATTRIBUTES if a not in TWO_SIDED)
# Explicit negatives the training captions use ("without glasses"): not hair words, which the
# captions never deny.
NEGATABLE_ATTRIBUTES: tuple[str, ...] = tuple(
    a for a in PRESENT_ATTRIBUTES if VOCAB[a].neg and VOCAB[a].kind != "hair"
)
_LABELS = {"No_Beard": "Beard", "5_o_Clock_Shadow": "5 o'clock shadow"}


def label(attribute: str) -> str:
    return _LABELS.get(attribute, attribute.replace("_", " ").capitalize())


def choices(names) -> list[tuple[str, str]]:
    """(label, value) pairs for a checkbox group, sorted by label."""
    return sorted(((label(a), a) for a in names), key=lambda c: c[0].lower())


def compose_prompt(sex: str = "any", age: str = "any", present=(), absent=(), allowed=None) -> str:
    """The canonical caption for the ticked attributes, and a `NOT ... :0.5` term for each of
    `absent` (explicit negatives); an attribute both ticked and negated counts as ticked.
    `allowed` restricts the names (the attributes the model was trained on); anything else is
    an error naming it."""
    allowed = set(PRESENT_ATTRIBUTES if allowed is None else allowed)
    present, absent = list(present or ()), list(absent or ())
    if sex not in SEX_CHOICES:
        raise RequestError(f"sex must be one of {SEX_CHOICES}, got {str(sex)[:20]!r}")
    if age not in AGE_CHOICES:
        raise RequestError(f"age must be one of {AGE_CHOICES}, got {str(age)[:20]!r}")
    for name in present + absent:
        if not isinstance(name, str) or name not in allowed:
            raise RequestError(f"unknown attribute {str(name)[:40]!r}")
    for name in absent:
        if name not in NEGATABLE_ATTRIBUTES:
            raise RequestError(f"attribute {name!r} cannot be negated")

    attrs = -np.ones(NUM_ATTRIBUTES, dtype=np.int8)
    attrs[ATTRIBUTE_INDEX["No_Beard"]] = 1  # no beard unless "Beard" is ticked
    mentioned = []
    for name in present:
        # No_Beard's salient value is -1 ("a beard"); every other attribute's is +1.
        attrs[ATTRIBUTE_INDEX[name]] = -1 if name == "No_Beard" else 1
        mentioned.append(name)
    if sex != "any":
        attrs[ATTRIBUTE_INDEX["Male"]] = 1 if sex == "man" else -1
        mentioned.append("Male")
    if age != "any":
        attrs[ATTRIBUTE_INDEX["Young"]] = 1 if age == "young" else -1
        mentioned.append("Young")
    denied = [Term(denied_caption(a), -DENIAL_WEIGHT) for a in dict.fromkeys(absent) if a not in present]
    return str(ComposedPrompt((Term(complete_caption(attrs, attributes=mentioned)), *denied)))
