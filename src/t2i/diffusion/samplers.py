"""Samplers as plain functions with one signature (the k-diffusion style).

    sample_x(denoise, x, timesteps, schedule, callback=None, generator=None, **kw) -> x0

`denoise(x_t, t) -> x0_pred` is the network wrapped by `make_denoiser`; `x` is the start
latent x_{timesteps[0]} in the variance-preserving scale (pure noise for text-to-image, a
noised image for img2img); `timesteps` is a descending 1-D tensor (integer, or float for
Karras spacing); every sampler steps to the clean sample after the last timestep and calls
`callback(step_index, total_steps, x, x0_pred)` after each step.

Per-step coefficients are Python floats computed once before the loop from the (host)
timesteps, so the loop never reads a device tensor: no host syncs, CUDA-graph friendly.
Noise comes from `generator` so a seed reproduces an image: one generator for the batch, or a
list with one per row of `x` (row k's noise then depends on its own stream only, whatever else
is in the batch). A generator on a different device than `x` works but costs a copy per step.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import torch

from t2i.diffusion.schedule import NoiseSchedule

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Callback = Callable[[int, int, torch.Tensor, torch.Tensor], None]
SPACINGS = ("leading", "trailing", "linspace")


def make_denoiser(
    model_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    schedule: NoiseSchedule,
    prediction: str = "v",
) -> Denoiser:
    """Turn a network `model_fn(x_t, t) -> v | eps | x0` into `denoise(x_t, t) -> x0` (float32)."""

    def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return schedule.predict_x0(x, model_fn(x, t), t, prediction)

    return denoise


# -- timestep lists ------------------------------------------------------------------------


def timesteps(schedule: NoiseSchedule, steps: int, spacing: str = "trailing") -> torch.Tensor:
    """`steps` descending integer timesteps in [0, T) (Lin et al. 2024, "Common Diffusion Noise
    Schedules and Sample Steps are Flawed", Table 2). "leading": multiples of T // steps from 0
    (DDIM's original); "trailing": ends at T-1 (starts from the noisiest step, recommended);
    "linspace": evenly spaced over [0, T-1], rounded."""
    T = schedule.T
    if not 1 <= steps <= T:
        raise ValueError(f"steps={steps} must be in [1, {T}]")
    if spacing == "leading":
        ts = torch.arange(steps, dtype=torch.float64) * (T // steps)
    elif spacing == "trailing":
        ts = torch.arange(T, 0, -T / steps, dtype=torch.float64).round() - 1
    elif spacing == "linspace":
        ts = torch.linspace(0, T - 1, steps, dtype=torch.float64).round()
    else:
        raise ValueError(f"spacing {spacing!r} is not one of {SPACINGS}")
    return ts.long().sort(descending=True).values


def karras_timesteps(
    schedule: NoiseSchedule, steps: int, rho: float = 7.0, sigma_max: float | None = None
) -> torch.Tensor:
    """Float timesteps whose sigmas follow Karras et al. 2022 (eq. 5): sigma_i =
    (sigma_max^(1/rho) + i/(n-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho, from the
    schedule's largest (or `sigma_max`) down to its smallest sigma."""
    if steps < 1:
        raise ValueError(f"steps={steps} must be >= 1")
    sigmas = schedule.sigmas.double()
    lo = sigmas[0].item()
    hi = sigmas[-1].item() if sigma_max is None else float(sigma_max)
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    k = (hi ** (1 / rho) + ramp * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho
    return schedule.sigma_to_t(k)


def img2img_start(
    schedule: NoiseSchedule,
    timesteps: torch.Tensor,
    x0: torch.Tensor,
    strength: float,
    generator: torch.Generator | None = None,
    noise: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SDEdit (Meng et al. 2022): keep the last round(strength * n) steps (diffusers' int()) and
    noise the clean latent `x0` to the first kept step. Returns (timesteps, x_start);
    strength 1 starts from (almost) pure noise, strength 0 returns x0 with no steps."""
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength={strength} must be in [0, 1]")
    n = len(timesteps)
    keep = min(int(n * strength), n)
    ts = timesteps[n - keep :]
    if keep == 0:
        return ts, x0
    if noise is None:
        noise = _randn_like(x0, generator)
    t0 = ts[:1].to(x0.device).expand(x0.shape[0])
    return ts, schedule.add_noise(x0, noise, t0)


# -- helpers -------------------------------------------------------------------------------


def _randn_like(x: torch.Tensor, generator: torch.Generator | list[torch.Generator] | None) -> torch.Tensor:
    if isinstance(generator, (list, tuple)):
        if len(generator) != x.shape[0]:
            raise ValueError(f"got {len(generator)} generators for a batch of {x.shape[0]}")
        return torch.cat([_randn_like(x[k : k + 1], g) for k, g in enumerate(generator)])
    if generator is None or generator.device == x.device:
        return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return torch.randn(x.shape, generator=generator, device=generator.device, dtype=x.dtype).to(x.device)


def _plan(schedule: NoiseSchedule, ts: torch.Tensor, x: torch.Tensor):
    """Host-side alpha_bar per step, with alpha_bar = 1 (the clean sample) appended, and the
    timesteps on x's device as a (n, B) tensor so the loop only indexes it."""
    if ts.ndim != 1 or len(ts) == 0:
        raise ValueError(f"timesteps must be a non-empty 1-D tensor, got shape {tuple(ts.shape)}")
    ab = schedule.alphas_cumprod_at(ts.detach().cpu()).double().tolist() + [1.0]
    t_dev = ts.to(x.device)[:, None].expand(-1, x.shape[0])
    return ab, t_dev


# -- samplers ------------------------------------------------------------------------------


def sample_ddpm(denoise, x, timesteps, schedule, callback=None, generator=None):
    """Ancestral sampling from the posterior q(x_s | x_t, x0) (Ho et al. 2020, eq. 6-7), with
    strided steps t -> s: mean = sqrt(ab_s) beta / (1-ab_t) x0 + sqrt(alpha) (1-ab_s) / (1-ab_t) x_t,
    var = (1-ab_s) / (1-ab_t) beta, where alpha = ab_t / ab_s, beta = 1 - alpha ("fixed small")."""
    ab, t_dev = _plan(schedule, timesteps, x)
    n = len(timesteps)
    for i in range(n):
        x0 = denoise(x, t_dev[i])
        a_t, a_s = ab[i], ab[i + 1]
        alpha = a_t / a_s
        beta = 1 - alpha
        x = (math.sqrt(a_s) * beta / (1 - a_t)) * x0 + (
            math.sqrt(alpha) * (1 - a_s) / (1 - a_t)
        ) * x
        if i < n - 1:  # the last step lands on the clean sample: variance 0
            x = x + math.sqrt((1 - a_s) / (1 - a_t) * beta) * _randn_like(x, generator)
        if callback is not None:
            callback(i, n, x, x0)
    return x


def sample_ddim(denoise, x, timesteps, schedule, callback=None, generator=None, eta=0.0):
    """DDIM (Song et al. 2021, eq. 12): x_s = sqrt(ab_s) x0 + sqrt(1 - ab_s - sigma^2) eps + sigma z,
    sigma = eta sqrt((1-ab_s)/(1-ab_t)) sqrt(1 - ab_t/ab_s) (eq. 16); eta=0 is deterministic,
    eta=1 is DDPM's variance."""
    ab, t_dev = _plan(schedule, timesteps, x)
    n = len(timesteps)
    for i in range(n):
        x0 = denoise(x, t_dev[i])
        a_t, a_s = ab[i], ab[i + 1]
        eps = (x - math.sqrt(a_t) * x0) / math.sqrt(1 - a_t)
        sigma = eta * math.sqrt((1 - a_s) / (1 - a_t) * (1 - a_t / a_s))
        x = math.sqrt(a_s) * x0 + math.sqrt(max(1 - a_s - sigma**2, 0.0)) * eps
        if sigma > 0:
            x = x + sigma * _randn_like(x, generator)
        if callback is not None:
            callback(i, n, x, x0)
    return x


def sample_dpmpp_2m(denoise, x, timesteps, schedule, callback=None, generator=None, karras=False):
    """DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++", Alg. 2), multistep second order in
    lambda = log(alpha/sigma), data prediction: x_s = (sigma_s/sigma_t) x_t - alpha_s expm1(-h) D,
    D = (1 + 1/(2r)) x0_i - 1/(2r) x0_{i-1}. First order on the first step and on the step to
    the clean sample (as diffusers' final_sigmas_type="zero"). `karras=True` re-spaces the
    same number of steps on Karras et al. 2022's sigma ramp from the first timestep down."""
    if karras:
        sigma_max = _sigma(schedule, timesteps[:1])
        timesteps = karras_timesteps(schedule, len(timesteps), sigma_max=sigma_max)
    ab, t_dev = _plan(schedule, timesteps, x)
    n = len(timesteps)
    lam = [0.5 * math.log(a / (1 - a)) if a < 1 else math.inf for a in ab]
    x0_prev = None
    for i in range(n):
        x0 = denoise(x, t_dev[i])
        a_t, a_s = ab[i], ab[i + 1]
        if a_s == 1.0:  # step to the clean sample: h = inf, the update is x0 itself
            x = x0
        else:
            h = lam[i + 1] - lam[i]
            d = x0
            if x0_prev is not None:
                r = (lam[i] - lam[i - 1]) / h
                d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * x0_prev
            x = math.sqrt((1 - a_s) / (1 - a_t)) * x - math.sqrt(a_s) * math.expm1(-h) * d
        x0_prev = x0
        if callback is not None:
            callback(i, n, x, x0)
    return x


def sample_euler_ancestral(
    denoise, x, timesteps, schedule, callback=None, generator=None, eta=1.0
):
    """Euler ancestral (Karras et al. 2022's Euler step on the probability-flow ODE with
    k-diffusion's ancestral noise split sigma_down / sigma_up), run in the variance-exploding
    scale x / sqrt(alpha_bar); converted from and to the VP scale at the edges."""
    ab, t_dev = _plan(schedule, timesteps, x)
    n = len(timesteps)
    s = [math.sqrt((1 - a) / a) for a in ab]  # s[n] = 0
    x = x * math.sqrt(1 + s[0] ** 2)  # VP -> VE
    for i in range(n):
        x0 = denoise(x / math.sqrt(1 + s[i] ** 2), t_dev[i])
        s_up = min(s[i + 1], eta * math.sqrt(s[i + 1] ** 2 * (s[i] ** 2 - s[i + 1] ** 2) / s[i] ** 2))
        s_down = math.sqrt(s[i + 1] ** 2 - s_up**2)
        x = x + (x - x0) / s[i] * (s_down - s[i])
        if s_up > 0:
            x = x + s_up * _randn_like(x, generator)
        if callback is not None:
            callback(i, n, x / math.sqrt(1 + s[i + 1] ** 2), x0)
    return x


def _sigma(schedule: NoiseSchedule, t: torch.Tensor) -> float:
    # float32 like `schedule.sigmas`, so an integer t gives exactly the table's sigma
    a = schedule.alphas_cumprod_at(t.detach().cpu()[:1])
    return ((1 - a) / a).sqrt().double().item()


SAMPLERS: dict[str, Callable[..., torch.Tensor]] = {
    "ddpm": sample_ddpm,
    "ddim": sample_ddim,
    "dpm++2m": sample_dpmpp_2m,
    "dpm++2m-karras": partial(sample_dpmpp_2m, karras=True),
    "euler-a": sample_euler_ancestral,
}
