"""Weightings w(λ) (§4.4-4.7): the monotonic flag, the augmentation kernel p_w(t) (eq. (4.150)), stability."""

import numpy as np
import pytest
import torch
from conftest import REPO, compose_config
from hydra.utils import instantiate

from vdmlab.diffusion import schedules as S
from vdmlab.diffusion import weighting as W

ALL = [
    W.ELBOWeighting(), W.SigmoidWeighting(2.0), W.SigmoidWeighting(-3.0), W.VWeighting(), W.FlowWeighting(),
    W.EDMWeighting(), W.IDDPMWeighting(), W.SimpleWeighting(), W.MinSNRWeighting(5.0),
    W.P2Weighting(1.0, 1.0), W.P2Weighting(1.0, 0.5), W.LogitNormalFlowWeighting(0.0, 1.0),
    W.LogitNormalFlowWeighting(0.5, 0.8), W.EDM2UncertaintyWeighting(),
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
    trained = weighting.trained_weight(logsnr, S.CosineSchedule(-30.0, 30.0).density(logsnr))
    assert torch.isfinite(trained).all() and (trained >= 0).all()


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


# The augmentation kernel of every configured schedule (learned and adaptive in their initial state) and every
# monotonic configured weighting, at the endpoints the dataset defaults give (digits K = 17, CIFAR-10 K = 256).
SCHEDULES = sorted(p.stem for p in (REPO / "conf" / "schedule").glob("*.yaml"))
WEIGHTINGS = sorted(p.stem for p in (REPO / "conf" / "weighting").glob("*.yaml"))


@pytest.fixture(scope="module")
def configured(tmp_path_factory):
    """``configured(group, name, dataset)`` -> the object conf/<group>/<name>.yaml builds, composed as train.py does."""
    built = {}

    def build(group, name, dataset="digits"):
        if (group, name, dataset) not in built:
            torch.manual_seed(0)  # the learned schedule's initial network
            cfg = compose_config(tmp_path_factory.mktemp("cfg"), [f"dataset={dataset}", f"{group}={name}"])
            obj = instantiate(cfg[group])
            built[group, name, dataset] = obj.double() if isinstance(obj, torch.nn.Module) else obj
        return built[group, name, dataset]

    return build


def monotonic_weightings(configured):
    weightings = [configured("weighting", name) for name in WEIGHTINGS]
    return [w for w in weightings if w.monotonic and not isinstance(w, W.ELBOWeighting)]  # elbo: a point mass


def test_every_monotonic_configured_weighting_has_a_kernel(configured):
    assert {w.name for w in monotonic_weightings(configured)} >= {"sigmoid", "v", "flow"}


def kernel_grid(schedule) -> torch.Tensor:
    """Nodes in t, sorted, from 0 to 1: 2¹³ + 1 uniform in t, 2¹¹ geometric towards each end (down to 10⁻¹²), and
    2¹⁵ + 1 uniform in λ (the t of each by interpolating λ(t) on the former), so that they are dense both where λ(t)
    is steep (EDM's tails, the flow and cosine schedules' ends) and where it is flat."""
    ends = torch.logspace(-12, -1, 2**11, dtype=torch.float64)
    table = torch.unique(torch.cat([torch.linspace(0.0, 1.0, 2**13 + 1, dtype=torch.float64), ends, 1 - ends]))
    with torch.no_grad():
        logsnr = schedule.logsnr(table)
    uniform = torch.linspace(schedule.logsnr_min, schedule.logsnr_max, 2**15 + 1, dtype=torch.float64)
    t_of_uniform = np.interp(uniform.numpy(), logsnr.flip(0).numpy(), table.flip(0).numpy())
    return torch.unique(torch.cat([table, torch.from_numpy(t_of_uniform)]))


KERNEL_CASES = [pytest.param(name, dataset, id=f"{name}-{dataset}",
                             marks=[pytest.mark.slow] if name == "learned" else [])  # 1024 hidden units, in float64
                for name in SCHEDULES for dataset in ("digits", "cifar10") if (name, dataset) != ("learned", "cifar10")]


@pytest.mark.parametrize("schedule_name, dataset", KERNEL_CASES)
def test_augmentation_kernel_is_positive_at_both_ends_and_integrates_to_one(schedule_name, dataset, configured):
    """p_w(t) = dw(λ_t)/dt / (w(λ_min) - w(λ_max)) (eq. (4.150)) from the schedule's analytic dλ/dt: finite and > 0 at
    t = 0, ½, 1, and ∫₀¹ p_w dt = 1 since the integral telescopes to (w(λ(1)) - w(λ(0)))/(w_min - w_max).

    On the ~4.5·10⁴ nodes of :func:`kernel_grid` the composite trapezoid rule (error Σ h_i³ |p_w''|/12) is within
    10⁻⁷ of 1 for every case (measured: worst 9·10⁻⁸, EDM with w = e^{-λ/2}, whose kernel peaks at 6·10³ at t = 1);
    float64 round-off over the sum is ~10⁻¹¹. A tolerance of 10⁻⁶ thus tests the kernel, not the quadrature."""
    schedule = configured("schedule", schedule_name, dataset)
    t = kernel_grid(schedule)
    ends = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    for weighting in monotonic_weightings(configured):
        at_ends = W.augmentation_kernel(weighting, schedule, ends)
        assert torch.isfinite(at_ends).all() and (at_ends > 0).all(), (weighting, at_ends)
        p_w = W.augmentation_kernel(weighting, schedule, t)
        assert torch.isfinite(p_w).all() and (p_w > 0).all(), weighting
        assert torch.trapezoid(p_w, t).item() == pytest.approx(1.0, abs=1e-6), weighting


@pytest.mark.parametrize("schedule_name", [n if n != "learned" else pytest.param(n, marks=pytest.mark.slow) for n in SCHEDULES])
def test_augmentation_kernel_is_the_derivative_of_the_normalised_weighting(schedule_name, configured):
    """p_w(t) equals the central difference of w(λ_t)/(w_min - w_max) at t = ¼, ½, ¾ (the cosine schedule switches
    branch at ½): step 10⁻⁵ in float64, truncation error ~h²·|f'''| ≈ 10⁻¹⁰, round-off ~10⁻¹⁶/h ≈ 10⁻¹¹."""
    schedule = configured("schedule", schedule_name)
    t, h = torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64), 1e-5
    ends = torch.tensor([schedule.logsnr_min, schedule.logsnr_max], dtype=torch.float64)
    for weighting in monotonic_weightings(configured):
        w_min, w_max = weighting(ends)
        with torch.no_grad():
            w_up, w_down = weighting(schedule.logsnr(t + h)), weighting(schedule.logsnr(t - h))
        expected = (w_up - w_down) / (2 * h) / (w_min - w_max)
        assert torch.allclose(W.augmentation_kernel(weighting, schedule, t), expected, rtol=1e-6), weighting


