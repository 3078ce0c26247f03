"""NoiseSchedule against closed forms and against diffusers' DDPMScheduler."""

import math

import pytest
import torch

from t2i.diffusion.schedule import NoiseSchedule

DIFFUSERS_KIND = {"cosine": "squaredcos_cap_v2", "linear": "linear", "scaled_linear": "scaled_linear"}
BETAS = {"cosine": (1e-4, 0.02), "linear": (1e-4, 0.02), "scaled_linear": (0.00085, 0.012)}


def schedule(kind: str) -> NoiseSchedule:
    lo, hi = BETAS[kind]
    return NoiseSchedule(kind, beta_start=lo, beta_end=hi)


def test_cosine_alphas_cumprod_closed_form():
    s = NoiseSchedule("cosine")
    f = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    # alpha_bar_t = f((t+1)/T) / f(0) while no beta is clipped (all but the last steps).
    t = torch.arange(0, 990)
    expected = torch.tensor([f((i + 1) / 1000) / f(0) for i in t.tolist()], dtype=torch.float64)
    torch.testing.assert_close(s.alphas_cumprod[:990].double(), expected, rtol=2e-5, atol=1e-7)
    assert s.betas.max().item() == pytest.approx(0.999)  # the cap (Nichol & Dhariwal 2021)
    assert torch.all(s.alphas_cumprod[1:] < s.alphas_cumprod[:-1])


def test_linear_arrays():
    s = NoiseSchedule("linear", T=10, beta_start=0.1, beta_end=0.2)
    torch.testing.assert_close(s.betas, torch.linspace(0.1, 0.2, 10))
    torch.testing.assert_close(s.alphas_cumprod, torch.cumprod(1 - s.betas, 0))
    s2 = NoiseSchedule("scaled_linear", T=10, beta_start=0.01, beta_end=0.04)
    torch.testing.assert_close(s2.betas.sqrt(), torch.linspace(0.1, 0.2, 10))


def test_snr_and_sigmas():
    s = NoiseSchedule("cosine")
    t = torch.tensor([0, 10, 500, 999])
    ac = s.alphas_cumprod[t]
    torch.testing.assert_close(s.snr(t), ac / (1 - ac))
    torch.testing.assert_close(s.sigmas[t], s.snr(t).rsqrt())


@pytest.mark.parametrize("kind", list(DIFFUSERS_KIND))
def test_arrays_and_add_noise_match_diffusers(kind):
    from diffusers import DDPMScheduler

    s = schedule(kind)
    lo, hi = BETAS[kind]
    ref = DDPMScheduler(beta_schedule=DIFFUSERS_KIND[kind], beta_start=lo, beta_end=hi)
    torch.testing.assert_close(s.betas, ref.betas, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(s.alphas_cumprod, ref.alphas_cumprod, rtol=1e-6, atol=1e-9)
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(6, 4, 8, 8, generator=g), torch.randn(6, 4, 8, 8, generator=g)
    t = torch.tensor([0, 1, 250, 500, 998, 999])
    torch.testing.assert_close(s.add_noise(x0, noise, t), ref.add_noise(x0, noise, t), atol=1e-6, rtol=1e-5)
    # v target against diffusers' get_velocity
    torch.testing.assert_close(
        s.training_target(x0, noise, t, "v"), ref.get_velocity(x0, noise, t), atol=1e-6, rtol=1e-5
    )


@pytest.mark.parametrize("prediction", ["v", "eps", "x0"])
def test_parameterisation_round_trips(prediction):
    s = NoiseSchedule("cosine")
    g = torch.Generator().manual_seed(1)
    x0, noise = torch.randn(5, 4, 4, 4, generator=g), torch.randn(5, 4, 4, 4, generator=g)
    t = torch.tensor([1, 100, 400, 700, 950])  # eps -> x0 is ill-conditioned at t = T-1
    x_t = s.add_noise(x0, noise, t)
    target = s.training_target(x0, noise, t, prediction)
    torch.testing.assert_close(s.predict_x0(x_t, target, t, prediction), x0, atol=2e-4, rtol=1e-4)
    torch.testing.assert_close(s.predict_eps(x_t, target, t, prediction), noise, atol=2e-4, rtol=1e-4)


def test_v_closed_form_and_dtype():
    s = NoiseSchedule("linear")
    x0, noise = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    t = torch.tensor([3, 700])
    a = s.alphas_cumprod[t].sqrt().view(-1, 1, 1, 1)
    b = (1 - s.alphas_cumprod[t]).sqrt().view(-1, 1, 1, 1)
    torch.testing.assert_close(s.training_target(x0, noise, t, "v"), a * noise - b * x0)
    # Schedule math in float32 even for bf16 data; the result comes back in the input dtype.
    out = s.add_noise(x0.bfloat16(), noise.bfloat16(), t)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), a * x0.bfloat16().float() + b * noise.bfloat16().float(),
                               atol=2e-2, rtol=1e-2)


def test_min_snr_weights():
    s = NoiseSchedule("cosine")
    t = torch.tensor([0, 50, 300, 600, 999])
    snr = s.snr(t)
    torch.testing.assert_close(s.min_snr_weight(t, 5.0, "eps"), snr.clamp(max=5) / snr)
    torch.testing.assert_close(s.min_snr_weight(t, 5.0, "v"), snr.clamp(max=5) / (snr + 1))
    torch.testing.assert_close(s.min_snr_weight(t, 5.0, "x0"), snr.clamp(max=5))
    # low noise (high SNR) is down-weighted; high noise keeps weight 1 (eps) / SNR/(SNR+1) (v)
    w = s.min_snr_weight(t, 5.0, "eps")
    assert w[0] < 1e-3 and w[-1] == pytest.approx(1.0)


def test_float_timesteps_interpolate_log_sigma():
    s = NoiseSchedule("cosine")
    t_int = torch.tensor([0, 10, 998])
    torch.testing.assert_close(s.alphas_cumprod_at(t_int.double()), s.alphas_cumprod[t_int])
    sig = torch.tensor([0.05, 1.0, 30.0], dtype=torch.float64)
    t = s.sigma_to_t(sig)
    assert t.dtype == torch.float64 and torch.all((t > 0) & (t < 999))
    ac = s.alphas_cumprod_at(t).double()
    torch.testing.assert_close(((1 - ac) / ac).sqrt(), sig, rtol=1e-5, atol=0)


def test_errors_name_the_bad_value():
    with pytest.raises(ValueError, match="'quadratic'"):
        NoiseSchedule("quadratic")
    s = NoiseSchedule("cosine", T=10)
    with pytest.raises(ValueError, match="'sample'"):
        s.training_target(torch.zeros(1, 1), torch.zeros(1, 1), torch.tensor([0]), "sample")
    assert NoiseSchedule.from_dict(s.to_dict()).alphas_cumprod.equal(s.alphas_cumprod)
