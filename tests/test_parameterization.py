"""Tables 4.1, 4.2 and 4.3 as numeric identities on random x, ε and λ ∈ [-20, 20].

Errata: four entries of Table 4.2 are printed with a sign or factor slip and are tested in their correct
form: s from v̂ is -(σz + αv̂)/σ (printed with +αv̂), s from û is -(αû + z)/σ (printed -αû + z), û from ε̂ is
(ε̂ - z)/α (printed with a factor α - σ) and û from s has the same α - σ slip. The v ↔ û entries mix VP
(α² + σ² = 1) and rectified-flow (α + σ = 1) coordinates and do not hold as printed (û = z + v̂, v̂ = û - z); in
VP coordinates, through z_rf = z/(α + σ) of eq. (A.45), û = (α + σ)v̂ + (σ - α)z.
In Table 4.3, ‖ε - ε̂‖² = α²‖v - v̂‖² (printed 1/α², eq. (4.65): its derivation keeps x where x̂ belongs); the
other entries, and eqs. (4.59), (4.74) which imply the α² factor, hold as printed.
"""

import pytest
import torch
from torch import nn

from vdmlab.diffusion import parameterization as PZ
from vdmlab.diffusion import process as P

torch.manual_seed(0)
N, D = 128, 6
PARAMS = [PZ.XParameterization(), PZ.EpsParameterization(), PZ.ScoreParameterization(),
          PZ.EnergyParameterization(), PZ.VParameterization(), PZ.FlowParameterization()]


@pytest.fixture
def draw():
    x = torch.randn(N, D, dtype=torch.float64)
    eps = torch.randn(N, D, dtype=torch.float64)
    logsnr = torch.empty(N, dtype=torch.float64).uniform_(-20, 20)
    z = P.diffuse(x, logsnr, eps)
    alpha, sigma = (a[:, None] for a in P.alpha_sigma(logsnr))
    return x, eps, logsnr, z, alpha, sigma


def close(a, b):
    torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-7)


def test_table_4_2_vp_entries(draw):
    x, eps, logsnr, z, alpha, sigma = draw
    s = -eps / sigma  # eq. (4.19)
    v = alpha * eps - sigma * x  # eq. (4.29)
    # x̂ row
    close(x, (z - sigma * eps) / alpha)
    close(x, (z + sigma**2 * s) / alpha)
    close(x, alpha * z - sigma * v)
    # ε̂ row
    close(eps, (z - alpha * x) / sigma)
    close(eps, -sigma * s)
    close(eps, sigma * z + alpha * v)
    # s row
    close(s, (alpha * x - z) / sigma**2)
    close(s, -eps / sigma)
    close(s, -(sigma * z + alpha * v) / sigma)  # erratum: printed (-σz + αv̂)/σ
    # v̂ row
    close(v, (alpha * z - x) / sigma)
    close(v, (eps - sigma * z) / alpha)
    close(v, -sigma * (z + s) / alpha)


def test_table_4_2_flow_entries_in_rectified_flow_coordinates(draw):
    x, eps, logsnr, z, alpha, sigma = draw
    # rectified-flow coordinates (α_rf + σ_rf = 1), eq. (A.45): z_rf = z/(α + σ)
    a_rf, s_rf_, z_rf = alpha / (alpha + sigma), sigma / (alpha + sigma), z / (alpha + sigma)
    u = eps - x  # eq. (4.41)
    close(z_rf, a_rf * x + s_rf_ * eps)  # eq. (4.40)
    close(x, z_rf - s_rf_ * u)
    close(eps, a_rf * u + z_rf)  # eq. (4.46)
    close(-eps / s_rf_, -(a_rf * u + z_rf) / s_rf_)  # erratum: printed (-αû + z)/σ
    close(u, (z_rf - x) / s_rf_)
    close(u, (eps - z_rf) / a_rf)  # erratum: printed with ε̂(α - σ)
    s_rf = -eps / s_rf_
    close(u, -(s_rf_ * s_rf + z_rf) / a_rf)  # û from s, erratum: printed with the same α - σ slip
    # v̂ ↔ û across the two coordinate systems (VP v = αε - σx), errata: printed û = z + v̂ and v̂ = û - z
    v = alpha * eps - sigma * x
    close(u, (alpha + sigma) * v + (sigma - alpha) * z)
    close(v, (u - (sigma - alpha) * z) / (alpha + sigma))
    # the library's VP flow parameterization implements exactly these maps
    flow = PZ.FlowParameterization()
    close(flow.from_eps(eps, z, logsnr), u)
    close(flow.to_x(u, z, logsnr), x)
    close(flow.to_eps(u, z, logsnr), eps)


@pytest.mark.parametrize("param", PARAMS, ids=lambda p: p.name)
def test_to_and_from_eps_round_trip(param, draw):
    x, eps, logsnr, z, alpha, sigma = draw
    out = param.from_eps(eps, z, logsnr)
    close(param.to_eps(out, z, logsnr), eps)
    close(param.to_x(out, z, logsnr), x)


