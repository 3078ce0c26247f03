"""KL-VAE: shapes, KL / adaptive-weight maths, latent stats, save/load, training via the CLI,
resume, and clear errors. Tiny configs only (seconds each, CPU)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from t2i.checkpoint import load_component, save_component
from t2i.models.vae import VAE, DiagonalGaussian, VAEConfig
from t2i.models.vae_losses import (
    DiscriminatorConfig,
    PatchDiscriminator,
    adaptive_weight,
    generator_loss,
    hinge_d_loss,
)

TINY = dict(channels=(8, 16, 16), num_res_blocks=1, latent_channels=4)


def tiny_vae(**overrides) -> VAE:
    torch.manual_seed(0)
    return VAE(VAEConfig(**{**TINY, **overrides})).eval()


@pytest.mark.parametrize(
    "channels, f", [((8, 16, 16), 4), ((8, 8, 16, 16), 8)], ids=["f4", "f8"]
)
@pytest.mark.parametrize("attention", [False, True], ids=["noattn", "attn"])
def test_encode_decode_shapes(channels, f, attention):
    vae = tiny_vae(channels=channels, attention=attention)
    assert vae.downsample_factor == f
    x = torch.rand(2, 3, 32, 48) * 2 - 1
    posterior = vae.encode(x)
    assert posterior.mean.shape == (2, 4, 32 // f, 48 // f)
    assert posterior.std.shape == posterior.mean.shape
    z = posterior.sample(torch.Generator().manual_seed(0))
    assert z.shape == posterior.mean.shape
    assert torch.equal(posterior.mode(), posterior.mean)
    assert vae.decode(z).shape == x.shape
    assert vae.latent_shape(64) == (4, 64 // f, 64 // f)


def test_sample_uses_generator():
    vae = tiny_vae()
    post = vae.encode(torch.zeros(1, 3, 16, 16))
    a = post.sample(torch.Generator().manual_seed(3))
    b = post.sample(torch.Generator().manual_seed(3))
    c = post.sample(torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_kl_matches_hand_computation():
    # One sample with two latent elements: (mu=1, logvar=0) and (mu=0, logvar=log 4).
    mean = torch.tensor([1.0, 0.0]).view(1, 2, 1, 1)
    logvar = torch.tensor([0.0, math.log(4.0)]).view(1, 2, 1, 1)
    kl = DiagonalGaussian(mean, logvar).kl()
    # 0.5 * [(1 + 1 - 1 - 0) + (0 + 4 - 1 - log 4)]
    expected = 0.5 * (1.0 + 3.0 - math.log(4.0))
    assert kl.shape == (1,)
    assert kl.item() == pytest.approx(expected, rel=1e-6)
    # The standard normal has zero KL to the prior.
    assert DiagonalGaussian(torch.zeros(3, 4, 2, 2), torch.zeros(3, 4, 2, 2)).kl().abs().max() == 0


def test_adaptive_weight_matches_hand_computation():
    # last layer w (2 values); rec = 3 * sum(w)  -> grad (3, 3), norm 3*sqrt(2)
    #                          gan = w0^2 + w1^2 -> grad (2*w0, 2*w1) = (2, 4), norm sqrt(20)
    w = torch.tensor([1.0, 2.0], requires_grad=True)
    rec = 3 * w.sum()
    gan = (w**2).sum()
    lam = adaptive_weight(rec, gan, w, max_weight=1e4, eps=1e-4)
    assert lam.item() == pytest.approx(3 * math.sqrt(2) / (math.sqrt(20) + 1e-4), rel=1e-6)
    assert not lam.requires_grad
    # Clamped from above.
    lam = adaptive_weight(3 * w.sum(), 0.0 * w.sum() + 1e-12 * (w**2).sum(), w, max_weight=5.0)
    assert lam.item() == 5.0


def test_hinge_losses():
    real = torch.tensor([2.0, 0.5, -1.0])  # relu(1 - x) = 0, 0.5, 2   -> mean 2.5/3
    fake = torch.tensor([-2.0, 0.0])  # relu(1 + x) = 0, 1              -> mean 0.5
    assert hinge_d_loss(real, fake).item() == pytest.approx(0.5 * (2.5 / 3 + 0.5))
    assert generator_loss(fake).item() == pytest.approx(1.0)


def test_patch_discriminator_shape():
    disc = PatchDiscriminator(DiscriminatorConfig(channels=8, n_layers=2))
    logits = disc(torch.randn(2, 3, 32, 32))
    assert logits.ndim == 4 and logits.shape[:2] == (2, 1) and logits.shape[-1] > 1


def test_normalize_denormalize_round_trip():
    vae = tiny_vae()
    vae.set_latent_stats(shift=[0.1, -0.2, 0.3, 0.0], scale=[2.0, 0.5, 1.0, 4.0], how="test")
    z = torch.randn(2, 4, 3, 3)
    zn = vae.normalize(z)
    assert torch.allclose(zn[:, 1], (z[:, 1] + 0.2) * 0.5)
    assert torch.allclose(vae.denormalize(zn), z, atol=1e-6)
    vae.set_latent_stats(shift=0.5, scale=2.0, how="test")  # global values work too
    assert torch.allclose(vae.normalize(z), (z - 0.5) * 2.0)
    with pytest.raises(ValueError, match="scale has 3 values but latent_channels=4"):
        vae.set_latent_stats(shift=0.0, scale=[1.0, 1.0, 1.0], how="test")


def test_image_size_not_divisible_is_a_clear_error():
    vae = tiny_vae()
    with pytest.raises(ValueError, match=r"30x32 is not divisible .* f=4"):
        vae.encode(torch.zeros(1, 3, 30, 32))
    with pytest.raises(ValueError, match="3 image channels, got 1"):
        vae.encode(torch.zeros(1, 1, 32, 32))


def test_save_load_round_trip_identical(tmp_path):
    vae = tiny_vae(attention=True)
    vae.set_latent_stats(shift=[0.1, 0.2, 0.3, 0.4], scale=[1.5, 1.0, 0.5, 2.0], how="test")
    save_component(tmp_path / "vae", vae, vae.config, "vae")
    loaded, meta = load_component(tmp_path, VAE, VAEConfig, "vae")
    assert loaded.config == vae.config
    assert loaded.fingerprint() == vae.fingerprint()
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        a, b = vae.encode(x), loaded.encode(x)
        assert torch.equal(a.mean, b.mean) and torch.equal(a.std, b.std)
        assert torch.equal(vae.decode(a.mean), loaded.decode(b.mean))
        assert torch.equal(vae.normalize(a.mean), loaded.normalize(b.mean))


def test_fingerprint_changes_with_weights_and_stats():
    a, b = tiny_vae(), tiny_vae()
    assert a.fingerprint() == b.fingerprint()
    with torch.no_grad():
        b.decoder.conv_out.bias.add_(1e-3)
    assert a.fingerprint() != b.fingerprint()
    c = tiny_vae()
    c.set_latent_stats(shift=0.0, scale=2.0, how="test")
    assert a.fingerprint() != c.fingerprint()


def test_bad_vae_dir_errors(tmp_path):
    vae = tiny_vae()
    save_component(tmp_path / "vae", vae, vae.config, "vae")
    # Missing directory / config.
    with pytest.raises(FileNotFoundError, match="no such directory"):
        load_component(tmp_path / "missing", VAE, VAEConfig, "vae")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="holds no vae component"):
        load_component(empty, VAE, VAEConfig, "vae")
    # Config that does not match the weights.
    cfg_path = tmp_path / "vae" / "config.json"
    meta = json.loads(cfg_path.read_text())
    meta["config"]["channels"] = [8, 16, 32]
    cfg_path.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="does not match its config.json"):
        load_component(tmp_path, VAE, VAEConfig, "vae")
    # A typo in the config is named.
    meta["config"] = {**meta["config"], "channels": [8, 16, 16], "chanels": 3}
    cfg_path.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="chanels"):
        load_component(tmp_path, VAE, VAEConfig, "vae")
