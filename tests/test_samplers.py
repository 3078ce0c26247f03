"""Samplers against diffusers' schedulers (peer tests), plus callbacks, seeds, img2img, CFG."""

import pytest
import torch

from t2i.diffusion.guidance import cfg_model
from t2i.diffusion.samplers import (
    SAMPLERS,
    img2img_start,
    karras_timesteps,
    make_denoiser,
    sample_ddim,
    sample_ddpm,
    sample_dpmpp_2m,
    sample_euler_ancestral,
    timesteps,
)
from t2i.diffusion.schedule import NoiseSchedule

PRED = {"v": "v_prediction", "eps": "epsilon"}
KINDS = {"cosine": ("squaredcos_cap_v2", 1e-4, 0.02), "scaled_linear": ("scaled_linear", 0.00085, 0.012)}


def dummy_model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A smooth, time-dependent stand-in for a network (v or eps output)."""
    tt = t.float().reshape(-1, 1, 1, 1) / 1000
    return 0.3 * torch.tanh(x) * (1 + tt) + 0.1 * torch.sin(3 * tt + x)


def start_noise(seed: int = 0) -> torch.Tensor:
    return torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(seed))


def assert_rel_close(ours: torch.Tensor, ref: torch.Tensor, tol: float = 1e-5):
    # Relative to the trajectory's scale: eps-prediction from t = T-1 of the cosine schedule
    # reaches |x0| ~ 1e4 with a dummy model, where float32 alone differs by ~1e-3 absolute.
    err = ((ours - ref).abs().max() / ref.abs().max()).item()
    assert err < tol, f"relative max error {err:.2e}"


def run_diffusers(scheduler, x: torch.Tensor, model=dummy_model, generator=None) -> torch.Tensor:
    for t in scheduler.timesteps:
        x = scheduler.step(model(x, t.expand(x.shape[0])), t, x, generator=generator).prev_sample
    return x


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("prediction", ["v", "eps"])
@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_ddim_matches_diffusers(kind, prediction, spacing):
    from diffusers import DDIMScheduler

    name, lo, hi = KINDS[kind]
    ref = DDIMScheduler(beta_schedule=name, beta_start=lo, beta_end=hi, prediction_type=PRED[prediction],
                        clip_sample=False, set_alpha_to_one=True, timestep_spacing=spacing)
    ref.set_timesteps(20)
    s = NoiseSchedule(kind, beta_start=lo, beta_end=hi)
    ts = timesteps(s, 20, spacing)
    assert torch.equal(ts, ref.timesteps)
    x = start_noise()
    ours = sample_ddim(make_denoiser(dummy_model, s, prediction), x.clone(), ts, s)
    assert_rel_close(ours, run_diffusers(ref, x.clone()))


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("prediction", ["v", "eps"])
@pytest.mark.parametrize("spacing", ["trailing", "linspace"])
def test_dpmpp_2m_matches_diffusers(kind, prediction, spacing):
    from diffusers import DPMSolverMultistepScheduler

    name, lo, hi = KINDS[kind]
    ref = DPMSolverMultistepScheduler(beta_schedule=name, beta_start=lo, beta_end=hi,
                                      prediction_type=PRED[prediction], final_sigmas_type="zero",
                                      timestep_spacing=spacing)
    ref.set_timesteps(20)
    s = NoiseSchedule(kind, beta_start=lo, beta_end=hi)
    # DPM's "linspace" drops t=0 from 21 points (unlike DDIM's): pass its list explicitly.
    ts = timesteps(s, 20, spacing) if spacing == "trailing" else ref.timesteps
    assert torch.equal(ts, ref.timesteps)
    x = start_noise()
    ours = sample_dpmpp_2m(make_denoiser(dummy_model, s, prediction), x.clone(), ts, s)
    assert_rel_close(ours, run_diffusers(ref, x.clone()))


@pytest.mark.parametrize("prediction", ["v", "eps"])
def test_dpmpp_2m_karras_matches_diffusers(prediction):
    from diffusers import DPMSolverMultistepScheduler

    ref = DPMSolverMultistepScheduler(beta_schedule="squaredcos_cap_v2", prediction_type=PRED[prediction],
                                      final_sigmas_type="zero", use_karras_sigmas=True)
    ref.set_timesteps(20)
    ref.set_begin_index(0)  # its int64 timesteps repeat near T-1, so index by step
    s = NoiseSchedule("cosine")
    ts = karras_timesteps(s, 20)
    # diffusers feeds the network int64-truncated timesteps but converts with the exact Karras
    # sigmas; ours converts at the float timestep, whose sigma is the same Karras sigma.
    assert torch.equal(ts.long(), ref.timesteps)
    x = start_noise()
    truncated = lambda x, t: dummy_model(x, t.long())  # noqa: E731
    ours = sample_dpmpp_2m(make_denoiser(truncated, s, prediction), x.clone(), timesteps(s, 20), s,
                           karras=True)
    assert_rel_close(ours, run_diffusers(ref, x.clone()))


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_ddpm_posterior_matches_diffusers(spacing):
    """Same generator, so the same noise draws: the ancestral trajectory (posterior mean plus
    fixed-small variance times the same z, at every strided step) equals diffusers'
    DDPMScheduler's; a wrong mean or variance at any step would show in the end point."""
    from diffusers import DDPMScheduler

    ref = DDPMScheduler(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction",
                        clip_sample=False, timestep_spacing=spacing)
    ref.set_timesteps(20)
    s = NoiseSchedule("cosine")
    ts = timesteps(s, 20, spacing)
    assert torch.equal(ts, ref.timesteps)
    x = start_noise()
    ours = sample_ddpm(make_denoiser(dummy_model, s, "v"), x.clone(), ts, s,
                       generator=torch.Generator().manual_seed(7))
    theirs = run_diffusers(ref, x.clone(), generator=torch.Generator().manual_seed(7))
    assert_rel_close(ours, theirs)


