"""The conditional UNet: shapes, padding mask, zero-init, autocast, config validation."""

import dataclasses

import pytest
import torch

from t2i.config import config_from_dict, config_to_dict
from t2i.models.unet import UNET_PRESETS, UNet, UNetConfig, unet_preset

TINY = UNET_PRESETS["tiny"]


def perturbed(cfg: UNetConfig, seed: int = 0) -> UNet:
    """A UNet whose zero-initialised layers are randomised, so outputs depend on every input."""
    torch.manual_seed(seed)
    m = UNet(cfg)
    with torch.no_grad():
        for p in m.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.05)
    return m.eval()


def inputs(cfg: UNetConfig, B=2, H=8, L=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, cfg.in_channels, H, H, generator=g)
    t = torch.randint(0, 1000, (B,), generator=g)
    ctx = torch.randn(B, L, cfg.context_dim, generator=g)
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[0, 3:] = False  # first prompt has 3 real tokens
    pooled = torch.randn(B, cfg.pooled_dim, generator=g) if cfg.pooled_dim else None
    return x, t, ctx, mask, pooled


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"channels": (16, 32, 32), "blocks": (1, 2, 1), "attention_levels": (0, 2), "pooled_dim": 12},
        {"channels": (16, 16), "attention_levels": (), "mid_attention": False, "in_channels": 3,
         "out_channels": 6},
        {"num_heads": 2, "context_dim": 24, "time_embed_dim": 0, "gradient_checkpointing": True},
    ],
)
def test_shapes(overrides):
    cfg = dataclasses.replace(TINY, **overrides)
    m = perturbed(cfg)
    x, t, ctx, mask, pooled = inputs(cfg, H=8)
    out = m(x, t, ctx, mask, pooled)
    assert out.shape == (2, cfg.out_channels, 8, 8) and torch.isfinite(out).all()
    # non-square latents and a scalar timestep broadcast over the batch
    x2 = torch.randn(2, cfg.in_channels, 8, 16)
    assert m(x2, torch.tensor(5), ctx, mask, pooled).shape == (2, cfg.out_channels, 8, 16)


def test_gradient_checkpointing_gives_the_same_gradients():
    cfg = dataclasses.replace(TINY, gradient_checkpointing=True)
    m = perturbed(cfg).train()
    x, t, ctx, mask, _ = inputs(cfg)
    m(x, t, ctx, mask).square().mean().backward()
    g1 = [p.grad.clone() for p in m.parameters()]
    m.zero_grad()
    m.config.gradient_checkpointing = False
    m(x, t, ctx, mask).square().mean().backward()
    for a, b in zip(g1, (p.grad for p in m.parameters())):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_padding_tokens_do_not_change_the_output():
    cfg = dataclasses.replace(TINY, pooled_dim=8)
    m = perturbed(cfg)
    x, t, ctx, mask, pooled = inputs(cfg, L=4)
    mask = torch.ones(2, 4, dtype=torch.bool)
    base = m(x, t, ctx, mask, pooled)
    # append 6 padding tokens with garbage states: masked out, so nothing changes
    junk = 100 * torch.randn(2, 6, cfg.context_dim)
    ctx_pad = torch.cat([ctx, junk], 1)
    mask_pad = torch.cat([mask, torch.zeros(2, 6, dtype=torch.bool)], 1)
    torch.testing.assert_close(m(x, t, ctx_pad, mask_pad, pooled), base, atol=1e-5, rtol=1e-5)
    # ...while unmasking them does change it (the mask is really used)
    assert not torch.allclose(m(x, t, ctx_pad, torch.ones_like(mask_pad), pooled), base, atol=1e-3)
    # and the text does matter
    assert not torch.allclose(m(x, t, ctx.flip(0), mask, pooled), base, atol=1e-3)


def test_pooled_and_time_change_the_output():
    cfg = dataclasses.replace(TINY, pooled_dim=8)
    m = perturbed(cfg)
    x, t, ctx, mask, pooled = inputs(cfg)
    base = m(x, t, ctx, mask, pooled)
    assert not torch.allclose(m(x, t, ctx, mask, pooled + 1), base, atol=1e-4)
    assert not torch.allclose(m(x, t + 100, ctx, mask, pooled), base, atol=1e-4)


