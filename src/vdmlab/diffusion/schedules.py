"""Noise schedules t ∈ [0, 1] → λ(t), strictly decreasing from ``logsnr_max`` to ``logsnr_min`` (§4.5).

Every schedule exposes the same interface:

- ``logsnr(t)``: λ(t); ``forward(t)`` returns ``(λ(t), dλ/dt)``, which is what the loss needs;
- ``t_of(logsnr)``: the inverse t(λ);
- ``density(logsnr)``: p(λ) = -dt/dλ, the importance distribution of eq. (4.123) (zero outside the support).

This module holds the fixed schedules, pure functions of t. The schedules with parameters or state that
change during training, ``LearnedSchedule`` (VDM's monotone network, App. A.2) and ``AdaptiveSchedule``
(VDM++, eq. (4.130)), live in :mod:`vdmlab.diffusion.learned_schedules`; they share the ``Schedule`` base and
its ``update(logsnr, loss)`` hook, which training calls before backward.

The fixed schedules are truncated reparameterisations λ(t) = g(τ₀ + (τ₁ - τ₀)t) of a monotone map g, with
τ₀ = g⁻¹(λ_max) and τ₁ = g⁻¹(λ_min): each alternative only names g, g⁻¹ and g'. They are ``nn.Module``s so
that the learned and adaptive schedules are interchangeable with them.
"""

from __future__ import annotations

import abc
import math

import torch
from torch import Tensor, nn

from vdmlab.checks import ParameterError, check_float, check_int, check_positive


class Schedule(nn.Module, abc.ABC):
    """A strictly decreasing map t → λ with endpoints λ(0) = ``logsnr_max`` and λ(1) = ``logsnr_min``."""

    def __init__(self, logsnr_min: float, logsnr_max: float):
        super().__init__()
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (logsnr_min, logsnr_max))
        if not (numbers and math.isfinite(logsnr_min) and math.isfinite(logsnr_max) and logsnr_min < logsnr_max):
            raise ParameterError(("logsnr_min", "logsnr_max"), (logsnr_min, logsnr_max),
                                 "they must be finite with logsnr_min < logsnr_max (set diffusion.logsnr_min/logsnr_max)")
        self._set_endpoints(float(logsnr_min), float(logsnr_max))
        self._pending: list[tuple[Tensor, Tensor]] = []  # micro-batches gathered by ``accumulate``

    #: True when the endpoints are parameters trained by the ELBO (the module then adds the prior and decoder terms).
    trainable_endpoints: bool = False
    adapts: bool = False  # p(λ) changes while training (learned, adaptive)

    def _set_endpoints(self, logsnr_min: float, logsnr_max: float) -> None:
        """Store the (checked) endpoints; fixed schedules keep them as Python floats."""
        self.logsnr_min, self.logsnr_max = logsnr_min, logsnr_max

    def endpoints(self, like: Tensor) -> tuple[Tensor, Tensor]:
        """(λ_min, λ_max) as tensors with the dtype and device of ``like`` (with gradient where they are trained)."""
        ends = torch.tensor([self.logsnr_min, self.logsnr_max], dtype=like.dtype, device=like.device)
        return ends[0], ends[1]

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
        """p(λ) = -dt/dλ = -1/(dλ/dt), eqs. (4.100)–(4.102); zero outside [logsnr_min, logsnr_max]."""
        inside = (logsnr >= self.logsnr_min) & (logsnr <= self.logsnr_max)
        lam = logsnr.clamp(self.logsnr_min, self.logsnr_max)
        p = -1.0 / self.dlogsnr_dt(self.t_of(lam).clamp(0.0, 1.0))
        return torch.where(inside, p, torch.zeros_like(p))

    def update(self, logsnr: Tensor, loss: Tensor) -> None:
        """Hook called each training step with the drawn λ and per-example weighted loss, before backward.

        Fixed schedules ignore it; adaptive schedules update their statistics and learned ones their
        variance-minimising gradient from it.
        """

    def accumulate(self, logsnr: Tensor, loss: Tensor) -> None:
        """Gradient accumulation: one micro-batch's λ and losses, before its backward; the schedule does not change
        until :meth:`apply_accumulated` at the optimizer step. By default that makes one :meth:`update` with all
        of the step's examples, the update of one batch as large as the k micro-batches together."""
        self._pending.append((logsnr.detach(), loss.detach()))

    def apply_accumulated(self) -> None:
        """At the optimizer step, after the last micro-batch's backward: apply what :meth:`accumulate` gathered."""
        pending, self._pending = self._pending, []
        if pending:
            self.update(torch.cat([p[0].reshape(-1) for p in pending]), torch.cat([p[1].reshape(-1) for p in pending]))

    def extra_repr(self) -> str:
        return f"logsnr_min={self.logsnr_min}, logsnr_max={self.logsnr_max}"