def test_ddim_eta_one_is_the_ddpm_posterior():
    """DDIM with eta=1 has the DDPM posterior's variance, and then its mean equals the
    posterior mean (Song et al. 2021, eq. 16): same draws, same trajectory."""
    s = NoiseSchedule("cosine")
    denoise = make_denoiser(dummy_model, s, "v")
    ts = timesteps(s, 10)
    a = sample_ddpm(denoise, start_noise(), ts, s, generator=torch.Generator().manual_seed(4))
    b = sample_ddim(denoise, start_noise(), ts, s, generator=torch.Generator().manual_seed(4), eta=1.0)
    assert_rel_close(a, b)


def test_euler_ancestral_matches_diffusers():
    from diffusers import EulerAncestralDiscreteScheduler

    ref = EulerAncestralDiscreteScheduler(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction",
                                          timestep_spacing="trailing")
    ref.set_timesteps(20)
    s = NoiseSchedule("cosine")
    x = start_noise()
    # diffusers keeps x in the variance-exploding scale and rescales the network input.
    y, g = x * ref.init_noise_sigma, torch.Generator().manual_seed(3)
    for t in ref.timesteps:
        out = dummy_model(ref.scale_model_input(y, t), t.expand(2))
        y = ref.step(out, t, y, generator=g).prev_sample
    ours = sample_euler_ancestral(make_denoiser(dummy_model, s, "v"), x.clone(), timesteps(s, 20), s,
                                  generator=torch.Generator().manual_seed(3))
    assert_rel_close(ours, y)


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_callback_sees_every_step_and_seed_reproduces(name):
    s = NoiseSchedule("cosine")
    ts = timesteps(s, 7)
    seen = []
    denoise = make_denoiser(dummy_model, s, "v")

    def callback(i, n, x, x0):
        assert x.shape == x0.shape == (2, 4, 8, 8)
        seen.append((i, n))

    a = SAMPLERS[name](denoise, start_noise(), ts, s, callback=callback,
                       generator=torch.Generator().manual_seed(5))
    assert seen == [(i, 7) for i in range(7)]
    b = SAMPLERS[name](denoise, start_noise(), ts, s, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and torch.isfinite(a).all()


def test_ancestral_samplers_use_the_generator():
    s = NoiseSchedule("cosine")
    denoise = make_denoiser(dummy_model, s, "v")
    for fn in (sample_ddpm, sample_euler_ancestral):
        a = fn(denoise, start_noise(), timesteps(s, 5), s, generator=torch.Generator().manual_seed(1))
        b = fn(denoise, start_noise(), timesteps(s, 5), s, generator=torch.Generator().manual_seed(2))
        assert not torch.allclose(a, b)


def test_samplers_recover_a_perfect_denoiser():
    """With the exact x0 as the denoiser, every sampler ends on x0."""
    s = NoiseSchedule("cosine")
    x0 = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(9)).clamp(-2, 2)
    ts = timesteps(s, 10)
    x_T = s.add_noise(x0, start_noise(), ts[:1].expand(2))
    for name, fn in SAMPLERS.items():
        out = fn(lambda x, t: x0, x_T.clone(), ts, s, generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(out, x0, atol=1e-4, rtol=1e-4, msg=name)


def test_timestep_spacings():
    s = NoiseSchedule("cosine")
    assert timesteps(s, 4, "leading").tolist() == [750, 500, 250, 0]
    assert timesteps(s, 4, "trailing").tolist() == [999, 749, 499, 249]
    assert timesteps(s, 4, "linspace").tolist() == [999, 666, 333, 0]
    with pytest.raises(ValueError, match="'cubic'"):
        timesteps(s, 4, "cubic")
    with pytest.raises(ValueError, match="steps=0"):
        timesteps(s, 0)
    k = karras_timesteps(s, 10)
    assert k[0] == pytest.approx(999) and torch.all(k[1:] < k[:-1])


def test_img2img_start():
    s = NoiseSchedule("cosine")
    ts = timesteps(s, 20)
    x0 = torch.randn(2, 4, 8, 8)
    kept, x = img2img_start(s, ts, x0, 0.5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(kept, ts[10:])
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(x, s.add_noise(x0, noise, kept[:1].expand(2)))
    kept0, x_same = img2img_start(s, ts, x0, 0.0)
    assert len(kept0) == 0 and x_same is x0
    with pytest.raises(ValueError, match="strength=1.5"):
        img2img_start(s, ts, x0, 1.5)
    # denoising from the kept steps with a perfect denoiser returns the image
    out = sample_ddim(lambda x, t: x0, x, kept, s)
    torch.testing.assert_close(out, x0, atol=1e-4, rtol=1e-4)


# -- classifier-free guidance -------------------------------------------------------------


def text_net(x, t, context, context_mask, pooled):
    """A toy conditional network: the output depends on the masked mean of the text states."""
    m = context_mask.float()[..., None]
    text = (context * m).sum(1) / m.sum(1)  # (B, D)
    bias = text.mean(-1) + (0 if pooled is None else pooled.mean(-1))
    return torch.tanh(x) + bias.reshape(-1, 1, 1, 1) + t.float().reshape(-1, 1, 1, 1) / 1000


def test_cfg_scale_one_is_conditional_and_zero_is_unconditional():
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(3, 4, 8, 8, generator=g), torch.tensor([10, 500, 900])
    cond, neg = torch.randn(1, 6, 16, generator=g), torch.randn(1, 4, 16, generator=g)
    cmask = torch.tensor([[True] * 5 + [False]])
    pooled, npooled = torch.randn(1, 8, generator=g), torch.randn(1, 8, generator=g)
    ref_c = text_net(x, t, cond.expand(3, -1, -1), cmask.expand(3, -1), pooled.expand(3, -1))
    ref_u = text_net(x, t, neg.expand(3, -1, -1), torch.ones(3, 4, dtype=torch.bool), npooled.expand(3, -1))

    calls = []

    def counting(*args):
        calls.append(args[0].shape[0])
        return text_net(*args)

    for scale, expected in [(1.0, ref_c), (0.0, ref_u), (3.0, ref_u + 3.0 * (ref_c - ref_u))]:
        fn = cfg_model(counting, scale, cond, neg, cmask, None, pooled, npooled)
        torch.testing.assert_close(fn(x, t), expected, atol=1e-5, rtol=1e-5)
    # one forward per call: batch 3 for scale 1, batch 6 = [cond; uncond] otherwise
    assert calls == [3, 6, 6]


def test_cfg_padding_of_the_negative_prompt_does_not_matter():
    g = torch.Generator().manual_seed(1)
    x, t = torch.randn(2, 4, 8, 8, generator=g), torch.tensor([100, 200])
    cond, neg = torch.randn(2, 3, 16, generator=g), torch.randn(2, 7, 16, generator=g)
    a = cfg_model(text_net, 5.0, cond, neg)(x, t)
    padded = torch.cat([cond, torch.randn(2, 4, 16, generator=g)], 1)
    mask = torch.tensor([[True] * 3 + [False] * 4] * 2)
    b = cfg_model(text_net, 5.0, padded, neg, mask)(x, t)
    torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="uncond_context"):
        cfg_model(text_net, 2.0, cond)


def test_euler_ancestral_is_ddpm_posterior_sampling():
    """Euler ancestral with eta=1 in the variance-exploding scale is DDPM's posterior step in
    other coordinates: the mean x0 + (s_next/s)^2 (x - x0) and the noise s_up are the posterior's.
    With the same noise draws the two samplers give the same samples to float rounding (so
    `t2i eval --sweep` reads the same figures for both)."""
    s = NoiseSchedule("cosine")
    denoise = make_denoiser(dummy_model, s, "v")
    ts = timesteps(s, 20)
    ddpm = sample_ddpm(denoise, start_noise(), ts, s, generator=torch.Generator().manual_seed(3))
    euler_a = sample_euler_ancestral(denoise, start_noise(), ts, s, generator=torch.Generator().manual_seed(3))
    assert_rel_close(euler_a, ddpm, 1e-4)
    deterministic = sample_euler_ancestral(denoise, start_noise(), ts, s, eta=0.0)
    assert ((deterministic - ddpm).abs().max() / ddpm.abs().max()).item() > 1e-2
