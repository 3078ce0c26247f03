"""Discrete-time Gaussian noise schedules (DDPM, Ho et al. 2020) and the algebra around them.

Paper names throughout: `betas`, `alphas = 1 - betas`, `alphas_cumprod` (alpha-bar),
`x_t = sqrt(alphas_cumprod[t]) * x0 + sqrt(1 - alphas_cumprod[t]) * eps`.
Timesteps are integer tensors in [0, T); float timesteps (Karras / DPM-Solver schedules) are
read by linear interpolation of log-sigma, the inverse of the way such timesteps are made.
All schedule math runs in float32 whatever the dtype of the data, and results are cast back.

This module never imports `t2i.models`: the network never sees the schedule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

KINDS = ("cosine", "linear", "scaled_linear")
PREDICTIONS = ("eps", "v", "x0")
# Most training steps a schedule may have (1000 is usual): the tables are O(T), and the cosine
# betas are computed in a Python loop, so an absurd T from a config file must be refused first.
MAX_T = 100_000


def _cosine_betas(T: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Cosine schedule (Nichol & Dhariwal 2021, eq. 17), diffusers' "squaredcos_cap_v2":
    alpha_bar(u) = cos((u + s) / (1 + s) * pi / 2)^2, beta_i = 1 - alpha_bar((i+1)/T) / alpha_bar(i/T),
    clipped at 0.999 so the last step is not singular. Float64 math, stored as float32."""

    def alpha_bar(u: float) -> float:
        return math.cos((u + s) / (1 + s) * math.pi / 2) ** 2

    betas = [min(1 - alpha_bar((i + 1) / T) / alpha_bar(i / T), max_beta) for i in range(T)]
    return torch.tensor(betas, dtype=torch.float32)


