"""The same requests in other words: the vocabulary and phrasing suites of `t2i eval`.

Evaluation prompts use the canonical caption wording (`complete_caption(..., rng=None)`). A
user does not: they say "a bespectacled lass with platinum hair" and "This is a young woman.
She has blond hair. She wears glasses." Two suites rewrite test prompts, keeping the request:

- vocabulary: every attribute that has everyday words is said in them ("specs", "a beanie",
  "senior"), in the canonical sentence frame, so only the words differ;
- phrasing: the canonical words in sentence shapes the caption templates never produce
  (relative clauses, pronoun sentences, semicolon lists with the subject last, capitals,
  requests), so only the shape differs. `sentence_skeleton` reduces a caption to its shape,
  and the tests check that no phrasing shape occurs among training captions.

Both are parsed back by `caption_mentions` to exactly the request (tested), and `t2i eval`
reports each beside the canonical wording of the same requests, with the gap's interval.
"""

from __future__ import annotations

import random
import re

import numpy as np

from t2i.data.captions import (
    HAIR_COLOUR,
    HAIR_TEXTURE,
    VOCAB,
    complete_caption,
    negative_phrase,
    phrase_spans,
    salient_mentions,
)

PHRASINGS = ("relative", "pronoun", "semicolons", "capitals", "request")


def everyday_text(requested: np.ndarray, negated, scored, rng: random.Random) -> str:
    """The request (a (40,) bool row, its explicit denials) with every attribute that has
    everyday words said in them, in the canonical sentence frame."""
    return complete_caption(np.where(requested, 1, -1), rng, negate=list(negated), attributes=scored,
                            everyday=1.0, skeleton="sentence")


def _parts(requested: np.ndarray, negated, scored) -> dict:
    """The canonical words of a request, by role: subject noun and adjectives, the "with"
    phrases (hair first), the worn things, the photo words and the denials."""
    m = salient_mentions(np.where(requested, 1, -1), scored)
    sex = m.pop("Male", None)
    noun = "person" if sex is None else (VOCAB["Male"].pos if sex else VOCAB["Male"].neg)[0]
    adjs = []
    if "Young" in m:
        adjs.append((VOCAB["Young"].pos if m.pop("Young") else VOCAB["Young"].neg)[0])
    hair = [VOCAB[a].pos[0] for a in HAIR_TEXTURE + HAIR_COLOUR if m.pop(a, False)]
    withs = [" ".join(hair) + " hair"] if hair else []
    wears, photo = [], []
    for a in m:
        kind, word = VOCAB[a].kind, VOCAB[a].pos[0]
        {"adj": adjs, "with": withs, "wear": wears, "photo": photo, "hair": withs}[kind].append(word)
    pronoun = "they" if sex is None else ("he" if sex else "she")
    return dict(noun=noun, adjs=adjs, withs=withs, wears=wears, photo=photo,
                negs=[negative_phrase(a, None) for a in negated], pronoun=pronoun)


def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _a(words: str) -> str:
    return ("an " if words[0] in "aeiou" else "a ") + words


def phrased_text(requested: np.ndarray, negated, scored, shape: str) -> str:
    """The request in canonical words and one of the `PHRASINGS` sentence shapes."""
    p = _parts(requested, negated, scored)
    subject = " ".join(p["adjs"] + [p["noun"]])
    withs, wears, negs = p["withs"], p["wears"], p["negs"]
    has, wear = ("have", "wear") if p["pronoun"] == "they" else ("has", "wears")
    if shape == "relative":  # "a young woman who has blond hair and who wears glasses, but without a hat"
        clauses = ([f"{has} {_and(withs)}"] if withs else []) + ([f"{wear} {_and(wears)}"] if wears else [])
        text = f"{_a(subject)} who " + " and who ".join(clauses or ["is pictured"])
        text += f", but {_and(negs)}" if negs else ""
    elif shape == "pronoun":  # "This is a young woman. She has blond hair. She wears glasses."
        sentences = [f"This is {_a(subject)}."]
        sentences += [f"{p['pronoun'].capitalize()} {has} {_and(withs)}."] if withs else []
        sentences += [f"{p['pronoun'].capitalize()} {wear} {_and(wears)}."] if wears else []
        sentences += [f"{_and(negs)[0].upper()}{_and(negs)[1:]}."] if negs else []
        text = " ".join(sentences)
    elif shape == "semicolons":  # "blond hair; glasses; without a hat; young woman"
        text = "; ".join(withs + wears + negs + [subject]) if withs + wears + negs else f"{subject}; nothing else"
    elif shape == "capitals":  # "PORTRAIT — YOUNG WOMAN: BLOND HAIR, GLASSES, WITHOUT A HAT"
        text = f"PORTRAIT — {subject}: " + ", ".join(withs + wears + negs or ["as is"])
        text = text.upper()
    elif shape == "request":  # "please draw a young woman that has blond hair and is wearing glasses"
        clauses = ([f"{has} {_and(withs)}"] if withs else []) + ([f"is wearing {_and(wears)}"] if wears else [])
        text = f"please draw {_a(subject)}" + (" that " + " and ".join(clauses) if clauses else "")
        text += f"; {_and(negs)}" if negs else ""
    else:
        raise ValueError(f"unknown phrasing {shape!r}; expected one of {PHRASINGS}")
    if p["photo"]:  # "(blurry photo)": parentheses never occur in training captions
        text += f" ({' '.join(p['photo'])} photo)"
    return text


_LIST = re.compile(r"X(?:(?:\s*,\s*and\s+|\s*,\s*|\s+and\s+|\s+)X)*")


def sentence_skeleton(caption: str) -> str:
    """The shape of a caption: its vocabulary phrases replaced by N (the sex noun) or X (any
    other attribute), runs of X joined by commas/"and"/spaces merged into one X, "an" read as
    "a", lower-cased:
    "a photo of a young man with wavy black hair and a beard, wearing glasses"
    -> "a photo of a X N with X hair and X, wearing X"."""
    text = caption.lower()
    out, at = [], 0
    for start, end, attr, _ in phrase_spans(caption):
        out += [text[at:start], "N" if attr == "Male" else "X"]
        at = end
    out.append(text[at:])
    shape = re.sub(r"\ban\b", "a", _LIST.sub("X", "".join(out)))  # "an old" and "a young" are one shape
    return re.sub(r"\s+", " ", shape).strip()
