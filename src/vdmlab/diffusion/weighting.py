"""Weighting functions w(λ) of the weighted diffusion loss (§4.4-4.7) and the augmentation kernel p_w(t).

Every weighting is called as ``w(logsnr, p_logsnr)``: ``p_logsnr`` is the training schedule's density p(λ)
at the same points, which only the schedule-relative objectives (``simple``, ``min_snr``) read. The
``monotonic`` attribute is true exactly when w does not increase in λ (so w(λ_t) is a CDF-like function of
t and the objective is an ELBO under Gaussian data augmentation, eq. (4.162)).

A weighting with parameters (``edm2_uncertainty``) is an ``nn.Module`` as well, so the DiffusionModule registers
it and its optimizer trains it; :meth:`Weighting.objective` turns the per-example weighted loss into the loss
that training minimises (the identity for every fixed weighting), and :meth:`Weighting.trained_weight` is the
w(λ) that the network effectively sees (w itself, or w·e^{-u(λ)} for the learned weighting).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from vdmlab.checks import check_float, check_int, check_positive
from vdmlab.diffusion.schedules import Schedule


class Weighting:
    """Base class: ``__call__(logsnr, p_logsnr)`` returns w(λ) with the shape of ``logsnr``."""

    monotonic: bool = True
    name: str = "weighting"
    reads_density: bool = False  # w is defined through the training schedule's p(λ) (simple, min_snr)

    def __call__(self, logsnr: Tensor, p_logsnr: Tensor | None = None) -> Tensor:
        return self.weight(logsnr, p_logsnr)

    def weight(self, logsnr: Tensor, p_logsnr: Tensor | None) -> Tensor:
        """w(λ); subclasses implement it."""
        raise TypeError(f"{type(self).__name__} does not define weight()")

    def objective(self, loss: Tensor, logsnr: Tensor, p_logsnr: Tensor) -> Tensor:
        """The per-example loss that training minimises, from the weighted loss ½ w/p ‖ε − ε̂‖² of eq. (4.123)."""
        return loss

    def trained_weight(self, logsnr: Tensor, p_logsnr: Tensor | None = None) -> Tensor:
        """The w(λ) that the network is trained with: w itself (a learned weighting rescales it, eq. (4.123))."""
        return self(logsnr, p_logsnr)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(monotonic={self.monotonic})"


class ELBOWeighting(Weighting):
    """w(λ) = 1: the unweighted diffusion term of the ELBO, eq. (3.134)."""

    name = "elbo"

    def weight(self, logsnr: Tensor, p_logsnr: Tensor | None) -> Tensor:
        """w(λ) = 1, eq. (3.134)."""
        return torch.ones_like(logsnr)


class SigmoidWeighting(Weighting):
    """w(λ) = sigmoid(b - λ), VDM++'s monotonic weighting with bias b (§4.7)."""

    name = "sigmoid"

    def __init__(self, bias: float = 2.0):
        self.bias = check_float("bias", bias)

    def weight(self, logsnr: Tensor, p_logsnr: Tensor | None) -> Tensor:
        """w(λ) = sigmoid(b - λ) (VDM++ §4.7)."""
        return torch.sigmoid(self.bias - logsnr)


class VWeighting(Weighting):
    """w(λ) = e^{-λ/2}: the weighting implied by v-prediction MSE with a cosine schedule (VDM++ Table 1)."""

    name = "v"

    def weight(self, logsnr: Tensor, p_logsnr: Tensor | None) -> Tensor:
        """w(λ) = exp(-λ/2), implied by ‖v - v̂‖² = ‖ε - ε̂‖²/α² (Table 4.3) under the cosine schedule."""
        return torch.exp(-0.5 * logsnr)


class FlowWeighting(VWeighting):
    """Rectified flow / flow matching with the OT path: ‖u - û‖² under t ~ U(0,1) implies w(λ) = e^{-λ/2}.

    With α = 1 - t, σ = t: ‖u - û‖² = ‖ε - ε̂‖²/(1 - t)² and -dλ/dt = 2/(t(1 - t)), so
    ½·w·(-dλ/dt) = 1/(1 - t)² gives w = t/(1 - t) = e^{-λ/2}: the same function as ``v`` (VDM++ App. D).
    """

    name = "flow"