class TruncatedSchedule(Schedule, abc.ABC):
    """λ(t) = g(τ₀ + (τ₁ - τ₀)t) for a decreasing g, truncated so that the endpoints are exact.

    Schedules whose g maps (0, 1) onto the real line also name the complementary forms ḡ(ρ) = g(1 - ρ),
    ḡ⁻¹(λ) = 1 - g⁻¹(λ) and ḡ'(ρ) = g'(1 - ρ) (``two_tailed``): ρ = 1 - τ is then carried beside τ and every
    formula reads whichever of the two is below ½. Near τ = 1 (the λ_min end) τ itself rounds in float32
    (1 - 10⁻⁸ == 1), so λ = -30 would come out as -28.6; ρ keeps its digits there. dλ/dt saturates at the
    largest finite float of its dtype where its true value is beyond it (EDM's |dλ/dt| reaches 10⁴⁰ at λ = -30).
    """

    #: True when the subclass defines ``_g_c``, ``_g_inv_c`` and ``_dg_c`` (g on (0, 1), both tails carried).
    two_tailed: bool = False

    def __init__(self, logsnr_min: float, logsnr_max: float):
        super().__init__(logsnr_min, logsnr_max)
        ends = torch.tensor([self.logsnr_max, self.logsnr_min], dtype=torch.float64)
        self.tau0, self.tau1 = (float(v) for v in self._g_inv(ends))
        if self.two_tailed:  # 1 - τ at the endpoints, computed directly rather than as 1 - τ
            self.rho0, self.rho1 = (float(v) for v in self._g_inv_c(ends))
            self.span = self.rho0 - self.rho1 if self.tau0 > 0.5 else self.tau1 - self.tau0  # no cancellation
        else:
            self.span = self.tau1 - self.tau0

    @abc.abstractmethod
    def _g(self, tau: Tensor) -> Tensor:
        """The monotone map g, its inverse or its derivative."""

    @abc.abstractmethod
    def _g_inv(self, logsnr: Tensor) -> Tensor:
        """The monotone map g, its inverse or its derivative."""

    @abc.abstractmethod
    def _dg(self, tau: Tensor) -> Tensor:
        """The monotone map g, its inverse or its derivative."""

    def _g_c(self, rho: Tensor) -> Tensor:
        """ḡ(ρ) = g(1 - ρ), accurate for small ρ (``two_tailed`` schedules)."""
        raise TypeError(f"{type(self).__name__} is one-tailed (two_tailed=False): it has no complementary map ḡ")

    def _g_inv_c(self, logsnr: Tensor) -> Tensor:
        """ḡ⁻¹(λ) = 1 - g⁻¹(λ), accurate where it is small (``two_tailed`` schedules)."""
        raise TypeError(f"{type(self).__name__} is one-tailed (two_tailed=False): it has no complementary map ḡ⁻¹")

    def _dg_c(self, rho: Tensor) -> Tensor:
        """ḡ'(ρ) = g'(1 - ρ), accurate for small ρ (``two_tailed`` schedules)."""
        raise TypeError(f"{type(self).__name__} is one-tailed (two_tailed=False): it has no complementary map ḡ'")

    def _tau(self, t: Tensor) -> Tensor:
        return self.tau0 + self.span * t

    def _rho(self, t: Tensor) -> Tensor:
        """ρ(t) = 1 - τ(t) = ρ₁ + (τ₁ - τ₀)(1 - t), without forming 1 - τ (exact at t = 1 as τ is at t = 0)."""
        return self.rho1 + self.span * (1.0 - t)

    def _two_tails(self, t: Tensor, lower, upper) -> Tensor:
        """``lower(τ)`` where τ(t) < ½, else ``upper(ρ)``; each branch sees only values where it is accurate."""
        tau = self._tau(t)
        if not self.two_tailed:
            return lower(tau)
        rho = self._rho(t)
        return torch.where(tau < 0.5, lower(tau.clamp(max=0.5)), upper(rho.clamp(max=0.5)))

    def _exact_ends(self, t: Tensor, logsnr: Tensor) -> Tensor:
        """λ clamped to [λ_min, λ_max] against rounding, and exactly λ_max at t = 0 and λ_min at t = 1."""
        logsnr = logsnr.clamp(self.logsnr_min, self.logsnr_max)
        logsnr = torch.where(t <= 0, torch.full_like(logsnr, self.logsnr_max), logsnr)
        return torch.where(t >= 1, torch.full_like(logsnr, self.logsnr_min), logsnr)

    def logsnr(self, t: Tensor) -> Tensor:
        """λ(t) = g(τ(t)) (or ḡ(ρ(t)) in the upper tail), with exact endpoints."""
        return self._exact_ends(t, self._two_tails(t, self._g, self._g_c))

    def dlogsnr_dt(self, t: Tensor) -> Tensor:
        """dλ/dt = g'(τ)·(τ₁ - τ₀) by the chain rule, saturated at the dtype's largest finite value."""
        d = self._two_tails(t, self._dg, self._dg_c) * self.span
        return d.clamp(min=-torch.finfo(d.dtype).max)

    def t_of(self, logsnr: Tensor) -> Tensor:
        """t(λ) = (g⁻¹(λ) - τ₀)/(τ₁ - τ₀), or (ρ₀ - ḡ⁻¹(λ))/(τ₁ - τ₀) in the upper tail of τ."""
        from_tau = (self._g_inv(logsnr) - self.tau0) / self.span
        if not self.two_tailed:
            return from_tau
        rho = self._g_inv_c(logsnr)
        return torch.where(rho > 0.5, from_tau, 1.0 - (rho - self.rho1) / self.span)


