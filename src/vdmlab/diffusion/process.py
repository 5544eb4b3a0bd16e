"""The variance-preserving Gaussian forward process in log-SNR coordinates (§3.1-3.3, Table 3.1, App. A.3).

Every quantity is a function of ``logsnr`` = λ = log(α²/σ²), written through ``sigmoid``/``logsigmoid``
and ``expm1`` so that λ in [-30, 30] gives finite values in float32. VDM's γ is -λ.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def expand_like(a: Tensor, x: Tensor) -> Tensor:
    """Reshape a per-example ``[B]`` tensor so it broadcasts against ``x`` of shape ``[B, ...]``."""
    return a.reshape(a.shape + (1,) * (x.ndim - a.ndim))


def alpha_sigma(logsnr: Tensor) -> tuple[Tensor, Tensor]:
    """Signal and noise scales of a VP process, α² = sigmoid(λ), σ² = sigmoid(-λ), eqs. (A.1), (A.4)."""
    return torch.sigmoid(logsnr).sqrt(), torch.sigmoid(-logsnr).sqrt()


def log_alpha2_sigma2(logsnr: Tensor) -> tuple[Tensor, Tensor]:
    """log α² and log σ² of a VP process, eqs. (A.1), (A.4), in log space for stability."""
    return F.logsigmoid(logsnr), F.logsigmoid(-logsnr)


def diffuse(x: Tensor, logsnr: Tensor, eps: Tensor) -> Tensor:
    """Reparameterised sample z_t = α_t x + σ_t ε from q(z_t|x), eq. (3.1)."""
    alpha_t, sigma_t = alpha_sigma(expand_like(logsnr, x))
    return alpha_t * x + sigma_t * eps


def transition(logsnr_s: Tensor, logsnr_t: Tensor) -> tuple[Tensor, Tensor]:
    """α_{t|s} = α_t/α_s (eq. (3.13)) and σ²_{t|s} = σ_t² - α²_{t|s}σ_s² = -σ_t² expm1(λ_t - λ_s) (eq. (3.22))."""
    log_alpha2_s, _ = log_alpha2_sigma2(logsnr_s)
    log_alpha2_t, log_sigma2_t = log_alpha2_sigma2(logsnr_t)
    alpha_ts = torch.exp(0.5 * (log_alpha2_t - log_alpha2_s))
    sigma2_ts = -torch.exp(log_sigma2_t) * torch.expm1(logsnr_t - logsnr_s)
    return alpha_ts, sigma2_ts


def posterior_variance(logsnr_s: Tensor, logsnr_t: Tensor) -> Tensor:
    """Top-down posterior variance σ_Q²(s,t) = σ_s² · (-expm1(λ_t - λ_s)), eq. (A.21)."""
    return -torch.sigmoid(-logsnr_s) * torch.expm1(logsnr_t - logsnr_s)


def posterior_coefficients(logsnr_s: Tensor, logsnr_t: Tensor) -> tuple[Tensor, Tensor]:
    """Coefficients (a, b) of μ_Q = a·z_t + b·x: a = α_{t|s}σ_s²/σ_t², b = α_s σ²_{t|s}/σ_t², eq. (3.47).

    In log-SNR form a = (α_t/α_s)(σ_s²/σ_t²) and b = -α_s expm1(λ_t - λ_s), both finite for λ in [-30, 30].
    """
    log_alpha2_s, log_sigma2_s = log_alpha2_sigma2(logsnr_s)
    log_alpha2_t, log_sigma2_t = log_alpha2_sigma2(logsnr_t)
    a = torch.exp(0.5 * (log_alpha2_t - log_alpha2_s) + log_sigma2_s - log_sigma2_t)
    b = -torch.exp(0.5 * log_alpha2_s) * torch.expm1(logsnr_t - logsnr_s)
    return a, b


def posterior_mean(z_t: Tensor, x: Tensor, logsnr_s: Tensor, logsnr_t: Tensor) -> Tensor:
    """Top-down posterior mean μ_Q(z_t, x; s, t) = α_{t|s}σ_s²/σ_t² z_t + α_sσ²_{t|s}/σ_t² x, eq. (3.47)."""
    a, b = posterior_coefficients(logsnr_s, logsnr_t)
    return expand_like(a, z_t) * z_t + expand_like(b, z_t) * x


def posterior_mean_eps(z_t: Tensor, eps: Tensor, logsnr_s: Tensor, logsnr_t: Tensor) -> Tensor:
    """Posterior mean from a noise prediction, μ = α_s/α_t (z_t + σ_t expm1(λ_t - λ_s) ε), eq. (A.29)."""
    log_alpha2_s, _ = log_alpha2_sigma2(logsnr_s)
    log_alpha2_t, log_sigma2_t = log_alpha2_sigma2(logsnr_t)
    ratio = expand_like(torch.exp(0.5 * (log_alpha2_s - log_alpha2_t)), z_t)
    coef = expand_like(torch.exp(0.5 * log_sigma2_t) * torch.expm1(logsnr_t - logsnr_s), z_t)
    return ratio * (z_t + coef * eps)


def snr_difference_weight(logsnr_s: Tensor, logsnr_t: Tensor) -> Tensor:
    """SNR(s)/SNR(t) - 1 = expm1(λ_s - λ_t), the ε-space weight of one KL term, eqs. (3.99), (A.36)."""
    return torch.expm1(logsnr_s - logsnr_t)


def kl_transition(x: Tensor, x_hat: Tensor, logsnr_s: Tensor, logsnr_t: Tensor) -> Tensor:
    """D_KL(q(z_s|z_t,x) ‖ p(z_s|z_t)) = ½(SNR(s) - SNR(t))‖x - x̂‖², eq. (3.86); returns ``[B]`` nats."""
    snr_gap = torch.exp(logsnr_s) - torch.exp(logsnr_t)
    return 0.5 * snr_gap * (x - x_hat).pow(2).flatten(1).sum(1)


def kl_transition_eps(eps: Tensor, eps_hat: Tensor, logsnr_s: Tensor, logsnr_t: Tensor) -> Tensor:
    """The same KL in ε-space, ½ expm1(λ_s - λ_t)‖ε - ε̂‖², eqs. (3.99), (A.38); returns ``[B]`` nats."""
    return 0.5 * snr_difference_weight(logsnr_s, logsnr_t) * (eps - eps_hat).pow(2).flatten(1).sum(1)
