"""The latent cache written by `t2i encode` and read by the UNet stage.

Encoding every training image once (instead of running the VAE encoder inside every UNet step)
is the usual latent-diffusion trick; the cache keeps the whole posterior, not one sample, so
the UNet still sees fresh latent noise every epoch: z = mean + std * eps.

Layout of a cache directory (all arrays are `.npy`, opened memory-mapped, never pickled):

    index.json       format/version, ids, the VAE fingerprint + config, latent scale/shift,
                     variants, image size, split, data root, ...  (written last: marks complete)
    mean.npy         (V, N, C, h, w) float16  posterior means
    std.npy          (V, N, C, h, w) float16  posterior standard deviations
    attributes.npy   (N, 40) uint8            CelebA attribute labels in {0, 1}
    captions.json    list of N lists of captions (when the dataset has captions)

V = 1 (the images as stored) or 2 (variant 1 = the horizontally flipped image, written when
flip augmentation is on; faces are left-right symmetric, the attributes do not change).
Latents are raw (the VAE's own space); `LatentCache.normalize` applies the VAE's
`(z - shift) * scale` recorded at encode time.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

FORMAT = "t2i-latent-cache"
VERSION = 1
INDEX_NAME = "index.json"
VARIANT_NAMES = ("original", "hflip")


@dataclass
class LatentCache:
    directory: Path
    meta: dict
    mean: np.ndarray  # (V, N, C, h, w) float16, memory-mapped
    std: np.ndarray  # (V, N, C, h, w) float16, memory-mapped
    attributes: np.ndarray  # (N, 40) uint8
    captions: list[list[str]] | None

    @classmethod
    def open(cls, directory: str | Path, expect_vae_hash: str | None = None) -> LatentCache:
        """Open a complete cache; with `expect_vae_hash`, refuse one made by another VAE."""
        directory = Path(directory)
        index = directory / INDEX_NAME
        if not directory.is_dir():
            raise FileNotFoundError(
                f"latent cache {directory} does not exist; create it with `t2i encode --out {directory}`"
            )
        if not index.is_file():
            raise FileNotFoundError(
                f"latent cache {directory} has no {INDEX_NAME} (not a cache, or encoding did not "
                f"finish); re-run `t2i encode --out {directory}`"
            )
        try:
            meta = json.loads(index.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{index}: not valid JSON ({e})") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise ValueError(f"{index}: not a t2i latent cache (format={meta.get('format')!r})")
        if meta.get("version") != VERSION:
            raise ValueError(
                f"{index}: cache version {meta.get('version')!r}, this t2i reads version {VERSION}; "
                "re-run `t2i encode`"
            )
        if expect_vae_hash is not None and meta.get("vae_hash") != expect_vae_hash:
            raise ValueError(
                f"latent cache {directory} was encoded by a different VAE (fingerprint "
                f"{meta.get('vae_hash')!r}, expected {expect_vae_hash!r}): its latents do not match "
                f"the VAE in use. Re-run `t2i encode --vae <this model> --out {directory}`"
            )
        mean = _load_array(directory / "mean.npy")
        std = _load_array(directory / "std.npy")
        attributes = _load_array(directory / "attributes.npy")
        n, variants = meta["n"], len(meta["variants"])
        shape = (variants, n, *meta["latent_shape"])
        for name, arr in (("mean.npy", mean), ("std.npy", std)):
            if arr.shape != shape:
                raise ValueError(f"{directory / name}: shape {arr.shape}, index.json says {shape}")
        if attributes.shape[0] != n:
            raise ValueError(f"{directory / 'attributes.npy'}: {attributes.shape[0]} rows, expected {n}")
        captions = None
        if meta.get("captions"):
            captions = json.loads((directory / meta["captions"]).read_text(encoding="utf-8"))
            if len(captions) != n:
                raise ValueError(f"{directory / meta['captions']}: {len(captions)} entries, expected {n}")
        return cls(directory, meta, mean, std, attributes, captions)

    def __len__(self) -> int:
        return self.meta["n"]

    @property
    def num_variants(self) -> int:
        return len(self.meta["variants"])

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return tuple(self.meta["latent_shape"])

    @property
    def vae_hash(self) -> str:
        return self.meta["vae_hash"]

    @property
    def ids(self) -> list[str]:
        return self.meta["ids"]

    def get(self, indices, variants=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior (mean, std) as float32 tensors (B, C, h, w) for dataset `indices`;
        `variants` (same length, 0 = original, 1 = flipped) defaults to all 0."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        var = np.zeros_like(idx) if variants is None else np.asarray(variants, dtype=np.int64).reshape(-1)
        if var.size and var.max() >= self.num_variants:
            raise ValueError(
                f"variant {int(var.max())} requested but {self.directory} holds "
                f"{self.num_variants} ({', '.join(self.meta['variants'])}); encode with --flip"
            )
        mean = torch.from_numpy(np.asarray(self.mean[var, idx], dtype=np.float32))
        std = torch.from_numpy(np.asarray(self.std[var, idx], dtype=np.float32))
        return mean, std

    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        """Raw latent -> the denoiser's latent, with the VAE's scale/shift recorded at encode."""
        return (z - _stat(self.meta["shift"], z)) * _stat(self.meta["scale"], z)


def _stat(value, like: torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    return t.view(1, -1, 1, 1) if t.ndim else t


def _load_array(path: Path) -> np.ndarray:
    if not path.is_file():
        raise FileNotFoundError(f"latent cache file missing: {path}; re-run `t2i encode`")
    # allow_pickle=False: an .npy holding Python objects is refused, never unpickled.
    return np.load(path, mmap_mode="r", allow_pickle=False)


class LatentCacheWriter:
    """Writes a cache into a temporary sibling directory and moves it into place on `close`,
    so an interrupted encode never leaves a directory that `LatentCache.open` accepts."""

    def __init__(self, directory: str | Path, n: int, latent_shape: tuple[int, int, int], variants: int):
        if variants not in (1, 2):
            raise ValueError(f"variants must be 1 or 2, got {variants}")
        self.directory = Path(directory)
        _check_replaceable(self.directory)
        self.directory.parent.mkdir(parents=True, exist_ok=True)
        # Leftovers of an encode killed before it could clean up (SIGKILL/SIGTERM). One encode
        # per output directory at a time is assumed.
        for stale in self.directory.parent.glob(f".{self.directory.name}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        self.tmp = Path(tempfile.mkdtemp(dir=self.directory.parent, prefix=f".{self.directory.name}.tmp-"))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(self.tmp, 0o777 & ~umask)  # mkdtemp's 0700 would make the cache private
        self.n, self.variants, self.latent_shape = n, variants, tuple(latent_shape)
        shape = (variants, n, *latent_shape)
        open_memmap = np.lib.format.open_memmap
        self.mean = open_memmap(self.tmp / "mean.npy", mode="w+", dtype=np.float16, shape=shape)
        self.std = open_memmap(self.tmp / "std.npy", mode="w+", dtype=np.float16, shape=shape)
        self.written = np.zeros((variants, n), dtype=bool)

    def write(self, variant: int, indices, mean: torch.Tensor, std: torch.Tensor) -> None:
        idx = np.asarray(indices, dtype=np.int64)
        self.mean[variant, idx] = mean.detach().float().cpu().numpy().astype(np.float16)
        self.std[variant, idx] = std.detach().float().cpu().numpy().astype(np.float16)
        self.written[variant, idx] = True

    def close(self, attributes: np.ndarray, captions: list[list[str]] | None, meta: dict[str, Any]) -> Path:
        if not self.written.all():
            missing = int((~self.written).sum())
            raise ValueError(f"latent cache incomplete: {missing} (variant, image) slots never written")
        self.mean.flush()
        self.std.flush()
        del self.mean, self.std
        attributes = np.asarray(attributes)
        if attributes.shape[0] != self.n:
            raise ValueError(f"attributes have {attributes.shape[0]} rows, expected {self.n}")
        np.save(self.tmp / "attributes.npy", attributes.astype(np.uint8), allow_pickle=False)
        if captions is not None:
            (self.tmp / "captions.json").write_text(json.dumps(captions), encoding="utf-8")
        index = {
            "format": FORMAT,
            "version": VERSION,
            "n": self.n,
            "latent_shape": list(self.latent_shape),
            "variants": list(VARIANT_NAMES[: self.variants]),
            "dtype": "float16",
            "posterior": "mean and std of q(z|x); sample z = mean + std * eps",
            "captions": "captions.json" if captions is not None else None,
            **meta,
        }
        (self.tmp / INDEX_NAME).write_text(json.dumps(index, indent=1) + "\n", encoding="utf-8")
        if self.directory.exists():
            shutil.rmtree(self.directory)
        os.replace(self.tmp, self.directory)
        return self.directory

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


def _check_replaceable(directory: Path) -> None:
    """Only an old cache (or an empty dir) may be replaced: never delete a user's other files."""
    if directory.exists():
        if not directory.is_dir():
            raise NotADirectoryError(f"--out {directory} exists and is not a directory")
        if any(directory.iterdir()) and not (directory / INDEX_NAME).is_file():
            raise ValueError(
                f"--out {directory} is a non-empty directory that is not a latent cache; "
                "refusing to overwrite it (choose an empty or new directory)"
            )
