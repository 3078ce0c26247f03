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
    gradient_difference_loss,
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
@pytest.mark.parametrize("norm", ["channel", "group"])
def test_encode_decode_shapes(channels, f, attention, norm):
    vae = tiny_vae(channels=channels, attention=attention, norm=norm)
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


def test_channel_norm_matches_layer_norm_over_channels():
    from t2i.models.vae import ChannelNorm

    norm = ChannelNorm(6)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)
    x = torch.randn(2, 6, 5, 7)
    expect = torch.nn.functional.layer_norm(
        x.permute(0, 2, 3, 1), (6,), norm.weight, norm.bias, eps=1e-6
    ).permute(0, 3, 1, 2)
    assert torch.allclose(norm(x), expect, atol=1e-5)
    vae = tiny_vae(norm="channel")
    assert not any(isinstance(m, torch.nn.GroupNorm) for m in vae.modules())
    assert any(isinstance(m, torch.nn.GroupNorm) for m in tiny_vae(norm="group").modules())


@pytest.mark.parametrize("norm, crop_invariant", [("channel", True), ("group", False)])
def test_crop_encodes_like_the_whole_image(norm, crop_invariant):
    """Why crops train a whole-image VAE only with norm="channel": away from the crop border
    (beyond the receptive field) its latents equal the whole image's; GroupNorm's per-image
    statistics change every latent."""
    vae = tiny_vae(norm=norm)
    with torch.no_grad():  # make the zero-initialised residual branches non-trivial
        for p in vae.parameters():
            p.add_(torch.randn_like(p) * 0.05)  # seeded by tiny_vae
        x = torch.randn(1, 3, 128, 128)
        full = vae.encode(x).mean  # (1, 4, 32, 32)
        crop = vae.encode(x[:, :, 16:112, 16:112]).mean  # offset 16 px = 4 latents
    centre = (full[:, :, 4:28, 4:28] - crop)[:, :, 10:15, 10:15].abs().max().item()
    assert (centre < 1e-5) == crop_invariant, centre


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



def test_latent_stats_match_hand_computation_and_samples():
    from t2i.train.vae import LatentStats

    # Channel 0: posterior means 0 and 2, std 1 -> E[z] = 1, Var[z] = Var[mean] + E[std^2] = 1 + 1.
    # Channel 1: means 3 and 3, std 0.5 -> E[z] = 3, Var[z] = 0 + 0.25.
    mean = torch.tensor([[0.0, 3.0], [2.0, 3.0]]).view(2, 2, 1, 1)
    std = torch.tensor([[1.0, 0.5], [1.0, 0.5]]).view(2, 2, 1, 1)
    stats = LatentStats(2)
    stats.update(mean[:1], std[:1])  # in two batches, as over a data loader
    stats.update(mean[1:], std[1:])
    mu, sd, mean_var = stats.result()
    assert mu.tolist() == pytest.approx([1.0, 3.0])
    assert sd.tolist() == pytest.approx([math.sqrt(2.0), 0.5])
    assert mean_var.tolist() == pytest.approx([1.0, 0.25])

    # The closed form equals the statistics of actual samples z = mean + std * eps.
    g = torch.Generator().manual_seed(0)
    mean = torch.randn(64, 4, 3, 3, generator=g) * torch.tensor([1.0, 2.0, 0.5, 3.0]).view(1, 4, 1, 1)
    std = torch.rand(64, 4, 3, 3, generator=g) + 0.1
    stats = LatentStats(4)
    stats.update(mean, std)
    mu, sd, _ = stats.result()
    z = mean + std * torch.randn(2000, *mean.shape, generator=g)  # (2000, 64, 4, 3, 3)
    z = z.transpose(0, 2).reshape(4, -1).double()  # (C, samples)
    torch.testing.assert_close(mu, z.mean(1), atol=0.02, rtol=0)
    torch.testing.assert_close(sd, z.std(1), atol=0, rtol=0.01)

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


def test_gradient_difference_loss():
    # A vertical step edge of height 2 in a 1x1x2x3 image: |d/dx| = [2, 0] per row, |d/dy| = 0.
    edge = torch.tensor([[[[-1.0, 1.0, 1.0], [-1.0, 1.0, 1.0]]]])
    # The same edge blurred to two steps of 1: |d/dx| = [1, 1]; the loss is mean(|2-1|, |0-1|) = 1.
    blurred = torch.tensor([[[[-1.0, 0.0, 1.0], [-1.0, 0.0, 1.0]]]])
    assert gradient_difference_loss(blurred, edge).item() == pytest.approx(1.0)
    # Matching edges cost nothing, even where the levels differ (a per-pixel loss would not be 0).
    assert gradient_difference_loss(edge + 0.5, edge).item() == 0.0
    assert gradient_difference_loss(edge, edge).item() == 0.0


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


# ---------------------------------------------------------------------------------------------
# Training through the CLI on the session's SynthFaces set (tiny preset, CPU, seconds)


def _train(synth_dir, out, *extra) -> int:
    from t2i.cli import main

    # --no-preload: the shared fixture directory stays read-only (no pixel cache written in it).
    return main(["train", "vae", "--data", str(synth_dir), "--out", str(out), "--preset", "tiny",
                 "--no-preload", *extra])


