"""DPM-Solver++(2M), EDM's stochastic sampler and Euler-ancestral with the closed-form Gaussian denoiser."""

import math
from functools import partial

import pytest
import torch
from oracles import GaussianOracle

from vdmlab.diffusion import parameterization as PZ
from vdmlab.diffusion import sampling
from vdmlab.diffusion import schedules as S
from vdmlab.diffusion.process import alpha_sigma

MU = torch.tensor([0.5, -0.3], dtype=torch.float64)
STD = 0.4
N = 4000
DENOISE = PZ.EpsParameterization().denoiser(GaussianOracle(MU, STD))
NO_WINDOW = {"s_noise": 1.0, "logsnr_churn_min": -math.inf, "logsnr_churn_max": math.inf}  # churn at every step


def exact_ode_solution(z_1, logsnr_1, logsnr_0):
    """The PF-ODE for Gaussian data keeps (z - αμ)/sqrt(α²s² + σ²) constant: its exact solution at λ_0."""
    (a1, s1), (a0, s0) = alpha_sigma(logsnr_1), alpha_sigma(logsnr_0)
    v1, v0 = a1**2 * STD**2 + s1**2, a0**2 * STD**2 + s0**2
    return a0 * MU + (v0 / v1).sqrt() * (z_1 - a1 * MU)


@pytest.mark.parametrize("sampler,steps", [(sampling.dpmpp_2m, 50), (sampling.euler_ancestral, 200),
                                           (partial(sampling.edm, s_churn=10.0, **NO_WINDOW), 40)],
                         ids=["dpmpp_2m", "euler_ancestral", "edm"])
def test_new_samplers_with_oracle_reproduce_data_mean_and_variance(sampler, steps):
    g = torch.Generator().manual_seed(0)
    logsnrs = S.logsnr_grid(S.CosineSchedule(-12.0, 12.0), steps).double()
    z_0 = sampler(DENOISE, torch.randn(N, 2, generator=g, dtype=torch.float64), logsnrs, generator=g)
    x = z_0 / alpha_sigma(logsnrs[-1])[0]
    assert (x.mean(0) - MU).abs().max() < 4 * STD / math.sqrt(N) + 0.01
    assert (x.var(0) - STD**2).abs().max() < 4 * STD**2 * math.sqrt(2.0 / N) + 0.01


def test_dpmpp_2m_is_closer_to_the_exact_ode_than_ddim_at_few_steps():
    """On a grid uniform in λ (DPM-Solver's recommended one; very uneven steps, as the cosine grid's ends, hurt
    the multistep extrapolation)."""
    z = torch.randn(256, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    errors = {}
    for steps in (10, 20, 40):
        logsnrs = torch.linspace(-12.0, 12.0, steps + 1, dtype=torch.float64)
        exact = exact_ode_solution(z, logsnrs[0], logsnrs[-1])
        for fn in (sampling.ddim, sampling.dpmpp_2m):
            errors[fn.__name__, steps] = (fn(DENOISE, z, logsnrs) - exact).abs().max().item()
    assert errors["dpmpp_2m", 10] < errors["ddim", 10] / 3
    assert errors["dpmpp_2m", 40] < errors["dpmpp_2m", 20] / 2.5  # second order: about 4x per doubling


def test_edm_without_churn_is_the_deterministic_heun_solve():
    logsnrs = S.logsnr_grid(S.EDMSchedule(-10.0, 10.0), 15).double()
    z = torch.randn(32, 2, dtype=torch.float64)
    torch.testing.assert_close(sampling.edm(DENOISE, z, logsnrs, s_churn=0.0, **NO_WINDOW), sampling.heun(DENOISE, z, logsnrs))
    churned = sampling.edm(DENOISE, z, logsnrs, s_churn=20.0, generator=torch.Generator().manual_seed(0), **NO_WINDOW)
    assert not torch.allclose(churned, sampling.heun(DENOISE, z, logsnrs))
    # churn restricted to a λ window that the grid never visits changes nothing
    quiet = sampling.edm(DENOISE, z, logsnrs, s_churn=20.0, s_noise=1.0, logsnr_churn_min=50.0, logsnr_churn_max=60.0)
    torch.testing.assert_close(quiet, sampling.heun(DENOISE, z, logsnrs))


def test_euler_ancestral_with_eta_one_is_the_ancestral_sampler():
    """In y = z/α the DDPM posterior has variance η_s²(1 - η_s²/η_t²) = η_up² and mean y_t + (η_s²/η_t - η_t)ε̂,
    and η_down = η_s²/η_t: Euler-ancestral with eta = 1 is ancestral sampling (eqs. (3.103)–(3.104)) exactly."""
    logsnrs = S.logsnr_grid(S.CosineSchedule(-10.0, 10.0), 12).double()
    z = torch.randn(16, 2, dtype=torch.float64)
    denoise = PZ.EpsParameterization().denoiser(GaussianOracle(MU, STD), clip_x=True)
    torch.testing.assert_close(sampling.euler_ancestral(denoise, z, logsnrs, generator=torch.Generator().manual_seed(0)),
                               sampling.ancestral(denoise, z, logsnrs, generator=torch.Generator().manual_seed(0)))


def test_euler_ancestral_with_eta_zero_is_ddim():
    logsnrs = S.logsnr_grid(S.CosineSchedule(-10.0, 10.0), 12).double()
    z = torch.randn(16, 2, dtype=torch.float64)
    torch.testing.assert_close(sampling.euler_ancestral(DENOISE, z, logsnrs, eta=0.0), sampling.ddim(DENOISE, z, logsnrs))


@pytest.mark.parametrize("fn", [sampling.dpmpp_2m, sampling.euler_ancestral, partial(sampling.edm, s_churn=40.0, **NO_WINDOW)],
                         ids=["dpmpp_2m", "euler_ancestral", "edm"])
def test_new_samplers_are_finite_in_float32_at_extreme_logsnr(fn):
    denoise = PZ.EpsParameterization().denoiser(GaussianOracle(torch.zeros(4), 0.5), clip_x=True)
    logsnrs = S.logsnr_grid(S.CosineSchedule(-30.0, 30.0), 10)
    z = fn(denoise, torch.randn(8, 4), logsnrs, generator=torch.Generator().manual_seed(0))
    assert z.dtype == torch.float32 and torch.isfinite(z).all()


@pytest.mark.parametrize("name", ["dpmpp_2m", "edm", "euler_ancestral"])
def test_sampler_configs_compose_and_run(make_config, name):
    from vdmlab.cli.build import build_sampler

    sampler = build_sampler(make_config([f"sampler={name}"]))
    logsnrs = S.logsnr_grid(S.CosineSchedule(-10.0, 10.0), 4)
    assert torch.isfinite(sampler.fn(DENOISE, torch.randn(3, 2, dtype=torch.float64), logsnrs.double())).all()
    assert name in sampling.CALLS_PER_STEP
