"""Latent cache: round trip, agreement with direct encoding, refusal of a cache made by another
VAE, incomplete caches, and the `t2i encode` command."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from t2i.data.latents import LatentCache, LatentCacheWriter
from t2i.models.vae import VAE, VAEConfig
from t2i.train.encode import encode_dataset

TINY = dict(channels=(8, 16, 16), num_res_blocks=1, latent_channels=4)


class ArrayFaces(torch.utils.data.Dataset):
    """Minimal stand-in with FaceDataset's item format, for tests of the cache alone."""

    def __init__(self, n=10, size=16, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.images = torch.rand(n, 3, size, size, generator=g) * 2 - 1
        self.attributes = (torch.rand(n, 40, generator=g) > 0.5).float().numpy()
        self.captions = [[f"face {i}", f"a face {i}"] for i in range(n)]

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return {"image": self.images[i], "attributes": torch.from_numpy(self.attributes[i]), "index": i}


def tiny_vae(seed=0, **kw) -> VAE:
    torch.manual_seed(seed)
    vae = VAE(VAEConfig(**{**TINY, **kw})).eval()
    vae.set_latent_stats(shift=[0.1, 0.0, -0.1, 0.2], scale=[2.0, 1.0, 0.5, 1.5], how="test")
    return vae


def test_writer_reader_round_trip(tmp_path):
    n, shape = 5, (4, 2, 2)
    g = torch.Generator().manual_seed(0)
    mean, std = torch.randn(2, n, *shape, generator=g), torch.rand(2, n, *shape, generator=g)
    w = LatentCacheWriter(tmp_path / "c", n, shape, variants=2)
    w.write(0, [0, 1, 2, 3, 4], mean[0], std[0])
    w.write(1, [3, 4], mean[1, 3:], std[1, 3:])
    w.write(1, [0, 1, 2], mean[1, :3], std[1, :3])
    attrs = np.eye(n, 40)
    w.close(attrs, [["a"]] * n, {"vae_hash": "abc", "scale": 2.0, "shift": 0.5, "ids": list("vwxyz")})
    cache = LatentCache.open(tmp_path / "c", expect_vae_hash="abc")
    assert len(cache) == n and cache.num_variants == 2 and cache.latent_shape == shape
    assert cache.mean.dtype == np.float16 and cache.ids == list("vwxyz")
    m, s = cache.get([4, 0, 2], [1, 0, 1])
    expect_m = torch.stack([mean[1, 4], mean[0, 0], mean[1, 2]])
    expect_s = torch.stack([std[1, 4], std[0, 0], std[1, 2]])
    assert torch.allclose(m, expect_m, atol=2e-3, rtol=1e-3)  # fp16 storage
    assert torch.allclose(s, expect_s, atol=2e-3, rtol=1e-3)
    assert np.array_equal(cache.attributes, attrs.astype(np.uint8))
    assert torch.allclose(cache.normalize(torch.ones(1, 4, 1, 1)), torch.full((1, 4, 1, 1), 1.0))
    assert not list(tmp_path.glob(".c.tmp-*"))  # the temporary dir was moved into place


def test_incomplete_cache_is_refused(tmp_path):
    w = LatentCacheWriter(tmp_path / "c", 3, (4, 2, 2), variants=1)
    w.write(0, [0, 1], torch.zeros(2, 4, 2, 2), torch.ones(2, 4, 2, 2))
    with pytest.raises(ValueError, match="1 .* never written"):
        w.close(np.zeros((3, 40)), None, {"vae_hash": "x", "scale": 1.0, "shift": 0.0})
    # A killed encode leaves its temporary dir behind; the next writer removes it.
    assert len(list(tmp_path.glob(".c.tmp-*"))) == 1
    LatentCacheWriter(tmp_path / "c", 3, (4, 2, 2), variants=1).abort()
    assert not list(tmp_path.glob(".c.tmp-*"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        LatentCache.open(tmp_path / "c")
    # A directory without index.json (e.g. an interrupted encode) is not a cache.
    (tmp_path / "d").mkdir()
    np.save(tmp_path / "d" / "mean.npy", np.zeros((1, 3, 4, 2, 2), np.float16))
    with pytest.raises(FileNotFoundError, match="no index.json"):
        LatentCache.open(tmp_path / "d")
    # ... and is never overwritten by a new cache.
    with pytest.raises(ValueError, match="not a latent cache; refusing to overwrite"):
        LatentCacheWriter(tmp_path / "d", 3, (4, 2, 2), variants=1)


def test_cache_matches_direct_encoding_and_checks_vae(tmp_path):
    vae, data = tiny_vae(), ArrayFaces()
    cache, summary = encode_dataset(vae, data, tmp_path / "cache", flip=True, batch_size=4,
                                    progress=False, precision="fp32")
    assert summary["encoded"] == 20 and summary["images_per_second"] > 0
    assert cache.vae_hash == vae.fingerprint()
    assert cache.meta["scale"] == [2.0, 1.0, 0.5, 1.5] and cache.meta["shift"] == [0.1, 0.0, -0.1, 0.2]
    with torch.no_grad():
        direct = vae.encode(data.images)
        flipped = vae.encode(data.images.flip(-1))
    idx = list(range(len(data)))
    m0, s0 = cache.get(idx)
    m1, s1 = cache.get(idx, [1] * len(idx))
    assert torch.allclose(m0, direct.mean, atol=2e-3, rtol=2e-3)
    assert torch.allclose(s0, direct.std, atol=2e-3, rtol=2e-3)
    assert torch.allclose(m1, flipped.mean, atol=2e-3, rtol=2e-3)
    assert torch.allclose(s1, flipped.std, atol=2e-3, rtol=2e-3)
    assert torch.allclose(cache.normalize(m0), vae.normalize(m0))
    assert np.array_equal(cache.attributes, data.attributes.astype(np.uint8))
    assert cache.captions == data.captions

    # Re-opening with the same VAE works; a different VAE (other weights) is refused by name.
    LatentCache.open(tmp_path / "cache", expect_vae_hash=vae.fingerprint())
    other = tiny_vae(seed=1)
    with pytest.raises(ValueError, match="encoded by a different VAE"):
        LatentCache.open(tmp_path / "cache", expect_vae_hash=other.fingerprint())
    # Without --flip there is one variant and asking for the mirrored one is a clear error.
    # The bf16 encoder is close to fp32 (well inside the posterior's spread).
    cache1, _ = encode_dataset(vae, data, tmp_path / "cache", flip=False, progress=False, precision="bf16")
    assert cache1.meta["precision"] == "bf16"
    m_bf16, _ = cache1.get(idx)
    assert (m_bf16 - direct.mean).pow(2).mean().sqrt() < 0.02 * direct.mean.pow(2).mean().sqrt()
    assert (m_bf16 - direct.mean).abs().max() < 0.1 * direct.std.min()
    with pytest.raises(ValueError, match="encode with --flip"):
        cache1.get([0], [1])


def test_cache_index_must_match_arrays(tmp_path):
    vae, data = tiny_vae(), ArrayFaces(n=4)
    encode_dataset(vae, data, tmp_path / "c", progress=False)
    index = tmp_path / "c" / "index.json"
    meta = json.loads(index.read_text())
    meta["n"] = 5
    index.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="shape"):
        LatentCache.open(tmp_path / "c")


def test_encode_rejects_image_size_not_divisible(tmp_path):
    vae = tiny_vae(channels=(8, 8, 16, 16))  # f = 8
    with pytest.raises(ValueError, match="not divisible .* f=8"):
        encode_dataset(vae, ArrayFaces(n=2, size=12), tmp_path / "c", progress=False)
    assert not (tmp_path / "c").exists()


# ---------------------------------------------------------------------------------------------
# `t2i encode` on the session's SynthFaces set


def test_encode_cli_round_trip(synth_dir, tmp_path, capsys):
    from t2i.checkpoint import save_component
    from t2i.cli import main
    from t2i.data.celeba import FaceDataset

    model = tmp_path / "model"
    vae = tiny_vae()
    save_component(model / "vae", vae, vae.config, "vae", extra={"training": {"image_size": 32}})
    out = model / "latents"
    # --vae omitted: found in the model dir that holds --out.
    rc = main(["encode", "--data", str(synth_dir), "--out", str(out), "--flip", "--no-preload",
               "--precision", "fp32"])
    assert rc == 0
    assert "img/s" in capsys.readouterr().out
    cache = LatentCache.open(out, expect_vae_hash=vae.fingerprint())
    ds = FaceDataset(synth_dir, split="train", image_size=32)
    assert len(cache) == len(ds) and cache.num_variants == 2 and cache.latent_shape == (4, 8, 8)
    assert cache.ids == ds.image_ids and cache.meta["split"] == "train"
    assert np.array_equal(cache.attributes, ds.attributes.astype(np.uint8))
    assert cache.captions == [list(c) for c in ds.captions]
    x = torch.stack([ds[i]["image"] for i in (0, 5)])
    with torch.no_grad():
        direct = vae.encode(x.flip(-1))
    mean, std = cache.get([0, 5], [1, 1])
    assert torch.allclose(mean, direct.mean, atol=2e-3, rtol=2e-3)
    assert torch.allclose(std, direct.std, atol=2e-3, rtol=2e-3)


def test_encode_cli_errors(synth_dir, tmp_path, capsys):
    from t2i.cli import main

    # No VAE anywhere near --out.
    rc = main(["encode", "--data", str(synth_dir), "--out", str(tmp_path / "lat")])
    assert rc == 2 and "pass --vae" in capsys.readouterr().err
    # A --vae dir with a broken config names the problem.
    bad = tmp_path / "bad" / "vae"
    bad.mkdir(parents=True)
    (bad / "config.json").write_text('{"type": "vae", "config": {"channels": [8, 16], "latent_chans": 4}}')
    rc = main(["encode", "--vae", str(bad), "--data", str(synth_dir), "--out", str(tmp_path / "lat")])
    assert rc == 2 and "latent_chans" in capsys.readouterr().err
    # A VAE whose factor does not divide the image size.
    from t2i.checkpoint import save_component

    vae = tiny_vae(channels=(8, 8, 16, 16))  # f = 8
    save_component(tmp_path / "f8" / "vae", vae, vae.config, "vae")
    rc = main(["encode", "--vae", str(tmp_path / "f8"), "--data", str(synth_dir), "--out",
               str(tmp_path / "lat"), "--image-size", "36", "--no-preload"])
    assert rc == 2 and "not divisible" in capsys.readouterr().err


@pytest.mark.parametrize("native,expected", [(False, "fp32"), (True, "bf16")])
def test_auto_encoder_precision_on_the_cpu_follows_native_bf16(monkeypatch, tmp_path, native, expected):
    from t2i.train import encode

    monkeypatch.setattr(encode, "cpu_has_native_bf16", lambda: native)
    cache, _ = encode.encode_dataset(tiny_vae(), ArrayFaces(n=4), tmp_path / "cache", progress=False)
    assert cache.meta["precision"] == expected
