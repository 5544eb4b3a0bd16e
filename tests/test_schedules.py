"""Fixed schedules (§4.5): monotone, exact endpoints, invertible, p(λ) = -dt/dλ a density, finite in float32."""

import math

import pytest
import torch

from vdmlab.diffusion import schedules as S

SCHEDULES = [
    S.LinearSchedule(-5.0, 10.0),
    S.LinearSchedule(-5.0, 13.3),  # VDM's γ ∈ [-13.3, 5]
    S.CosineSchedule(-5.0, 10.0),
    S.CosineSchedule(-15.0, 15.0),
    S.ShiftedCosineSchedule(-10.0, 12.0, shift=1.3),
    S.SimpleDiffusionSchedule(-15.0, 15.0, resolution=8, base=64),
    S.EDMSchedule(-5.0, 10.0),
    S.EDMSchedule(-20.0, 20.0),
    S.FlowSchedule(-5.0, 10.0),
    S.FlowSchedule(-15.0, 15.0),
    S.DDPMSchedule(-10.05, 13.28),
    S.DDPMSchedule(-20.0, 20.0),
    S.LogitNormalSchedule(-5.0, 10.0),
    S.LogitNormalSchedule(-15.0, 15.0, loc=0.5, scale=0.7),
]
IDS = [f"{type(s).__name__}[{s.logsnr_min},{s.logsnr_max}]" for s in SCHEDULES]


@pytest.mark.parametrize("schedule", SCHEDULES, ids=IDS)
def test_strictly_decreasing_with_exact_endpoints(schedule):
    t = torch.linspace(0, 1, 2001, dtype=torch.float64)
    logsnr = schedule.logsnr(t)
    assert (logsnr[1:] < logsnr[:-1]).all()
    assert schedule.logsnr(torch.tensor(0.0, dtype=torch.float64)).item() == pytest.approx(schedule.logsnr_max, abs=1e-9)
    assert schedule.logsnr(torch.tensor(1.0, dtype=torch.float64)).item() == pytest.approx(schedule.logsnr_min, abs=1e-9)
    assert (schedule.dlogsnr_dt(t) < 0).all()


@pytest.mark.parametrize("schedule", SCHEDULES, ids=IDS)
def test_inverse_round_trip_t_of_logsnr(schedule):
    t = torch.linspace(0, 1, 501, dtype=torch.float64)
    torch.testing.assert_close(schedule.t_of(schedule.logsnr(t)), t, atol=1e-9, rtol=0)


