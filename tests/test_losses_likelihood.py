"""The one loss (eq. (4.123)) and the full ELBO (eq. (3.60)), checked against exact answers on Gaussian data."""

import math

import pytest
import torch
from oracles import GaussianOracle

from vdmlab.diffusion import likelihood as L
from vdmlab.diffusion import losses
from vdmlab.diffusion import parameterization as PZ
from vdmlab.diffusion import process as P
from vdmlab.diffusion import schedules as S
from vdmlab.diffusion import weighting as W

D, STD = 4, 0.5
MU = torch.tensor([0.3, -0.2, 0.1, 0.0], dtype=torch.float64)
LOGSNR_MIN, LOGSNR_MAX = -12.0, 12.0


def gaussian_nll(x):
    """Exact -log N(x; μ, s²I) per example."""
    return 0.5 * ((x - MU) ** 2 / STD**2).sum(1) + D * (math.log(STD) + 0.5 * math.log(2 * math.pi))


def gaussian_decoder_nll(logsnr_0):
    """E_{z_0}[-log N(x; z_0/α_0, e^{-λ_0})]: the continuous-data decoder endpoint term."""
    return 0.5 * D * (math.log(2 * math.pi) - logsnr_0 + 1.0)


def exact_diffusion_term(oracle, x, weighting=None, n=40001):
    """½∫ w(λ) E_ε‖ε - ε̂‖² dλ over [λ_min, λ_max] by quadrature, eq. (4.113)."""
    logsnr = torch.linspace(LOGSNR_MIN, LOGSNR_MAX, n, dtype=torch.float64)
    h = torch.stack([oracle.expected_mse(x, lam.expand(x.shape[0])) for lam in logsnr], 1)
    w = torch.ones_like(logsnr) if weighting is None else weighting(logsnr)
    return 0.5 * torch.trapezoid(w * h, logsnr, dim=1)