class EDMWeighting(Weighting):
    """EDM's implied weighting N(λ; μ, s²)·(e^{-λ} + σ_data²)/σ_data² (Karras et al. 2022): not monotonic."""

    name = "edm"
    monotonic = False

    def __init__(self, mean: float = 2.4, std: float = 2.4, sigma_data: float = 0.5):
        self.mean, self.std = check_float("mean", mean), check_positive("std", std)
        self.sigma_data = check_positive("sigma_data", sigma_data)

    def weight(self, logsnr: Tensor, p_logsnr: Tensor | None) -> Tensor:
        """w(λ) = N(λ; 2.4, 2.4²)(e^{-λ} + σ_d²)/σ_d², evaluated in log space."""
        log_normal = -0.5 * ((logsnr - self.mean) / self.std) ** 2 - math.log(self.std * math.sqrt(2 * math.pi))
        log_sd2 = 2.0 * math.log(self.sigma_data)
        log_ratio = torch.logaddexp(-logsnr, torch.full_like(logsnr, log_sd2)) - log_sd2
        return torch.exp(log_normal + log_ratio)


class IDDPMWeighting(Weighting):
    """w(λ) = sech(λ/2), implied by IDDPM's cosine schedule with ε-MSE (VDM++ Table 1): not monotonic."""

    name = "iddpm"
    monotonic = False

    def weight(self, logsnr: Tensor, p_logsnr: Tensor | None) -> Tensor:
        """w(λ) = sech(λ/2) = 2e^{-|λ|/2}/(1 + e^{-|λ|}), overflow-free."""
        a = logsnr.abs()
        return 2.0 * torch.exp(-0.5 * a) / (1.0 + torch.exp(-a))


class SimpleWeighting(Weighting):
    """Ho et al.'s L_simple: w(λ) = 1/γ'(t) = p(λ) under the training schedule, eq. (4.95).

    With this weighting the per-example loss equals ½‖ε - ε̂‖², i.e. ½ L_simple of eq. (4.91). Its
    monotonicity is that of p(λ); it is reported as non-monotonic (true for every schedule here but ``linear``).
    """

    reads_density = True

    name = "simple"
    monotonic = False

    def weight(self, logsnr: Tensor, p_logsnr: Tensor | None) -> Tensor:
        """w(λ) = p(λ), eq. (4.95)."""
        if p_logsnr is None:
            raise ValueError("weighting=simple needs the schedule density p(λ); pass p_logsnr")
        return p_logsnr


class MinSNRWeighting(Weighting):
    """Min-SNR-γ (Hang et al. 2023): ε-MSE weighted by min(1, γ/SNR) under the training schedule.

    w(λ) = p(λ)·min(1, γ e^{-λ}), so γ → ∞ recovers ``simple``. Non-monotonic in general.
    """

    reads_density = True

    name = "min_snr"
    monotonic = False

    def __init__(self, gamma: float = 5.0):
        self.gamma = check_positive("gamma", gamma)

    def weight(self, logsnr: Tensor, p_logsnr: Tensor | None) -> Tensor:
        """w(λ) = p(λ)·min(1, γ/SNR) (Hang et al. 2023) in the form of eq. (4.95)."""
        if p_logsnr is None:
            raise ValueError("weighting=min_snr needs the schedule density p(λ); pass p_logsnr")
        return p_logsnr * torch.exp(torch.clamp(math.log(self.gamma) - logsnr, max=0.0))


def augmentation_kernel(weighting: Weighting, schedule: Schedule, t: Tensor) -> Tensor:
    """Normalised augmentation kernel p_w(t) = (dw/dλ · dλ/dt)/(w(λ_min) - w(λ_max)), eq. (4.150).

    Defined for monotonic weightings whose w varies over the schedule's range; ``elbo`` (w ≡ 1) is a point
    mass at t = 0 and has no density. dλ/dt is the schedule's own (analytic, exact at both ends); only w is
    differentiated, in λ. The kernel is a plotted diagnostic: no gradient flows to the schedule's parameters.
    """
    if not weighting.monotonic:
        raise ValueError(f"p_w(t) is a density only for monotonic weightings; {weighting!r} is not (eq. (4.148))")
    def w_of(logsnr: Tensor) -> Tensor:
        return weighting(logsnr, schedule.density(logsnr) if weighting.reads_density else None)

    ends = torch.tensor([schedule.logsnr_min, schedule.logsnr_max], dtype=t.dtype, device=t.device)
    w_min, w_max = w_of(ends)
    if not bool(w_min > w_max):
        raise ValueError(f"{weighting!r} is constant over the schedule's range: p_w(t) is a point mass at t=0")
    with torch.no_grad():
        logsnr, dlogsnr_dt = schedule(t)
    with torch.enable_grad():
        logsnr = logsnr.detach().requires_grad_(True)
        (dw_dlogsnr,) = torch.autograd.grad(w_of(logsnr).sum(), logsnr)
    return dw_dlogsnr * dlogsnr_dt / (w_min - w_max)