@pytest.mark.parametrize("schedule", SCHEDULES, ids=IDS)
def test_derivative_matches_finite_difference(schedule):
    t = torch.linspace(0.01, 0.99, 99, dtype=torch.float64)
    h = 1e-6
    fd = (schedule.logsnr(t + h) - schedule.logsnr(t - h)) / (2 * h)
    torch.testing.assert_close(schedule.dlogsnr_dt(t), fd, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("schedule", SCHEDULES, ids=IDS)
def test_density_eq_4_102_nonnegative_and_integrates_to_one(schedule):
    logsnr = torch.linspace(schedule.logsnr_min, schedule.logsnr_max, 200001, dtype=torch.float64)
    p = schedule.density(logsnr)
    assert (p >= 0).all()
    assert torch.trapezoid(p, logsnr).item() == pytest.approx(1.0, abs=1e-4)
    outside = torch.tensor([schedule.logsnr_min - 1.0, schedule.logsnr_max + 1.0], dtype=torch.float64)
    assert (schedule.density(outside) == 0).all()


@pytest.mark.parametrize("schedule", SCHEDULES, ids=IDS)
def test_float32_finite_everywhere(schedule):
    logsnr = torch.linspace(-30, 30, 601)
    t = torch.linspace(0, 1, 601)
    for value in (schedule.density(logsnr), schedule.t_of(logsnr), *schedule(t)):
        assert torch.isfinite(value).all()


def test_edm_density_is_truncated_normal():
    schedule = S.EDMSchedule(-5.0, 10.0, mean=2.4, std=2.4)
    logsnr = torch.linspace(-5, 10, 31, dtype=torch.float64)
    normal = torch.distributions.Normal(torch.tensor(2.4, dtype=torch.float64), 2.4)
    mass = normal.cdf(torch.tensor(10.0, dtype=torch.float64)) - normal.cdf(torch.tensor(-5.0, dtype=torch.float64))
    torch.testing.assert_close(schedule.density(logsnr), normal.log_prob(logsnr).exp() / mass)


def test_cosine_is_alpha_cos_sigma_sin_and_shift_is_2_log_base_over_resolution():
    wide = S.CosineSchedule(-30.0, 30.0)
    tau = wide._tau(torch.linspace(0.05, 0.95, 19, dtype=torch.float64))
    logsnr = wide._g(tau)
    torch.testing.assert_close(torch.sigmoid(logsnr).sqrt(), torch.cos(0.5 * math.pi * tau))
    shifted = S.SimpleDiffusionSchedule(-30.0, 30.0, resolution=8, base=64)
    torch.testing.assert_close(shifted._g(tau) - logsnr, torch.full_like(tau, 2 * math.log(64 / 8)))


def test_flow_schedule_is_rectified_flow_alpha_one_minus_t():
    flow = S.FlowSchedule(-30.0, 30.0)
    tau = flow._tau(torch.linspace(0.05, 0.95, 19, dtype=torch.float64))
    logsnr = flow._g(tau)
    torch.testing.assert_close(logsnr, 2 * torch.log((1 - tau) / tau))


def test_bad_endpoints_name_the_keys():
    with pytest.raises(ValueError, match="logsnr_min"):
        S.CosineSchedule(5.0, 5.0)
    with pytest.raises(ValueError, match="logsnr_min"):
        S.LinearSchedule(float("nan"), 1.0)


def test_sampling_grid_is_increasing_from_min_to_max():
    grid = S.logsnr_grid(S.CosineSchedule(-5.0, 10.0), 10)
    assert grid.shape == (11,)
    assert (grid[1:] > grid[:-1]).all()
    assert grid[0].item() == pytest.approx(-5.0, abs=1e-5) and grid[-1].item() == pytest.approx(10.0, abs=1e-5)


def test_ddpm_schedule_matches_the_discrete_linear_betas():
    """λ(i/T) of the continuous limit against log(ᾱ_i/(1 - ᾱ_i)) of ᾱ_i = Π_{j<=i}(1 - β_j), β linear 1e-4 → 0.02."""
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    alpha_bar = torch.cumprod(1.0 - betas, 0)
    discrete = torch.log(alpha_bar / (1.0 - alpha_bar))
    schedule = S.DDPMSchedule(-30.0, 30.0)
    continuous = schedule._g(torch.arange(1, 1001, dtype=torch.float64) / 1000)
    assert (continuous - discrete).abs().max() < 0.1  # first order in β: the gap is largest at i = 1
    assert (continuous - discrete).abs()[100:].max() < 0.07


# ---------------------------------------------------------------------------------------------- float32 tails
WIDE = [S.LinearSchedule(-30.0, 30.0), S.CosineSchedule(-30.0, 30.0),
        S.ShiftedCosineSchedule(-30.0, 30.0, shift=1.3), S.SimpleDiffusionSchedule(-30.0, 30.0, resolution=8, base=64),
        S.SimpleDiffusionSchedule(-30.0, 30.0, resolution=512, base=64), S.EDMSchedule(-30.0, 30.0),
        S.FlowSchedule(-30.0, 30.0), S.DDPMSchedule(-30.0, 30.0), S.LogitNormalSchedule(-30.0, 30.0),
        S.LogitNormalSchedule(-30.0, 30.0, loc=1.0, scale=0.5)]
WIDE_IDS = [f"{type(s).__name__}[shift={getattr(s, 'shift', 0):.2f}]" for s in WIDE]


@pytest.mark.parametrize("schedule", WIDE, ids=WIDE_IDS)
def test_float32_tails_at_plus_minus_30_finite_exact_endpoints_round_trip_and_density(schedule):
    """λ ∈ [-30, 30] in float32: λ(t), dλ/dt, t(λ), p(λ) finite on a dense grid with t = 0 and 1 exactly, the
    endpoints exact, t(λ(t)) = t and ∫p(λ)dλ = 1."""
    t = torch.linspace(0.0, 1.0, 100001)
    assert t[0].item() == 0.0 and t[-1].item() == 1.0
    logsnr, dlogsnr = schedule(t)
    assert torch.isfinite(logsnr).all() and torch.isfinite(dlogsnr).all() and (dlogsnr < 0).all()
    assert logsnr[0].item() == 30.0 and logsnr[-1].item() == -30.0
    assert (logsnr[1:] <= logsnr[:-1]).all()
    back = schedule.t_of(logsnr)
    assert torch.isfinite(back).all()
    torch.testing.assert_close(back, t, atol=1e-6, rtol=0)
    grid = torch.linspace(-30.0, 30.0, 200001)
    p = schedule.density(grid)
    assert torch.isfinite(p).all() and (p >= 0).all()
    assert torch.trapezoid(p.double(), grid.double()).item() == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("logsnr_max", [22.0, 22.5, 25.0, 30.0])
def test_edm_derivative_finite_at_t0_beyond_the_ndtr_underflow(logsnr_max, dtype):
    """Φ((mean - λ_max)/std) underflows in ndtr's lower tail for λ_max > 22.3: τ₀ must still be positive."""
    schedule = S.EDMSchedule(-5.0, logsnr_max)
    assert schedule.tau0 > 0
    d = schedule.dlogsnr_dt(torch.tensor([0.0, 1e-7, 1.0], dtype=dtype))
    assert torch.isfinite(d).all() and (d < 0).all()
    # p(λ) = N(λ; mean, std²)/(τ₁ - τ₀): the derivative at t = 0 is -1/p(λ_max)
    normal = torch.distributions.Normal(torch.tensor(2.4, dtype=torch.float64), 2.4)
    p_max = normal.log_prob(torch.tensor(logsnr_max, dtype=torch.float64)).exp() / schedule.span
    assert d[0].item() == pytest.approx(-1.0 / p_max.item(), rel=1e-4)


def test_cosine_keeps_logsnr_min_in_float32_near_t1():
    """τ near 1 rounds in float32; the complementary tail keeps λ(t) within float32 rounding of float64."""
    for schedule in (S.CosineSchedule(-30.0, 30.0), S.SimpleDiffusionSchedule(-30.0, 30.0, resolution=8, base=64)):
        t = torch.linspace(0.99, 1.0, 1001)  # float32 times; the reference evaluates the same times in float64
        torch.testing.assert_close(schedule.logsnr(t).double(), schedule.logsnr(t.double()), atol=1e-4, rtol=1e-5)


def test_logit_normal_schedule_draws_sd3_logit_normal_rectified_flow_times():
    """With t ~ U(0, 1), t_rf = sigmoid(-λ(t)/2) has logit(t_rf) ~ N(m, s²) truncated to the endpoints (SD3 §3.1):
    the density of λ is the push-forward N(-λ/2; m, s²)/2 renormalised over [λ_min, λ_max]."""
    loc, scale = 0.4, 0.8
    schedule = S.LogitNormalSchedule(-12.0, 14.0, loc=loc, scale=scale)
    logsnr = torch.linspace(-12.0, 14.0, 2001, dtype=torch.float64)
    logit_t_rf = torch.logit(torch.sigmoid(-0.5 * logsnr))
    pushforward = 0.5 * torch.exp(-0.5 * ((logit_t_rf - loc) / scale) ** 2) / (scale * math.sqrt(2 * math.pi))
    mass = torch.special.ndtr(torch.tensor((6.0 - loc) / scale)) - torch.special.ndtr(torch.tensor((-7.0 - loc) / scale))
    torch.testing.assert_close(schedule.density(logsnr), pushforward / mass.double())
    with pytest.raises(ValueError, match="scale"):
        S.LogitNormalSchedule(-5.0, 5.0, scale=0.0)
