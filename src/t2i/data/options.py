"""How to read a dataset that does not say everything itself: which column holds the captions,
and how to split it when it has no train/validation/test split of its own.

These are the `data` section of a recipe (`--set data.val_fraction=0.2`) and the flags
`--caption-column`, `--val-fraction`, `--test-fraction`, `--split-seed` of every command that
reads a dataset.

Carve-out (used only where a dataset names no split): each image goes to a split by a hash of
(split seed, its file name), never by a permutation of the list, so the same image lands in
the same split on every run and adding images to a dataset never moves the ones already there.
"""

from __future__ import annotations

import argparse
import hashlib
from dataclasses import dataclass


@dataclass(frozen=True)
class DataOptions:
    caption_column: str = ""  # "" = `text`, else `caption`
    val_fraction: float = 0.1  # CelebA's own split is 81/10/10 % train/val/test
    test_fraction: float = 0.1
    split_seed: int = 0

    def __post_init__(self):
        for name in ("val_fraction", "test_fraction"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
                raise ValueError(f"data.{name} must be in [0, 1), got {value!r}")
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError(f"data.val_fraction + data.test_fraction must be < 1 (something must be left to "
                             f"train on), got {self.val_fraction} + {self.test_fraction}")
        if not isinstance(self.caption_column, str):
            raise ValueError(f"data.caption_column must be a column name, got {self.caption_column!r}")


def split_of(name: str, options: DataOptions) -> int:
    """0 (train), 1 (val) or 2 (test) for an image named `name`: a uniform draw in [0, 1) from
    sha256(seed, name), compared with the fractions (test first, then val)."""
    digest = hashlib.sha256(f"{options.split_seed}\0{name}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    if u < options.test_fraction:
        return 2
    if u < options.test_fraction + options.val_fraction:
        return 1
    return 0


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """The dataset-reading flags; unset ones keep the recipe's value (see DataOptions)."""
    g = parser.add_argument_group("dataset reading (defaults: the recipe's data section)")
    g.add_argument("--caption-column", help="metadata/parquet column holding the captions (default: text, then caption)")
    g.add_argument("--val-fraction", type=float,
                   help="share of images carved out for validation when the dataset has no split (default 0.1)")
    g.add_argument("--test-fraction", type=float,
                   help="share of images carved out for testing when the dataset has no split (default 0.1)")
    g.add_argument("--split-seed", type=int, help="seed of the carve-out hash (default 0)")


def data_options_from_args(args: argparse.Namespace, base: DataOptions | None = None) -> DataOptions:
    """`base` with the flags of `add_data_arguments` that were given."""
    import dataclasses

    base = base or DataOptions()
    given = {k: getattr(args, k, None) for k in ("caption_column", "val_fraction", "test_fraction", "split_seed")}
    return dataclasses.replace(base, **{k: v for k, v in given.items() if v is not None})


def data_option_argv(options: DataOptions) -> list[str]:
    """Flags that make another `t2i` command read a dataset the same way."""
    argv = ["--val-fraction", repr(options.val_fraction), "--test-fraction", repr(options.test_fraction),
            "--split-seed", str(options.split_seed)]
    return argv + (["--caption-column", options.caption_column] if options.caption_column else [])
