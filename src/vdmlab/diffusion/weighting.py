"""Weighting functions w(λ) of the weighted diffusion loss (§4.4-4.7) and the augmentation kernel p_w(t).

Every weighting is called as ``w(logsnr, p_logsnr)``: ``p_logsnr`` is the training schedule's density p(λ)
at the same points, which only the schedule-relative objectives (``simple``, ``min_snr``) read. The
``monotonic`` attribute is true exactly when w does not increase in λ (so w(λ_t) is a CDF-like function of
t and the objective is an ELBO under Gaussian data augmentation, eq. 4.162).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from vdmlab.checks import check_float, check_positive
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
        raise ValueError(f"p_w(t) is a density only for monotonic weightings; {weighting!r} is not (eq. 4.148)")
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
