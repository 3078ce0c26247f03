"""Composable guidance (Liu et al. 2022) against classifier-free guidance and its formula."""

import pytest
import torch

from t2i.diffusion.guidance import cfg_model, composed_model
from t2i.diffusion.samplers import make_denoiser
from t2i.diffusion.schedule import NoiseSchedule


def text_net(x, t, context, context_mask, pooled):
    """A toy conditional network whose output depends non-linearly on x and on the text."""
    m = context_mask.float()[..., None]
    text = (context * m).sum(1) / m.sum(1)  # (B, D)
    bias = text.mean(-1) + (0 if pooled is None else pooled.mean(-1))
    return torch.tanh(x * (1 + text[:, :1, None, None])) + bias.reshape(-1, 1, 1, 1) + t.float().reshape(-1, 1, 1, 1) / 1000


def counting(net, calls):
    def wrapped(*args):
        calls.append(args[0].shape[0])
        return net(*args)
    return wrapped


def test_one_term_of_weight_one_is_classifier_free_guidance_exactly():
    g = torch.Generator().manual_seed(0)
    N = 3
    x, t = torch.randn(N, 4, 8, 8, generator=g), torch.tensor([10, 500, 900])
    cond, neg = torch.randn(N, 6, 16, generator=g), torch.randn(1, 6, 16, generator=g)
    cmask = torch.tensor([[True] * 5 + [False]] * N)
    pooled, npooled = torch.randn(N, 8, generator=g), torch.randn(1, 8, generator=g)
    for scale in (0.0, 3.0, 7.5):
        ref = cfg_model(text_net, scale, cond, neg, cmask, None, pooled, npooled)(x, t)
        out = composed_model(text_net, scale, cond, cmask, pooled, torch.arange(N), torch.ones(N),
                             neg, None, npooled)(x, t)
        assert torch.equal(out, ref)


def test_terms_combine_as_the_paper_says_in_one_forward():
    g = torch.Generator().manual_seed(1)
    # three images with 1, 3 and 2 terms (a NOT and a weighted one among them)
    term_image = torch.tensor([0, 1, 1, 1, 2, 2])
    term_weight = torch.tensor([1.0, 1.0, 1.5, -1.0, 0.5, -2.0])
    R, N, scale = 6, 3, 4.0
    x, t = torch.randn(N, 4, 8, 8, generator=g), torch.tensor([999, 400, 3])
    ctx, mask = torch.randn(R, 5, 16, generator=g), torch.rand(R, 5, generator=g) > 0.3
    mask[:, 0] = True
    unc, umask = torch.randn(N, 7, 16, generator=g), torch.ones(N, 7, dtype=torch.bool)
    calls = []
    fn = composed_model(counting(text_net, calls), scale, ctx, mask, None, term_image, term_weight, unc, umask)
    out = fn(x, t)
    assert calls == [R + N]  # every term and the unconditional branch in one forward
    u = text_net(x, t, unc, umask, None)
    expected = u.clone()
    for r in range(R):
        n = term_image[r]
        c = text_net(x[n : n + 1], t[n : n + 1], ctx[r : r + 1], mask[r : r + 1], None)
        expected[n] += scale * term_weight[r] * (c[0] - u[n])
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    # the same term twice with weight 1 each is one term of weight 2
    two = composed_model(text_net, scale, ctx[:1].expand(2, -1, -1), mask[:1].expand(2, -1), None,
                         torch.tensor([0, 0]), torch.ones(2), unc[:1], umask[:1])(x[:1], t[:1])
    one = composed_model(text_net, scale, ctx[:1], mask[:1], None, torch.tensor([0]), torch.tensor([2.0]),
                         unc[:1], umask[:1])(x[:1], t[:1])
    torch.testing.assert_close(two, one)


def test_combining_v_predictions_equals_combining_eps():
    # The combination's coefficients sum to 1, so it commutes with v -> eps (affine in v).
    s = NoiseSchedule.from_dict({})
    g = torch.Generator().manual_seed(2)
    term_image, term_weight = torch.tensor([0, 0, 1]), torch.tensor([1.0, -0.5, 2.0])
    x, t = torch.randn(2, 4, 8, 8, generator=g), torch.tensor([300, 700])
    ctx, unc = torch.randn(3, 4, 16, generator=g), torch.randn(1, 4, 16, generator=g)

    v_fn = composed_model(text_net, 3.0, ctx, None, None, term_image, term_weight, unc)
    x0_from_v = make_denoiser(v_fn, s, "v")(x, t)
    eps_fn = composed_model(lambda xx, tt, c, m, p: s.predict_eps(xx, text_net(xx, tt, c, m, p), tt, "v"),
                            3.0, ctx, None, None, term_image, term_weight, unc)
    x0_from_eps = make_denoiser(eps_fn, s, "eps")(x, t)
    torch.testing.assert_close(x0_from_v, x0_from_eps, atol=1e-4, rtol=1e-4)


def test_bad_segments_are_refused():
    ctx, unc = torch.randn(2, 4, 16), torch.randn(1, 4, 16)
    with pytest.raises(ValueError, match="one entry per term"):
        composed_model(text_net, 3.0, ctx, None, None, torch.tensor([0]), torch.ones(2), unc)
    with pytest.raises(ValueError, match="at least one term"):
        composed_model(text_net, 3.0, ctx, None, None, torch.tensor([0, 2]), torch.ones(2), unc)
    fn = composed_model(text_net, 3.0, ctx, None, None, torch.tensor([0, 1]), torch.ones(2), unc)
    with pytest.raises(ValueError, match="latent batch 3"):
        fn(torch.randn(3, 4, 8, 8), torch.tensor([1, 2, 3]))