def test_train_three_steps_via_cli(synth_dir, tmp_path):
    from t2i.checkpoint import list_checkpoints

    out = tmp_path / "model"
    assert _train(synth_dir, out, "--steps", "3", "--grad-weight", "1") == 0
    vae, meta = load_component(out, VAE, VAEConfig, "vae")
    assert meta["config"]["latent_stats"] == "posterior_samples"
    assert len(vae.config.scale) == 4 and all(s > 0 for s in vae.config.scale)
    assert meta["training"]["image_size"] == 32
    metrics = json.loads((out / "vae" / "metrics.json").read_text())
    assert metrics["steps"] == 3 and metrics["val_images"] > 0 and metrics["metrics_split"] == "val"
    assert 0 < metrics["psnr"] < 60 and -1 <= metrics["ssim"] <= 1
    assert (out / "samples" / "vae" / "final.png").is_file()
    assert [p.name for p in list_checkpoints(out / "checkpoints" / "vae")] == ["step_0000003"]
    records = [json.loads(line) for line in (out / "logs" / "vae" / "train_log.jsonl").read_text().splitlines()]
    # The tiny preset switches the PatchGAN on at step 2: every loss term was exercised.
    assert {"rec", "kl", "gdl", "g", "d", "adaptive_weight"} <= set(records[-1])
    # The stored stats normalise the training latents: on the images they were measured on,
    # (z - shift) * scale has mean 0 and std 1 per channel.
    from t2i.data.celeba import FaceDataset
    from t2i.data.tensors import spread_indices
    from t2i.train.vae import LatentStats

    ds = FaceDataset(synth_dir, split="train", image_size=32, flip=True)  # as in training
    idx = spread_indices(len(ds), metrics["latent_stats_images"])
    x = torch.stack([ds[i]["image"] for i in idx])
    with torch.no_grad():
        post = vae.encode(x)
    stats = LatentStats(4)
    scale, _ = vae.latent_scale_shift(post.mean)
    stats.update(vae.normalize(post.mean), post.std * scale)
    mu, sd, _ = stats.result()
    assert torch.allclose(mu, torch.zeros(4, dtype=torch.float64), atol=1e-4)
    assert torch.allclose(sd, torch.ones(4, dtype=torch.float64), atol=1e-4)


def test_without_a_val_split_metrics_use_training_images(synth_dir, tmp_path, capsys):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(synth_dir, data)
    partition = data / "list_eval_partition.txt"
    partition.write_text("".join(f"{line.split()[0]} 0\n" for line in partition.read_text().splitlines()))
    out = tmp_path / "model"
    assert _train(data, out, "--steps", "1") == 0
    assert "metrics use training images" in capsys.readouterr().out
    metrics = json.loads((out / "vae" / "metrics.json").read_text())
    assert metrics["metrics_split"] == "train" and metrics["val_images"] > 0 and metrics["psnr"] > 0


def test_resume_continues_at_the_right_step(synth_dir, tmp_path):
    import shutil

    from safetensors.torch import load_file

    from t2i.checkpoint import load_latest_training_state

    args = ("--steps", "4", "--ckpt-every", "2", "--stats-images", "8", "--val-images", "4")
    straight = tmp_path / "straight"
    assert _train(synth_dir, straight, *args) == 0
    # A second run that starts from the straight run's step-2 checkpoint.
    resumed = tmp_path / "resumed"
    ckpt = straight / "checkpoints" / "vae" / "step_0000002"
    shutil.copytree(ckpt, resumed / "checkpoints" / "vae" / ckpt.name)
    assert _train(synth_dir, resumed, *args) == 0
    assert json.loads((resumed / "vae" / "metrics.json").read_text())["resumed_from"] == 2
    a = load_file(straight / "vae" / "model.safetensors")
    b = load_file(resumed / "vae" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # Same optimizer state (AdamW moments and step counts of the VAE and the discriminator).
    step_a, state_a = load_latest_training_state(straight / "checkpoints" / "vae")
    step_b, state_b = load_latest_training_state(resumed / "checkpoints" / "vae")
    assert step_a == step_b == 4
    # The discriminator trains at disc_lr_scale x the VAE's learning rate.
    lr_vae = state_a["optimizers"]["vae"]["param_groups"][0]["lr"]
    assert state_a["optimizers"]["disc"]["param_groups"][0]["lr"] == pytest.approx(0.1 * lr_vae)
    for name in ("vae", "disc"):
        sa, sb = state_a["optimizers"][name]["state"], state_b["optimizers"][name]["state"]
        assert sa.keys() == sb.keys() and sa
        for k in sa:
            for field in ("exp_avg", "exp_avg_sq", "step"):
                assert torch.equal(sa[k][field], sb[k][field]), (name, k, field)


def test_train_rejects_size_not_divisible(synth_dir, tmp_path, capsys):
    rc = _train(synth_dir, tmp_path / "m", "--steps", "1", "--image-size", "30")
    assert rc == 2
    assert "image_size=30 is not divisible" in capsys.readouterr().err
    assert not (tmp_path / "m" / "vae").exists()
