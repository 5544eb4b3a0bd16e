"""Noise schedules t ∈ [0, 1] → λ(t), strictly decreasing from ``logsnr_max`` to ``logsnr_min`` (§4.5).

Every schedule exposes the same interface:

- ``logsnr(t)``: λ(t); ``forward(t)`` returns ``(λ(t), dλ/dt)``, which is what the loss needs;
- ``t_of(logsnr)``: the inverse t(λ);
- ``density(logsnr)``: p(λ) = -dt/dλ, the importance distribution of eq. (4.123) (zero outside the support).

The fixed schedules are truncated reparameterisations λ(t) = g(τ₀ + (τ₁ - τ₀)t) of a monotone map g, with
τ₀ = g⁻¹(λ_max) and τ₁ = g⁻¹(λ_min): each alternative only names g, g⁻¹ and g'. They are ``nn.Module``s so
that learned and adaptive schedules (which have parameters or state) are interchangeable with them.
"""

from __future__ import annotations

import abc
import math

import torch
from torch import Tensor, nn


class Schedule(nn.Module, abc.ABC):
    """A strictly decreasing map t → λ with endpoints λ(0) = ``logsnr_max`` and λ(1) = ``logsnr_min``."""

    def __init__(self, logsnr_min: float, logsnr_max: float):
        super().__init__()
        if not (math.isfinite(logsnr_min) and math.isfinite(logsnr_max)) or logsnr_min >= logsnr_max:
            raise ValueError(
                f"schedule endpoints must be finite with logsnr_min < logsnr_max, got "
                f"logsnr_min={logsnr_min}, logsnr_max={logsnr_max}; fix schedule.logsnr_min/logsnr_max"
            )
        self.logsnr_min = float(logsnr_min)
        self.logsnr_max = float(logsnr_max)

    @abc.abstractmethod
    def logsnr(self, t: Tensor) -> Tensor:
        """λ(t), the noise schedule f_λ of §4.5."""

    @abc.abstractmethod
    def dlogsnr_dt(self, t: Tensor) -> Tensor:
        """dλ/dt < 0, the Jacobian in eq. (4.107)."""

    @abc.abstractmethod
    def t_of(self, logsnr: Tensor) -> Tensor:
        """The inverse schedule t = f_λ⁻¹(λ) of §4.5."""

    def forward(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """(λ(t), dλ/dt): the noise level and the Jacobian the loss of eq. (4.123) needs."""
        return self.logsnr(t), self.dlogsnr_dt(t)

    def density(self, logsnr: Tensor) -> Tensor:
        """p(λ) = -dt/dλ = -1/(dλ/dt), eqs. (4.100-4.102); zero outside [logsnr_min, logsnr_max]."""
        inside = (logsnr >= self.logsnr_min) & (logsnr <= self.logsnr_max)
        lam = logsnr.clamp(self.logsnr_min, self.logsnr_max)
        p = -1.0 / self.dlogsnr_dt(self.t_of(lam).clamp(0.0, 1.0))
        return torch.where(inside, p, torch.zeros_like(p))

    def update(self, logsnr: Tensor, loss: Tensor) -> None:
        """Hook called each training step with the drawn λ and per-example weighted loss, before backward.

        Fixed schedules ignore it; adaptive schedules update their statistics and learned ones their
        variance-minimising gradient from it.
        """

    def extra_repr(self) -> str:
        return f"logsnr_min={self.logsnr_min}, logsnr_max={self.logsnr_max}"


class TruncatedSchedule(Schedule, abc.ABC):
    """λ(t) = g(τ₀ + (τ₁ - τ₀)t) for a decreasing g, truncated so that the endpoints are exact."""

    def __init__(self, logsnr_min: float, logsnr_max: float):
        super().__init__(logsnr_min, logsnr_max)
        self.tau0 = float(self._g_inv(torch.tensor(self.logsnr_max, dtype=torch.float64)))
        self.tau1 = float(self._g_inv(torch.tensor(self.logsnr_min, dtype=torch.float64)))

    @abc.abstractmethod
    def _g(self, tau: Tensor) -> Tensor:
        """The monotone map g, its inverse or its derivative."""

    @abc.abstractmethod
    def _g_inv(self, logsnr: Tensor) -> Tensor:
        """The monotone map g, its inverse or its derivative."""

    @abc.abstractmethod
    def _dg(self, tau: Tensor) -> Tensor:
        """The monotone map g, its inverse or its derivative."""

    def _tau(self, t: Tensor) -> Tensor:
        return self.tau0 + (self.tau1 - self.tau0) * t

    def logsnr(self, t: Tensor) -> Tensor:
        """λ(t) = g(τ(t)), clamped to the endpoints against float rounding."""
        return self._g(self._tau(t)).clamp(self.logsnr_min, self.logsnr_max)

    def dlogsnr_dt(self, t: Tensor) -> Tensor:
        """dλ/dt = g'(τ)·(τ₁ - τ₀) by the chain rule."""
        return self._dg(self._tau(t)) * (self.tau1 - self.tau0)

    def t_of(self, logsnr: Tensor) -> Tensor:
        """t(λ) = (g⁻¹(λ) - τ₀)/(τ₁ - τ₀)."""
        return (self._g_inv(logsnr) - self.tau0) / (self.tau1 - self.tau0)


class LinearSchedule(TruncatedSchedule):
    """VDM's linear γ: λ(t) = λ_max + (λ_min - λ_max)t, so p(λ) is uniform (VDM default γ ∈ [-13.3, 5])."""

    def __init__(self, logsnr_min: float = -5.0, logsnr_max: float = 13.3):
        super().__init__(logsnr_min, logsnr_max)

    def _g(self, tau: Tensor) -> Tensor:
        return -tau

    def _g_inv(self, logsnr: Tensor) -> Tensor:
        return -logsnr

    def _dg(self, tau: Tensor) -> Tensor:
        return -torch.ones_like(tau)


class ShiftedCosineSchedule(TruncatedSchedule):
    """Cosine schedule α = cos(πτ/2), λ = -2 log tan(πτ/2) + shift (Nichol & Dhariwal; simple diffusion).

    ``shift`` = 2·log(base/resolution) shifts the whole schedule (Hoogeboom et al. 2023); 0 is plain cosine.
    """

    def __init__(self, logsnr_min: float = -15.0, logsnr_max: float = 15.0, shift: float = 0.0):
        self.shift = float(shift)
        super().__init__(logsnr_min, logsnr_max)

    def _g(self, tau: Tensor) -> Tensor:
        return -2.0 * torch.log(torch.tan(0.5 * math.pi * tau)) + self.shift

    def _g_inv(self, logsnr: Tensor) -> Tensor:
        return (2.0 / math.pi) * torch.atan(torch.exp(-0.5 * (logsnr - self.shift)))

    def _dg(self, tau: Tensor) -> Tensor:
        return -2.0 * math.pi / torch.sin(math.pi * tau)


class CosineSchedule(ShiftedCosineSchedule):
    """Nichol & Dhariwal's cosine schedule, λ = -2 log tan(πt/2), truncated to the endpoints."""

    def __init__(self, logsnr_min: float = -15.0, logsnr_max: float = 15.0):
        super().__init__(logsnr_min, logsnr_max, shift=0.0)


def resolution_shift(resolution: int, base: int = 64) -> float:
    """The simple-diffusion shift 2·log(base/resolution) of the cosine schedule."""
    return 2.0 * math.log(base / resolution)


class SimpleDiffusionSchedule(ShiftedCosineSchedule):
    """Shifted cosine configured by image resolution: shift = 2·log(base/resolution) (Hoogeboom et al.)."""

    def __init__(self, logsnr_min: float = -15.0, logsnr_max: float = 15.0, resolution: int = 8, base: int = 64):
        super().__init__(logsnr_min, logsnr_max, shift=resolution_shift(resolution, base))


def _normal_cdf(x: float) -> float:
    """Φ(x) in double precision, accurate in the lower tail (erfc, not 1 - erf)."""
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


class EDMSchedule(TruncatedSchedule):
    """EDM's training noise distribution λ ~ N(mean, std²) truncated, through the normal inverse CDF.

    λ(t) = mean - std·Φ⁻¹(τ), so p(λ) = N(λ; mean, std²)/(τ₁ - τ₀). EDM's P_mean = -1.2, P_std = 1.2 on
    log σ correspond to mean = 2.4, std = 2.4 on λ = -2 log σ. Both tails are carried separately
    (τ and 1 - τ), so endpoints many standard deviations out stay finite in float32.
    """

    def __init__(self, logsnr_min: float = -15.0, logsnr_max: float = 15.0, mean: float = 2.4, std: float = 2.4):
        self.mean, self.std = float(mean), float(std)
        super().__init__(logsnr_min, logsnr_max)
        # upper-tail masses 1 - τ at the endpoints, computed directly rather than as 1 - τ
        self.rho0 = _normal_cdf((self.logsnr_max - self.mean) / self.std)
        self.rho1 = _normal_cdf((self.logsnr_min - self.mean) / self.std)

    def _g(self, tau: Tensor) -> Tensor:
        return self.mean - self.std * torch.special.ndtri(tau)

    def _g_inv(self, logsnr: Tensor) -> Tensor:
        return torch.special.ndtr((self.mean - logsnr) / self.std)

    def _dg(self, tau: Tensor) -> Tensor:
        return -self.std * math.sqrt(2.0 * math.pi) * torch.exp(0.5 * torch.special.ndtri(tau) ** 2)

    def _probit(self, t: Tensor) -> Tensor:
        """Φ⁻¹(τ(t)) from whichever tail, τ or 1 - τ, is smaller."""
        tau = self._tau(t)
        rho = self.rho1 + (self.rho0 - self.rho1) * (1.0 - t)
        return torch.where(tau < 0.5, torch.special.ndtri(tau), -torch.special.ndtri(rho))

    def logsnr(self, t: Tensor) -> Tensor:
        """λ(t) = mean - std·Φ⁻¹(τ(t))."""
        return (self.mean - self.std * self._probit(t)).clamp(self.logsnr_min, self.logsnr_max)

    def dlogsnr_dt(self, t: Tensor) -> Tensor:
        """dλ/dt = -std·√(2π)·exp(Φ⁻¹(τ)²/2)·(τ₁ - τ₀)."""
        return -self.std * math.sqrt(2.0 * math.pi) * torch.exp(0.5 * self._probit(t) ** 2) * (self.tau1 - self.tau0)

    def t_of(self, logsnr: Tensor) -> Tensor:
        """t(λ) from the lower tail Φ((mean - λ)/std) above the mean and the upper tail below it."""
        from_tau = (torch.special.ndtr((self.mean - logsnr) / self.std) - self.tau0) / (self.tau1 - self.tau0)
        from_rho = 1.0 - (torch.special.ndtr((logsnr - self.mean) / self.std) - self.rho1) / (self.tau1 - self.tau0)
        return torch.where(logsnr > self.mean, from_tau, from_rho)


class FlowSchedule(TruncatedSchedule):
    """Rectified flow α = 1 - τ, σ = τ mapped to VP: λ = 2·log((1 - τ)/τ) = -2·logit(τ)."""

    def __init__(self, logsnr_min: float = -15.0, logsnr_max: float = 15.0):
        super().__init__(logsnr_min, logsnr_max)

    def _g(self, tau: Tensor) -> Tensor:
        return -2.0 * torch.logit(tau)

    def _g_inv(self, logsnr: Tensor) -> Tensor:
        return torch.sigmoid(-0.5 * logsnr)

    def _dg(self, tau: Tensor) -> Tensor:
        return -2.0 / (tau * (1.0 - tau))


def logsnr_grid(schedule: Schedule, steps: int, device: torch.device | str | None = None) -> Tensor:
    """The sampling grid λ(1) < … < λ(0) at t_i = i/steps, from the noisiest level to the cleanest."""
    t = torch.linspace(1.0, 0.0, steps + 1, device=device)
    with torch.no_grad():
        return schedule.logsnr(t)
