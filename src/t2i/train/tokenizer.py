"""The caption tokenizer of a model dir: trained once on the training captions (byte-level BPE,
deterministic), then loaded by every later stage; beside it the vocabulary of those captions."""

from __future__ import annotations

import warnings
from pathlib import Path

from t2i.data.tensors import spread_indices
from t2i.tokenizer import CaptionTokenizer
from t2i.vocabulary import VOCABULARY_NAME, Vocabulary


def ensure_tokenizer(out: Path, train_set, vocab_size: int, context_length: int, max_images: int) -> CaptionTokenizer:
    """Load OUT/tokenizer.json, or train it on the captions of up to `max_images` training images
    (spread over the set) and save it there. The words of those captions, with counts, go to
    OUT/vocabulary.json (written if missing), so the pipeline can tell a user which words of a
    prompt the model never saw."""
    path, vocab_path = out / "tokenizer.json", out / VOCABULARY_NAME
    corpus: list[str] = []
    if not (path.is_file() and vocab_path.is_file()):
        corpus = [c for i in spread_indices(len(train_set), max_images) for c in train_set.captions[i]]
    if not vocab_path.is_file() and corpus:
        vocab = Vocabulary.from_captions(corpus)
        vocab.save(vocab_path)
        print(f"[clip] vocabulary: {len(vocab)} distinct words in {len(corpus)} captions -> {vocab_path}")
    if path.is_file():
        tok = CaptionTokenizer.from_file(path)
        print(f"[clip] tokenizer: {path} ({tok.vocab_size} tokens, context {tok.context_length})")
        return tok
    if not corpus:
        raise ValueError("no training captions to train the tokenizer on")
    tok = CaptionTokenizer.train(corpus, vocab_size=vocab_size, context_length=context_length)
    longest = max(tok.num_tokens(c) for c in corpus)
    if longest > tok.context_length:
        warnings.warn(f"the longest training caption has {longest} tokens, more than the context "
                      f"length {tok.context_length}; such captions are truncated", stacklevel=2)
    tok.save(path)
    print(f"[clip] trained tokenizer on {len(corpus)} captions: {tok.vocab_size} tokens, longest "
          f"caption {longest} tokens (context {tok.context_length}) -> {path}")
    return tok
