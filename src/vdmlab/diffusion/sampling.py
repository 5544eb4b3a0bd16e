"""Samplers: a flat list of functions with one signature (k-diffusion style).

    sampler(denoise, z, logsnrs, generator=None) -> z_final

``denoise(z_t, logsnr) -> Prediction`` is any parameterization's denoiser (optionally with x̂ clipping, and with
a conditioning and classifier-free guidance bound in, ``Parameterization.denoiser(net, cond=..., guidance=w)``);
``logsnrs`` is an increasing grid λ(1) < … < λ(0) from any sampling schedule (``schedules.logsnr_grid``),
which need not be the training schedule because the network is conditioned on λ (§4.3, A.4).
``generate`` draws z_1 ~ N(0, I), runs a sampler and decodes to the K data levels.

Each sampler declares, next to its function (``@declare_sampler``), its network calls per step and the check of
every option a config can bind (``fn.<option>`` in conf/sampler/<name>.yaml); a config binding an undeclared option
is an error. Adding a sampler is a function here and its conf/sampler/<name>.yaml (tests/test_sampler_registry.py
checks that they agree).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from vdmlab.checks import ParameterError, check_float
from vdmlab.diffusion.likelihood import decode
from vdmlab.diffusion.parameterization import Denoiser
from vdmlab.diffusion.process import alpha_sigma, expand_like, posterior_mean, posterior_variance

Sampler = Callable[..., Tensor]


@dataclass(frozen=True)
class SamplerSpec:
    """What a sampler declares: network calls per step (for NFE budgets) and, for every option a config can bind,
    its check ``(config key, value) -> value``."""

    calls_per_step: int
    options: Mapping[str, Callable[[str, Any], Any]] = field(default_factory=dict)


def declare_sampler(calls_per_step: int, **options: Callable[[str, Any], Any]) -> Callable[[Sampler], Sampler]:
    """Attach a :class:`SamplerSpec` to a sampler function (``fn.spec``)."""
    def declare(fn: Sampler) -> Sampler:
        fn.spec = SamplerSpec(calls_per_step, dict(options))
        return fn
    return declare


def sampler_spec(fn: Sampler, key: str = "sampler.fn") -> SamplerSpec:
    """The declaration of a sampler function, or of a ``functools.partial`` of one (Hydra's ``_partial_``)."""
    spec = getattr(getattr(fn, "func", fn), "spec", None)
    if not isinstance(spec, SamplerSpec):
        raise ParameterError(key, getattr(fn, "__name__", repr(fn)), "it must be a sampler of vdmlab.diffusion.sampling "
                             "(a function declared with @declare_sampler, bound as a _partial_ target)")
    return spec


def checked_sampler(fn: Sampler, key: str = "sampler.fn") -> Sampler:
    """``fn`` after checking every option its config bound against the sampler's declaration."""
    spec = sampler_spec(fn, key)
    for name, value in getattr(fn, "keywords", {}).items():
        if name not in spec.options:
            known = ", ".join(spec.options) or "none"
            raise ParameterError(f"{key}.{name}", value, f"{fn.func.__name__} takes no option {name} (its options: {known})")
        spec.options[name](f"{key}.{name}", value)
    return fn


def _steps(logsnrs: Tensor, batch: int):
    """Consecutive (λ_t, λ_s) pairs with λ_t < λ_s, each expanded to ``[B]``."""
    for logsnr_t, logsnr_s in zip(logsnrs[:-1], logsnrs[1:]):
        yield logsnr_t.expand(batch), logsnr_s.expand(batch)


@declare_sampler(calls_per_step=1)
@torch.no_grad()
def ancestral(denoise: Denoiser, z: Tensor, logsnrs: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Ancestral sampling z_s = μθ(z_t; s, t) + σ_Q(s, t)·ε, eqs. (3.103)–(3.104) in expm1 form (A.21, A.29)."""
    for logsnr_t, logsnr_s in _steps(logsnrs, z.shape[0]):
        mean = posterior_mean(z, denoise(z, logsnr_t).x_hat, logsnr_s, logsnr_t)  # μθ: eq. (3.47) with x̂, (3.59)
        noise = torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)
        z = mean + expand_like(posterior_variance(logsnr_s, logsnr_t).sqrt(), z) * noise
    return z


@declare_sampler(calls_per_step=1)
@torch.no_grad()
def ddim(denoise: Denoiser, z: Tensor, logsnrs: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Deterministic DDIM, z_s = α_s x̂ + σ_s ε̂ (Song et al. 2021a): Euler on the probability-flow ODE."""
    for logsnr_t, logsnr_s in _steps(logsnrs, z.shape[0]):
        pred = denoise(z, logsnr_t)
        alpha_s, sigma_s = alpha_sigma(logsnr_s)
        z = expand_like(alpha_s, z) * pred.x_hat + expand_like(sigma_s, z) * pred.eps_hat
    return z


@declare_sampler(calls_per_step=2)
@torch.no_grad()
def heun(denoise: Denoiser, z: Tensor, logsnrs: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Probability-flow ODE dy/dη = ε̂ in y = z/α, η = σ/α = e^{-λ/2}, integrated with Heun's method (EDM)."""
    for logsnr_t, logsnr_s in _steps(logsnrs, z.shape[0]):
        alpha_t, _ = alpha_sigma(logsnr_t)
        alpha_s, _ = alpha_sigma(logsnr_s)
        d_eta = expand_like(torch.exp(-0.5 * logsnr_s) - torch.exp(-0.5 * logsnr_t), z)
        y_t = z / expand_like(alpha_t, z)
        d_1 = denoise(z, logsnr_t).eps_hat
        z_euler = expand_like(alpha_s, z) * (y_t + d_eta * d_1)
        d_2 = denoise(z_euler, logsnr_s).eps_hat
        z = expand_like(alpha_s, z) * (y_t + d_eta * 0.5 * (d_1 + d_2))
    return z


def _eta(logsnr: Tensor) -> Tensor:
    """η = σ/α = e^{-λ/2}, the noise level of the variance-exploding coordinates y = z/α (EDM's σ)."""
    return torch.exp(-0.5 * logsnr)


@declare_sampler(calls_per_step=1)
@torch.no_grad()
def dpmpp_2m(denoise: Denoiser, z: Tensor, logsnrs: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, Alg. 2), the multistep 2nd-order data-prediction ODE solver.

    DPM-Solver's λ is log(α/σ) = λ/2 here, so the step is h = (λ_s - λ_t)/2 and
    z_s = (σ_s/σ_t) z_t - α_s expm1(-h) D with D = (1 + 1/2r) x̂_t - (1/2r) x̂_prev, r = h_prev/h
    (D = x̂_t on the first step, which is DDIM). One network call per step.
    """
    x_prev, h_prev = None, None
    for logsnr_t, logsnr_s in _steps(logsnrs, z.shape[0]):
        x_hat = denoise(z, logsnr_t).x_hat
        h = 0.5 * (logsnr_s - logsnr_t)
        alpha_s, sigma_s = alpha_sigma(logsnr_s)
        _, sigma_t = alpha_sigma(logsnr_t)
        if x_prev is None:
            d = x_hat
        else:
            half_inv_r = expand_like(0.5 * h / h_prev, z)
            d = (1.0 + half_inv_r) * x_hat - half_inv_r * x_prev
        z = expand_like(sigma_s / sigma_t, z) * z - expand_like(alpha_s * torch.expm1(-h), z) * d
        x_prev, h_prev = x_hat, h
    return z


@declare_sampler(calls_per_step=1, eta=lambda key, v: check_float(key, v, minimum=0.0, maximum=1.0))
@torch.no_grad()
def euler_ancestral(denoise: Denoiser, z: Tensor, logsnrs: Tensor, generator: torch.Generator | None = None,
                    eta: float = 1.0) -> Tensor:
    """Euler-ancestral (k-diffusion's ``sample_euler_ancestral``) in y = z/α, η = e^{-λ/2}, then z_s = α_s y_s.

    Each step goes down to η_down by Euler on dy/dη = ε̂ and adds fresh noise of std η_up, with
    η_up = min(η_s, eta·η_s·sqrt(1 - η_s²/η_t²)) and η_down² = η_s² - η_up²; ``eta=0`` is DDIM, and ``eta=1``
    is the ancestral sampler exactly (η_down = η_s²/η_t makes it the posterior mean, η_up² its variance).
    """
    for logsnr_t, logsnr_s in _steps(logsnrs, z.shape[0]):
        eps_hat = denoise(z, logsnr_t).eps_hat
        eta_t, eta_s = _eta(logsnr_t), _eta(logsnr_s)
        eta_up = torch.minimum(eta_s, eta * eta_s * (-torch.expm1(logsnr_t - logsnr_s)).clamp(min=0.0).sqrt())
        eta_down = (eta_s.pow(2) - eta_up.pow(2)).clamp(min=0.0).sqrt()
        alpha_t, _ = alpha_sigma(logsnr_t)
        alpha_s, _ = alpha_sigma(logsnr_s)
        noise = torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)
        y = z / expand_like(alpha_t, z) + expand_like(eta_down - eta_t, z) * eps_hat + expand_like(eta_up, z) * noise
        z = expand_like(alpha_s, z) * y
    return z


@declare_sampler(calls_per_step=2, s_churn=lambda key, v: check_float(key, v, minimum=0.0),
                 s_noise=lambda key, v: check_float(key, v, minimum=0.0, open_min=True),
                 logsnr_churn_min=check_float, logsnr_churn_max=check_float)
@torch.no_grad()
def edm(denoise: Denoiser, z: Tensor, logsnrs: Tensor, generator: torch.Generator | None = None, *,
        s_churn: float, s_noise: float, logsnr_churn_min: float, logsnr_churn_max: float) -> Tensor:
    """EDM's stochastic sampler (Karras et al. 2022, Alg. 2) in y = z/α with EDM's σ = η = e^{-λ/2}.

    At each step with λ_t in [``logsnr_churn_min``, ``logsnr_churn_max``] (EDM's S_tmax, S_tmin as
    λ = -2 log S_t) the noise is raised to η̂ = (1 + γ)η_t, γ = min(S_churn/N, √2 - 1), by adding
    sqrt(η̂² - η_t²)·S_noise·ε; then a Heun step on dy/dη = ε̂ from η̂ to η_s. With ``s_churn=0`` it is the
    deterministic ``heun`` sampler. Two network calls per step.
    """
    gamma_max = min(float(s_churn) / max(len(logsnrs) - 1, 1), math.sqrt(2.0) - 1.0)
    for logsnr_t, logsnr_s in _steps(logsnrs, z.shape[0]):
        alpha_t, _ = alpha_sigma(logsnr_t)
        y = z / expand_like(alpha_t, z)
        churn = (logsnr_t >= logsnr_churn_min) & (logsnr_t <= logsnr_churn_max)
        gamma = torch.where(churn, torch.full_like(logsnr_t, gamma_max), torch.zeros_like(logsnr_t))
        eta_t, eta_s = _eta(logsnr_t), _eta(logsnr_s)
        eta_hat = eta_t * (1.0 + gamma)
        if gamma_max > 0:
            noise = torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)
            y = y + expand_like((eta_hat.pow(2) - eta_t.pow(2)).sqrt() * s_noise, z) * noise
        logsnr_hat = logsnr_t - 2.0 * torch.log1p(gamma)
        alpha_hat, _ = alpha_sigma(logsnr_hat)
        alpha_s, _ = alpha_sigma(logsnr_s)
        d_1 = denoise(expand_like(alpha_hat, z) * y, logsnr_hat).eps_hat
        d_eta = expand_like(eta_s - eta_hat, z)
        y_euler = y + d_eta * d_1
        d_2 = denoise(expand_like(alpha_s, z) * y_euler, logsnr_s).eps_hat
        z = expand_like(alpha_s, z) * (y + d_eta * 0.5 * (d_1 + d_2))
    return z


#: Network calls per step of each sampler, from the declarations above (for NFE budgets)
CALLS_PER_STEP = {name: fn.spec.calls_per_step for name, fn in list(globals().items())
                  if isinstance(getattr(fn, "spec", None), SamplerSpec)}


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
