"""The vocabulary and phrasing suites of `t2i eval`, and the bootstrap intervals."""

from __future__ import annotations

import random

import numpy as np
import pytest

from t2i.data.captions import (
    VOCAB,
    caption_mentions,
    captions_for,
    complete_caption,
    negatable_attributes,
    salient_mentions,
)
from t2i.data.synthfaces import RENDERED_ATTRIBUTES, sample_attributes
from t2i.eval.faithfulness import bootstrap_gap, bootstrap_intervals, faithfulness
from t2i.eval.wording import PHRASINGS, everyday_text, phrased_text, sentence_skeleton


def _requests(n: int, seed: int):
    """(bool row, denials, attributes that may be mentioned): SynthFaces rows with its rendered
    attributes, and dense random rows with every captioned attribute."""
    npr, rng = np.random.default_rng(seed), random.Random(seed)
    out = []
    for k in range(n):
        if k % 2:
            row, scored = sample_attributes(npr) > 0, RENDERED_ATTRIBUTES
        else:
            row, scored = npr.random(40) < 0.3, tuple(a for a in VOCAB)
        negatable = negatable_attributes(np.where(row, 1, -1), scored)
        negated = tuple(rng.sample(negatable, min(k % 3, len(negatable))))
        out.append((row, negated, scored))
    return out


def _expected(row, negated, scored) -> dict:
    return {**salient_mentions(np.where(row, 1, -1), scored), **{a: not VOCAB[a].salient for a in negated}}


def test_skeleton_of_a_caption():
    assert sentence_skeleton("a photo of a young man with wavy black hair and a beard, wearing glasses") == \
        "a photo of a X N with X hair and X, wearing X"
    assert sentence_skeleton("young blond woman, smiling, wavy hair, glasses") == "X N, X hair, X"


def test_phrasing_suite_never_shares_a_sentence_shape_with_training_captions():
    npr, rng = np.random.default_rng(0), random.Random(0)
    training = set()
    for k in range(1500):
        a = sample_attributes(npr) if k % 2 else np.where(npr.random(40) < 0.3, 1, -1).astype(np.int8)
        training |= {sentence_skeleton(c) for c in captions_for(a, rng, 5)}
        training.add(sentence_skeleton(complete_caption(a)))
    phrased, canonical_found = {}, 0
    for row, negated, scored in _requests(600, 1):
        canonical = complete_caption(np.where(row, 1, -1), negate=negated, attributes=scored)
        canonical_found += sentence_skeleton(canonical) in training
        for shape in PHRASINGS:
            text = phrased_text(row, negated, scored, shape)
            phrased[sentence_skeleton(text)] = text
    assert canonical_found > 0.9 * 600  # the comparison does find shapes that training shares
    shared = {s: t for s, t in phrased.items() if s in training}
    assert not shared, list(shared.items())[:3]
    assert len(phrased) > 5 * len(PHRASINGS)  # many shapes were compared, not a handful


@pytest.mark.parametrize("shape", PHRASINGS)
def test_phrasing_says_exactly_the_request(shape):
    for row, negated, scored in _requests(300, 2):
        text = phrased_text(row, negated, scored, shape)
        assert caption_mentions(text) == _expected(row, negated, scored), text


def test_vocabulary_suite_says_the_request_in_everyday_words():
    rng = random.Random(3)
    changed = 0
    for row, negated, scored in _requests(300, 3):
        text = everyday_text(row, negated, scored, rng)
        assert caption_mentions(text) == _expected(row, negated, scored), text
        canonical = complete_caption(np.where(row, 1, -1), negate=negated, attributes=scored)
        changed += text != canonical
        # every mentioned attribute that has everyday words is said in one of them
        low = text.lower()
        for a, value in salient_mentions(np.where(row, 1, -1), scored).items():
            v = VOCAB[a]
            words = (v.everyday + v.everyday_adj) if value == v.salient else v.everyday_neg
            if words:
                assert any(w in low for w in words), (a, text)
    assert changed == 300
    assert everyday_text(*_requests(1, 4)[0][:3], random.Random(0)).startswith("a photo of ")


# -- intervals ----------------------------------------------------------------------------------


def _simulated(P: int, K: int, accuracy: float, seed: int):
    rng = np.random.default_rng(seed)
    requested = np.repeat(rng.random((P, 40)) < 0.3, K, axis=0)
    flip = rng.random((P * K, 40)) > accuracy
    return requested ^ flip, requested


def test_bootstrap_interval_brackets_the_figure_and_narrows_with_more_prompts():
    scored = RENDERED_ATTRIBUTES
    widths = []
    for P in (16, 256):
        v, r = _simulated(P, 4, 0.85, seed=P)
        point = faithfulness(v, r, scored)
        ci = bootstrap_intervals(v, r, scored, group_size=4, seed=0)
        for name in ("macro_balanced", "all_correct_rate"):
            lo, hi = ci[name]
            assert lo <= point[name] <= hi, (name, lo, point[name], hi)
        lo, hi = ci["per_attribute"]["Eyeglasses"]
        assert lo <= point["per_attribute"]["Eyeglasses"]["balanced"] <= hi
        widths.append(ci["macro_balanced"][1] - ci["macro_balanced"][0])
        assert ci == bootstrap_intervals(v, r, scored, group_size=4, seed=0)  # seeded
    assert widths[1] < widths[0] / 2  # 16x the prompts: about a quarter of the width
    with pytest.raises(ValueError, match="prompts of 3"):
        bootstrap_intervals(v, r, scored, group_size=3)


def test_bootstrap_gap_is_paired_and_finds_a_real_difference():
    scored = RENDERED_ATTRIBUTES
    v_good, r = _simulated(64, 4, 0.95, seed=1)
    rng = np.random.default_rng(2)
    v_bad = np.where(rng.random(v_good.shape) < 0.3, ~v_good, v_good)  # 30% of verdicts flipped
    gap = bootstrap_gap(v_good, v_bad, r, scored, group_size=4)
    expected = faithfulness(v_good, r, scored)["macro_balanced"] - faithfulness(v_bad, r, scored)["macro_balanced"]
    assert gap["macro_balanced"]["gap"] == pytest.approx(expected, abs=1e-3)
    lo, hi = gap["macro_balanced"]["interval"]
    assert 0 < lo <= expected <= hi
    same = bootstrap_gap(v_good, v_good, r, scored, group_size=4)
    assert same["macro_balanced"] == {"gap": 0.0, "interval": [0.0, 0.0]}  # paired: identical sets, no spread