def test_table_4_1_posterior_means_agree_for_every_parameterization(draw):
    x, eps, logsnr_t, z, alpha_t, sigma_t = draw
    logsnr_s = logsnr_t + torch.empty_like(logsnr_t).uniform_(0.05, 3.0)
    eps_hat = eps + 0.1 * torch.randn_like(eps)
    x_hat = (z - sigma_t * eps_hat) / alpha_t
    alpha_s, sigma_s = (a[:, None] for a in P.alpha_sigma(logsnr_s))
    a_ts, s2_ts = (a[:, None] for a in P.transition(logsnr_s, logsnr_t))
    mu = {p.name: p.posterior_mean(p.from_eps(eps_hat, z, logsnr_t), z, logsnr_s, logsnr_t) for p in PARAMS}
    score, grad_e = -eps_hat / sigma_t, eps_hat / sigma_t
    v_hat = (eps_hat - sigma_t * z) / alpha_t
    table_4_1 = {
        "x": a_ts * sigma_s**2 / sigma_t**2 * z + alpha_s * s2_ts / sigma_t**2 * x_hat,  # eq. (4.1)
        "eps": z / a_ts - s2_ts / (a_ts * sigma_t) * eps_hat,  # eq. (4.2)
        "score": z / a_ts + s2_ts / a_ts * score,  # eq. (4.11)
        "energy": z / a_ts - s2_ts / a_ts * grad_e,  # eq. (4.20)
        "v": (1 - s2_ts) / a_ts * z - s2_ts * alpha_s / sigma_t * v_hat,  # eq. (4.25)
    }
    for name, expected in table_4_1.items():
        torch.testing.assert_close(mu[name], expected, rtol=1e-6, atol=1e-6, msg=name)
    # eq. (4.38) holds in rectified-flow coordinates; the VP mean is its rescaling by (α_s + σ_s) (eq. (A.45))
    a_rf_t, s_rf_t = alpha_t / (alpha_t + sigma_t), sigma_t / (alpha_t + sigma_t)
    a_rf_s, s_rf_s = alpha_s / (alpha_s + sigma_s), sigma_s / (alpha_s + sigma_s)
    a_ts_rf = a_rf_t / a_rf_s
    s2_ts_rf = s_rf_t**2 - a_ts_rf**2 * s_rf_s**2
    u_hat = PZ.FlowParameterization().from_eps(eps_hat, z, logsnr_t)
    z_rf = z / (alpha_t + sigma_t)
    mu_rf = (s_rf_t - s2_ts_rf) / (a_ts_rf * s_rf_t) * z_rf - s2_ts_rf * a_rf_s / s_rf_t * u_hat
    torch.testing.assert_close(mu["flow"], mu_rf * (alpha_s + sigma_s), rtol=1e-6, atol=1e-6)
    # and every parameterization encodes the same μθ (A.29 as the common reference)
    for name, value in mu.items():
        torch.testing.assert_close(value, P.posterior_mean_eps(z, eps_hat, logsnr_s, logsnr_t), rtol=1e-6, atol=1e-6, msg=name)


def test_table_4_3_loss_translations(draw):
    x, eps, logsnr, z, alpha, sigma = draw
    alpha, sigma = alpha[:, 0], sigma[:, 0]
    eps_hat = eps + 0.2 * torch.randn_like(eps)
    x_hat = (z - sigma[:, None] * eps_hat) / alpha[:, None]
    v, v_hat = alpha[:, None] * eps - sigma[:, None] * x, alpha[:, None] * eps_hat - sigma[:, None] * x_hat
    lx, le, lv = ((a - b).pow(2).sum(1) for a, b in ((x, x_hat), (eps, eps_hat), (v, v_hat)))
    a2, s2 = alpha**2, sigma**2
    torch.testing.assert_close(lx, s2 / a2 * le, rtol=1e-6, atol=1e-9)  # eq. (4.52)
    torch.testing.assert_close(lx, s2 * lv, rtol=1e-6, atol=1e-9)  # eq. (4.59)
    torch.testing.assert_close(le, a2 / s2 * lx, rtol=1e-6, atol=1e-9)  # eq. (4.62)
    torch.testing.assert_close(le, a2 * lv, rtol=1e-6, atol=1e-9)  # eq. (4.65), erratum: printed 1/α²
    torch.testing.assert_close(lv, s2 * (a2 / s2 + 1) ** 2 * lx, rtol=1e-6, atol=1e-9)  # eq. (4.70)
    torch.testing.assert_close(lv, a2 * (s2 / a2 + 1) ** 2 * le, rtol=1e-6, atol=1e-9)  # eq. (4.74)


class Affine(nn.Module):
    """f(z) = A z + c·λ: an energy network whose gradient is known in closed form."""

    def __init__(self, dim):
        super().__init__()
        self.A = nn.Parameter(0.1 * torch.randn(dim, dim, dtype=torch.float64))
        self.c = nn.Parameter(torch.randn(dim, dtype=torch.float64))

    def forward(self, z, logsnr):
        return z @ self.A.T + logsnr[:, None] * self.c


def test_energy_eps_is_sigma_times_autograd_gradient_eq_4_24(draw):
    x, eps, logsnr, z, alpha, sigma = draw
    net = Affine(D)
    energy = PZ.EnergyParameterization()
    pred = energy.predict(net, z, logsnr)
    resid = z - net(z, logsnr)
    grad_e = (resid - resid @ net.A) / sigma  # ∇_z ‖z - Az - c‖²/(2σ) = (I - A)ᵀ(z - f)/σ
    torch.testing.assert_close(pred.eps_hat, sigma * grad_e)


def test_energy_is_trainable_through_double_backward(draw):
    x, eps, logsnr, z, alpha, sigma = draw
    net = Affine(D)
    eps_hat = PZ.EnergyParameterization().predict(net, z, logsnr).eps_hat
    (eps - eps_hat).pow(2).sum().backward()
    assert net.A.grad is not None and torch.isfinite(net.A.grad).all() and net.A.grad.abs().sum() > 0


def test_clipping_keeps_x_hat_in_range_and_eps_consistent(draw):
    x, eps, logsnr, z, alpha, sigma = draw
    net = lambda z_t, lam: 3.0 * torch.randn_like(z_t)  # noqa: E731
    pred = PZ.XParameterization().predict(net, z, logsnr, clip_x=True)
    assert pred.x_hat.abs().max() <= 1.0
    torch.testing.assert_close(pred.x_hat, (z - sigma * pred.eps_hat) / alpha)
