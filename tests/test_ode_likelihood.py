"""The probability-flow ODE likelihood against exact Gaussian answers: convergence at the solver's order,
Hutchinson's estimator unbiased, dequantized bounds above the true discrete NLL, every parameterization alike,
and exactness across 2 DDP ranks."""

import math

import pytest
import torch
from ddp_workers import ode_bpd_shard, ode_test_problem, run_ranks
from oracles import GaussianOracle

from vdmlab.diffusion import ode_likelihood as OL
from vdmlab.diffusion import parameterization as PZ
from vdmlab.diffusion import schedules as S
from vdmlab.diffusion.process import alpha_sigma
from vdmlab.metrics.ode_bpd import evaluate_ode_bpd

MU = torch.tensor([0.5, -0.3, 0.1], dtype=torch.float64)
STD = 0.4
LAM_MIN, LAM_MAX = -10.0, 10.0
SCHEDULE = S.LinearSchedule(LAM_MIN, LAM_MAX)


def marginal_log_prob(z, logsnr, mu=MU, std=STD):
    """log q(z_λ) of Gaussian data N(μ, s²I): N(αμ, (α²s² + σ²)I), summed over dimensions."""
    alpha, sigma = alpha_sigma(torch.tensor(logsnr, dtype=torch.float64))
    var = alpha**2 * std**2 + sigma**2
    return (-0.5 * (z - alpha * mu) ** 2 / var - 0.5 * torch.log(2 * math.pi * var)).sum(1)