@dataclass(eq=False)
class NoiseSchedule:
    """A variance-preserving noise schedule with `T` steps.

    kind: "cosine" (Nichol & Dhariwal 2021), "linear" (Ho et al. 2020: betas linear in
    [beta_start, beta_end]) or "scaled_linear" (Stable Diffusion: sqrt(betas) linear).
    """

    kind: str = "cosine"
    T: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    betas: torch.Tensor = field(init=False, repr=False)
    alphas: torch.Tensor = field(init=False, repr=False)
    alphas_cumprod: torch.Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"schedule kind {self.kind!r} is not one of {KINDS}")
        if isinstance(self.T, bool) or not isinstance(self.T, int) or not 2 <= self.T <= MAX_T:
            raise ValueError(f"schedule T={self.T!r} must be an integer in [2, {MAX_T}]")
        for name in ("beta_start", "beta_end"):
            if isinstance(getattr(self, name), bool) or not isinstance(getattr(self, name), (int, float)):
                raise ValueError(f"schedule {name}={getattr(self, name)!r} must be a number")
        if self.kind != "cosine" and not 0 < self.beta_start <= self.beta_end < 1:
            raise ValueError(f"schedule betas must satisfy 0 < beta_start <= beta_end < 1, "
                             f"got beta_start={self.beta_start}, beta_end={self.beta_end}")
        if self.kind == "cosine":
            self.betas = _cosine_betas(self.T)
        elif self.kind == "linear":
            self.betas = torch.linspace(self.beta_start, self.beta_end, self.T, dtype=torch.float32)
        else:
            sqrt_betas = torch.linspace(
                self.beta_start**0.5, self.beta_end**0.5, self.T, dtype=torch.float32
            )
            self.betas = sqrt_betas**2
        self.alphas = 1.0 - self.betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        # log(sigma_t) of the T training steps, float64 for the interpolation of float timesteps.
        self._log_sigmas = (
            0.5 * torch.log((1 - self.alphas_cumprod.double()) / self.alphas_cumprod.double())
        )
        self._device_cache: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    # -- serialisation ---------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"kind": self.kind, "T": self.T, "beta_start": self.beta_start, "beta_end": self.beta_end}

    @classmethod
    def from_dict(cls, d: dict) -> NoiseSchedule:
        if not isinstance(d, dict):
            raise ValueError(f"a noise schedule must be an object, got {d!r}")
        return cls(**{k: d[k] for k in ("kind", "T", "beta_start", "beta_end") if k in d})

    # -- arrays ----------------------------------------------------------------------------
    @property
    def sigmas(self) -> torch.Tensor:
        """sigma_t = sqrt((1 - alpha_bar) / alpha_bar): the noise level of x_t / sqrt(alpha_bar)
        (the variance-exploding view used by Karras et al. 2022 and k-diffusion), shape (T,)."""
        return ((1 - self.alphas_cumprod) / self.alphas_cumprod).sqrt()

    def snr(self, t: torch.Tensor) -> torch.Tensor:
        """Signal-to-noise ratio alpha_bar / (1 - alpha_bar) at timesteps t, float32."""
        ac = self.alphas_cumprod_at(t)
        return ac / (1 - ac)

    def alphas_cumprod_at(self, t: torch.Tensor | int | float) -> torch.Tensor:
        """alpha_bar at timesteps `t` on t's device, float32, same shape as t.

        Integer t indexes the table. Float t interpolates log(sigma) linearly between the two
        neighbouring integer steps (the inverse of `sigma_to_t`), so a Karras-spaced sigma
        maps to a float timestep and back to the same sigma."""
        t = torch.as_tensor(t)
        table, log_sigmas = self._tables(t.device)
        if not t.is_floating_point():
            return table[t]
        # float64: near t = T-1 the cosine schedule's log-sigma is steep, and float32 t or
        # weights would move sigma by ~1e-4 relative.
        t = t.double().clamp(0, self.T - 1)
        lo = t.floor().long().clamp(max=self.T - 2)
        w = t - lo
        log_sigma = torch.lerp(log_sigmas[lo], log_sigmas[lo + 1], w)
        return torch.sigmoid(-2 * log_sigma).float()  # 1 / (1 + sigma^2)

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        """Float64 timestep whose interpolated sigma equals `sigma` (clamped to [0, T-1])."""
        log_sigma = torch.as_tensor(sigma, dtype=torch.float64).clamp_min(1e-10).log()
        ls = self._log_sigmas  # increasing in t
        hi = torch.searchsorted(ls, log_sigma).clamp(1, self.T - 1)
        lo = hi - 1
        w = ((log_sigma - ls[lo]) / (ls[hi] - ls[lo])).clamp(0, 1)
        return lo + w

    def _tables(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        # Cached per device so a training step does not copy the table host->device each time.
        if device not in self._device_cache:
            self._device_cache[device] = (
                self.alphas_cumprod.to(device),
                self._log_sigmas.to(device),
            )
        return self._device_cache[device]

    def _coeffs(self, t: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(sqrt(alpha_bar), sqrt(1 - alpha_bar)) at t, float32, shaped (B, 1, ..., 1) like `like`."""
        t = torch.as_tensor(t, device=like.device)
        ac = self.alphas_cumprod_at(t).reshape(-1, *([1] * (like.ndim - 1)))
        return ac.sqrt(), (1 - ac).sqrt()

    # -- forward process and parameterisations --------------------------------------------
    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """q(x_t | x_0) sample: sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) noise (Ho et al. 2020, eq. 4)."""
        a, s = self._coeffs(t, x0)
        return (a * x0.float() + s * noise.float()).to(x0.dtype)

    def training_target(
        self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, prediction: str = "v"
    ) -> torch.Tensor:
        """What the network regresses: eps (Ho et al. 2020), x0, or
        v = sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x0 (Salimans & Ho 2022, sec. 4)."""
        _check_prediction(prediction)
        if prediction == "eps":
            return noise
        if prediction == "x0":
            return x0
        a, s = self._coeffs(t, x0)
        return (a * noise.float() - s * x0.float()).to(x0.dtype)

    def predict_x0(
        self, x_t: torch.Tensor, model_out: torch.Tensor, t: torch.Tensor, prediction: str
    ) -> torch.Tensor:
        """x0 estimate from the network output (float32)."""
        _check_prediction(prediction)
        out = model_out.float()
        if prediction == "x0":
            return out
        a, s = self._coeffs(t, x_t)
        if prediction == "eps":
            return (x_t.float() - s * out) / a
        return a * x_t.float() - s * out  # v: x0 = sqrt(ab) x_t - sqrt(1-ab) v

    def predict_eps(
        self, x_t: torch.Tensor, model_out: torch.Tensor, t: torch.Tensor, prediction: str
    ) -> torch.Tensor:
        """eps estimate from the network output (float32)."""
        _check_prediction(prediction)
        out = model_out.float()
        if prediction == "eps":
            return out
        a, s = self._coeffs(t, x_t)
        if prediction == "x0":
            return (x_t.float() - a * out) / s
        return a * out + s * x_t.float()  # v: eps = sqrt(ab) v + sqrt(1-ab) x_t

    def min_snr_weight(self, t: torch.Tensor, gamma: float = 5.0, prediction: str = "v") -> torch.Tensor:
        """Per-sample loss weight of Min-SNR-gamma (Hang et al. 2023), float32 (B,).

        The paper's weight is min(SNR, gamma) on the x0-loss; expressed on the regressed target
        that is min(SNR, gamma) / SNR for eps and min(SNR, gamma) / (SNR + 1) for v."""
        _check_prediction(prediction)
        snr = self.snr(t)
        clipped = snr.clamp(max=gamma)
        if prediction == "eps":
            return clipped / snr
        if prediction == "v":
            return clipped / (snr + 1)
        return clipped


def _check_prediction(prediction: str) -> None:
    if prediction not in PREDICTIONS:
        raise ValueError(f"prediction {prediction!r} is not one of {PREDICTIONS}")