def test_zero_init_output_is_zero_and_trainable():
    torch.manual_seed(0)
    m = UNet(TINY)
    x, t, ctx, mask, _ = inputs(TINY)
    out = m(x, t, ctx, mask)
    assert torch.count_nonzero(out) == 0
    out.sum().backward()  # gradient reaches the zero-initialised output conv
    assert m.conv_out.weight.grad.abs().sum() > 0


def test_bf16_autocast_and_channels_last():
    cfg = TINY
    m = perturbed(cfg)
    x, t, ctx, mask, _ = inputs(cfg)
    ref = m(x, t, ctx, mask)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(x, t, ctx, mask)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), ref, atol=0.1, rtol=0.1)
    m_cl = m.to(memory_format=torch.channels_last)
    out_cl = m_cl(x.to(memory_format=torch.channels_last), t, ctx, mask)
    torch.testing.assert_close(out_cl, ref, atol=1e-5, rtol=1e-4)


def test_presets_sizes_and_json_round_trip():
    with torch.device("meta"):  # count without allocating the big preset
        sizes = {name: UNet(cfg).num_parameters() for name, cfg in UNET_PRESETS.items()}
    assert 20_000 < sizes["tiny"] < 150_000
    assert 5_000_000 < sizes["synth64"] < 7_000_000
    assert sizes["celeba128"] > 30_000_000
    cfg = unet_preset("synth64", context_dim=64)
    assert config_from_dict(UNetConfig, config_to_dict(cfg)) == cfg


@pytest.mark.parametrize(
    "overrides,match",
    [
        ({"channels": (16, 20)}, r"channels\[1\]=20 is not divisible by head_dim=8"),
        ({"num_heads": 5}, "num_heads=5"),
        ({"attention_levels": (3,)}, r"attention_levels \[3\]"),
        ({"blocks": (1, 1, 1)}, "blocks has 3 entries"),
        ({"blocks": 0}, "blocks must be >= 1"),
        ({"channels": ()}, "channels"),
        ({"context_dim": -1}, "context_dim"),
    ],
)
def test_config_validation_names_the_field(overrides, match):
    with pytest.raises(ValueError, match=match):
        dataclasses.replace(TINY, **overrides)


def test_forward_errors():
    m = UNet(TINY)
    x, t, ctx, mask, _ = inputs(TINY)
    with pytest.raises(ValueError, match="7x7"):
        m(torch.randn(1, 4, 7, 7), t[:1], ctx[:1], mask[:1])
    with pytest.raises(ValueError, match="context=None"):
        m(x, t)
    with pytest.raises(ValueError, match="unknown UNet preset 'huge'"):
        unet_preset("huge")


def test_text_kv_cache_is_exact_and_invalidated():
    m = perturbed(TINY)
    x, t, ctx, mask, _ = inputs(TINY)
    with torch.no_grad():
        m.set_text_kv_cache(False)
        ref1, ref2 = m(x, t, ctx, mask), m(x.flip(0), t, ctx, mask)
        m.set_text_kv_cache(True)
        assert torch.equal(m(x, t, ctx, mask), ref1)
        assert torch.equal(m(x.flip(0), t, ctx, mask), ref2)  # second step reuses the K/V
        m.set_text_kv_cache(False)
        ref3 = m(x, t, 2 * ctx, mask)
        m.set_text_kv_cache(True)
        m(x, t, ctx, mask)  # cached for this tensor...
        ctx.mul_(2)  # ...which then changes in place: must not be served from the cache
        torch.testing.assert_close(m(x, t, ctx, mask), ref3, atol=0, rtol=0)
    with torch.inference_mode():  # inference tensors: no version counter, so no caching
        c = ctx.clone()
        torch.testing.assert_close(m(x, t, c, mask), ref3, atol=0, rtol=0)
    # with grad enabled (training) the projection is recomputed and differentiable
    out = m(x, t, ctx, mask)
    out.square().sum().backward()
    kv = m.down[1][0].attn.block.cross_attn.to_kv
    assert kv.weight.grad is not None and kv.weight.grad.abs().sum() > 0
    assert "to_kv.weight" in " ".join(m.state_dict())