class LinearSchedule(TruncatedSchedule):
    """VDM's linear γ: λ(t) = λ_max + (λ_min - λ_max)t, so p(λ) is uniform."""

    def _g(self, tau: Tensor) -> Tensor:
        return -tau

    def _g_inv(self, logsnr: Tensor) -> Tensor:
        return -logsnr

    def _dg(self, tau: Tensor) -> Tensor:
        return -torch.ones_like(tau)


class ShiftedCosineSchedule(TruncatedSchedule):
    """Cosine schedule α = cos(πτ/2), λ = -2 log tan(πτ/2) + shift (Nichol & Dhariwal; simple diffusion).

    ``shift`` = 2·log(base/resolution) shifts the whole schedule (Hoogeboom et al. 2023); 0 is plain cosine.
    The upper tail uses tan(π(1 - ρ)/2) = 1/tan(πρ/2) and sin(π(1 - ρ)) = sin(πρ).
    """

    two_tailed = True

    def __init__(self, logsnr_min: float, logsnr_max: float, shift: float = 0.0):
        self.shift = check_float("shift", shift)
        super().__init__(logsnr_min, logsnr_max)

    def _g(self, tau: Tensor) -> Tensor:
        return -2.0 * torch.log(torch.tan(0.5 * math.pi * tau)) + self.shift

    def _g_c(self, rho: Tensor) -> Tensor:
        return 2.0 * torch.log(torch.tan(0.5 * math.pi * rho)) + self.shift

    def _g_inv(self, logsnr: Tensor) -> Tensor:
        return (2.0 / math.pi) * torch.atan(torch.exp(-0.5 * (logsnr - self.shift)))

    def _g_inv_c(self, logsnr: Tensor) -> Tensor:
        return (2.0 / math.pi) * torch.atan(torch.exp(0.5 * (logsnr - self.shift)))

    def _dg(self, tau: Tensor) -> Tensor:
        return -2.0 * math.pi / torch.sin(math.pi * tau)

    _dg_c = _dg  # sin(π(1 - ρ)) = sin(πρ)