# ---------------------------------------------------------------------------------------------- P2 (Choi et al.)
def test_p2_is_simple_times_one_over_k_plus_snr_to_the_gamma():
    """P2 = L_simple's per-step weight (w = p(λ), eq. (4.95)) times (k + SNR)^{-γ}; γ = 0 is ``simple``."""
    logsnr = torch.linspace(-14, 14, 57, dtype=torch.float64)
    p = COSINE.density(logsnr)
    for k, gamma in [(1.0, 1.0), (1.0, 0.5), (0.3, 2.0)]:
        torch.testing.assert_close(W.P2Weighting(k, gamma)(logsnr, p), p / (k + logsnr.exp()) ** gamma)
    torch.testing.assert_close(W.P2Weighting(1.0, 0.0)(logsnr, p), W.SimpleWeighting()(logsnr, p))


def test_p2_per_example_loss_is_the_weighted_eps_mse_of_choi_et_al():
    """Under any fixed schedule ½ w/p ‖ε - ε̂‖² = ½ ‖ε - ε̂‖²/(k + SNR)^γ: P2's loss, whatever p(λ) is."""
    for schedule in (COSINE, S.LinearSchedule(-5.0, 10.0), S.EDMSchedule(-10.0, 12.0)):
        logsnr = schedule.logsnr(torch.linspace(0.01, 0.99, 33, dtype=torch.float64))
        p = schedule.density(logsnr)
        torch.testing.assert_close(W.P2Weighting(1.0, 1.0)(logsnr, p) / p, 1.0 / (1.0 + logsnr.exp()))


