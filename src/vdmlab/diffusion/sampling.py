"""Samplers: a flat list of functions with one signature (k-diffusion style).

    sampler(denoise, z, logsnrs, generator=None) -> z_final

``denoise(z_t, logsnr) -> Prediction`` is any parameterization's denoiser (optionally with x̂ clipping, and with
a conditioning and classifier-free guidance bound in, ``Parameterization.denoiser(net, cond=..., guidance=w)``);
``logsnrs`` is an increasing grid λ(1) < … < λ(0) from any sampling schedule (``schedules.logsnr_grid``),
which need not be the training schedule because the network is conditioned on λ (§4.3, A.4).
``generate`` draws z_1 ~ N(0, I), runs a sampler and decodes to the K data levels.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from vdmlab.diffusion.likelihood import decode
from vdmlab.diffusion.parameterization import Denoiser, posterior_mean_x
from vdmlab.diffusion.process import alpha_sigma, posterior_variance

Sampler = Callable[..., Tensor]


def _steps(logsnrs: Tensor, batch: int):
    """Consecutive (λ_t, λ_s) pairs with λ_t < λ_s, each expanded to ``[B]``."""
    for logsnr_t, logsnr_s in zip(logsnrs[:-1], logsnrs[1:]):
        yield logsnr_t.expand(batch), logsnr_s.expand(batch)


def _scale(a: Tensor, z: Tensor) -> Tensor:
    return a.reshape(-1, *([1] * (z.ndim - 1)))


@torch.no_grad()
def ancestral(denoise: Denoiser, z: Tensor, logsnrs: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Ancestral sampling z_s = μθ(z_t; s, t) + σ_Q(s, t)·ε, eqs. (3.103-3.104) in expm1 form (A.21, A.29)."""
    for logsnr_t, logsnr_s in _steps(logsnrs, z.shape[0]):
        mean = posterior_mean_x(z, denoise(z, logsnr_t).x_hat, logsnr_s, logsnr_t)
        noise = torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)
        z = mean + _scale(posterior_variance(logsnr_s, logsnr_t).sqrt(), z) * noise
    return z


@torch.no_grad()
def ddim(denoise: Denoiser, z: Tensor, logsnrs: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Deterministic DDIM, z_s = α_s x̂ + σ_s ε̂ (Song et al. 2021a): Euler on the probability-flow ODE."""
    for logsnr_t, logsnr_s in _steps(logsnrs, z.shape[0]):
        pred = denoise(z, logsnr_t)
        alpha_s, sigma_s = alpha_sigma(logsnr_s)
        z = _scale(alpha_s, z) * pred.x_hat + _scale(sigma_s, z) * pred.eps_hat
    return z


@torch.no_grad()
def heun(denoise: Denoiser, z: Tensor, logsnrs: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Probability-flow ODE dy/dη = ε̂ in y = z/α, η = σ/α = e^{-λ/2}, integrated with Heun's method (EDM)."""
    for logsnr_t, logsnr_s in _steps(logsnrs, z.shape[0]):
        alpha_t, _ = alpha_sigma(logsnr_t)
        alpha_s, _ = alpha_sigma(logsnr_s)
        d_eta = _scale(torch.exp(-0.5 * logsnr_s) - torch.exp(-0.5 * logsnr_t), z)
        y_t = z / _scale(alpha_t, z)
        d_1 = denoise(z, logsnr_t).eps_hat
        z_euler = _scale(alpha_s, z) * (y_t + d_eta * d_1)
        d_2 = denoise(z_euler, logsnr_s).eps_hat
        z = _scale(alpha_s, z) * (y_t + d_eta * 0.5 * (d_1 + d_2))
    return z


@torch.no_grad()
def generate(
    denoise: Denoiser,
    sampler: Sampler,
    logsnrs: Tensor,
    shape: tuple[int, ...],
    num_levels: int,
    generator: torch.Generator | None = None,
    device=None,
) -> Tensor:
    """Draw z_1 ~ p(z_1) = N(0, I), run ``sampler`` down the λ grid, and decode to the K data levels."""
    z = torch.randn(shape, generator=generator, device=device)
    z_0 = sampler(denoise, z, logsnrs.to(z.device), generator=generator)
    return decode(z_0, logsnrs[-1].to(z.device).expand(shape[0]), num_levels)
