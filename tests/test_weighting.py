"""Weightings w(λ) (§4.4-4.7): the monotonic flag, the augmentation kernel p_w(t) (eq. 4.150), stability."""

import pytest
import torch

from vdmlab.diffusion import schedules as S
from vdmlab.diffusion import weighting as W

ALL = [
    W.ELBOWeighting(), W.SigmoidWeighting(2.0), W.SigmoidWeighting(-3.0), W.VWeighting(), W.FlowWeighting(),
    W.EDMWeighting(), W.IDDPMWeighting(), W.SimpleWeighting(), W.MinSNRWeighting(5.0),
]
IDS = [f"{w.name}-{i}" for i, w in enumerate(ALL)]
# the schedule-relative weightings (simple, min_snr) are judged under the cosine schedule (Ho et al./IDDPM)
COSINE = S.CosineSchedule(-15.0, 15.0)


def _w(weighting, logsnr):
    return weighting(logsnr, COSINE.density(logsnr))


@pytest.mark.parametrize("weighting", ALL, ids=IDS)
def test_monotonic_flag_agrees_with_numeric_derivative(weighting):
    logsnr = torch.linspace(-14.9, 14.9, 3001, dtype=torch.float64)
    dw = torch.diff(_w(weighting, logsnr))
    non_increasing = bool((dw <= 1e-12 * _w(weighting, logsnr).abs().max()).all())
    assert weighting.monotonic == non_increasing


@pytest.mark.parametrize("weighting", ALL, ids=IDS)
def test_float32_finite_and_nonnegative_in_pm30(weighting):
    logsnr = torch.linspace(-30, 30, 601)
    w = weighting(logsnr, S.CosineSchedule(-30.0, 30.0).density(logsnr))
    assert torch.isfinite(w).all() and (w >= 0).all()


@pytest.mark.parametrize("schedule", [S.CosineSchedule(-10.0, 10.0), S.LinearSchedule(-5.0, 10.0), S.EDMSchedule(-8.0, 12.0)])
@pytest.mark.parametrize("weighting", [W.SigmoidWeighting(2.0), W.SigmoidWeighting(-1.0), W.VWeighting(), W.FlowWeighting()])
def test_augmentation_kernel_eq_4_150_is_a_density(weighting, schedule):
    # a grid uniform in λ resolves the kernel where w(λ_t) changes fast in t
    logsnr = torch.linspace(schedule.logsnr_min, schedule.logsnr_max, 100001, dtype=torch.float64)
    t = schedule.t_of(logsnr).clamp(0, 1).flip(0)
    p_w = W.augmentation_kernel(weighting, schedule, t)
    assert (p_w >= 0).all()
    assert torch.trapezoid(p_w, t).item() == pytest.approx(1.0, abs=1e-4)


def test_augmentation_kernel_rejects_non_monotonic_and_constant_weightings():
    with pytest.raises(ValueError, match="monotonic"):
        W.augmentation_kernel(W.EDMWeighting(), COSINE, torch.rand(4))
    with pytest.raises(ValueError, match="point mass"):
        W.augmentation_kernel(W.ELBOWeighting(), COSINE, torch.rand(4))


def test_flow_and_v_weightings_are_implied_by_their_losses():
    """FM-OT: ‖u - û‖² = ‖ε - ε̂‖²/(1-t)² equals ½w(λ)(-dλ/dt)‖ε - ε̂‖² with w = e^{-λ/2} (VDM++ App. D)."""
    flow = S.FlowSchedule(-30.0, 30.0)
    t = torch.linspace(0.05, 0.95, 19, dtype=torch.float64)
    logsnr, dlogsnr_dt = flow(t)
    tau = flow._tau(t)
    implied = 0.5 * W.FlowWeighting()(logsnr) * (-dlogsnr_dt) / (flow.tau1 - flow.tau0)
    torch.testing.assert_close(implied, 1 / (1 - tau) ** 2)


def test_sigmoid_and_min_snr_validate_their_parameters():
    with pytest.raises(ValueError, match="bias"):
        W.SigmoidWeighting(float("inf"))
    with pytest.raises(ValueError, match="gamma"):
        W.MinSNRWeighting(0.0)


def test_min_snr_tends_to_simple_for_large_gamma():
    logsnr = torch.linspace(-10, 10, 41, dtype=torch.float64)
    p = COSINE.density(logsnr)
    torch.testing.assert_close(W.MinSNRWeighting(1e12)(logsnr, p), W.SimpleWeighting()(logsnr, p))
