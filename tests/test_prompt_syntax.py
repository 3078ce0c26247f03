"""The composable prompt syntax: AND, NOT, `:weight`, escapes, errors naming the column."""

import pytest

from t2i.prompt_syntax import (
    MAX_TERMS,
    ComposedPrompt,
    PromptSyntaxError,
    Term,
    escape,
    parse_prompt,
)


def terms(prompt):
    return [(t.text, t.weight) for t in parse_prompt(prompt).terms]


def test_and_separates_terms_and_not_negates():
    assert terms("a woman with blond hair AND wearing glasses AND NOT a hat") == [
        ("a woman with blond hair", 1.0), ("wearing glasses", 1.0), ("a hat", -1.0)]
    # whitespace around the syntax is dropped; several spaces / tabs / newlines are whitespace
    assert terms("  a man\tAND\n  NOT   a beard  ") == [("a man", 1.0), ("a beard", -1.0)]


@pytest.mark.parametrize("prompt,expected", [
    ("a man :1.5", [("a man", 1.5)]),
    ("a man:1.5", [("a man", 1.5)]),
    ("a man : 2", [("a man", 2.0)]),
    ("a man :-0.5", [("a man", -0.5)]),
    ("a man :.75 AND glasses :+1.", [("a man", 0.75), ("glasses", 1.0)]),
    ("NOT a hat :2", [("a hat", -2.0)]),
    ("a man AND a hat :0", [("a man", 1.0), ("a hat", 0.0)]),
])
def test_weights(prompt, expected):
    assert terms(prompt) == expected


def test_keywords_are_upper_case_whole_words():
    # "and"/"not" in ordinary text, and words containing the keywords, are not syntax
    assert terms("a man and a woman, not smiling") == [("a man and a woman, not smiling", 1.0)]
    assert terms("ANDREW AND BRANDNOT") == [("ANDREW", 1.0), ("BRANDNOT", 1.0)]
    assert terms("a hat AND glasses NOT") == [("a hat", 1.0), ("glasses NOT", 1.0)]  # NOT only first


def test_colons_that_are_text():
    assert terms("portrait: a smiling woman") == [("portrait: a smiling woman", 1.0)]
    assert terms("style:anime AND a man") == [("style:anime", 1.0), ("a man", 1.0)]


def test_escapes():
    assert terms(r"a \AND b AND \NOT c") == [("a AND b", 1.0), ("NOT c", 1.0)]
    assert terms(r"ratio 16\:9") == [("ratio 16:9", 1.0)]
    assert terms(r"a \\ b AND c\\") == [("a \\ b", 1.0), ("c\\", 1.0)]
    assert terms("trailing backslash\\") == [("trailing backslash\\", 1.0)]
    # escape() makes any text one literal term, and str() round-trips a parsed prompt
    text = "x AND NOT y :2"
    assert terms(escape(text)) == [(text, 1.0)]
    composed = parse_prompt(r"a \AND b :1.5 AND NOT c: d :2 AND e")
    assert parse_prompt(str(composed)) == composed


@pytest.mark.parametrize("caption", ["Caption:", "score: 5", "ratio 16:9", "A AND B", "NOT this one", "x :1.5x",
                                     "back\\slash \\AND", "AND", "a :nan AND", "plain words"])
def test_escaped_text_is_one_literal_term(caption):
    # Dataset captions are escaped before they reach the pipeline (training samples, caption eval).
    assert parse_prompt(escape(caption)).terms == (Term(caption, 1.0),)


def test_plain_prompts_are_kept_exactly():
    for plain in ["a smiling woman", "  spaces kept  ", "", "   ", "a man and a woman"]:
        parsed = parse_prompt(plain)
        assert parsed == ComposedPrompt((Term(plain, 1.0),)) and parsed.is_plain
    assert parse_prompt("a man :1").is_plain
    for composed in ["a AND b", "NOT a", "a :2", "a :-1"]:
        assert not parse_prompt(composed).is_plain
    assert parse_prompt("a woman AND glasses :1.5 AND NOT a hat").describe() == (
        "3 terms: 'a woman' 1, 'glasses' 1.5, NOT 'a hat' 1")


@pytest.mark.parametrize("prompt,problem,column", [
    ("a man AND AND glasses", "empty term before 'AND'", 11),
    ("AND a man", "empty term before 'AND'", 1),
    ("a man AND  ", "empty term after 'AND'", 7),
    ("a man AND NOT", "'NOT' needs a term after it", 11),
    ("a man :", "missing weight", 7),
    ("a man :1.5x", "bad weight '1.5x'", 8),
    ("a man :nan", "bad weight 'nan'", 8),
    ("a man :-inf", "bad weight '-inf'", 8),
    ("a man :1e3", "bad weight '1e3'", 8),
    ("a man :101", "outside", 8),
    ("  :2", "empty term before the weight", 3),
    ("NOT a hat :-1", "'NOT' with a negative weight", 1),
    (" AND ".join(["x"] * (MAX_TERMS + 1)), f"at most {MAX_TERMS} terms", 6 * MAX_TERMS - 3),
])
def test_errors_name_the_problem_and_column(prompt, problem, column):
    with pytest.raises(PromptSyntaxError) as info:
        parse_prompt(prompt)
    assert problem in str(info.value) and f"column {column} " in str(info.value)
    assert info.value.column == column and isinstance(info.value, ValueError)


def test_non_string_is_a_type_error():
    with pytest.raises(TypeError, match="str"):
        parse_prompt(["a man"])
