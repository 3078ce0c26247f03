"""Captions from CelebA's 40 attribute columns, and a parser that reads them back.

Every attribute has a small phrase vocabulary (`VOCAB`): phrases that assert it present and
phrases that assert it absent. Captions are assembled from those phrases only, so
`caption_mentions` can recover exactly what a caption claims; the tests use that to prove a
caption names the present attributes (and the negatives it chose) and nothing else.

Conventions:
- `Male` and `Young` are two-sided: both values are named ("man"/"woman", "young"/"old").
- `No_Beard` is inverted: the *salient* value is -1 ("a beard"); +1 is only ever said as an
  explicit negative ("clean-shaven").
- Every other attribute is named only when present, plus occasional explicit negatives
  ("without glasses", "no hat") drawn from absent attributes.
- `Attractive` is subjective and never captioned. Attributes a dataset never varies are
  never mentioned (`varied_attributes`).
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from t2i.attributes import ATTRIBUTE_INDEX, CELEBA_ATTRIBUTES, NUM_ATTRIBUTES

MAX_WORDS = 30
UNCAPTIONED = frozenset({"Attractive"})  # subjective: not something a prompt should assert
TWO_SIDED = ("Male", "Young")
HAIR_COLOUR = ("Black_Hair", "Blond_Hair", "Brown_Hair", "Gray_Hair")
HAIR_TEXTURE = ("Wavy_Hair", "Straight_Hair")


@dataclass(frozen=True)
class Phrases:
    """How one attribute is said. `kind` decides where it goes in the sentence:
    noun (subject), adj (before the subject), hair (colour/texture words before "hair"),
    with ("with X"), wear ("wearing X"), photo ("a X photo of").

    `pos`/`neg` are the core wording (the first of each is the canonical one); the
    `everyday*` fields are the other ways people say the same thing (colloquial nouns,
    colour and age words, garments by name), drawn for up to half of the mentions."""

    kind: str
    pos: tuple[str, ...]  # phrases asserting the salient value
    neg: tuple[str, ...] = ()  # phrases asserting the other value
    salient: bool = True  # which value is "present" (False only for No_Beard)
    neg_parse: tuple[str, ...] = field(default=())  # extra phrases the parser reads as negative
    adj: tuple[str, ...] = ()  # said before the noun in the adjective/tag skeletons ("smiling")
    everyday: tuple[str, ...] = ()  # everyday phrases of the same kind ("specs", "a beanie")
    everyday_adj: tuple[str, ...] = ()  # everyday adjectives before the noun ("bespectacled")
    everyday_neg: tuple[str, ...] = ()  # everyday phrases for the other value ("senior", "beardless")


def _bare(phrase: str) -> str:
    """Without its article: "a hat" -> "hat" (tag captions drop articles)."""
    return re.sub(r"^(a|an) ", "", phrase)


def _with_neg(*nouns: str) -> tuple[str, ...]:
    out = []
    for n in nouns:
        out += [f"without {n}", f"no {_bare(n)}"]
    return tuple(out)


VOCAB: dict[str, Phrases] = {
    "Male": Phrases("noun", ("man", "guy", "male", "gentleman"), ("woman", "lady", "female"),
                    everyday=("bloke", "fellow", "gent", "lad", "chap", "dude"), everyday_neg=("lass", "gal")),
    "Young": Phrases("adj", ("young", "youthful"), ("old", "elderly", "older"),
                     everyday=("young-looking", "fresh-faced", "teenage", "twenty-something"),
                     everyday_neg=("senior", "aged", "middle-aged", "mature", "wrinkled")),
    "Bald": Phrases("adj", ("bald",), ("a full head of hair",), neg_parse=("not bald",),
                    everyday=("bald-headed", "hairless", "shaven-headed")),
    "Chubby": Phrases("adj", ("chubby", "plump"), ("a slim face",), neg_parse=("not chubby",),
                      everyday=("chunky", "round-faced", "heavyset", "tubby", "stout"),
                      everyday_neg=("a thin face", "a lean face")),
    "Smiling": Phrases("with", ("a smile", "a big smile", "a happy smile"),
                       ("a serious expression", "a neutral expression", "no smile"),
                       neg_parse=("not smiling", "without a smile"), adj=("smiling",),
                       everyday=("a grin", "a broad grin", "a cheerful smile", "a warm smile"),
                       everyday_adj=("beaming", "grinning", "smiley", "cheerful"),
                       everyday_neg=("a straight face", "a stern look", "a solemn expression", "unsmiling")),
    "Mouth_Slightly_Open": Phrases("with", ("a slightly open mouth", "an open mouth", "parted lips"),
                                   ("a closed mouth", "closed lips"),
                                   everyday=("lips apart", "a half-open mouth", "a gaping mouth"),
                                   everyday_adj=("open-mouthed",),
                                   everyday_neg=("a shut mouth", "lips pressed together")),
    # Hair colours before the noun say "-haired" ("a black woman" would name skin, not hair).
    "Black_Hair": Phrases("hair", ("black", "jet-black"), ("no black hair",), adj=("black-haired",),
                          everyday=("raven", "raven-black", "ebony", "inky-black"), everyday_adj=("raven-haired",)),
    "Blond_Hair": Phrases("hair", ("blond", "blonde", "golden"), ("no blond hair",), adj=("blond", "blond-haired"),
                          everyday=("platinum", "platinum blond", "honey-blond", "sandy", "flaxen",
                                    "strawberry-blond", "bleached"),
                          everyday_adj=("fair-haired", "platinum-blond", "flaxen-haired")),
    "Brown_Hair": Phrases("hair", ("brown", "chestnut"), ("no brown hair",), adj=("brown-haired",),
                          everyday=("auburn", "dark brown", "light brown", "mousy brown", "chocolate"),
                          everyday_adj=("brunette", "auburn-haired")),
    "Gray_Hair": Phrases("hair", ("gray", "grey", "silver"), ("no gray hair",),
                         adj=("gray-haired", "grey-haired", "silver-haired"),
                         everyday=("salt-and-pepper", "silvery", "snowy", "ash-grey", "greying"),
                         everyday_adj=("white-haired", "grizzled")),
    "Wavy_Hair": Phrases("hair", ("wavy",), ("no wavy hair",), everyday=("curly", "frizzy")),
    "Straight_Hair": Phrases("hair", ("straight",), ("no straight hair",), everyday=("sleek", "poker-straight")),
    "Bangs": Phrases("with", ("bangs", "a fringe"), _with_neg("bangs", "a fringe"),
                     everyday=("a side fringe", "a bowl cut", "a heavy fringe", "wispy bangs")),
    "Receding_Hairline": Phrases("with", ("a receding hairline",), _with_neg("a receding hairline"),
                                 everyday=("a thinning hairline", "thinning hair"), everyday_adj=("balding",)),
    "No_Beard": Phrases("with", ("a beard", "a full beard"), ("clean-shaven", "no beard", "without a beard"),
                        salient=False, everyday=("a bushy beard", "a thick beard", "whiskers", "a scruffy beard"),
                        everyday_adj=("bearded",), everyday_neg=("beardless", "smooth-shaven", "freshly shaved")),
    "Mustache": Phrases("with", ("a mustache", "a moustache"), _with_neg("a mustache", "a moustache"),
                        everyday=("a handlebar mustache", "a pencil moustache", "a walrus moustache", "a tache"),
                        everyday_adj=("mustachioed",)),
    "Goatee": Phrases("with", ("a goatee",), _with_neg("a goatee"), everyday=("a chin beard", "a little goatee")),
    "Sideburns": Phrases("with", ("sideburns",), _with_neg("sideburns"),
                         everyday=("long sideburns", "mutton chops", "muttonchops")),
    "5_o_Clock_Shadow": Phrases("with", ("stubble", "a five o'clock shadow"), _with_neg("stubble"),
                                everyday=("designer stubble", "a stubbly chin", "a day's growth"),
                                everyday_adj=("unshaven", "stubbly")),
    "Eyeglasses": Phrases("wear", ("glasses", "eyeglasses", "spectacles"),
                          _with_neg("glasses", "eyeglasses", "spectacles"),
                          everyday=("specs", "reading glasses", "a pair of glasses", "horn-rimmed glasses",
                                    "wire-rimmed glasses", "round glasses"),
                          everyday_adj=("bespectacled",), everyday_neg=_with_neg("specs")),
    "Wearing_Hat": Phrases("wear", ("a hat",), _with_neg("a hat"),
                           everyday=("a beanie", "a cap", "a baseball cap", "a beret", "a fedora", "a woolly hat",
                                     "a sun hat", "a bowler hat")),
    "Wearing_Lipstick": Phrases("wear", ("lipstick", "bright lipstick"), _with_neg("lipstick"),
                                everyday=("red lipstick", "pink lipstick", "lip gloss", "lippy")),
    "Heavy_Makeup": Phrases("wear", ("heavy makeup",), _with_neg("makeup"),
                            everyday=("lots of makeup", "bold makeup", "a full face of makeup", "thick makeup"),
                            everyday_adj=("made-up", "glammed-up"), everyday_neg=("without any makeup",)),
    "Wearing_Earrings": Phrases("wear", ("earrings",), _with_neg("earrings"),
                                everyday=("hoop earrings", "stud earrings", "ear studs", "dangly earrings",
                                          "drop earrings")),
    "Wearing_Necklace": Phrases("wear", ("a necklace",), _with_neg("a necklace"),
                                everyday=("a choker", "a pendant", "a string of pearls", "a locket", "a gold chain")),
    "Wearing_Necktie": Phrases("wear", ("a necktie", "a tie"), _with_neg("a necktie", "a tie"),
                               everyday=("a suit and tie", "a silk tie", "a cravat", "a striped tie")),
    "Pale_Skin": Phrases("with", ("pale skin", "very fair skin"), (),
                         everyday=("fair skin", "a pale complexion", "porcelain skin", "a fair complexion",
                                   "light skin"),
                         everyday_adj=("pale", "fair-skinned", "pale-skinned")),
    "Rosy_Cheeks": Phrases("with", ("rosy cheeks", "pink cheeks"), _with_neg("rosy cheeks"),
                           everyday=("flushed cheeks", "ruddy cheeks", "red cheeks", "blushing cheeks"),
                           everyday_adj=("rosy-cheeked", "ruddy")),
    "Arched_Eyebrows": Phrases("with", ("arched eyebrows",), (),
                               everyday=("arched brows", "curved eyebrows", "high-arched brows")),
    "Bushy_Eyebrows": Phrases("with", ("bushy eyebrows", "thick eyebrows"), (),
                              everyday=("bushy brows", "thick brows", "heavy eyebrows", "heavy brows", "beetle brows")),
    "Bags_Under_Eyes": Phrases("with", ("bags under the eyes",), (),
                               everyday=("puffy eyes", "tired eyes", "eye bags", "dark circles under the eyes",
                                         "baggy eyes")),
    "Narrow_Eyes": Phrases("with", ("narrow eyes",), (),
                           everyday=("small eyes", "squinty eyes", "slitted eyes", "narrowed eyes"),
                           everyday_adj=("narrow-eyed",)),
    "Big_Lips": Phrases("with", ("big lips", "full lips"), (),
                        everyday=("plump lips", "thick lips", "pouty lips", "a full mouth"),
                        everyday_adj=("full-lipped",)),
    "Big_Nose": Phrases("with", ("a big nose", "a large nose"), (),
                        everyday=("a prominent nose", "a bulbous nose", "a broad nose", "a hefty nose")),
    "Pointy_Nose": Phrases("with", ("a pointy nose",), (), everyday=("a pointed nose", "a sharp nose", "a beaky nose")),
    "High_Cheekbones": Phrases("with", ("high cheekbones",), (),
                               everyday=("sculpted cheekbones", "prominent cheekbones", "chiselled cheekbones",
                                         "defined cheekbones")),
    "Oval_Face": Phrases("with", ("an oval face",), (), everyday=("an oval-shaped face", "an egg-shaped face")),
    "Double_Chin": Phrases("with", ("a double chin",), (), everyday=("jowls", "a jowly chin", "a second chin"),
                           everyday_adj=("double-chinned",)),
    "Blurry": Phrases("photo", ("blurry",), (), everyday=("blurred", "out-of-focus", "fuzzy", "soft-focus")),
}
assert set(VOCAB) | UNCAPTIONED == set(CELEBA_ATTRIBUTES)
CAPTIONED_ATTRIBUTES: tuple[str, ...] = tuple(a for a in CELEBA_ATTRIBUTES if a in VOCAB)

_PREFIXES = ("", "a photo of ", "a portrait of ", "a close-up of ", "a picture of ", "an image of ")
_SKELETONS = ("sentence", "sentence", "adjective", "tags")  # drawn uniformly: half are sentences


# ----------------------------------------------------------------------------- helpers


def _as_bool(attrs) -> dict[str, bool]:
    """(40,) vector in {-1,+1} or {0,1} (numpy/torch/list) -> {name: present}."""
    a = np.asarray(attrs, dtype=np.float32).reshape(-1)
    if a.shape[0] != NUM_ATTRIBUTES:
        raise ValueError(f"expected {NUM_ATTRIBUTES} attribute values, got {a.shape[0]}")
    return {name: bool(a[i] > 0) for i, name in enumerate(CELEBA_ATTRIBUTES)}


def _check_names(names) -> tuple[str, ...]:
    names = tuple(names)
    bad = [n for n in names if n not in ATTRIBUTE_INDEX]
    if bad:
        raise ValueError(f"unknown attribute name(s) {bad}; expected names from t2i.attributes.CELEBA_ATTRIBUTES")
    return names


def varied_attributes(rows) -> tuple[str, ...]:
    """Captioned attributes that take both values somewhere in (N, 40) `rows`."""
    r = np.asarray(rows) > 0
    return tuple(a for a in CAPTIONED_ATTRIBUTES
                 if r[:, ATTRIBUTE_INDEX[a]].any() and not r[:, ATTRIBUTE_INDEX[a]].all())


def salient_mentions(attrs, attributes=None) -> dict[str, bool]:
    """What a complete caption asserts: {attr: value} for two-sided attributes and for every
    attribute that has its salient value (present; for No_Beard, a beard)."""
    on = _as_bool(attrs)
    names = CAPTIONED_ATTRIBUTES if attributes is None else _check_names(attributes)
    out = {}
    for a in names:
        if a in UNCAPTIONED:
            continue
        if a in TWO_SIDED or on[a] == VOCAB[a].salient:
            out[a] = on[a]
    return out


# ----------------------------------------------------------------------------- assembly


def _pick(rng: random.Random | None, options):
    return options[0] if rng is None else rng.choice(options)


def _everyday(rng: random.Random | None, share: float, options, core) -> bool:
    """Whether this mention is said in everyday words (never in the canonical wording). Every
    phrase is about equally likely, with the everyday ones together capped at `share`, so the
    core words stay the most common; `share >= 1` always says it in everyday words."""
    if rng is None or not options:
        return False
    p = 1.0 if share >= 1 else min(share, len(options) / (len(options) + len(core)))
    return rng.random() < p


def _say(a: str, value: bool, rng: random.Random | None, share: float) -> tuple[str, str]:
    """(slot, phrase) asserting attribute `a` has `value` (its salient value, or either value of
    a two-sided attribute). The slot is the attribute's kind, or "adj" for an everyday
    adjective ("bespectacled"). `rng=None`: the canonical (first) core phrase."""
    v = VOCAB[a]
    if value == v.salient:
        everyday = [(v.kind, p) for p in v.everyday] + [("adj", p) for p in v.everyday_adj]
        core = v.pos
    else:
        everyday = [(v.kind, p) for p in v.everyday_neg]
        core = v.neg
    if _everyday(rng, share, everyday, core):
        return rng.choice(everyday)
    return v.kind, _pick(rng, core)


def _join(items: list[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


# Negatives that stand alone after a comma; any other is a noun phrase said "with X".
_STANDALONE_NEGATIVE = ("without", "no", "not", "clean-shaven", "beardless", "smooth-shaven", "freshly",
                        "unsmiling")


def negative_phrase(a: str, rng, share: float = 0.0) -> str:
    """A clause asserting attribute `a` has its non-salient value: "without glasses",
    "no hat", "clean-shaven" stand alone; noun phrases get "with" ("with a closed mouth")."""
    v = VOCAB[a]
    p = rng.choice(v.everyday_neg) if _everyday(rng, share, v.everyday_neg, v.neg) else _pick(rng, v.neg)
    return p if p.split()[0] in _STANDALONE_NEGATIVE else "with " + p


EVERYDAY_SHARE = 0.5  # at most this share of an attribute's mentions is said in everyday words
SKELETONS = ("sentence", "adjective", "tags")


def _assemble(mentions: dict[str, bool], negate: list[str], rng: random.Random | None,
              everyday: float = EVERYDAY_SHARE, skeleton: str | None = None) -> str:
    """Build one caption that asserts exactly `mentions` (salient values and two-sided ones)
    plus the explicit negatives in `negate`. With an rng, one of three skeletons is drawn
    (unless `skeleton` names one):
      sentence   "a photo of a young woman with blond hair and a smile, wearing glasses"
      adjective  "a smiling young blond woman with wavy hair wearing glasses"
      tags       "young blond woman, smiling, wavy hair, glasses"
    and a share `everyday` of the mentions is said in everyday words ("a bespectacled young
    lass with platinum hair and a grin"). A named `skeleton` keeps the canonical frame ("a
    photo of", the parts in canonical order) so that only the words vary. `rng=None` is always
    the sentence skeleton with the first core phrase of each attribute: the canonical wording."""
    varied_frame = rng is not None and skeleton is None  # prefix, order of the parts
    if skeleton is None:
        skeleton = "sentence" if rng is None else rng.choice(_SKELETONS)
    elif skeleton not in SKELETONS:
        raise ValueError(f"unknown caption skeleton {skeleton!r}; expected one of {SKELETONS}")
    m = dict(mentions)
    adjs, withs, wears, photo, hair_words, described = [], [], [], [], [], []
    slots = {"adj": adjs, "with": withs, "wear": wears, "photo": photo, "hair": hair_words}
    # Subject: sex noun (or "person"), with age and bald/chubby adjectives in front.
    noun = _say("Male", m.pop("Male"), rng, everyday)[1] if "Male" in m else "person"
    if skeleton != "sentence" and m.pop("Smiling", False):
        # "a smiling woman"; a tag list says "smiling" as a tag of its own.
        v = VOCAB["Smiling"]
        word = rng.choice(v.everyday_adj) if _everyday(rng, everyday, v.everyday_adj, v.adj) else _pick(rng, v.adj)
        (adjs if skeleton == "adjective" else withs).append(word)
    if "Young" in m:
        adjs.append(_say("Young", m.pop("Young"), rng, everyday)[1])
    for a in ("Bald", "Chubby"):
        if m.pop(a, False):
            slot, phrase = _say(a, True, rng, everyday)
            slots[slot].append(phrase)
    colours = [a for a in HAIR_COLOUR if m.get(a)]
    if skeleton != "sentence" and len(colours) == 1:  # "a blond woman"
        v = VOCAB[colours[0]]
        adjs.append(rng.choice(v.everyday_adj) if _everyday(rng, everyday, v.everyday_adj, v.adj)
                    else _pick(rng, v.adj))
        m.pop(colours[0])
    # Hair: "wavy blond hair" (an everyday colour adjective goes before the noun: "a brunette")
    for a in HAIR_TEXTURE + HAIR_COLOUR:
        if m.pop(a, False):
            slot, phrase = _say(a, True, rng, everyday)
            (described if slot == "adj" else hair_words).append(phrase)
    if hair_words:
        withs.append(" ".join(hair_words) + " hair")
    for a in [a for a in m if VOCAB[a].kind == "photo"]:
        if m.pop(a):
            photo.append(_say(a, True, rng, everyday)[1])
    for a in list(m):
        slot, phrase = _say(a, m.pop(a), rng, everyday)
        (described if slot == "adj" else slots[slot]).append(phrase)
    if varied_frame:
        rng.shuffle(withs)
        rng.shuffle(wears)
    adjs = described + adjs  # "a bespectacled young man": describing words before age
    negs = [negative_phrase(a, rng, everyday) for a in negate]

    if skeleton == "tags":  # no articles, no "with"/"wearing": "blurry photo, old man, beard, glasses"
        tags = [" ".join(photo) + " photo"] if photo else []
        tags += [" ".join(adjs + [noun])] + [_bare(p) for p in withs + wears]
        return ", ".join(tags + [_bare(p.removeprefix("with ")) for p in negs])
    article_words = " ".join(adjs + [noun])
    article = "an" if article_words[0] in "aeiou" else "a"
    subject = f"{article} {article_words}"
    prefix = _pick(rng, _PREFIXES) if varied_frame else "a photo of "
    if photo:
        prefix = f"a {' '.join(photo)} photo of "
    parts = []
    if withs:
        parts.append("with " + _join(withs))
    if wears:
        parts.append("wearing " + _join(wears))
    if varied_frame and len(parts) > 1 and rng.random() < 0.5:
        parts[0], parts[1] = parts[1], parts[0]
    text = prefix + subject
    if parts:  # the adjective skeleton runs on without commas, as people type
        text += " " + (", " if skeleton == "sentence" else " ").join(parts)
    return ", ".join([text] + negs)


def complete_caption(attrs, rng: random.Random | None = None, negate=(), attributes=None,
                     everyday: float = EVERYDAY_SHARE, skeleton: str | None = None) -> str:
    """A caption naming every captioned attribute at its salient value (and Male/Young either
    way). `rng=None` gives the canonical deterministic wording; `negate` lists absent
    attributes to deny explicitly ("without eyeglasses"). `attributes` limits what may be
    mentioned (default: all captioned attributes). With an rng, `everyday` is the share of
    mentions said in everyday words and `skeleton` fixes the sentence shape (`_assemble`)."""
    negate = list(_check_names(negate))
    mentions = salient_mentions(attrs, attributes)
    on = _as_bool(attrs)
    for a in negate:
        if a in TWO_SIDED or a in UNCAPTIONED:
            raise ValueError(f"cannot negate {a!r}: it is two-sided or not captioned")
        if on[a] == VOCAB[a].salient:
            raise ValueError(f"cannot negate {a!r}: the attribute vector has it")
        if not VOCAB[a].neg:
            raise ValueError(f"attribute {a!r} has no negative phrase")
    return _assemble(mentions, negate, rng, everyday, skeleton)


# The weight of the NOT terms t2i writes (the web demo's "explicitly without" boxes, `t2i eval`'s
# denial form). On the demo model (44 prompts with a denial x 4 images, dpm++2m, 20 steps, each
# weight from the same start noise), NOT at 0.5 obeyed 0.99 of the denials and got 0.58 of the
# images all correct; at 1, 0.99 and 0.40 (it pushes the rest of the picture around); the
# plain "without ..." prompt, 0.83 and 0.52.
DENIAL_WEIGHT = 0.5


def denied_caption(attribute: str) -> str:
    """The canonical caption naming `attribute` at its salient value and nothing else, subject
    and all ("a photo of a person wearing a hat", "a photo of a person with a beard"): the text
    of a composed prompt's `NOT` term. It names no sex or age: a NOT term that did would push
    away from the subject the rest of the prompt asks for."""
    (name,) = _check_names([attribute])
    attrs = -np.ones(NUM_ATTRIBUTES, dtype=np.int8)
    attrs[ATTRIBUTE_INDEX[name]] = 1 if VOCAB[name].salient else -1
    return complete_caption(attrs, attributes=[name])


# Denying these of a woman would be odd ("a woman without a mustache"); only men get them.
_MALE_ONLY = frozenset({"Mustache", "No_Beard", "Goatee", "Sideburns", "5_o_Clock_Shadow", "Bald",
                        "Wearing_Necktie"})


def negatable_attributes(attrs, attributes=None) -> list[str]:
    """Attributes (of `attributes`, default all captioned) that a caption of a face with
    attribute vector `attrs` may deny explicitly ("without eyeglasses"): ones it lacks, that
    have a negative phrase, are not hair colours, and would not sound odd (no "a woman
    without a mustache"). Evaluation prompts and CLIP's hard negatives follow the same rule."""
    on = _as_bool(attrs)
    names = CAPTIONED_ATTRIBUTES if attributes is None else _check_names(attributes)
    return [a for a in names if a not in TWO_SIDED and a not in UNCAPTIONED and VOCAB[a].neg
            and on[a] != VOCAB[a].salient and VOCAB[a].kind != "hair"
            and (on["Male"] or a not in _MALE_ONLY)]


def captions_for(attrs, rng: random.Random, n: int = 5, attributes=None) -> list[str]:
    """`n` varied captions for one attribute vector. The first is complete (names every
    salient captioned attribute); the others name a random subset (sex and age kept most
    of the time). Any caption may add one or two explicit negatives. At most ~30 words."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    full = salient_mentions(attrs, attributes)
    negatable = negatable_attributes(attrs, attributes)
    out = []
    for i in range(n):
        if i == 0:
            chosen = dict(full)
        else:
            keep = rng.uniform(0.35, 1.0)
            chosen = {a: v for a, v in full.items()
                      if (a in TWO_SIDED and rng.random() < 0.9) or rng.random() < keep}
        k = 0
        if negatable and rng.random() < 0.3:
            k = 1 if rng.random() < 0.8 or len(negatable) < 2 else 2
        negs = rng.sample(negatable, k)
        text = _assemble(chosen, negs, rng)
        if i == 0 and len(text.split()) > MAX_WORDS:
            text = _assemble(chosen, [], None)  # shortest wording, no extras
        while i > 0 and len(text.split()) > MAX_WORDS and chosen:
            chosen.pop(rng.choice([a for a in chosen]))
            text = _assemble(chosen, negs, rng)
        out.append(text)
    return out


# ----------------------------------------------------------------------------- parsing


def _build_phrases() -> dict[str, tuple[str, bool]]:
    """{phrase: (attribute, value)} for every phrase the parser reads."""
    seen: dict[str, tuple[str, bool]] = {}
    for a, v in VOCAB.items():
        # Tag captions drop articles, so "hat" and "closed mouth" are read as well.
        for phrases, val in ((v.pos + v.adj + v.everyday + v.everyday_adj, v.salient),
                             (v.neg + v.neg_parse + v.everyday_neg, not v.salient)):
            for p in dict.fromkeys(phrases + tuple(_bare(q) for q in phrases)):
                if seen.setdefault(p, (a, val)) != (a, val):
                    raise AssertionError(f"phrase {p!r} is ambiguous: {seen[p]} and {(a, val)}")
    return seen


_PHRASES = _build_phrases()
# One alternation, longest phrase first, so at each position the longest phrase wins
# ("no mustache" before "mustache"); scanning left to right, an earlier phrase wins an overlap.
_PHRASE_RE = re.compile(r"(?<![\w-])(?:" + "|".join(re.escape(p) for p in sorted(_PHRASES, key=lambda p: (-len(p), p)))
                        + r")(?![\w-])")


def phrase_spans(caption: str) -> list[tuple[int, int, str, bool]]:
    """(start, end, attribute, value) of each vocabulary phrase in `caption`, in order."""
    return [(m.start(), m.end(), *_PHRASES[m.group()]) for m in _PHRASE_RE.finditer(caption.lower())]


def caption_mentions(caption: str) -> dict[str, bool]:
    """Which attributes a caption asserts, and with what value (True = the CelebA column is
    +1). Reads only this module's vocabulary; raises ValueError if one caption asserts both
    values of an attribute."""
    out: dict[str, bool] = {}
    for _, _, a, val in phrase_spans(caption):
        if a in out and out[a] != val:
            raise ValueError(f"caption asserts both values of {a}: {caption!r}")
        out[a] = val
    return out


# ----------------------------------------------------------------------------- files + CLI


def caption_rng(seed: int, image_id: str) -> random.Random:
    """Per-image generator: captions do not depend on the order images are processed in."""
    return random.Random(f"t2i-captions/{int(seed)}/{image_id}")


def build_captions(image_ids, rows, seed: int = 0, per_image: int = 5, attributes=None) -> dict[str, list[str]]:
    """{image_id: [captions]} for (N, 40) ±1 `rows`; attributes default to the varied ones."""
    rows = np.asarray(rows)
    if rows.ndim != 2 or rows.shape[1] != NUM_ATTRIBUTES or rows.shape[0] != len(image_ids):
        raise ValueError(f"rows must be ({len(image_ids)}, {NUM_ATTRIBUTES}), got {rows.shape}")
    names = varied_attributes(rows) if attributes is None else _check_names(attributes)
    return {i: captions_for(r, caption_rng(seed, i), per_image, names) for i, r in zip(image_ids, rows)}


def load_captions_file(path, image_ids=None) -> dict[str, list[str]]:
    """Read a `{"000001.jpg": ["...", ...]}` captions file. A single string per image and
    CelebA-Dialog's `{"0.jpg": {"overall_caption": ...}}` entries are accepted too."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"captions file not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected an object mapping image file names to caption lists")
    out = {}
    for k, v in data.items():
        if isinstance(v, dict) and "overall_caption" in v:  # CelebA-Dialog's captions_hq.json
            v = v["overall_caption"]
        if isinstance(v, str):
            v = [v]
        if not isinstance(v, list) or not v or not all(isinstance(c, str) and c.strip() for c in v):
            raise ValueError(f"{path}: entry {k!r} must be a non-empty list of non-empty strings")
        out[str(k)] = v
    if image_ids is not None:
        missing = [i for i in image_ids if i not in out]
        if missing:
            raise ValueError(f"{path}: no captions for {len(missing)} image(s), e.g. {missing[0]!r}")
    return out
