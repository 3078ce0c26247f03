"""Composable prompt syntax: `a woman with blond hair AND wearing glasses AND NOT a hat`.

Each term becomes its own conditional branch of the denoiser, combined as the conjunction /
negation of scores of Liu et al. 2022 ("Compositional Visual Generation with Composable
Diffusion Models", ECCV): `t2i.diffusion.guidance.composed_model`. The syntax is the `AND`
syntax of the popular Stable Diffusion web UIs, plus `NOT` for a negative weight.

Rules (pure text; no torch here):
- `AND` (upper case, a word of its own: whitespace or the prompt's start/end on both sides)
  separates terms. `and`, `And`, `ANDREW`, `brand` are ordinary words.
- `NOT` (upper case, the first word of a term) negates the term: weight -1.
- A term may end in a weight, `term :1.5` (or `term:1.5`, `term : 1.5`): a plain decimal
  number (`2`, `-0.5`, `.75`, `+1.`; no exponent, nan or inf) with |weight| <= MAX_WEIGHT.
  `NOT term :2` is weight -2; `NOT` with a negative weight is refused as ambiguous.
  A colon followed by more than one word (`portrait: a woman`) or by a word that does not
  start like a number (`style:anime`) is ordinary text; a colon followed by nothing
  (`a woman :`) or by a malformed number (`:1.5x`, `:nan`) is an error.
- A backslash makes the next character literal: `\\AND` is the word "AND", `\\NOT` the word
  "NOT", `\\:` a colon that never starts a weight, `\\\\` one backslash. A backslash at the
  very end of the prompt is kept as is.
- Whitespace next to `AND`, after `NOT` and before a weight's colon is part of the syntax and
  dropped; each term is stripped of surrounding whitespace. Case is kept (the tokenizer
  lowercases). A prompt that uses none of the syntax (no `AND`, `NOT`, weight or backslash)
  is one term of weight 1 holding the prompt exactly as written, so plain prompts reach the
  text encoder unchanged. The empty prompt is that too: the unconditional prompt.
- Errors (`PromptSyntaxError`, a ValueError) name the problem and its 1-based column: an
  empty term (`a AND AND b`, `AND a`, `a AND`), `NOT` with nothing after it, a bad weight,
  more than MAX_TERMS terms.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

MAX_TERMS = 8  # each term is one more UNet row per image and step
MAX_WEIGHT = 100.0
_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)")
_LOOKS_NUMERIC = re.compile(r"[-+.\d]|(?:[-+]?(?:nan|inf))", re.IGNORECASE)


class PromptSyntaxError(ValueError):
    """A composable prompt that cannot be parsed; the message names the column."""

    def __init__(self, prompt: str, column: int, problem: str):
        self.prompt, self.column, self.problem = prompt, column, problem
        super().__init__(f"{problem} at column {column} of prompt {prompt!r}")


@dataclass(frozen=True)
class Term:
    """One conditional branch: the text to encode and its weight (negative for `NOT`)."""

    text: str
    weight: float = 1.0

    def __str__(self) -> str:
        # A round-trippable form (`escape` keeps keywords and colons in the text literal).
        body = escape(self.text)
        if self.weight == 1.0:
            return body
        if self.weight == -1.0:
            return f"NOT {body}"
        if self.weight < 0:
            return f"NOT {body} :{-self.weight:g}"
        return f"{body} :{self.weight:g}"


@dataclass(frozen=True)
class ComposedPrompt:
    """The parsed prompt: one or more weighted terms."""

    terms: tuple[Term, ...]

    @property
    def is_plain(self) -> bool:
        """One term of weight 1: sampled exactly like the plain prompt (classifier-free guidance)."""
        return len(self.terms) == 1 and self.terms[0].weight == 1.0

    def __str__(self) -> str:
        return " AND ".join(str(t) for t in self.terms)

    def describe(self) -> str:
        """How the prompt is read, for people: "3 terms: 'a woman' 1, 'glasses' 1.5, NOT 'a hat' 1"."""
        parts = [f"{'NOT ' if t.weight < 0 else ''}{t.text!r} {abs(t.weight):g}" for t in self.terms]
        return f"{len(self.terms)} term{'s' if len(self.terms) > 1 else ''}: " + ", ".join(parts)


def escape(text: str) -> str:
    """Backslash-escape what the parser would read as syntax, so `parse_prompt(escape(s))` is
    one term holding `s` (stripped)."""
    text = text.replace("\\", "\\\\").replace(":", "\\:")
    return re.sub(r"(?<!\S)(AND|NOT)(?!\S)", r"\\\1", text)


def parse_prompt(prompt: str) -> ComposedPrompt:
    """Parse `prompt` into weighted terms (rules in the module docstring)."""
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a str, got {type(prompt).__name__}")
    if not prompt.strip():
        return ComposedPrompt((Term(prompt),))  # the unconditional prompt
    chars = _lex(prompt)
    words = _words(chars)
    separators = [w for w in words if _is_keyword(chars, w, "AND")]
    if not separators and "\\" not in prompt:
        # No AND and no escapes: plain unless it starts with NOT or ends in a weight.
        term = _parse_term(prompt, chars, 0, len(chars), None, None)
        if term.weight == 1.0 and term.text == prompt.strip():
            return ComposedPrompt((Term(prompt),))
        return ComposedPrompt((term,))
    bounds = [0, *[i for s in separators for i in s], len(chars)]  # [start, AND0 start, AND0 end, ...]
    terms = []
    for k in range(0, len(bounds), 2):
        before = separators[k // 2 - 1] if k else None
        after = separators[k // 2] if k // 2 < len(separators) else None
        terms.append(_parse_term(prompt, chars, bounds[k], bounds[k + 1], before, after))
    if len(terms) > MAX_TERMS:
        raise PromptSyntaxError(prompt, _column(chars, separators[MAX_TERMS - 1][0]),
                                f"at most {MAX_TERMS} terms per prompt, got {len(terms)}")
    return ComposedPrompt(tuple(terms))


# -- the pieces ---------------------------------------------------------------------------

# A lexed character: (character, literal (escaped), position in the prompt)
_Char = tuple[str, bool, int]


def _lex(prompt: str) -> list[_Char]:
    chars: list[_Char] = []
    i = 0
    while i < len(prompt):
        if prompt[i] == "\\" and i + 1 < len(prompt):
            chars.append((prompt[i + 1], True, i))
            i += 2
        else:
            chars.append((prompt[i], False, i))
            i += 1
    return chars


def _words(chars: list[_Char]) -> list[tuple[int, int]]:
    """(start, end) index ranges of maximal runs of non-whitespace characters."""
    spans, start = [], None
    for i, (c, _, _) in enumerate(chars):
        if c.isspace():
            if start is not None:
                spans.append((start, i))
                start = None
        elif start is None:
            start = i
    if start is not None:
        spans.append((start, len(chars)))
    return spans


def _is_keyword(chars: list[_Char], span: tuple[int, int], keyword: str) -> bool:
    piece = chars[span[0] : span[1]]
    return "".join(c for c, _, _ in piece) == keyword and not any(lit for _, lit, _ in piece)


def _column(chars: list[_Char], index: int) -> int:
    """1-based column in the original prompt of lexed character `index` (or the end)."""
    return chars[index][2] + 1 if index < len(chars) else (chars[-1][2] + 2 if chars else 1)


def _strip(chars: list[_Char], start: int, end: int) -> tuple[int, int]:
    while start < end and chars[start][0].isspace():
        start += 1
    while end > start and chars[end - 1][0].isspace():
        end -= 1
    return start, end


def _text(chars: list[_Char], start: int, end: int) -> str:
    return "".join(c for c, _, _ in chars[start:end])


def _parse_term(
    prompt: str,
    chars: list[_Char],
    start: int,
    end: int,
    before: tuple[int, int] | None,
    after: tuple[int, int] | None,
) -> Term:
    """chars[start:end] is one term; `before`/`after` are the AND spans around it (for errors)."""
    start, end = _strip(chars, start, end)
    if start == end:
        if after is not None:
            where, problem = after[0], "empty term before 'AND'"
        else:
            where, problem = before[0], "empty term after 'AND'"
        raise PromptSyntaxError(prompt, _column(chars, where), problem)

    not_at = None
    first = _words(chars[start:end])[0]
    if _is_keyword(chars, (start + first[0], start + first[1]), "NOT"):
        not_at = start
        start, end = _strip(chars, start + first[1], end)
        if start == end:
            raise PromptSyntaxError(prompt, _column(chars, not_at), "'NOT' needs a term after it")
    weight, start, end = _weight(prompt, chars, start, end)
    if not_at is None:
        return Term(_text(chars, start, end), weight)
    if weight < 0:
        raise PromptSyntaxError(prompt, _column(chars, not_at),
                                "'NOT' with a negative weight is ambiguous; write the term with a "
                                "positive weight instead")
    return Term(_text(chars, start, end), -weight)


def _weight(prompt: str, chars: list[_Char], start: int, end: int) -> tuple[float, int, int]:
    """A trailing `:number` of chars[start:end] -> (weight, start, new end); 1.0 if none."""
    colon = next((i for i in range(end - 1, start - 1, -1) if chars[i][0] == ":" and not chars[i][1]), None)
    if colon is None:
        return 1.0, start, end
    tail_start, tail_end = _strip(chars, colon + 1, end)
    tail = _text(chars, tail_start, tail_end)
    if tail == "":
        raise PromptSyntaxError(prompt, _column(chars, colon),
                                "missing weight after ':' (write 'term :1.5', or '\\:' for a colon)")
    if any(c.isspace() for c in tail) or not _LOOKS_NUMERIC.match(tail):
        return 1.0, start, end  # ordinary text: "portrait: a woman", "style:anime"
    if not _NUMBER.fullmatch(tail):
        raise PromptSyntaxError(prompt, _column(chars, tail_start),
                                f"bad weight {tail!r} (a weight is a decimal number such as 1.5 or -0.5)")
    weight = float(tail)
    if not math.isfinite(weight) or abs(weight) > MAX_WEIGHT:
        raise PromptSyntaxError(prompt, _column(chars, tail_start),
                                f"weight {tail} is outside [-{MAX_WEIGHT:g}, {MAX_WEIGHT:g}]")
    new_start, new_end = _strip(chars, start, colon)
    if new_start == new_end:
        raise PromptSyntaxError(prompt, _column(chars, colon), "empty term before the weight")
    return weight, new_start, new_end