class P2Weighting(Weighting):
    """Choi et al. 2022's perception-prioritised weighting: the ε-MSE of the training schedule times 1/(k + SNR)^γ.

    P2 replaces L_simple's per-step weight λ_t (eq. (4.91)) by λ'_t = λ_t/(k + SNR(t))^γ (Choi et al. 2022). L_simple is
    the weighted loss with w(λ) = p(λ) (eq. (4.95)), and SNR = e^λ, so in this convention w(λ) = p(λ)·(k + e^λ)^{-γ};
    γ = 0 is ``simple``. Like ``simple`` it reads the training schedule's p(λ), and its monotonicity is that of
    p(λ)(k + e^λ)^{-γ}: true under ``linear`` (uniform p), false under ``cosine`` (p ∝ sech(λ/2) grows like e^{λ/2}
    for λ ≪ 0, where the factor is ≈ k^{-γ}) and any schedule whose p(λ) rises at low λ; it is reported non-monotonic.
    """

    reads_density = True

    name = "p2"
    monotonic = False

    def __init__(self, k: float = 1.0, gamma: float = 1.0):
        self.k = check_positive("k", k)
        self.gamma = check_float("gamma", gamma, minimum=0.0)

    def weight(self, logsnr: Tensor, p_logsnr: Tensor | None) -> Tensor:
        """w(λ) = p(λ)·(k + e^λ)^{-γ}: Choi et al.'s P2 weight in the form of eq. (4.95), in log space."""
        if p_logsnr is None:
            raise ValueError("weighting=p2 needs the schedule density p(λ); pass p_logsnr")
        log_k = torch.full_like(logsnr, math.log(self.k))
        return p_logsnr * torch.exp(-self.gamma * torch.logaddexp(logsnr, log_k))


def _log_normal(logsnr: Tensor, mean: float, std: float) -> Tensor:
    """log N(λ; mean, std²)."""
    return -0.5 * ((logsnr - mean) / std) ** 2 - math.log(std * math.sqrt(2 * math.pi))


class LogitNormalFlowWeighting(Weighting):
    """SD3's objective (Esser et al. 2024, §3.1): rectified flow ‖u − û‖² with t_rf ~ logit-normal(m, s²).

    Esser et al. write it as the weighting w_t = t/(1 − t)·π(t) of the ε-loss, with π(t) = N(logit t; m, s²)/(t(1 − t))
    the logit-normal density. On the rectified-flow path t_rf = sigmoid(−λ/2), so t/(1 − t) = e^{−λ/2} (the ``flow``
    weighting) and w(λ) = e^{−λ/2}·π(t_rf(λ)) = N(−λ/2; m, s²)·(1 + e^{−λ/2})². It is a fixed function of λ: with
    ``schedule=logit_normal`` (the same m, s) the per-example loss is ‖u − û‖² times a constant, SD3's estimator;
    ``weighting=flow`` with that schedule is instead the uniform-t flow objective importance-sampled by the
    logit-normal density. Not monotonic: the normal factor vanishes faster than (1 + e^{−λ/2})² grows as λ → −∞.
    """

    name = "sd3"
    monotonic = False

    def __init__(self, loc: float = 0.0, scale: float = 1.0):
        self.loc, self.scale = check_float("loc", loc), check_positive("scale", scale)

    def weight(self, logsnr: Tensor, p_logsnr: Tensor | None) -> Tensor:
        """w(λ) = N(−λ/2; m, s²)(1 + e^{−λ/2})² (Esser et al. 2024, §3.1, w_t = t/(1−t)·π(t)), in log space."""
        log_pi = _log_normal(-0.5 * logsnr, self.loc, self.scale)
        return torch.exp(log_pi + 2.0 * torch.nn.functional.softplus(-0.5 * logsnr))


