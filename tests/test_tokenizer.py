import warnings
from pathlib import Path

import pytest
import torch

from t2i.tokenizer import CaptionTokenizer, load_tokenizer, train_tokenizer

CAPTIONS = [
    "a photo of a smiling man with eyeglasses",
    "a woman with blond hair, wearing a hat",
    "a young man without eyeglasses, not smiling",
    "a woman with black hair and heavy makeup",
    "a man with a mustache and a goatee",
] * 20


@pytest.fixture(scope="module")
def tok():
    return CaptionTokenizer.train(CAPTIONS, vocab_size=400, context_length=32)


def test_training_is_deterministic_and_round_trips(tmp_path):
    a = train_tokenizer(CAPTIONS, tmp_path / "a" / "tokenizer.json", vocab_size=400, context_length=32)
    train_tokenizer(CAPTIONS, tmp_path / "b" / "tokenizer.json", vocab_size=400, context_length=32)
    text_a = (tmp_path / "a" / "tokenizer.json").read_text()
    assert text_a == (tmp_path / "b" / "tokenizer.json").read_text()
    loaded = load_tokenizer(tmp_path / "a")  # a directory resolves to dir/tokenizer.json
    assert loaded.context_length == 32 and loaded.vocab_size == a.vocab_size
    prompts = ["a smiling woman with eyeglasses", "", "something new 🙂"]
    for x, y in zip(a.encode(prompts), loaded.encode(prompts)):
        assert torch.equal(x, y)


def test_caption_words_become_few_tokens(tok):
    # Merges were learnt: a caption is much shorter than its byte count.
    caption = CAPTIONS[0]
    assert tok.num_tokens(caption) <= len(caption.split()) + 2
    assert tok.decode(tok.encode(caption)[0][0]) == caption


def test_layout_bos_eos_padding_and_empty(tok):
    ids, mask = tok.encode(["", "a man"])
    assert ids.shape == mask.shape == (2, 32) and ids.dtype == torch.long and mask.dtype == torch.bool
    assert ids[0, :2].tolist() == [tok.bos_id, tok.eos_id]
    assert mask[0].tolist() == [True, True] + [False] * 30
    assert (ids[0, 2:] == tok.pad_id).all()
    n = int(mask[1].sum())
    assert ids[1, 0] == tok.bos_id and ids[1, n - 1] == tok.eos_id and not mask[1, n:].any()


def test_unicode_emoji_and_unknown_words_never_crash(tok):
    prompts = ["ünïcødé façade naïve", "😀🎉 a man 👓", "zzqx qwv xyzzy", "\x00\t\n", "中文 字"]
    ids, mask = tok.encode(prompts)
    assert (ids < tok.vocab_size).all() and (ids >= 0).all()
    assert (mask.sum(1) >= 3).all()
    # Byte-level: what fits is recovered exactly (modulo the lowercase/NFKC normaliser).
    assert tok.decode(tok.encode("😀🎉 a man 👓")[0][0]) == "😀🎉 a man 👓"


def test_case_is_normalised(tok):
    assert torch.equal(tok.encode("A Smiling MAN")[0], tok.encode("a smiling man")[0])


def test_long_prompt_is_truncated_with_warning_keeping_eos(tok):
    long = " ".join(["a smiling man with eyeglasses"] * 10)
    with pytest.warns(UserWarning, match=r"has \d+ tokens .* context length is 32"):
        ids, mask = tok.encode(["a man", long])
    assert mask[1].all() and ids[1, -1] == tok.eos_id and ids[1, 0] == tok.bos_id
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # prompts that fit do not warn
        tok.encode(CAPTIONS[:5])


def test_bad_inputs_name_the_value(tmp_path, tok):
    with pytest.raises(FileNotFoundError, match="nope"):
        load_tokenizer(tmp_path / "nope.json")
    with pytest.raises(TypeError, match="prompt 1 is int"):
        tok.encode(["ok", 3])
    with pytest.raises(ValueError, match="vocab_size=100"):
        CaptionTokenizer.train(CAPTIONS, vocab_size=100)


def test_training_is_deterministic_across_processes(tmp_path):
    # Rust hash maps are randomly seeded per process: train in a fresh interpreter and compare.
    import subprocess
    import sys

    script = (
        "import sys; sys.path.insert(0, 'tests'); from test_tokenizer import CAPTIONS; "
        "from t2i.tokenizer import train_tokenizer; "
        f"train_tokenizer(CAPTIONS, {str(tmp_path / 'sub.json')!r}, vocab_size=400, context_length=32)"
    )
    subprocess.run([sys.executable, "-c", script], check=True, cwd=Path(__file__).parents[1])
    train_tokenizer(CAPTIONS, tmp_path / "here.json", vocab_size=400, context_length=32)
    assert (tmp_path / "sub.json").read_text() == (tmp_path / "here.json").read_text()
