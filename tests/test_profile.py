"""The ELBO profile over λ (diffusion/profile.py, metrics/profile.py): it integrates to the diffusion term, equals the
closed-form per-λ MSE of the optimal denoiser on Gaussian data, and its files and logger rows are written."""

import csv
import json

import torch
from oracles import GaussianOracle
from torch.utils.data import DataLoader, TensorDataset

from vdmlab.data.base import UniqueIndexDataset
from vdmlab.diffusion import parameterization as PZ
from vdmlab.diffusion import profile as PR
from vdmlab.diffusion import schedules as S
from vdmlab.diffusion import weighting as W
from vdmlab.diffusion.likelihood import ELBOModel, negative_elbo
from vdmlab.metrics.bpd import evaluate_bpd
from vdmlab.metrics.profile import evaluate_profile, log_profile

D, STD = 4, 0.5
MU = torch.tensor([0.3, -0.2, 0.1, 0.0], dtype=torch.float64)
LMIN, LMAX = -10.0, 10.0


def data(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return MU + STD * torch.randn(n, D, generator=g, dtype=torch.float64)


def test_stratified_draws_fill_every_bin_equally():
    edges = PR.bin_edges(LMIN, LMAX, 16)
    lam = PR.stratified_logsnr(edges, PR.example_offsets(torch.arange(5), seed=3), draws=4)  # [5, 16, 4]
    assert lam.shape == (5, 16, 4)
    assert ((lam >= edges[:-1, None]) & (lam < edges[1:, None])).all()  # each draw inside its own bin
    strata = torch.floor((lam - edges[:-1, None]) / (edges[1:, None] - edges[:-1, None]) * 4)
    assert torch.equal(strata, torch.arange(4.0, dtype=strata.dtype).expand_as(strata))  # one draw per stratum


def test_profile_integrates_to_the_diffusion_term_of_the_elbo():
    """Σ width·h_k and the ELBO's diffusion term (eq. (3.134)) estimate one integral: they agree within their errors."""
    net = GaussianOracle(MU, 0.8 * STD)  # a wrong denoiser, so the integrand is not the optimum's
    x = data(400)
    ids = torch.arange(400)
    schedule = S.CosineSchedule(LMIN, LMAX)
    terms = PR.profile_terms(x, net=net, schedule=schedule, weighting=W.ELBOWeighting(),
                             parameterization=PZ.EpsParameterization(),
                             edges=PR.bin_edges(LMIN, LMAX, 16), draws=2, example_ids=ids, seed=0)
    integral = PR.bin_integral(terms.elbo, PR.bin_edges(LMIN, LMAX, 16))
    elbo = negative_elbo(x, ELBOModel(net, schedule, PZ.EpsParameterization(), num_levels=256, num_samples=16),
                         example_ids=ids, seed=1).diffusion
    diff = integral - elbo.double()  # paired per example: the data spread cancels
    se = diff.std() / diff.numel() ** 0.5
    assert abs(diff.mean()) < 4 * se
    assert se < 0.05 * elbo.mean()  # the check has teeth: the error is small against the term
    torch.testing.assert_close(terms.weighted, terms.elbo)  # w = 1: the weighted profile is the profile


def exact_bin_means(oracle, x, edges, weighting=None, n=201):
    """Mean over the examples and over each bin of ½ w(λ) E_ε‖ε − ε̂‖², by quadrature (closed form over ε)."""
    out = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        lam = torch.linspace(float(lo), float(hi), n, dtype=torch.float64)
        h = 0.5 * oracle.expected_mse(x[:, None, :], lam[None, :]).mean(0)  # [n]
        w = torch.ones_like(lam) if weighting is None else weighting(lam)
        out.append(torch.trapezoid(w * h, lam) / (hi - lo))
    return torch.stack(out)


def test_oracle_profile_equals_the_closed_form_per_logsnr_mse():
    oracle = GaussianOracle(MU, STD)
    x = data(600, seed=1)
    edges = PR.bin_edges(LMIN, LMAX, 16)
    weighting = W.SigmoidWeighting(2.0)
    terms = PR.profile_terms(x, net=oracle, schedule=S.CosineSchedule(LMIN, LMAX), weighting=weighting,
                             parameterization=PZ.EpsParameterization(), edges=edges, draws=2, example_ids=torch.arange(600))
    for values, w in ((terms.elbo, None), (terms.weighted, weighting)):
        exact = exact_bin_means(oracle, x, edges, w)
        mean, se = PR.mean_and_se(values)
        assert ((mean - exact).abs() < 4 * se).all(), (mean, exact, se)
    # at λ → -∞ z is almost pure noise, so ε̂ ≈ z and the ε-error vanishes; at high λ it does not
    assert terms.elbo.mean(0)[0] < terms.elbo.mean(0)[-1]


def test_evaluate_profile_matches_evaluate_bpd_and_writes_its_files(tmp_path):
    """The per-example ELBO of the profile pass is evaluate_bpd's (same counter noise), and the files are complete."""
    torch.manual_seed(0)
    levels = torch.randint(0, 256, (40, 1, 2, 2))
    x = levels.float() * (2 / 255) - 1
    loader = DataLoader(UniqueIndexDataset(TensorDataset(x)), batch_size=16)

    class Net(torch.nn.Module):  # a small, not optimal, ε-predictor with parameters (so eval mode matters)
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(5, 4)

        def forward(self, z, logsnr, cond=None):
            flat = torch.cat([z.flatten(1), logsnr[:, None] / 10], 1)
            return self.lin(flat).reshape(z.shape)

    net, schedule = Net(), S.CosineSchedule(-10.0, 10.0)
    split = [(i, xb[0]) if isinstance(xb, (list, tuple)) else (i, xb) for i, xb in loader]
    scored = {"elbo": W.ELBOWeighting(), "sigmoid": W.SigmoidWeighting(2.0)}
    model = ELBOModel(net, schedule, PZ.EpsParameterization(), num_levels=256, num_samples=4)
    profile = evaluate_profile(model, W.SigmoidWeighting(2.0), split, num_bins=8, draws_per_bin=2, seed=5, scored_with=scored)
    bpd = evaluate_bpd(model, split, seed=5)
    summary = profile.summary()
    assert abs(summary["bpd"] - bpd["bpd"]) < 1e-9 and summary["n"] == 40
    assert abs(summary["scored/sigmoid"] - summary["profile_weighted"]) < 1e-9  # the same draws
    assert abs(summary["scored/elbo"] - summary["profile_diffusion"]) < 1e-9
    rd = profile.rate_distortion()
    rates = [r["rate_bpd"] for r in rd]
    assert rates == sorted(rates) and abs(rates[0] - summary["bpd_prior"]) < 1e-9  # rate grows from the prior
    paths = profile.write(tmp_path)
    assert json.loads(paths["profile_json"].read_text())["summary"]["n"] == 40
    with open(paths["per_example"]) as f:
        rows = list(csv.DictReader(f))
    assert [int(r["index"]) for r in rows] == list(range(40))
    assert abs(sum(float(r["bpd"]) for r in rows) / 40 - bpd["bpd"]) < 1e-6
    assert paths["profile_png"].stat().st_size > 1000
    assert "Σ width·integrand" in profile.format()

    class Recorder:
        def __init__(self):
            self.rows = []

        def log_metrics(self, metrics, step):
            self.rows.append((step, metrics))

    recorder = Recorder()
    log_profile([recorder], profile)
    assert len(recorder.rows) == 9 and "profile/summary/bpd" in recorder.rows[-1][1]
    assert [m["profile/logsnr"] for _, m in recorder.rows[:8]] == [r["logsnr"] for r in profile.table()]