class EDM2UncertaintyWeighting(EDMWeighting, nn.Module):
    """EDM2's learned uncertainty weighting (Karras et al. 2024, eqs. (14)–(16), (21)): w(λ)·e^{−u(λ)}, u learned.

    The base w(λ) = N(λ; μ, s²)(e^{−λ} + σ_d²)/σ_d² is EDM's in this convention with EDM2's noise distribution
    (ln σ ~ N(P_mean, P_std²) with the pixel-space presets' P_mean = −0.8, P_std = 1.6, i.e. λ = −2 ln σ ~ N(1.6, 3.2²)).
    Write the per-example weighted loss of eq. (4.123) as L = (n(λ)/p(λ))·ℓ with n = N(λ; μ, s²) and
    ℓ = ½(e^{−λ} + σ_d²)/σ_d²·‖ε − ε̂‖², EDM2's per-σ loss λ(σ)‖D − y‖². Training minimises
    L·e^{−u(λ)} + (n/p)·u(λ), whose expectation over λ ~ p is E_{λ~n}[ℓ e^{−u} + u], EDM2's eq. (21) for any
    schedule p. Its minimiser is u(λ) = log E[ℓ | λ], so the network sees w·e^{−u} = 2n(λ)/E[‖ε − ε̂‖² | λ]: every
    noise level contributes equally, weighted by EDM2's noise distribution. u is EDM2's log-variance head, a linear
    layer on √2·cos(f·c + φ) of c = ln σ/4 = −λ/8 with fixed random frequencies f ~ N(0, (2π)²) and phases
    φ ~ U(0, 2π); it starts at u ≡ 0 (zero-initialised) and is trained by the module's optimizer with the network.
    EDM2 averages over pixels (so its u is log of a per-pixel loss); here ℓ sums over them, which only shifts u by
    log D. Not monotonic.
    """

    name = "edm2_uncertainty"
    monotonic = False

    def __init__(self, mean: float = 1.6, std: float = 3.2, sigma_data: float = 0.5, features: int = 128, seed: int = 0):
        nn.Module.__init__(self)
        EDMWeighting.__init__(self, mean, std, sigma_data)
        features = check_int("features", features, 1)
        generator = torch.Generator().manual_seed(check_int("seed", seed))
        self.register_buffer("freqs", 2 * math.pi * torch.randn(features, generator=generator))
        self.register_buffer("phases", 2 * math.pi * torch.rand(features, generator=generator))
        self.linear = nn.Linear(features, 1)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def log_variance(self, logsnr: Tensor) -> Tensor:
        """u(λ): EDM2's log-variance head on the Fourier features of c_noise = ln σ/4 = −λ/8 (eq. (21))."""
        c = (-logsnr / 8.0).unsqueeze(-1).to(self.freqs.dtype)
        features = math.sqrt(2.0) * torch.cos(c * self.freqs + self.phases)
        return self.linear(features.to(self.linear.weight.dtype)).squeeze(-1).to(logsnr.dtype)

    def objective(self, loss: Tensor, logsnr: Tensor, p_logsnr: Tensor) -> Tensor:
        """Gradient of L·e^{−u(λ)} + (n(λ)/p(λ))·u(λ), whose E_{λ~p} is EDM2's E_{λ~n}[ℓ e^{−u} + u] (eq. (21)).

        Its value is L·e^{−u}, the loss under the trained weighting w·e^{−u}: the (n/p)·u term enters as
        (n/p)·(u − sg(u)), zero in value, so that ``train/loss`` and the adaptive and learned schedules (which read
        the per-example loss, eq. (4.130)) see a positive weighted loss rather than the u term, which can be negative.
        """
        u = self.log_variance(logsnr.detach())
        ratio = torch.exp(_log_normal(logsnr.detach(), self.mean, self.std) - torch.log(p_logsnr.detach()))
        return loss * torch.exp(-u) + ratio * (u - u.detach())

    def trained_weight(self, logsnr: Tensor, p_logsnr: Tensor | None = None) -> Tensor:
        """w(λ)·e^{−u(λ)}: the weighting the network is trained with (eq. (4.123) with eq. (21)'s rescaling)."""
        return self(logsnr, p_logsnr) * torch.exp(-self.log_variance(logsnr))
