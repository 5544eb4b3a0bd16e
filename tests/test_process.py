"""Table 3.1 and App. A.3: the forward process, transitions and top-down posterior as numeric identities."""

import math

import pytest
import torch

from vdmlab.diffusion import process as P

torch.manual_seed(0)


def _pair(n=256, dtype=torch.float64, low=-20.0, high=20.0):
    """Random λ_t < λ_s in [low, high] (s precedes t, so it has the higher SNR)."""
    logsnr_t = torch.empty(n, dtype=dtype).uniform_(low, high - 5)
    logsnr_s = logsnr_t + torch.empty(n, dtype=dtype).uniform_(0.05, 5.0)
    return logsnr_s, logsnr_t


def _plain(logsnr):
    """α, σ straight from SNR = α²/σ² and α² + σ² = 1 (eqs. (3.8), (A.14))."""
    alpha2 = 1.0 / (1.0 + torch.exp(-logsnr))
    return alpha2.sqrt(), (1.0 - alpha2).sqrt()


def test_variance_preserving_alpha_sigma_eq_3_8_A_14():
    logsnr = torch.linspace(-20, 20, 101, dtype=torch.float64)
    alpha, sigma = P.alpha_sigma(logsnr)
    torch.testing.assert_close(alpha**2 + sigma**2, torch.ones_like(logsnr))
    torch.testing.assert_close(torch.log(alpha**2 / sigma**2), logsnr)


def test_q_zt_given_x_mean_and_variance_eq_3_1():
    x = torch.randn(20000, 3, dtype=torch.float64)
    logsnr = torch.full((20000,), 0.7, dtype=torch.float64)
    z = P.diffuse(x, logsnr, torch.randn_like(x))
    alpha, sigma = P.alpha_sigma(torch.tensor(0.7, dtype=torch.float64))
    # V[z_t] = V[x] for a VP process with standardized data (eq. (3.5)); 4 standard errors of a variance estimate
    se = math.sqrt(2.0 / x.shape[0])
    assert torch.allclose(z.var(0), torch.ones(3, dtype=torch.float64), atol=4 * se)
    resid = z - alpha * x
    assert torch.allclose(resid.std(0), sigma.expand(3), atol=4 * se)


def test_transition_table_3_1_eqs_3_13_3_22():
    logsnr_s, logsnr_t = _pair()
    alpha_ts, sigma2_ts = P.transition(logsnr_s, logsnr_t)
    (alpha_s, sigma_s), (alpha_t, sigma_t) = _plain(logsnr_s), _plain(logsnr_t)
    torch.testing.assert_close(alpha_ts, alpha_t / alpha_s)  # eq. (3.13)
    torch.testing.assert_close(sigma2_ts, sigma_t**2 - alpha_ts**2 * sigma_s**2)  # eq. (3.22)
    # composing q(z_s|x) with q(z_t|z_s) gives q(z_t|x): α_{t|s}α_s = α_t, α²_{t|s}σ_s² + σ²_{t|s} = σ_t² (eq. (3.21))
    torch.testing.assert_close(alpha_ts * alpha_s, alpha_t)
    torch.testing.assert_close(alpha_ts**2 * sigma_s**2 + sigma2_ts, sigma_t**2)


def test_posterior_table_3_1_matches_conjugate_update_eqs_3_38_3_40():
    logsnr_s, logsnr_t = _pair()
    x, z_t = torch.randn(256, 4, dtype=torch.float64), torch.randn(256, 4, dtype=torch.float64)
    (alpha_s, sigma_s), _ = _plain(logsnr_s), _plain(logsnr_t)
    alpha_ts, sigma2_ts = P.transition(logsnr_s, logsnr_t)
    precision = alpha_ts**2 / sigma2_ts + 1.0 / sigma_s**2  # eq. (3.38)
    var_q = 1.0 / precision
    mean_q = var_q[:, None] * ((alpha_ts / sigma2_ts)[:, None] * z_t + (alpha_s / sigma_s**2)[:, None] * x)  # eq. (3.40)
    torch.testing.assert_close(P.posterior_variance(logsnr_s, logsnr_t), var_q)
    torch.testing.assert_close(P.posterior_mean(z_t, x, logsnr_s, logsnr_t), mean_q)


