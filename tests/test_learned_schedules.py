"""Learned (VDM, App. A.2) and adaptive (VDM++, eq. (4.130)) schedules: exact endpoints, inverse and density
identities, the variance gradient against finite differences of the empirical second moment, adaptive sampling
against its CDF, DDP all-reduce, checkpoint round trips, the variance command and train.py end to end."""

import os
import subprocess
import sys

import lightning as L
import pytest
import torch
from conftest import REPO
from ddp_workers import run_ranks, schedule_statistics
from scipy import stats
from torch import nn

from vdmlab.cli.build import build_from_checkpoint, build_run
from vdmlab.diffusion import learned_schedules as LS
from vdmlab.diffusion import schedules as S
from vdmlab.diffusion.losses import diffusion_loss
from vdmlab.diffusion.parameterization import EpsParameterization, VParameterization
from vdmlab.diffusion.weighting import ELBOWeighting, SigmoidWeighting


def perturbed(schedule: LS.LearnedSchedule, scale: float = 0.5, seed: int = 0) -> LS.LearnedSchedule:
    """The schedule with random shape parameters, so identities are checked away from the initialisation."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in schedule.named_parameters():
            if name != "logsnr_ends":
                p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype) / schedule.lr_multiplier)
    return schedule


def fitted_adaptive(num_bins: int = 30, dtype=torch.float64) -> LS.AdaptiveSchedule:
    """An adaptive schedule fed a bimodal statistic w‖ε - ε̂‖² = f(λ), so that p(λ) is far from uniform."""
    schedule = LS.AdaptiveSchedule(-5.0, 10.0, num_bins=num_bins, ema_decay=0.9, uniform_mix=0.05)
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        logsnr = schedule.logsnr(torch.rand(500, generator=gen, dtype=dtype))
        f = torch.exp(-0.5 * (logsnr - 4.0) ** 2) + 0.3 * torch.exp(-0.5 * (logsnr + 2.0) ** 2)
        schedule.update(logsnr, f / (2.0 * schedule.density(logsnr)))  # L = ½·w/p·‖ε - ε̂‖²
    return schedule


LEARNED = [LS.LearnedSchedule(-5.0, 10.0, lr_multiplier=1.0), perturbed(LS.LearnedSchedule(-5.0, 10.0, lr_multiplier=1.0)),
           perturbed(LS.LearnedSchedule(-7.3, 13.3, hidden=16, lr_multiplier=3.0), scale=2.0)]
ALL = [*LEARNED, LS.AdaptiveSchedule(-5.0, 10.0), fitted_adaptive()]
IDS = ["learned-init", "learned-perturbed", "learned-small", "adaptive-uniform", "adaptive-fitted"]


# ---------------------------------------------------------------------------------------------- both schedules
@pytest.mark.parametrize("schedule", ALL, ids=IDS)
def test_strictly_decreasing_with_exact_endpoints_and_inverse(schedule):
    t = torch.linspace(0, 1, 1001, dtype=torch.float64)
    with torch.no_grad():
        logsnr, dlogsnr_dt = schedule(t)
    assert (logsnr[1:] < logsnr[:-1]).all() and (dlogsnr_dt < 0).all()
    torch.testing.assert_close(schedule.t_of(logsnr), t, atol=1e-9, rtol=0)
    for dtype in (torch.float32, torch.float64):  # the endpoints are exact, not approximately right
        ends = schedule.logsnr(torch.tensor([0.0, 1.0], dtype=dtype)).detach()
        assert ends.tolist() == torch.tensor([schedule.logsnr_max, schedule.logsnr_min], dtype=dtype).tolist()


@pytest.mark.parametrize("schedule", ALL, ids=IDS)
def test_density_is_minus_dt_dlogsnr_and_integrates_to_one(schedule):
    logsnr = torch.linspace(schedule.logsnr_min, schedule.logsnr_max, 2001, dtype=torch.float64)
    with torch.no_grad():
        p = schedule.density(logsnr)
        assert (p > 0).all()
        assert torch.trapezoid(p, logsnr).item() == pytest.approx(1.0, abs=2e-3)  # adaptive: jumps at bin edges
        t = torch.linspace(0.01, 0.99, 97, dtype=torch.float64)
        lam, dlogsnr_dt = schedule(t)
        torch.testing.assert_close(schedule.density(lam), -1.0 / dlogsnr_dt, rtol=1e-6, atol=0)
    outside = torch.tensor([schedule.logsnr_min - 1.0, schedule.logsnr_max + 1.0], dtype=torch.float64)
    assert (schedule.density(outside) == 0).all()


@pytest.mark.parametrize("schedule", LEARNED, ids=IDS[:3])
def test_learned_derivative_matches_finite_difference(schedule):
    t = torch.linspace(0.01, 0.99, 99, dtype=torch.float64)
    h = 1e-6
    with torch.no_grad():
        fd = (schedule.logsnr(t + h) - schedule.logsnr(t - h)) / (2 * h)
        torch.testing.assert_close(schedule.dlogsnr_dt(t), fd, rtol=1e-6, atol=1e-6)


def test_learned_is_vdm_monotone_network_with_positive_weights():
    schedule = LS.LearnedSchedule(-5.0, 10.0, lr_multiplier=1.0)
    a, b, c, _ = schedule._unit_params(torch.float64)
    assert schedule.log_b.shape == schedule.log_c.shape == schedule.d.shape == (1024,)
    assert a > 0 and (b > 0).all() and (c > 0).all()
    with torch.no_grad():  # near-linear at initialisation: λ(t) within 10% of the range of the line
        t = torch.linspace(0, 1, 101)
        line = 10.0 - 15.0 * t
        assert (schedule.logsnr(t) - line).abs().max() < 1.5


# ---------------------------------------------------------------------------------------------- variance gradient
class TinyDenoiser(nn.Module):
    """A small λ-conditioned network, enough for gradients to flow through z_t and λ."""

    def __init__(self, dim: int):
        super().__init__()
        self.hidden, self.out = nn.Linear(dim + 1, 8), nn.Linear(8, dim)

    def forward(self, z, logsnr):
        return self.out(torch.tanh(self.hidden(torch.cat([z, logsnr[:, None] / 10], dim=1))))


def empirical_moments(schedule, net, x, t, eps, weighting, parameterization, update: bool):
    terms = diffusion_loss(x, t, eps, net=net, schedule=schedule, weighting=weighting,
                           parameterization=parameterization)
    if update:
        schedule.update(terms.logsnr.detach(), terms.loss.detach())
    return terms.loss


def finite_difference(param, index, fn, h=1e-4):
    """Central difference of fn() in one coordinate of ``param``."""
    with torch.no_grad():
        original = param[index].item()
        param[index] = original + h
        plus = fn()
        param[index] = original - h
        minus = fn()
        param[index] = original
    return (plus - minus) / (2 * h)


@pytest.mark.parametrize("weighting, parameterization", [(ELBOWeighting(), EpsParameterization()),
                                                         (SigmoidWeighting(2.0), VParameterization())],
                         ids=["elbo-eps", "sigmoid-v"])
def test_shape_gradient_is_the_gradient_of_the_empirical_second_moment(weighting, parameterization):
    torch.manual_seed(0)
    schedule = perturbed(LS.LearnedSchedule(-5.0, 10.0, hidden=4, learn_endpoints=True, lr_multiplier=1.0), scale=1.0).double()
    net = TinyDenoiser(3).double()
    x, t, eps = torch.randn(6, 3, dtype=torch.float64), torch.rand(6, dtype=torch.float64), torch.randn(6, 3).double()
    objective = dict(net=net, x=x, t=t, eps=eps, weighting=weighting, parameterization=parameterization)

    loss = empirical_moments(schedule, update=True, **objective)
    loss.mean().backward()
    mean_loss = loss.detach().mean()

    def second_moment():
        return empirical_moments(schedule, update=False, **objective).pow(2).mean().item()

    def first_moment():
        return empirical_moments(schedule, update=False, **objective).mean().item()

    with torch.no_grad():
        for name in ("log_a", "log_b", "log_c", "d"):  # η: ∇ = ∇E[L²]/(2L̄), one coordinate of each tensor
            param = getattr(schedule, name)
            index = () if param.ndim == 0 else (1,)
            fd = finite_difference(param, index, second_moment)
            assert param.grad[index].item() * 2 * mean_loss.item() == pytest.approx(fd, rel=1e-6, abs=1e-7), name
        # the endpoints and the denoiser get the plain gradient of the loss itself
        for param, index in ((schedule.logsnr_ends, (0,)), (schedule.logsnr_ends, (1,)), (net.hidden.weight, (2, 1))):
            assert param.grad[index].item() == pytest.approx(finite_difference(param, index, first_moment), rel=1e-6)


def test_backward_without_update_uses_the_plain_gradient_and_never_a_stale_factor():
    torch.manual_seed(1)
    schedule = perturbed(LS.LearnedSchedule(-5.0, 10.0, hidden=4, lr_multiplier=1.0), scale=1.0).double()
    net = TinyDenoiser(3).double()
    objective = dict(net=net, x=torch.randn(5, 3).double(), t=torch.rand(5).double(), eps=torch.randn(5, 3).double(),
                     weighting=ELBOWeighting(), parameterization=EpsParameterization())
    empirical_moments(schedule, update=True, **objective)  # armed, never backpropagated: must not leak
    loss = empirical_moments(schedule, update=False, **objective)
    loss.mean().backward()
    grad = schedule.log_c.grad[2].item()
    fd = finite_difference(schedule.log_c, (2,), lambda: empirical_moments(schedule, update=False, **objective).mean().item())
    assert grad == pytest.approx(fd, rel=1e-6)


def test_endpoints_stay_exact_while_the_shape_trains():
    torch.manual_seed(0)
    schedule, net = LS.LearnedSchedule(-5.0, 13.3, lr_multiplier=1.0), TinyDenoiser(4)
    before = [p.detach().clone() for p in schedule.parameters()]
    optimizer = torch.optim.Adam([*schedule.parameters(), *net.parameters()], lr=0.05)
    for _ in range(5):
        x = torch.randn(32, 4)
        loss = empirical_moments(schedule, net, x, torch.rand(32), torch.randn(32, 4), ELBOWeighting(),
                                 EpsParameterization(), update=True)
        optimizer.zero_grad()
        loss.mean().backward()
        optimizer.step()
    assert all((p.detach() - q).abs().max() > 1e-3 for p, q in zip(schedule.parameters(), before))
    with torch.no_grad():
        assert schedule.logsnr(torch.tensor([0.0, 1.0])).tolist() == torch.tensor([13.3, -5.0]).tolist()


# ---------------------------------------------------------------------------------------------- adaptive
def test_adaptive_samples_follow_its_density():
    schedule = fitted_adaptive()
    gen = torch.Generator().manual_seed(3)
    logsnr = schedule.logsnr(torch.rand(4000, generator=gen, dtype=torch.float64)).numpy()

    def cdf(v):
        return 1.0 - schedule.t_of(torch.as_tensor(v, dtype=torch.float64)).numpy()

    assert stats.kstest(logsnr, cdf).pvalue > 1e-3
    uniform = S.LinearSchedule(-5.0, 10.0).logsnr(torch.rand(4000, generator=gen, dtype=torch.float64)).numpy()
    assert stats.kstest(uniform, cdf).pvalue < 1e-6  # the test has the power to tell the densities apart


def test_adaptive_density_is_the_ema_statistic_mixed_with_uniform():
    """With a statistic constant in each bin, p(λ)Δ = 0.95·f_k/Σf + 0.05/K exactly once every bin is seen (eq. (4.130))."""
    schedule = LS.AdaptiveSchedule(-5.0, 10.0, num_bins=15, ema_decay=0.5, uniform_mix=0.05)
    centres = torch.linspace(-4.5, 9.5, 15, dtype=torch.float64)
    f = 1.0 + torch.exp(-0.5 * (centres - 3.0) ** 2)  # any positive statistic
    for _ in range(3):
        schedule.update(centres, f / (2.0 * schedule.density(centres)))
    expected = 0.95 * f / f.sum() + 0.05 / 15
    torch.testing.assert_close(schedule.density(centres) * 1.0, expected, rtol=1e-12, atol=0)


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_statistics_are_all_reduced_over_ddp_ranks(tmp_path):
    results = sorted(run_ranks(schedule_statistics, 2, str(tmp_path / "init")))
    (_, lam0, loss0, *state0), (_, lam1, loss1, *state1) = results
    pooled = LS.AdaptiveSchedule(-5.0, 10.0, num_bins=10)
    pooled.update(torch.cat([lam0, lam1]), torch.cat([loss0, loss1]))
    for a, b, c in zip(state0[:2], state1[:2], (pooled.ema_sum, pooled.ema_weight)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)  # every rank holds the same schedule
        torch.testing.assert_close(a, c)  # the one a single process would get from all the draws
    global_mean = torch.cat([loss0, loss1]).mean()
    torch.testing.assert_close(state0[2], loss0 / global_mean)  # the variance factor L_i/L̄ uses the global L̄
    torch.testing.assert_close(state1[2], loss1 / global_mean)


# ---------------------------------------------------------------------------------------------- with Lightning
SMALL = ["model.width=16", "model.num_res_blocks=1", "logger=csv"]


def train_and_save(make_config, tmp_path, overrides, steps=3):
    """A few real optimizer steps with a Lightning trainer, then a checkpoint."""
    cfg = make_config([*SMALL, *overrides])
    built = build_run(cfg)
    trainer = L.Trainer(max_steps=steps, limit_val_batches=0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu", devices=1,
                        default_root_dir=tmp_path)
    trainer.fit(built.module, datamodule=built.datamodule)
    path = tmp_path / "schedule.ckpt"
    trainer.save_checkpoint(path)
    return built.module, path


@pytest.mark.parametrize("schedule", ["learned", "adaptive"])
def test_checkpoint_round_trip_restores_the_schedule(schedule, make_config, tmp_path):
    module, path = train_and_save(make_config, tmp_path, [f"schedule={schedule}", "weighting=sigmoid"])
    trained, fresh = module.schedule, build_run(make_config([*SMALL, f"schedule={schedule}"])).module.schedule
    state, initial = trained.state_dict(), fresh.state_dict()
    assert any(not torch.equal(state[k], initial[k]) for k in state)  # training moved it: the check is not vacuous
    restored = build_from_checkpoint(str(path)).module.schedule
    assert type(restored) is type(trained)
    for key, value in restored.state_dict().items():
        torch.testing.assert_close(value, state[key], rtol=0, atol=0)
    t = torch.linspace(0, 1, 101)
    with torch.no_grad():
        torch.testing.assert_close(restored.logsnr(t), trained.logsnr(t), rtol=0, atol=0)
        ends = [trained.logsnr_max, trained.logsnr_min]  # the configured endpoints
        assert trained.logsnr(torch.tensor([0.0, 1.0])).tolist() == ends  # still exact after training


def test_learned_endpoints_train_with_the_elbo(make_config, tmp_path):
    module, _ = train_and_save(make_config, tmp_path, ["schedule=learned", "schedule.learn_endpoints=true"], steps=2)
    ends = module.schedule.logsnr_ends.detach()
    assert ends.tolist() != [-5.0, 10.0] and module.schedule.logsnr_min == ends[0].item()
    with torch.no_grad():
        assert module.schedule.logsnr(torch.tensor([0.0, 1.0])).tolist() == [ends[1].item(), ends[0].item()]


def test_variance_command_writes_a_table(make_config, tmp_path, capsys):
    from vdmlab.cli.variance import main

    _, path = train_and_save(make_config, tmp_path, ["schedule=linear"], steps=2)
    rows = main([f"ckpt_path={path}", "repeats=3", "fit_steps=3", "adaptive_passes=1", "split=val", "device=cpu",
                 f"out={tmp_path / 'variance'}"])
    assert {(r["schedule"], r["sampler"]) for r in rows} == {
        (s, m) for s in ("cosine", "linear", "learned", "adaptive", "checkpoint") for m in ("iid", "low_discrepancy")}
    assert all(r["ratio_example"] == 1.0 and r["ratio_batch"] == 1.0 for r in rows if r["schedule"] == "cosine")
    assert all(r["var_example"] > 0 and r["samples"] == rows[0]["samples"] for r in rows)  # equal sample counts
    assert (tmp_path / "variance.csv").is_file() and (tmp_path / "variance.json").is_file()
    assert "var_example" in capsys.readouterr().out


@pytest.mark.slow
def test_train_py_learned_schedule_subprocess(tmp_path):
    cmd = [sys.executable, "train.py", "schedule=learned", "weighting=sigmoid", "trainer.max_epochs=2",
           "sampler.steps=10", "callbacks.schedule_plot.every_n_epochs=1", "fid.num_samples=100", "fid.steps=5",
           "trainer.check_val_every_n_epoch=1",
           "logger=csv", f"paths.log_dir={tmp_path}"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "val/bpd" in result.stdout
    (run_dir,) = tmp_path.glob("train/runs/*")
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    for name in ("start", "epoch_0001", "epoch_0002", "end"):
        assert (run_dir / "plots" / f"schedule_{name}.png").is_file(), name
    header = (run_dir / "csv" / "metrics.csv").read_text().splitlines()[0]
    assert "train/loss_variance" in header
    schedule = build_from_checkpoint(str(run_dir / "checkpoints" / "last.ckpt")).module.schedule
    assert isinstance(schedule, LS.LearnedSchedule)
    assert schedule.logsnr(torch.tensor([0.0, 1.0])).tolist() == [schedule.logsnr_max, schedule.logsnr_min]


@pytest.mark.parametrize("make", [lambda: LS.LearnedSchedule(-30.0, 30.0, hidden=16, lr_multiplier=1.0),
                                  lambda: LS.AdaptiveSchedule(-30.0, 30.0, num_bins=20)], ids=["learned", "adaptive"])
def test_float32_tails_at_plus_minus_30(make):
    """λ ∈ [-30, 30] in float32: finite λ(t), dλ/dt, t(λ), p(λ) with t = 0 and 1 exactly, exact endpoints,
    t(λ(t)) = t and ∫p(λ)dλ = 1."""
    schedule = make()
    t = torch.linspace(0.0, 1.0, 4001)
    with torch.no_grad():
        logsnr, dlogsnr = schedule(t)
    assert torch.isfinite(logsnr).all() and torch.isfinite(dlogsnr).all() and (dlogsnr < 0).all()
    assert logsnr[0].item() == 30.0 and logsnr[-1].item() == -30.0
    torch.testing.assert_close(schedule.t_of(logsnr), t, atol=1e-4, rtol=0)
    grid = torch.linspace(-30.0, 30.0, 200001)
    p = schedule.density(grid).detach()
    assert torch.isfinite(p).all() and (p >= 0).all()
    assert torch.trapezoid(p.double(), grid.double()).item() == pytest.approx(1.0, abs=1e-3)