class CosineSchedule(ShiftedCosineSchedule):
    """Nichol & Dhariwal's cosine schedule, λ = -2 log tan(πt/2), truncated to the endpoints."""

    def __init__(self, logsnr_min: float, logsnr_max: float):
        super().__init__(logsnr_min, logsnr_max, shift=0.0)


def resolution_shift(resolution: int, base: int = 64) -> float:
    """The simple-diffusion shift 2·log(base/resolution) of the cosine schedule."""
    return 2.0 * math.log(base / resolution)


class SimpleDiffusionSchedule(ShiftedCosineSchedule):
    """Shifted cosine configured by image resolution: shift = 2·log(base/resolution) (Hoogeboom et al.)."""

    def __init__(self, logsnr_min: float, logsnr_max: float, resolution: int = 8, base: int = 64):
        resolution, base = check_int("resolution", resolution, 1), check_int("base", base, 1)
        super().__init__(logsnr_min, logsnr_max, shift=resolution_shift(resolution, base))


class EDMSchedule(TruncatedSchedule):
    """EDM's training noise distribution λ ~ N(mean, std²) truncated, through the normal inverse CDF.

    λ(t) = mean - std·Φ⁻¹(τ), so p(λ) = N(λ; mean, std²)/(τ₁ - τ₀). EDM's P_mean = -1.2, P_std = 1.2 on
    log σ correspond to mean = 2.4, std = 2.4 on λ = -2 log σ. Both tails are carried (τ and 1 - τ = Φ of the
    mirrored argument) and Φ is evaluated as exp(log Φ): ``torch.special.ndtr`` underflows to 0 below
    about -8.3 (float64 too), which made τ₀ = 0 and dλ/dt = -inf at t = 0 for logsnr_max > 22.3.
    """

    two_tailed = True

    def __init__(self, logsnr_min: float, logsnr_max: float, mean: float = 2.4, std: float = 2.4):
        self.mean, self.std = check_float("mean", mean), check_positive("std", std)
        super().__init__(logsnr_min, logsnr_max)

    def _g(self, tau: Tensor) -> Tensor:
        return self.mean - self.std * torch.special.ndtri(tau)

    def _g_c(self, rho: Tensor) -> Tensor:
        return self.mean + self.std * torch.special.ndtri(rho)

    def _g_inv(self, logsnr: Tensor) -> Tensor:
        return torch.exp(torch.special.log_ndtr((self.mean - logsnr) / self.std))

    def _g_inv_c(self, logsnr: Tensor) -> Tensor:
        return torch.exp(torch.special.log_ndtr((logsnr - self.mean) / self.std))

    def _dg(self, tau: Tensor) -> Tensor:
        """g'(τ) = -std·√(2π)·exp(Φ⁻¹(τ)²/2)."""
        return -self.std * math.sqrt(2.0 * math.pi) * torch.exp(0.5 * torch.special.ndtri(tau) ** 2)

    _dg_c = _dg  # Φ⁻¹(1 - ρ)² = Φ⁻¹(ρ)²


class LogitNormalSchedule(EDMSchedule):
    """SD3's logit-normal time density on the rectified-flow path (Esser et al. 2024, §3.1).

    SD3 draws t_rf = sigmoid(m + s·n), n ~ N(0, 1), on the path α = 1 − t_rf, σ = t_rf, where λ = −2·logit(t_rf)
    (``flow``). Then λ = −2m − 2s·n ~ N(−2m, (2s)²): the truncated-normal schedule λ(t) = −2m − 2s·Φ⁻¹(τ) of ``edm``
    with mean −2m and std 2s, so λ(t), dλ/dt and t(λ) are analytic and p(λ) = N(λ; −2m, 4s²)/(τ₁ − τ₀) (eq. (4.102)).
    """

    def __init__(self, logsnr_min: float, logsnr_max: float, loc: float = 0.0, scale: float = 1.0):
        self.loc, self.scale = check_float("loc", loc), check_positive("scale", scale)
        super().__init__(logsnr_min, logsnr_max, mean=-2.0 * self.loc, std=2.0 * self.scale)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, loc={self.loc}, scale={self.scale}"