def test_posterior_stable_forms_A_21_A_29_equal_eqs_3_47_3_67():
    logsnr_s, logsnr_t = _pair()
    x, eps = torch.randn(256, 4, dtype=torch.float64), torch.randn(256, 4, dtype=torch.float64)
    z_t = P.diffuse(x, logsnr_t, eps)
    (alpha_s, sigma_s), (alpha_t, sigma_t) = _plain(logsnr_s), _plain(logsnr_t)
    alpha_ts, sigma2_ts = alpha_t / alpha_s, sigma_t**2 - (alpha_t / alpha_s) ** 2 * sigma_s**2
    var_3_67 = sigma2_ts * sigma_s**2 / sigma_t**2
    mean_3_47 = (alpha_ts * sigma_s**2 / sigma_t**2)[:, None] * z_t + (alpha_s * sigma2_ts / sigma_t**2)[:, None] * x
    torch.testing.assert_close(P.posterior_variance(logsnr_s, logsnr_t), var_3_67)
    torch.testing.assert_close(P.posterior_mean(z_t, x, logsnr_s, logsnr_t), mean_3_47)
    # A.29: the same mean written with the true noise
    torch.testing.assert_close(P.posterior_mean_eps(z_t, eps, logsnr_s, logsnr_t), mean_3_47)


def test_kl_eq_3_86_equals_gaussian_kl_eq_3_73_and_eps_form_A_38():
    logsnr_s, logsnr_t = _pair(64)
    x, eps = torch.randn(64, 5, dtype=torch.float64), torch.randn(64, 5, dtype=torch.float64)
    z_t = P.diffuse(x, logsnr_t, eps)
    x_hat = x + 0.3 * torch.randn_like(x)
    mu_q = P.posterior_mean(z_t, x, logsnr_s, logsnr_t)
    mu_theta = P.posterior_mean(z_t, x_hat, logsnr_s, logsnr_t)
    var_q = P.posterior_variance(logsnr_s, logsnr_t)
    kl_3_73 = 0.5 * (mu_q - mu_theta).pow(2).sum(1) / var_q
    torch.testing.assert_close(P.kl_transition(x, x_hat, logsnr_s, logsnr_t), kl_3_73)
    alpha_t, sigma_t = P.alpha_sigma(logsnr_t)
    eps_hat = (z_t - alpha_t[:, None] * x_hat) / sigma_t[:, None]
    torch.testing.assert_close(P.kl_transition_eps(eps, eps_hat, logsnr_s, logsnr_t), kl_3_73)


@pytest.mark.parametrize("fn", ["transition", "posterior_variance", "posterior_coefficients", "snr_difference_weight"])
def test_float32_finite_for_logsnr_in_pm30(fn):
    grid = torch.linspace(-30, 30, 121)
    logsnr_s, logsnr_t = torch.meshgrid(grid, grid, indexing="ij")
    keep = logsnr_s > logsnr_t
    logsnr_s, logsnr_t = logsnr_s[keep], logsnr_t[keep]
    out = getattr(P, fn)(logsnr_s, logsnr_t)
    for o in out if isinstance(out, tuple) else (out,):
        assert torch.isfinite(o).all(), fn


def test_float32_finite_alpha_sigma_and_sampling_in_pm30():
    logsnr = torch.linspace(-30, 30, 121)
    for o in (*P.alpha_sigma(logsnr), *P.log_alpha2_sigma2(logsnr)):
        assert torch.isfinite(o).all()
    z = P.diffuse(torch.randn(121, 3), logsnr, torch.randn(121, 3))
    assert torch.isfinite(z).all()
    mean = P.posterior_mean_eps(z, torch.randn_like(z), logsnr.clamp(max=29.9) + 0.1, logsnr)
    assert torch.isfinite(mean).all()