def test_p2_monotonic_exactly_where_its_density_product_is():
    """Reported non-monotonic (true under cosine); under the linear schedule (uniform p) it is monotonic."""
    linear = S.LinearSchedule(-10.0, 10.0)
    logsnr = torch.linspace(-9.9, 9.9, 2001, dtype=torch.float64)
    assert (torch.diff(W.P2Weighting()(logsnr, linear.density(logsnr))) <= 0).all()
    assert not W.P2Weighting.monotonic
    with pytest.raises(ValueError, match="p2 needs the schedule density"):
        W.P2Weighting()(logsnr, None)
    with pytest.raises(ValueError, match="gamma"):
        W.P2Weighting(1.0, -1.0)
    with pytest.raises(ValueError, match="k"):
        W.P2Weighting(0.0, 1.0)


# ---------------------------------------------------------------------------------------------- SD3 (Esser et al.)
def test_sd3_weighting_is_flow_times_the_logit_normal_density_of_t():
    """w(λ) = e^{-λ/2}·π(t_rf) with π the logit-normal density of t_rf = sigmoid(-λ/2) (Esser et al. §3.1)."""
    loc, scale = 0.3, 0.9
    logsnr = torch.linspace(-12, 12, 49, dtype=torch.float64)
    t_rf = torch.sigmoid(-0.5 * logsnr)
    logit = torch.logit(t_rf)
    pi = torch.exp(-0.5 * ((logit - loc) / scale) ** 2) / (scale * (2 * torch.pi) ** 0.5) / (t_rf * (1 - t_rf))
    torch.testing.assert_close(W.LogitNormalFlowWeighting(loc, scale)(logsnr), W.FlowWeighting()(logsnr) * pi)


def test_sd3_with_its_logit_normal_schedule_trains_plain_flow_mse():
    """With schedule=logit_normal (same m, s) ½ w/p ‖ε - ε̂‖² = (τ₁ - τ₀)·‖u - û‖², ‖u - û‖² = ‖ε - ε̂‖²/(1 - t_rf)²."""
    schedule = S.LogitNormalSchedule(-15.0, 15.0, loc=0.2, scale=1.1)
    logsnr, dlogsnr_dt = schedule(torch.linspace(0.01, 0.99, 33, dtype=torch.float64))
    w = W.LogitNormalFlowWeighting(0.2, 1.1)(logsnr)
    t_rf = torch.sigmoid(-0.5 * logsnr)
    torch.testing.assert_close(0.5 * w * (-dlogsnr_dt), (schedule.tau1 - schedule.tau0) / (1 - t_rf) ** 2)


# ---------------------------------------------------------------------------------------------- EDM2 uncertainty
def _trained_u(weighting, logsnr, p, loss, steps=400):
    """Fit the weighting's u alone by Adam on the mean objective (the network fixed: ``loss`` is given)."""
    optimizer = torch.optim.Adam(weighting.parameters(), lr=0.05)
    for _ in range(steps):
        optimizer.zero_grad()
        weighting.objective(loss, logsnr, p).mean().backward()
        optimizer.step()
    return weighting.log_variance(logsnr).detach()


def test_edm2_uncertainty_objective_is_minimised_at_u_equals_log_loss():
    """d/du (L e^{-u} + r u) = 0 at u = log(L/r): with the matching schedule r = n/p is a constant (τ₁ - τ₀), so
    the optimum is u = log L up to that constant; the Fourier head fits it at a few λ."""
    weighting = W.EDM2UncertaintyWeighting()
    schedule = S.EDMSchedule(-10.0, 12.0, mean=weighting.mean, std=weighting.std)
    logsnr = torch.tensor([-6.0, -2.0, 1.0, 4.0, 8.0])
    p = schedule.density(logsnr)
    loss = torch.tensor([30.0, 3.0, 0.5, 7.0, 0.02])
    u = _trained_u(weighting, logsnr, p, loss)
    r = schedule.tau1 - schedule.tau0
    torch.testing.assert_close(u, torch.log(loss / r), atol=0.02, rtol=0)
    # a scalar u: the objective's value is above its value at u = log(L/r) on both sides (a strict minimum)
    for lam, p_lam, loss_lam in zip(logsnr, p, loss, strict=True):
        u_star = torch.log(loss_lam / r)

        def value(v, lam=lam, p_lam=p_lam, loss_lam=loss_lam):
            ratio = torch.exp(W._log_normal(lam, weighting.mean, weighting.std)) / p_lam
            return loss_lam * torch.exp(-v) + ratio * v

        assert value(u_star) < value(u_star - 0.1) and value(u_star) < value(u_star + 0.1)