class FlowSchedule(TruncatedSchedule):
    """Rectified flow α = 1 - τ, σ = τ mapped to VP: λ = 2·log((1 - τ)/τ) = -2·logit(τ)."""

    two_tailed = True

    def _g(self, tau: Tensor) -> Tensor:
        return -2.0 * torch.logit(tau)

    def _g_c(self, rho: Tensor) -> Tensor:
        return 2.0 * torch.logit(rho)

    def _g_inv(self, logsnr: Tensor) -> Tensor:
        return torch.sigmoid(-0.5 * logsnr)

    def _g_inv_c(self, logsnr: Tensor) -> Tensor:
        return torch.sigmoid(0.5 * logsnr)

    def _dg(self, tau: Tensor) -> Tensor:
        return -2.0 / (tau * (1.0 - tau))

    _dg_c = _dg  # symmetric in τ ↔ 1 - τ


class DDPMSchedule(TruncatedSchedule):
    """Ho et al.'s linear β schedule in λ: the continuous limit of β_i = β_1 + (β_T - β_1)(i-1)/(T-1).

    With b(τ) = β_min + (β_max - β_min)τ (β_min = T·β_1, β_max = T·β_T; 0.1 and 20 for DDPM's T = 1000,
    1e-4 and 0.02), log ᾱ(τ) = -∫₀^τ b = -(β_min τ + ½(β_max - β_min)τ²) (Song et al. 2021, App. B), so
    λ = log(ᾱ/(1 - ᾱ)) = -log(expm1(s(τ))) with s(τ) = β_min τ + ½(β_max - β_min)τ², decreasing in τ.
    At τ = i/T it matches DDPM's discrete ᾱ_i to first order in β (λ(1) = -10.05 vs -10.12 for the product).
    g is defined for every τ > 0 (τ > 1 continues the β line, for λ_min < -10.05) and neither tail rounds in
    float32: τ₀ = g⁻¹(λ_max) is small but representable (9.4e-13 at λ_max = 30, where expm1 keeps its digits)
    and near λ_min |g'| ≈ b(τ) is moderate, so one tail suffices (``two_tailed`` False).
    """

    def __init__(self, logsnr_min: float, logsnr_max: float, beta_min: float = 0.1, beta_max: float = 20.0):
        beta_min = check_positive("beta_min", beta_min)
        beta_max = check_float("beta_max", beta_max)
        if not beta_max > beta_min:
            raise ParameterError(("beta_min", "beta_max"), (beta_min, beta_max), "they must satisfy 0 < beta_min < beta_max")
        self.beta_min, self.beta_max = beta_min, beta_max
        super().__init__(logsnr_min, logsnr_max)

    def _s(self, tau: Tensor) -> Tensor:
        """s(τ) = -log ᾱ(τ) = β_min τ + ½(β_max - β_min)τ²."""
        return self.beta_min * tau + 0.5 * (self.beta_max - self.beta_min) * tau * tau

    def _g(self, tau: Tensor) -> Tensor:
        return -torch.log(torch.expm1(self._s(tau)))

    def _g_inv(self, logsnr: Tensor) -> Tensor:
        u = torch.nn.functional.softplus(-logsnr)  # s = log(1 + e^{-λ})
        d = self.beta_max - self.beta_min
        return 2.0 * u / (self.beta_min + torch.sqrt(self.beta_min**2 + 2.0 * d * u))  # root of ½dτ² + β_min τ = u

    def _dg(self, tau: Tensor) -> Tensor:
        return -(self.beta_min + (self.beta_max - self.beta_min) * tau) / -torch.expm1(-self._s(tau))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, beta_min={self.beta_min}, beta_max={self.beta_max}"


def logsnr_grid(schedule: Schedule, steps: int, device: torch.device | str | None = None) -> Tensor:
    """The sampling grid λ(1) < … < λ(0) at t_i = i/steps, from the noisiest level to the cleanest."""
    t = torch.linspace(1.0, 0.0, steps + 1, device=device)
    with torch.no_grad():
        return schedule.logsnr(t)