def draw_data(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return MU + STD * torch.randn(n, D, generator=g, dtype=torch.float64)


def mc_loss(schedule, weighting, x, sampler=losses.low_discrepancy_times, timesteps=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = sampler(x.shape[0], generator=g).double()
    eps = torch.randn(x.shape, generator=g, dtype=torch.float64)
    return losses.diffusion_loss(
        x, t, eps, net=GaussianOracle(MU, STD), schedule=schedule, weighting=weighting,
        parameterization=PZ.EpsParameterization(), timesteps=timesteps,
    )


def test_continuous_elbo_eq_3_134_matches_exact_gaussian_nll():
    oracle = GaussianOracle(MU, STD)
    x = draw_data(16)
    diffusion = exact_diffusion_term(oracle, x, n=4001)
    prior = L.prior_kl(x, torch.full((16,), LOGSNR_MIN, dtype=torch.float64))
    elbo = diffusion + prior + gaussian_decoder_nll(LOGSNR_MAX)
    # the endpoint terms at |λ| = 12 are below 1e-3 nats (σ²/α² = e^-12 against s² = 0.25)
    torch.testing.assert_close(elbo, gaussian_nll(x), atol=2e-3, rtol=0)


def test_monte_carlo_estimator_is_unbiased_for_the_continuous_elbo():
    x = draw_data(1).expand(20000, D)
    terms = mc_loss(S.CosineSchedule(LOGSNR_MIN, LOGSNR_MAX), W.ELBOWeighting(), x)
    exact = exact_diffusion_term(GaussianOracle(MU, STD), x[:1], n=4001)
    se = terms.elbo.std() / math.sqrt(x.shape[0])
    assert abs(terms.elbo.mean() - exact.item()) < 4 * se


def test_discrete_vlb_improves_as_T_doubles_eq_3_111():
    oracle = GaussianOracle(MU, STD)
    x = draw_data(8)
    schedule = S.CosineSchedule(LOGSNR_MIN, LOGSNR_MAX)
    continuous = exact_diffusion_term(oracle, x, n=4001)
    previous = None
    for T in (2**k for k in range(1, 15)):
        i = torch.arange(1, T + 1, dtype=torch.float64)
        logsnr_t, logsnr_s = schedule.logsnr(i / T), schedule.logsnr((i - 1) / T)
        h = oracle.expected_mse(x[:, None, :], logsnr_t[None, :])  # [B, T], exact over ε
        L_T = 0.5 * (P.snr_difference_weight(logsnr_s, logsnr_t) * h).sum(1)  # eq. (A.38) summed over i
        assert (L_T >= continuous - 1e-6).all()  # the continuous-time bound is the tightest
        if previous is not None:
            assert (L_T < previous).all()  # eq. (3.111)
        previous = L_T
    assert ((previous - continuous) / continuous).abs().max() < 0.01


def test_schedule_shape_leaves_the_loss_unchanged_but_changes_its_variance_sec_4_3_4_6():
    x = draw_data(1).expand(40000, D)
    for weighting in (W.ELBOWeighting(), W.SigmoidWeighting(2.0)):
        exact = exact_diffusion_term(GaussianOracle(MU, STD), x[:1], weighting=weighting, n=4001).item()
        variances = []
        for schedule in (S.LinearSchedule(LOGSNR_MIN, LOGSNR_MAX), S.CosineSchedule(LOGSNR_MIN, LOGSNR_MAX)):
            loss = mc_loss(schedule, weighting, x, sampler=losses.iid_times).loss
            se = loss.std() / math.sqrt(x.shape[0])
            assert abs(loss.mean().item() - exact) < 4 * se
            variances.append(loss.var().item())
        # F-test at n = 40000: a ratio of 1.1 is ~13 standard errors of the log-variance ratio away from 1
        assert max(variances) / min(variances) > 1.1


def test_low_discrepancy_times_fill_every_stratum_and_reduce_variance():
    g = torch.Generator().manual_seed(0)
    t = losses.low_discrepancy_times(64, generator=g)
    strata = torch.floor(torch.sort(t).values * 64)
    assert torch.equal(strata, torch.arange(64, dtype=strata.dtype))
    x = draw_data(1).expand(256, D)
    schedule = S.CosineSchedule(LOGSNR_MIN, LOGSNR_MAX)
    batch_means = {
        name: torch.stack([mc_loss(schedule, W.ELBOWeighting(), x, sampler=fn, seed=k).elbo.mean() for k in range(60)])
        for name, fn in (("iid", losses.iid_times), ("ld", losses.low_discrepancy_times))
    }
    assert batch_means["ld"].var() < batch_means["iid"].var()


@pytest.mark.parametrize("timesteps", [None, 10, 1000])
@pytest.mark.parametrize("schedule", [S.CosineSchedule(-10.0, 10.0), S.EDMSchedule(-10.0, 10.0), S.LinearSchedule(-5, 10)])
def test_simple_weighting_is_half_the_unweighted_eps_mse_eqs_4_91_4_92_4_95(schedule, timesteps):
    x = draw_data(64)
    terms = mc_loss(schedule, W.SimpleWeighting(), x, sampler=losses.iid_times, timesteps=timesteps)
    torch.testing.assert_close(terms.loss, 0.5 * terms.mse, rtol=1e-10, atol=0)


def test_discrete_loss_term_is_T_times_the_transition_kl_eq_3_86_A_38():
    x = draw_data(32)
    T = 50
    schedule = S.CosineSchedule(-10.0, 10.0)
    g = torch.Generator().manual_seed(3)
    t = torch.rand(32, generator=g, dtype=torch.float64)
    eps = torch.randn(x.shape, generator=g, dtype=torch.float64)
    oracle = GaussianOracle(MU, STD)
    terms = losses.diffusion_loss(x, t, eps, net=oracle, schedule=schedule, weighting=W.ELBOWeighting(),
                                  parameterization=PZ.EpsParameterization(), timesteps=T)
    i = torch.ceil(t * T)
    logsnr_t, logsnr_s = schedule.logsnr(i / T), schedule.logsnr((i - 1) / T)
    z_t = P.diffuse(x, logsnr_t, eps)
    kl = P.kl_transition(x, oracle.x_hat(z_t, logsnr_t), logsnr_s, logsnr_t)
    torch.testing.assert_close(terms.elbo, T * kl)


def test_prior_kl_matches_torch_distributions():
    x = draw_data(10)
    logsnr = torch.linspace(-8, 3, 10, dtype=torch.float64)
    alpha, sigma = P.alpha_sigma(logsnr)
    q = torch.distributions.Normal(alpha[:, None] * x, sigma[:, None].expand_as(x))
    expected = torch.distributions.kl_divergence(q, torch.distributions.Normal(0.0, 1.0)).sum(1)
    torch.testing.assert_close(L.prior_kl(x, logsnr), expected)


def test_discretized_decoder_is_a_distribution_that_resolves_levels_at_high_snr():
    K = 17
    z_0 = torch.randn(5, 1, 8, 8)
    logits = L.decoder_logits(z_0, torch.full((5,), 3.0), K)
    torch.testing.assert_close(torch.logsumexp(torch.log_softmax(logits, -1), -1), torch.zeros(5, 1, 8, 8))
    x = L.levels(K)[torch.randint(0, K, (5, 1, 8, 8))]
    nll = [L.decoder_nll(x, P.diffuse(x, torch.full((5,), lam), torch.randn_like(x)), torch.full((5,), lam), K).mean()
           for lam in (4.0, 7.0, 10.0)]
    assert nll[0] > nll[1] > nll[2] >= 0 and nll[2] < 1e-2 * 64  # log-SNR 10 makes the term negligible (docs/datasets.md)
    torch.testing.assert_close(L.decode(P.alpha_sigma(torch.tensor(10.0))[0] * x, torch.full((5,), 10.0), K), x)


def test_negative_elbo_in_bits_per_dim_is_finite_and_beats_uniform_for_the_oracle():
    """With the Gaussian oracle on data quantized to 256 levels the bound is far below log2(256) = 8 bits/dim."""
    K = 256
    x = L.levels(K, dtype=torch.float64)[L.values_to_levels(draw_data(64), K)]
    model = L.ELBOModel(GaussianOracle(MU, STD), S.CosineSchedule(-10.0, 12.0), PZ.EpsParameterization(),
                        num_levels=K, num_samples=4)
    terms = L.negative_elbo(x, model, generator=torch.Generator().manual_seed(0))
    bpd = L.bits_per_dim(terms.total, D)
    assert torch.isfinite(bpd).all() and bpd.mean() < 8.0
    assert (terms.prior >= 0).all() and (terms.reconstruction >= 0).all() and (terms.diffusion >= 0).all()


def test_balanced_mixture_bound_holds_for_every_label_and_is_tight_for_disjoint_classes():
    """-log p(x) of (1/C)·Σ_y p(x|y) never exceeds -log p(x|y) + log C, for any y; equality when the classes are disjoint."""
    C, D, V = 10, 3, 4  # C classes of D-dimensional data, each dimension on V values: V^D points
    g = torch.Generator().manual_seed(0)
    p_x_given_y = torch.softmax(3.0 * torch.randn(C, V ** D, generator=g, dtype=torch.float64), -1)
    bpd_cond = -torch.log2(p_x_given_y) / D  # [C, points]
    bpd_mix = -torch.log2(p_x_given_y.mean(0)) / D
    bound = L.balanced_mixture_bpd(bpd_cond, C, D)
    assert (bpd_mix <= bound + 1e-12).all()
    assert (bound - bpd_mix).min() >= 0 and (bound.min(0).values - bpd_mix).max() < math.log2(C) / D
    disjoint = torch.zeros(C, V ** D, dtype=torch.float64)
    for y in range(C):  # class y owns the points y, y + C, ...
        disjoint[y, y::C] = 1.0 / disjoint[y, y::C].numel()
    own = disjoint > 0
    torch.testing.assert_close(L.balanced_mixture_bpd(-torch.log2(disjoint[own]) / D, C, D),
                               (-torch.log2(disjoint.mean(0)) / D)[own.nonzero()[:, 1]])
    with pytest.raises(ValueError, match="num_classes"):
        L.balanced_mixture_bpd(bpd_cond, 0, D)
