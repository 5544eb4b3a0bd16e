"""The one loss (docs/architecture.md): the importance-sampled weighted diffusion loss, eq. (4.123).

    L_w(x) = ½ · E_{λ~p(λ), ε} [ w(λ)/p(λ) · ‖ε − ε̂(z_λ; λ)‖² ]

``schedule`` supplies p(λ) (through t ~ U(0, 1) and λ = λ(t)), ``weighting`` supplies w(λ), and the
``parameterization`` turns the network output into ε̂. Continuous time uses 1/p(λ) = -dλ/dt (eq. (4.107));
discrete time with T steps uses T·expm1(λ_s - λ_t) in its place (eq. (A.38)), so both share one code path.
Per-example terms are ``[B]`` tensors in nats, summed over data dimensions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from vdmlab.diffusion.parameterization import Parameterization
from vdmlab.diffusion.process import diffuse, snr_difference_weight
from vdmlab.diffusion.schedules import Schedule
from vdmlab.diffusion.weighting import Weighting


def iid_times(batch_size: int, *, generator: torch.Generator | None = None, device=None) -> Tensor:
    """t_i ~ U(0, 1) independently."""
    return torch.rand(batch_size, generator=generator, device=device)


def low_discrepancy_times(batch_size: int, *, generator: torch.Generator | None = None, device=None) -> Tensor:
    """Antithetic stratified times t_i = (u + i/B) mod 1 with one shared u ~ U(0, 1) (VDM App. I.1)."""
    u = torch.rand((), generator=generator, device=device)
    return torch.remainder(u + torch.arange(batch_size, device=device) / batch_size, 1.0)


@dataclass
class LossTerms:
    """Per-example terms of one Monte-Carlo draw, each ``[B]``."""

    loss: Tensor  # the loss being trained: ½ w(λ)/p(λ) ‖ε − ε̂‖² through the weighting's objective (itself if fixed)
    elbo: Tensor  # ½ ‖ε − ε̂‖²/p(λ), the unweighted diffusion term of the ELBO, nats
    mse: Tensor  # ‖ε − ε̂‖²
    logsnr: Tensor  # λ at which each example was noised


def logsnr_and_inverse_density(
    schedule: Schedule, t: Tensor, timesteps: int | None = None
) -> tuple[Tensor, Tensor]:
    """λ_t and 1/p(λ_t): -dλ/dt in continuous time (eq. (4.107)), T·expm1(λ_s - λ_t) for T steps (eq. (A.38))."""
    if timesteps is None:
        logsnr_t, dlogsnr_dt = schedule(t)
        return logsnr_t, -dlogsnr_dt
    i = torch.ceil(t * timesteps).clamp(1, timesteps)
    logsnr_t = schedule.logsnr(i / timesteps)
    logsnr_s = schedule.logsnr((i - 1) / timesteps)
    return logsnr_t, timesteps * snr_difference_weight(logsnr_s, logsnr_t)


def diffusion_loss(
    x: Tensor,
    t: Tensor,
    eps: Tensor,
    *,
    net: nn.Module,
    schedule: Schedule,
    weighting: Weighting,
    parameterization: Parameterization,
    timesteps: int | None = None,
    cond=None,
) -> LossTerms:
    """Weighted diffusion loss ½ w(λ)/p(λ) ‖ε − ε̂‖² per example, eqs. (4.123), (3.134), (A.38); ``cond`` goes to the net.

    The trained ``loss`` is the weighting's ``objective`` of it: the weighted loss itself for a fixed w(λ), and for a
    learned weighting (``edm2_uncertainty``) the loss that also trains its parameters."""
    logsnr, inv_density = logsnr_and_inverse_density(schedule, t, timesteps)
    z_t = diffuse(x, logsnr, eps)
    eps_hat = parameterization.predict(net, z_t, logsnr, cond=cond).eps_hat.to(eps.dtype)  # float32 under bf16 autocast
    mse = (eps - eps_hat).pow(2).flatten(1).sum(1)  # [B]
    elbo = 0.5 * inv_density * mse  # [B]
    p_logsnr = (1.0 / inv_density).detach()  # p detached: a learned schedule never moves the target w
    w = weighting(logsnr, p_logsnr)  # [B]
    return LossTerms(loss=weighting.objective(w * elbo, logsnr, p_logsnr), elbo=elbo, mse=mse, logsnr=logsnr)