def test_edm2_uncertainty_objective_does_not_depend_on_the_schedule():
    """E_{λ~p}[objective] = E_{λ~n}[ℓ e^{-u} + u] (EDM2 eq. (21)) for any p: at one λ the u-gradient of objective·p
    is p-free, and zero where u = log ℓ."""
    weighting = W.EDM2UncertaintyWeighting()
    with torch.no_grad():
        weighting.linear.bias.fill_(0.7)
    logsnr = torch.linspace(-8, 8, 17, dtype=torch.float64)
    ell = torch.rand(17, dtype=torch.float64) + 0.1
    n = torch.exp(W._log_normal(logsnr, weighting.mean, weighting.std))
    values = []
    for schedule in (COSINE, S.LinearSchedule(-10.0, 10.0), S.EDMSchedule(-10.0, 10.0)):
        p = schedule.density(logsnr)
        loss = n / p * ell  # L = ½ w/p ‖ε - ε̂‖² = (n/p)·ℓ
        u = weighting.log_variance(logsnr).detach().requires_grad_(True)
        head = weighting.log_variance
        weighting.log_variance = lambda _logsnr, u=u: u  # the objective as a function of a free u
        (grad,) = torch.autograd.grad((weighting.objective(loss, logsnr, p) * p).sum(), u)
        weighting.log_variance = head
        values.append(grad)  # p·∂/∂u objective = n(1 - ℓ e^{-u}): the same for every p
        torch.testing.assert_close(grad, n * (1 - ell * torch.exp(-u.detach())))
    torch.testing.assert_close(values[0], values[1])
    torch.testing.assert_close(values[0], values[2])


def test_edm2_uncertainty_objective_value_is_the_loss_under_the_trained_weighting():
    """The value the schedules and train/loss read is ½ w e^{-u}/p ‖ε - ε̂‖² = L·e^{-u} > 0, never the u term."""
    weighting = W.EDM2UncertaintyWeighting()
    with torch.no_grad():
        weighting.linear.bias.fill_(-3.0)  # u < 0: the u term alone would be negative
    logsnr = torch.linspace(-8, 8, 17)
    p = COSINE.density(logsnr)
    loss = weighting(logsnr, p) / p * 0.5 * (torch.rand(17) + 0.1)
    value = weighting.objective(loss, logsnr, p)
    torch.testing.assert_close(value, loss * torch.exp(torch.tensor(3.0)))
    torch.testing.assert_close(value, 0.5 * weighting.trained_weight(logsnr, p) / p * (loss / (0.5 * weighting(logsnr, p) / p)))
    assert (value > 0).all()


def test_edm2_uncertainty_gradients_reach_u_and_are_finite_in_float32():
    weighting = W.EDM2UncertaintyWeighting()
    schedule = S.CosineSchedule(-30.0, 30.0)
    logsnr = torch.linspace(-30.0, 30.0, 601)
    p = schedule.density(logsnr)
    loss = (weighting(logsnr, p) / p * torch.rand(601)).requires_grad_(True)
    objective = weighting.objective(loss, logsnr, p)
    assert torch.isfinite(objective).all()
    objective.mean().backward()
    grads = [param.grad for param in weighting.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    assert torch.isfinite(loss.grad).all() and (loss.grad > 0).all()  # the network's gradient is scaled by e^{-u} > 0


def test_edm2_uncertainty_starts_as_its_base_weighting_and_is_a_registered_module():
    """u ≡ 0 at initialisation: the trained w is the base EDM w with EDM2's noise distribution; the Fourier
    features are buffers (saved, fixed) and the head's parameters are what an optimizer over the module sees."""
    weighting = W.EDM2UncertaintyWeighting()
    logsnr = torch.linspace(-10, 10, 21)
    base = W.EDMWeighting(mean=1.6, std=3.2, sigma_data=0.5)(logsnr)
    torch.testing.assert_close(weighting.trained_weight(logsnr), base)
    assert set(dict(weighting.named_parameters())) == {"linear.weight", "linear.bias"}
    assert {"freqs", "phases"} <= set(weighting.state_dict())
    module = torch.nn.Module()
    module.weighting = weighting
    assert len(list(module.parameters())) == 2
    torch.testing.assert_close(W.EDM2UncertaintyWeighting(seed=0).freqs, weighting.freqs)