def gaussian_problem(n=12):
    x = MU + STD * torch.randn(n, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    alpha_0, _ = alpha_sigma(torch.tensor(LAM_MAX, dtype=torch.float64))
    return PZ.EpsParameterization().denoiser(GaussianOracle(MU, STD)), alpha_0 * x


def ode_error(solver, schedule=SCHEDULE):
    """max |log p_0(z_0) - log q_0(z_0)| with the exact q_1 at λ_min: the ODE maps q_0 to q_1 exactly."""
    denoise, z_0 = gaussian_problem()
    result = OL.ode_log_prob(denoise, z_0, schedule, solver=solver,
                             prior_log_prob=lambda z: marginal_log_prob(z, LAM_MIN))
    return (result.log_prob - marginal_log_prob(z_0, LAM_MAX)).abs().max().item()


@pytest.mark.parametrize("solver,order,steps", [(OL.HeunSolver, 2, (16, 32, 64)), (OL.RK4Solver, 4, (8, 16, 32))])
def test_fixed_grid_ode_nll_converges_to_the_exact_gaussian_at_the_solver_order(solver, order, steps):
    errors = [ode_error(solver(n)) for n in steps]
    for coarse, fine in zip(errors[:-1], errors[1:]):
        assert fine < coarse / (0.6 * 2**order)  # doubling the steps divides the error by about 2^order
    assert errors[-1] < 0.05


def test_dopri5_matches_the_exact_gaussian_within_its_tolerance_and_counts_calls():
    solver = OL.Dopri5Solver(rtol=1e-8, atol=1e-8)
    assert ode_error(solver, S.CosineSchedule(LAM_MIN, LAM_MAX)) < 1e-5
    assert solver.num_evaluations > 6


def test_continuous_data_density_equals_the_data_gaussian():
    """log p(x) = log p_0(α_0 x) + D log α_0 with the N(0, I) prior ≈ log N(x; μ, s²) for wide λ ends."""
    denoise = PZ.EpsParameterization().denoiser(GaussianOracle(MU, STD))
    x = MU + STD * torch.randn(12, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    result = OL.data_log_prob(denoise, x, S.LinearSchedule(-14.0, 14.0), solver=OL.RK4Solver(32))
    exact = (-0.5 * (x - MU) ** 2 / STD**2 - 0.5 * math.log(2 * math.pi * STD**2)).sum(1)
    torch.testing.assert_close(result.log_prob, exact, atol=2e-3, rtol=0)


def random_net():
    net, _ = ode_test_problem()
    return net


def test_exact_divergence_is_the_trace_of_the_autograd_jacobian():
    net, div = random_net(), OL.ExactDivergence()
    z = torch.randn(4, 2, dtype=torch.float64, requires_grad=True)
    lam = torch.full((4,), 1.5, dtype=torch.float64)
    trace = div.trace(net(z, lam), z, None)[:, 0]
    for i in range(4):
        jac = torch.autograd.functional.jacobian(lambda v: net(v[None], lam[:1])[0], z[i].detach())
        torch.testing.assert_close(trace[i], jac.trace())


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_hutchinson_is_unbiased_around_the_exact_divergence(probe):
    net = random_net()
    z = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    lam = torch.full((3,), 0.5, dtype=torch.float64)
    eps_hat = net(z, lam)
    exact = OL.ExactDivergence().trace(eps_hat, z, None)[:, 0]
    hutchinson = OL.HutchinsonDivergence(1500, probe)
    estimates = hutchinson.trace(eps_hat, z, hutchinson.probes(z, torch.Generator().manual_seed(0)))
    se = estimates.std(1) / math.sqrt(estimates.shape[1])
    assert ((estimates.mean(1) - exact).abs() < 4 * se + 1e-12).all()
    assert (se > 0).all()  # a non-diagonal Jacobian: the estimator really is random


def test_hutchinson_ode_log_prob_averages_probes_and_reports_their_standard_error():
    net = random_net()
    denoise = PZ.EpsParameterization().denoiser(net)
    z_0 = torch.randn(3, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    kwargs = dict(solver=OL.HeunSolver(8))
    exact = OL.ode_log_prob(denoise, z_0, SCHEDULE, divergence=OL.ExactDivergence(), **kwargs)
    estimate = OL.ode_log_prob(denoise, z_0, SCHEDULE, divergence=OL.HutchinsonDivergence(400),
                               generator=torch.Generator().manual_seed(0), **kwargs)
    assert estimate.log_prob_probes.shape == (3, 400)
    torch.testing.assert_close(estimate.log_prob, estimate.log_prob_probes.mean(1))
    assert ((estimate.log_prob - exact.log_prob).abs() < 4 * estimate.log_prob_se).all()
    assert (exact.log_prob_se == 0).all()


def discrete_nll(x, num_levels, std):
    """-log P(x) of N(μ, std²) on the bins x ± Δ/2, exactly."""
    half = OL.bin_width(num_levels) / 2
    normal = torch.distributions.Normal(MU, std)
    return -torch.log(normal.cdf(x + half) - normal.cdf(x - half)).sum(1)


@pytest.mark.parametrize("dequantization", [OL.UniformDequantization(), OL.TruncatedNormalDequantization()],
                         ids=["uniform", "truncated_normal"])
def test_dequantized_bounds_are_above_the_true_discrete_nll(dequantization):
    K = 9
    levels = torch.linspace(-1, 1, K, dtype=torch.float64)
    x = levels[torch.randint(0, K, (6, 3), generator=torch.Generator().manual_seed(3))]
    denoise = PZ.EpsParameterization().denoiser(GaussianOracle(MU, STD))
    schedule = S.LinearSchedule(-14.0, 8.0)
    # with the exact denoiser the ODE model density of y is q_0 scaled: N(μ, s² + η_0²), η_0 = e^{-λ_max/2}
    model_std = math.sqrt(STD**2 + math.exp(-schedule.logsnr_max))
    result = OL.dequantized_nll(x, denoise, schedule, K, dequantization=dequantization, num_draws=32,
                                generator=torch.Generator().manual_seed(0), solver=OL.RK4Solver(16))
    gap = result.draws - discrete_nll(x, K, model_std)[:, None]  # each draw's bound minus -log P(x): ≥ 0 in mean
    se = gap.std() / math.sqrt(gap.numel())
    assert gap.mean() > -3 * se
    assert (result.nats_iw - discrete_nll(x, K, model_std)).mean() > -3 * se
    assert (result.nats_iw <= result.nats + 1e-12).all()  # log-mean-exp ≥ mean (Jensen): IW is tighter
    torch.testing.assert_close(result.bits_per_dim(3), result.nats / (3 * math.log(2)))


def test_uniform_bound_matches_its_closed_form_expectation():
    """E_u[-log N(x + u; μ, v)] - D log Δ = Σ_d ½log(2πv) + ((x - μ)² + Δ²/12)/(2v) - D log Δ."""
    K = 9
    x = torch.tensor([[0.5, -0.25, 0.0]], dtype=torch.float64).expand(64, 3)
    schedule = S.LinearSchedule(-14.0, 8.0)
    var = STD**2 + math.exp(-schedule.logsnr_max)
    result = OL.dequantized_nll(x, PZ.EpsParameterization().denoiser(GaussianOracle(MU, STD)), schedule, K,
                                num_draws=4, generator=torch.Generator().manual_seed(0), solver=OL.RK4Solver(16))
    width = OL.bin_width(K)
    expected = (0.5 * math.log(2 * math.pi * var) + ((x[0] - MU) ** 2 + width**2 / 12) / (2 * var)).sum() \
        - 3 * math.log(width)
    se = result.draws.std() / math.sqrt(result.draws.numel())
    assert abs(result.draws.mean() - expected) < 4 * se + 1e-3


def test_dequantization_stays_inside_the_bin():
    x = torch.zeros(1000, 4, dtype=torch.float64)
    normal = torch.randn(x.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 3
    half = OL.bin_width(17) / 2
    for deq in (OL.UniformDequantization(), OL.TruncatedNormalDequantization(scale=0.05)):
        y, log_q = deq(x, normal, 17, 5.0)
        assert (y.abs() <= half + 1e-12).all() and torch.isfinite(log_q).all()
    # the uniform density on a bin of width Δ: log q = -D log Δ
    _, log_q = OL.UniformDequantization()(x, normal, 17, 5.0)
    torch.testing.assert_close(log_q, torch.full((1000,), -4 * math.log(2 / 16), dtype=torch.float64))


def test_truncated_normal_log_density_integrates_to_one():
    deq = OL.TruncatedNormalDequantization(scale=0.04)  # τ = Δ/(2η) ≈ 1.56: the truncation matters
    half = OL.bin_width(17) / 2
    grid = torch.linspace(-half, half, 20001, dtype=torch.float64)
    # the density of y as a function of u: invert y = η u with the inverse-CDF sampler's own log q
    u = grid / 0.04
    normal = torch.distributions.Normal(0.0, 1.0)
    mass = normal.cdf(torch.tensor(half / 0.04)) - normal.cdf(torch.tensor(-half / 0.04))
    v = (normal.cdf(u) - normal.cdf(torch.tensor(-half / 0.04))) / mass
    y, log_q = deq(torch.zeros(len(grid), 1, dtype=torch.float64), normal.icdf(v.clamp(1e-12, 1 - 1e-12))[:, None],
                   17, 0.0)
    torch.testing.assert_close(y[:, 0], grid, atol=1e-6, rtol=0)
    assert torch.trapezoid(log_q.exp(), grid).item() == pytest.approx(1.0, abs=1e-4)


class Reexpressed(torch.nn.Module):
    """The Gaussian oracle's ε̂ re-expressed as another parameterization's output (Table 4.2)."""

    def __init__(self, param):
        super().__init__()
        self.param, self.oracle = param, GaussianOracle(MU, STD)

    def forward(self, z, logsnr):
        return self.param.from_eps(self.oracle(z, logsnr), z, logsnr)


class GaussianEnergy(torch.nn.Module):
    """f with ‖z - f‖²/(2σ) = ‖z - αμ‖²/(2v): f = αμ + (1 - √(σ/v))(z - αμ), v = α²s² + σ² (exact energy)."""

    def forward(self, z, logsnr):
        alpha, sigma = (a[:, None] for a in alpha_sigma(logsnr))
        v = alpha**2 * STD**2 + sigma**2
        return alpha * MU + (1 - (sigma / v).sqrt()) * (z - alpha * MU)


@pytest.mark.parametrize("param", [PZ.XParameterization(), PZ.VParameterization(), PZ.FlowParameterization(),
                                   PZ.ScoreParameterization(), PZ.EnergyParameterization()], ids=lambda p: p.name)
def test_every_parameterization_gives_the_same_ode_nll(param):
    denoise_eps, z_0 = gaussian_problem(6)
    net = GaussianEnergy() if param.name == "energy" else Reexpressed(param)
    kwargs = dict(solver=OL.HeunSolver(12))
    expected = OL.ode_log_prob(denoise_eps, z_0, SCHEDULE, **kwargs).log_prob
    torch.testing.assert_close(OL.ode_log_prob(param.denoiser(net), z_0, SCHEDULE, **kwargs).log_prob, expected)
    # the oracle's ∂ε̂/∂z is a multiple of I, so Rademacher probes give its trace exactly: vᵀcIv = c·D
    hutchinson = OL.ode_log_prob(param.denoiser(net), z_0, SCHEDULE, divergence=OL.HutchinsonDivergence(2),
                                 generator=torch.Generator().manual_seed(0), **kwargs)
    torch.testing.assert_close(hutchinson.log_prob, expected)


def test_float32_at_wide_logsnr_is_finite_and_fixed_grids_count_calls():
    net = random_net().float()
    solver = OL.RK4Solver(5)
    x = torch.rand(4, 2) * 2 - 1
    result = OL.dequantized_nll(x, PZ.VParameterization().denoiser(net), S.CosineSchedule(-30.0, 30.0), 256,
                                dequantization=OL.TruncatedNormalDequantization(), num_draws=2, solver=solver,
                                divergence=OL.HutchinsonDivergence(2), generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(result.nats).all() and torch.isfinite(result.nats_iw).all()
    assert solver.num_evaluations == 20 and OL.HeunSolver(7).num_evaluations == 14


def test_bad_options_are_refused_with_the_fix():
    with pytest.raises(ValueError, match="rademacher"):
        OL.HutchinsonDivergence(2, "sphere")
    with pytest.raises(ValueError, match="steps"):
        OL.HeunSolver(0)
    with pytest.raises(ValueError, match="num_draws"):
        OL.dequantized_nll(torch.zeros(1, 2), None, SCHEDULE, 17, num_draws=0)


def test_ode_bpd_is_independent_of_batching():
    net, x = ode_test_problem()
    kwargs = dict(solver=OL.HeunSolver(6), divergence=OL.HutchinsonDivergence(2),
                  dequantization=OL.UniformDequantization(), num_draws=2, seed=3)
    results = []
    for size in (7, 3):
        loader = [(torch.arange(i, min(i + size, 7)), x[i:i + size]) for i in range(0, 7, size)]
        results.append(evaluate_ode_bpd(net, S.CosineSchedule(-8.0, 8.0), PZ.EpsParameterization(), loader, 17,
                                        **kwargs))
    for key in ("ode_bpd", "ode_bpd_se", "ode_bpd_iw"):
        assert results[0][key] == pytest.approx(results[1][key], rel=1e-9)
    assert results[0]["n"] == 7 and results[0]["ode_nfe"] == 12
    assert results[0]["ode_bpd_iw"] <= results[0]["ode_bpd"]


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_ode_bpd_on_two_ddp_ranks_equals_one_process_and_dopri5_is_refused(tmp_path):
    results = run_ranks(ode_bpd_shard, 2, str(tmp_path / "init"))
    net, x = ode_test_problem()
    single = evaluate_ode_bpd(net, S.CosineSchedule(-8.0, 8.0), PZ.EpsParameterization(),
                              [(torch.arange(7), x)], 17, solver=OL.HeunSolver(6),
                              divergence=OL.HutchinsonDivergence(2), dequantization=OL.UniformDequantization(),
                              num_draws=2, seed=3)
    for _, result, refusal in results:
        assert "fixed-grid solver under DDP" in refusal
        assert result["n"] == 7
        for key in ("ode_bpd", "ode_bpd_se", "ode_bpd_iw", "ode_bpd_iw_se"):
            assert result[key] == pytest.approx(single[key], rel=1e-9)
