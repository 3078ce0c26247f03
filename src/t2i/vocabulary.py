"""The words a model was trained on, and the words of a prompt it never saw.

A model only knows the words its training captions used: byte-level BPE encodes any string,
so an unseen word ("bespectacled" for a model trained on "glasses") is silently turned into
sub-word pieces the text encoder never learned to read, and the picture ignores it. Training
records the captions' words with their counts (`vocabulary.json` beside `tokenizer.json`);
at generation time `unseen_words(prompt, vocabulary)` names the prompt's words the model
never saw and suggests the closest word it did see, so the user can rephrase.

Pure text: no torch, no model, no download. Words are lower-case runs of letters (with
apostrophes inside: "o'clock"); hyphens and other punctuation split words, so "blond-haired"
is "blond" + "haired" both when counting captions and when reading prompts.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from t2i.files import atomic_write_text

VOCABULARY_NAME = "vocabulary.json"
_WORD = re.compile(r"[a-z]+(?:'[a-z]+)*")

# Grammar words carry no picture on their own: a prompt that says "the" or "is" where the
# captions never did loses nothing, and warning about them would bury the words that matter.
GRAMMAR_WORDS = frozenset("""
a an the and or but not nor of in on at to by for from as into onto over under near this that these
those is are was were be been being has have had having does do did who whom whose which what
it its it's i i'd i'm me my we our you your please can could would will shall should may might
some any very quite rather really also too just so then there here one ones
""".split())

# Everyday words and the caption word a model is most likely to know for them (SynthFaces
# and CelebA caption vocabulary). Used only when the target word is in the model's
# vocabulary; otherwise the suggestion falls back to the nearest spelling.
SYNONYMS: dict[str, tuple[str, ...]] = {
    # people
    "she": ("woman", "lady"), "her": ("woman", "lady"), "hers": ("woman",), "herself": ("woman",),
    "he": ("man", "guy"), "him": ("man", "guy"), "his": ("man", "guy"), "himself": ("man",),
    "girl": ("woman", "lady", "lass"), "gal": ("woman", "lady"), "lass": ("woman", "lady"),
    "madam": ("woman", "lady"), "dame": ("woman", "lady"), "females": ("woman",), "women": ("woman",),
    "boy": ("man", "guy", "lad"), "lad": ("man", "guy"), "bloke": ("man", "guy"), "dude": ("man", "guy"),
    "chap": ("man", "guy"), "fellow": ("man", "guy"), "gent": ("man", "gentleman"), "males": ("man",),
    "men": ("man",), "mister": ("man",), "sir": ("man",), "they": ("person",), "them": ("person",),
    "someone": ("person",), "somebody": ("person",), "individual": ("person",), "face": ("person",),
    # age
    "senior": ("old", "elderly"), "aged": ("old", "elderly"), "ageing": ("old",), "aging": ("old",),
    "mature": ("old", "older"), "wrinkled": ("old", "elderly"), "wrinkly": ("old", "elderly"),
    "grandma": ("old", "elderly"), "grandpa": ("old", "elderly"), "granny": ("old", "elderly"),
    "pensioner": ("old", "elderly"), "middle": ("older",), "teenage": ("young",), "teen": ("young",),
    "teenager": ("young",), "youth": ("young",), "juvenile": ("young",), "boyish": ("young",),
    "girlish": ("young",), "fresh": ("young", "youthful"), "kid": ("young",), "child": ("young",),
    # expression and mouth
    "beaming": ("smiling", "smile"), "grinning": ("smiling", "smile"), "grin": ("smile",),
    "smiley": ("smiling", "smile"), "cheerful": ("smiling", "smile"), "happy": ("smiling", "smile"),
    "laughing": ("smiling", "smile"), "joyful": ("smiling", "smile"), "smirk": ("smile",),
    "frowning": ("serious expression",), "frown": ("serious expression",),
    "stern": ("serious expression",), "solemn": ("serious expression",), "unsmiling": ("serious expression",),
    "grumpy": ("serious expression",), "sad": ("serious expression",), "gaping": ("open mouth",),
    "agape": ("open mouth",), "parted": ("parted lips", "open mouth"),
    # eyewear, headwear, jewellery, clothes
    "bespectacled": ("glasses", "spectacles"), "specs": ("glasses", "spectacles"),
    "eyewear": ("glasses",), "spectacled": ("glasses",), "goggles": ("glasses",), "monocle": ("glasses",),
    "beanie": ("hat",), "cap": ("hat",), "beret": ("hat",), "fedora": ("hat",), "bonnet": ("hat",),
    "bowler": ("hat",), "headwear": ("hat",), "hood": ("hat",), "helmet": ("hat",), "toque": ("hat",),
    "sombrero": ("hat",), "stetson": ("hat",), "trilby": ("hat",), "headscarf": ("hat",),
    "choker": ("necklace",), "pendant": ("necklace",), "pearls": ("necklace",), "locket": ("necklace",),
    "chain": ("necklace",), "beads": ("necklace",), "jewellery": ("necklace", "earrings"),
    "jewelry": ("necklace", "earrings"), "studs": ("earrings",), "hoops": ("earrings",),
    "earring": ("earrings",), "piercing": ("earrings",), "piercings": ("earrings",),
    "cravat": ("tie", "necktie"), "bowtie": ("tie",), "suit": ("tie", "necktie"),
    "lippy": ("lipstick",), "gloss": ("lipstick",), "lipgloss": ("lipstick",),
    "cosmetics": ("makeup",), "mascara": ("makeup",), "eyeliner": ("makeup",), "eyeshadow": ("makeup",),
    "foundation": ("makeup",), "glamorous": ("makeup",), "dolled": ("makeup",),
    # hair
    "platinum": ("blond", "blonde"), "flaxen": ("blond", "blonde"), "sandy": ("blond",),
    "honey": ("blond",), "fair": ("blond",), "bleached": ("blond",), "yellow": ("blond",),
    "brunette": ("brown",), "auburn": ("brown", "chestnut"), "mousy": ("brown",), "hazel": ("brown",),
    "chocolate": ("brown",), "raven": ("black",), "ebony": ("black",), "inky": ("black",),
    "dark": ("black", "brown"), "white": ("gray", "grey", "silver"), "snowy": ("gray", "silver"),
    "silvery": ("silver", "gray"), "greying": ("gray", "grey"), "graying": ("gray",),
    "hoary": ("gray",), "salt": ("gray",), "pepper": ("gray",), "curly": ("wavy",), "curls": ("wavy",),
    "wavey": ("wavy",), "frizzy": ("wavy",), "ringlets": ("wavy",), "sleek": ("straight",),
    "flat": ("straight",), "balding": ("receding hairline", "bald"), "hairless": ("bald",),
    "thinning": ("receding hairline",), "receded": ("receding hairline",), "forelock": ("bangs", "fringe"),
    # facial hair
    "bearded": ("beard",), "whiskers": ("beard",), "whiskered": ("beard",), "beardless": ("clean-shaven",),
    "shaved": ("clean-shaven", "bald"), "tache": ("mustache", "moustache"), "stache": ("mustache", "moustache"),
    "mustached": ("mustache",), "moustached": ("moustache",), "unshaven": ("stubble",),
    "stubbly": ("stubble",), "scruffy": ("stubble",), "muttonchops": ("sideburns",),
    # skin, face
    "porcelain": ("pale skin", "pale"), "pallid": ("pale skin", "pale"), "ghostly": ("pale skin", "pale"),
    "ashen": ("pale skin", "pale"), "flushed": ("rosy cheeks", "rosy"), "ruddy": ("rosy cheeks", "rosy"),
    "blushing": ("rosy cheeks", "rosy"), "blush": ("rosy cheeks", "rosy"),
    "chunky": ("chubby", "plump"), "stout": ("chubby", "plump"), "heavyset": ("chubby", "plump"),
    "tubby": ("chubby", "plump"), "fat": ("chubby", "plump"), "overweight": ("chubby", "plump"),
    "jowls": ("double chin",), "jowly": ("double chin",), "brows": ("eyebrows",), "brow": ("eyebrows",),
    "blurred": ("blurry",), "fuzzy": ("blurry",), "unfocused": ("blurry",), "hazy": ("blurry",),
    "photograph": ("photo",), "pic": ("photo", "picture"), "headshot": ("portrait",),
    "selfie": ("photo",), "snapshot": ("photo",),
}


def words(text: str) -> list[str]:
    """The words of `text`, lower-cased, in order: "Blond-haired MAN" -> ["blond", "haired", "man"]."""
    if not isinstance(text, str):
        raise TypeError(f"expected text, got {type(text).__name__}")
    return _WORD.findall(text.lower().replace("\u2019", "'"))


def count_words(texts: Iterable[str]) -> Counter:
    """Word counts over `texts` (each occurrence counts)."""
    counts: Counter = Counter()
    for t in texts:
        counts.update(words(t))
    return counts


def edit_distance(a: str, b: str, limit: int | None = None) -> int:
    """Levenshtein distance with adjacent transpositions counted as one edit (optimal string
    alignment), so "galsses" is one edit from "glasses". Stops early above `limit`."""
    if abs(len(a) - len(b)) > (limit if limit is not None else len(a) + len(b)):
        return abs(len(a) - len(b))
    prev2: list[int] = []
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i] + [0] * len(b)
        for j, cb in enumerate(b, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb))
            if i > 1 and j > 1 and ca == b[j - 2] and a[i - 2] == cb:
                cur[j] = min(cur[j], prev2[j - 2] + 1)
        if limit is not None and min(cur) > limit:
            return min(cur)
        prev2, prev = prev, cur
    return prev[-1]


@dataclass(frozen=True)
class UnseenWord:
    word: str
    suggestion: str | None  # the closest word the model knows, or None if nothing is close

    def to_dict(self) -> dict:
        return {"word": self.word, "suggestion": self.suggestion}


class Vocabulary:
    """Word counts of a model's training captions."""

    def __init__(self, counts: dict[str, int], captions: int = 0):
        self.counts = {str(w): int(n) for w, n in counts.items()}
        self.captions = int(captions)
        # Most frequent first, so ties in edit distance go to the commoner word.
        self._by_frequency = sorted(self.counts, key=lambda w: (-self.counts[w], w))

    def __contains__(self, word: str) -> bool:
        return word in self.counts

    def __len__(self) -> int:
        return len(self.counts)

    @classmethod
    def from_captions(cls, captions: Iterable[str]) -> Vocabulary:
        captions = list(captions)
        return cls(count_words(captions), len(captions))

    # -- files ---------------------------------------------------------------------------------

    def to_dict(self) -> dict:
        return {"captions": self.captions, "words": len(self.counts),
                "counts": {w: self.counts[w] for w in self._by_frequency}}

    def save(self, path: str | Path) -> Path:
        """Write vocabulary.json atomically; `path` may be the model directory."""
        path = Path(path)
        if path.is_dir():
            path = path / VOCABULARY_NAME
        atomic_write_text(path, json.dumps(self.to_dict(), indent=1))
        return path

    @classmethod
    def load(cls, path: str | Path) -> Vocabulary:
        """Read vocabulary.json (or MODEL_DIR/vocabulary.json); errors name the file and field."""
        path = Path(path)
        if path.is_dir():
            path = path / VOCABULARY_NAME
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None
        counts = data.get("counts") if isinstance(data, dict) else None
        if not isinstance(counts, dict) or not all(
                isinstance(w, str) and isinstance(n, int) and n >= 0 for w, n in counts.items()):
            raise ValueError(f"{path}: 'counts' must map words to non-negative integers")
        return cls(counts, data.get("captions", 0) if isinstance(data.get("captions", 0), int) else 0)

    @classmethod
    def find(cls, model_dir: str | Path) -> Vocabulary | None:
        """MODEL_DIR/vocabulary.json if the model has one (models trained before words were
        recorded do not), else None."""
        path = Path(model_dir) / VOCABULARY_NAME
        return cls.load(path) if path.is_file() else None

    # -- prompts -------------------------------------------------------------------------------

    def suggest(self, word: str) -> str | None:
        """What to say instead of `word`: a hand-written everyday synonym whose words the model
        knows (a word or a phrase: "balding" -> "receding hairline"), else the known word
        nearest in spelling, within about a third of the word's length."""
        for target in SYNONYMS.get(word, ()):
            if all(w in self.counts for w in words(target)):
                return target
        limit = max(1, len(word) // 3)
        best, best_d = None, limit + 1
        for known in self._by_frequency:
            d = edit_distance(word, known, limit)
            if d < best_d:
                best, best_d = known, d
        return best

    def unseen(self, prompt: str) -> list[UnseenWord]:
        """The prompt's words (each once, in order) the training captions never contained,
        grammar words aside, with the closest known word for each."""
        out, seen = [], set()
        for w in words(prompt):
            if w in self.counts or w in GRAMMAR_WORDS or w in seen:
                continue
            seen.add(w)
            out.append(UnseenWord(w, self.suggest(w)))
        return out


def unseen_message(unseen: list[UnseenWord]) -> str | None:
    """One line for the user naming the unseen words and what to say instead, or None."""
    if not unseen:
        return None
    parts = [f'"{u.word}" (try "{u.suggestion}")' if u.suggestion else f'"{u.word}"' for u in unseen]
    noun = "word" if len(unseen) == 1 else "words"
    return (f"the model never saw the {noun} {', '.join(parts)} in training; "
            f"{'it is' if len(unseen) == 1 else 'they are'} likely to be ignored")
