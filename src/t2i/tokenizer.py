"""Byte-level BPE tokenizer for captions (HF `tokenizers`), with a fixed context length.

Byte-level BPE (GPT-2, Radford et al. 2019) starts from the 256 byte symbols, so any string
(unknown words, accents, emoji, control characters) encodes without an <unk> token; merges
learnt from the captions make the caption vocabulary one or two tokens per word. Training is
deterministic (same captions -> byte-identical tokenizer.json), which the tests check.

Every encoded prompt is `<bos> tokens... <eos> <pad>...` of exactly `context_length` tokens;
the mask is True on BOS, the tokens and EOS. A prompt that does not fit is truncated to
`context_length - 2` tokens and still ends with EOS (the text encoder pools at EOS), with a
warning naming both lengths. The empty string is `<bos> <eos>`: the unconditional input for
classifier-free guidance.

Everything needed to reload the tokenizer, including the context length (stored as the HF
padding/truncation settings), lives in the single `tokenizer.json`.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from pathlib import Path

import torch
from tokenizers import (
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)

from t2i.files import atomic_write_text

PAD, BOS, EOS = "<|pad|>", "<|bos|>", "<|eos|>"
SPECIAL_TOKENS = (PAD, BOS, EOS)  # ids 0, 1, 2 (the trainer assigns them first, in order)
DEFAULT_CONTEXT_LENGTH = 64  # captions are <= ~30 words; ~1 token per word plus punctuation
DEFAULT_VOCAB_SIZE = 1024  # 256 bytes + 3 specials + merges; caption text needs far fewer


class CaptionTokenizer:
    """Wraps a HF `Tokenizer`; use `train(...)` or `from_file(path)` to make one."""

    def __init__(self, tokenizer: Tokenizer):
        padding = tokenizer.padding
        if not padding or not padding.get("length"):
            raise ValueError("tokenizer.json has no fixed padding length (not written by t2i?)")
        self.context_length = int(padding["length"])
        if self.context_length < 2:
            raise ValueError(f"context_length must be >= 2 (BOS and EOS), got {self.context_length}")
        self.hf = tokenizer
        ids = [tokenizer.token_to_id(t) for t in SPECIAL_TOKENS]
        if any(i is None for i in ids):
            raise ValueError(f"tokenizer.json lacks one of the special tokens {SPECIAL_TOKENS}")
        self.pad_id, self.bos_id, self.eos_id = ids
        # A copy with truncation and padding off: `encode` does both itself so it can warn with
        # the true length of an over-long prompt and keep EOS.
        self._raw = Tokenizer.from_str(tokenizer.to_str())
        self._raw.no_truncation()
        self._raw.no_padding()

    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size()

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def train(
        cls,
        captions: Iterable[str],
        vocab_size: int = DEFAULT_VOCAB_SIZE,
        context_length: int = DEFAULT_CONTEXT_LENGTH,
        min_frequency: int = 2,
    ) -> CaptionTokenizer:
        """Learn BPE merges from `captions` (deterministic for a given list and settings)."""
        if vocab_size < 256 + len(SPECIAL_TOKENS):
            raise ValueError(f"vocab_size={vocab_size} is below the 259-symbol byte alphabet")
        if context_length < 2:
            raise ValueError(f"context_length must be >= 2 (BOS and EOS), got {context_length}")
        tok = Tokenizer(models.BPE())
        # NFKC folds look-alike unicode forms; lowercasing makes "Eyeglasses" == "eyeglasses".
        tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
        # add_prefix_space: the first word gets the same token as the same word mid-sentence.
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=list(SPECIAL_TOKENS),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(list(captions), trainer)
        bos, eos, pad = (tok.token_to_id(t) for t in (BOS, EOS, PAD))
        tok.post_processor = processors.TemplateProcessing(
            single=f"{BOS} $A {EOS}", special_tokens=[(BOS, bos), (EOS, eos)]
        )
        # Stored so that tokenizer.json alone describes the fixed-length encoding (HF users
        # get the same ids from `Tokenizer.from_file(...).encode(...)`).
        tok.enable_truncation(max_length=context_length)
        tok.enable_padding(length=context_length, pad_id=pad, pad_token=PAD)
        return cls(tok)

    @classmethod
    def from_file(cls, path: str | Path) -> CaptionTokenizer:
        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer file not found: {path}")
        return cls(Tokenizer.from_file(str(path)))

    def save(self, path: str | Path) -> Path:
        """Write tokenizer.json atomically (temp file + rename); `path` may be a directory."""
        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        atomic_write_text(path, self.hf.to_str(pretty=True))
        return path

    # -- use ----------------------------------------------------------------------------------

    def encode(self, texts: str | list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """texts -> (ids (B, L) long, mask (B, L) bool) with L = context_length."""
        if isinstance(texts, str):
            texts = [texts]
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"prompt {i} is {type(t).__name__}, expected str")
        B, L = len(texts), self.context_length
        ids = torch.full((B, L), self.pad_id, dtype=torch.long)
        mask = torch.zeros(B, L, dtype=torch.bool)
        for i, enc in enumerate(self._raw.encode_batch(texts)):
            row = enc.ids  # <bos> ... <eos> from the post-processor
            if len(row) > L:
                warnings.warn(
                    f"prompt {i} has {len(row)} tokens (with BOS/EOS) but the context length is "
                    f"{L}; truncated to {L}: {texts[i][:60]!r}...",
                    stacklevel=2,
                )
                row = row[: L - 1] + [self.eos_id]
            ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            mask[i, : len(row)] = True
        return ids, mask

    def __call__(self, texts: str | list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encode(texts)

    def num_tokens(self, text: str) -> int:
        """Length of `text` in tokens including BOS/EOS, before truncation."""
        return len(self._raw.encode(text).ids)

    def decode(self, ids: torch.Tensor | list[int]) -> str:
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        return self._raw.decode(ids, skip_special_tokens=True).strip()


def train_tokenizer(
    captions: Iterable[str],
    path: str | Path,
    vocab_size: int = DEFAULT_VOCAB_SIZE,
    context_length: int = DEFAULT_CONTEXT_LENGTH,
) -> CaptionTokenizer:
    """Train on `captions` and save to `path` (a file, or a directory -> dir/tokenizer.json)."""
    tok = CaptionTokenizer.train(captions, vocab_size=vocab_size, context_length=context_length)
    tok.save(path)
    return tok


def load_tokenizer(path: str | Path) -> CaptionTokenizer:
    return CaptionTokenizer.from_file(path)
