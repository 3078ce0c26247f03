"""A model's training words, and the words of a prompt it never saw."""

from __future__ import annotations

import json

import pytest

from t2i.vocabulary import (
    SYNONYMS,
    Vocabulary,
    count_words,
    edit_distance,
    unseen_message,
    words,
)

CAPTIONS = [
    "a photo of a young woman with blond hair and a smile, wearing glasses",
    "a photo of an old man with a beard, wearing a hat",
    "old gray-haired man, beard, hat, no glasses",
    "a smiling young lady with wavy brown hair wearing earrings and a necklace",
]


def test_words_split_on_punctuation_and_case():
    assert words("Blond-haired MAN, wearing a five o'clock shadow; 2 hats!") == [
        "blond", "haired", "man", "wearing", "a", "five", "o'clock", "shadow", "hats"]
    assert count_words(["a man", "A man and a hat"]) == {"a": 3, "man": 2, "and": 1, "hat": 1}


def test_edit_distance():
    assert edit_distance("glasses", "glasses") == 0
    assert edit_distance("galsses", "glasses") == 1  # a transposition is one edit
    assert edit_distance("earring", "earrings") == 1
    assert edit_distance("kitten", "sitting") == 3
    assert edit_distance("", "hat") == 3


def test_unseen_words_are_named_with_the_closest_known_word():
    vocab = Vocabulary.from_captions(CAPTIONS)
    assert vocab.captions == 4 and vocab.counts["man"] == 2
    found = {u.word: u.suggestion for u in vocab.unseen("A bespectacled senior lass in a beanie, beaming")}
    # "a" and "in" are grammar; every content word is named, with what to say instead.
    assert found == {"bespectacled": "glasses", "senior": "old", "lass": "woman", "beanie": "hat",
                     "beaming": "smiling"}
    typo = vocab.unseen("a yuong woman with blnd hair")
    assert [(u.word, u.suggestion) for u in typo] == [("yuong", "young"), ("blnd", "blond")]
    assert vocab.unseen("a photo of a young woman with blond hair") == []
    nothing_close = vocab.unseen("a submarine")
    assert [(u.word, u.suggestion) for u in nothing_close] == [("submarine", None)]
    # each word once, in prompt order
    assert [u.word for u in vocab.unseen("beanie beanie specs")] == ["beanie", "specs"]


def test_synonym_phrases_are_suggested_only_when_the_model_knows_them():
    vocab = Vocabulary.from_captions(["a man with a receding hairline", "a woman"])
    assert vocab.suggest("balding") == "receding hairline"
    assert Vocabulary.from_captions(["a bald man"]).suggest("balding") == "bald"
    # every synonym target is made of plain caption words
    assert all(words(t) for targets in SYNONYMS.values() for t in targets)


def test_message_names_each_word_and_its_suggestion():
    vocab = Vocabulary.from_captions(CAPTIONS)
    msg = unseen_message(vocab.unseen("a bespectacled man in a submarine"))
    assert '"bespectacled" (try "glasses")' in msg and '"submarine"' in msg
    assert unseen_message([]) is None


def test_save_load_round_trip_and_bad_files(tmp_path):
    vocab = Vocabulary.from_captions(CAPTIONS)
    path = vocab.save(tmp_path)
    assert path.name == "vocabulary.json"
    back = Vocabulary.load(tmp_path)
    assert back.counts == vocab.counts and back.captions == 4
    data = json.loads(path.read_text())
    assert list(data["counts"])[0] == "a"  # most frequent first, readable by a person
    assert Vocabulary.find(tmp_path / "nowhere") is None
    path.write_text("{oops")
    with pytest.raises(ValueError, match="vocabulary.json.*JSON"):
        Vocabulary.load(path)
    path.write_text(json.dumps({"counts": {"man": -1}}))
    with pytest.raises(ValueError, match="counts"):
        Vocabulary.load(path)
