"""Post-hoc EMA (EDM2 §3, App. C): the σ_rel ↔ γ map, the power-function profiles and their inner products, the
callback's tracked averages against their closed form, the least-squares reconstruction, resume, and eval.py."""

from __future__ import annotations

import json

import lightning as L
import numpy as np
import pytest
import torch
from conftest import compose_config
from omegaconf import OmegaConf
from torch import nn

from vdmlab.callbacks.posthoc_ema import PostHocEMA
from vdmlab.checks import ParameterError
from vdmlab.cli.checkpoints import CheckpointError, load_checkpoint
from vdmlab.cli.posthoc_ema import posthoc_ema_weights, snapshot_dirs
from vdmlab.optim import EMA
from vdmlab.posthoc_ema import (
    SIGMA_REL_MAX,
    gamma_from_sigma_rel,
    power_ema_beta,
    power_profile,
    profile_inner_product,
    sigma_rel_from_gamma,
    solve_coefficients,
)

SIGMA_RELS = [0.05, 0.10]  # EDM2's tracked pair (conf/callbacks/default.yaml)


def trapezoid(y: np.ndarray, x: np.ndarray) -> float:
    return float(np.sum((y[1:] + y[:-1]) * np.diff(x)) / 2)


# ------------------------------------------------------------------ the math
@pytest.mark.parametrize("sigma_rel", [0.01, 0.03, 0.05, 0.08, 0.10, 0.12, 0.2, 0.28])
def test_sigma_rel_and_gamma_round_trip(sigma_rel):
    gamma = gamma_from_sigma_rel(sigma_rel)
    assert gamma > 0 and sigma_rel_from_gamma(gamma) == pytest.approx(sigma_rel, rel=1e-12)
    assert gamma_from_sigma_rel(sigma_rel_from_gamma(gamma)) == pytest.approx(gamma, rel=1e-10)


def test_sigma_rel_falls_as_gamma_grows_and_is_bounded_by_the_uniform_average():
    gammas = np.linspace(0, 100, 201)
    sigma_rels = sigma_rel_from_gamma(gammas)
    assert np.all(np.diff(sigma_rels) < 0) and sigma_rels[0] == pytest.approx(SIGMA_REL_MAX)
    for bad in (0.0, -0.1, SIGMA_REL_MAX, 0.5):
        with pytest.raises(ValueError, match="out of range"):
            gamma_from_sigma_rel(bad)


@pytest.mark.parametrize("gamma", [0.5, 6.94, 16.97])
def test_the_profile_is_a_density_whose_relative_std_is_sigma_rel(gamma):
    t = 1000.0
    tau = np.linspace(0, t, 200_001)
    p = power_profile(tau, t, gamma)
    mean = trapezoid(tau * p, tau)
    std = np.sqrt(trapezoid((tau - mean) ** 2 * p, tau))
    assert trapezoid(p, tau) == pytest.approx(1.0, rel=1e-6)
    assert std / t == pytest.approx(float(sigma_rel_from_gamma(gamma)), rel=1e-5)
    assert np.all(power_profile(np.array([t + 1, 2 * t]), t, gamma) == 0)  # nothing after t


@pytest.mark.parametrize(("t_a", "gamma_a", "t_b", "gamma_b"), [(400, 6.9, 1000, 16.9), (1000, 6.9, 400, 16.9),
                                                                (700, 3.0, 700, 10.0), (50, 16.9, 900, 0.5)])
def test_inner_products_are_the_integral_of_the_product_of_profiles(t_a, gamma_a, t_b, gamma_b):
    tau = np.linspace(0, min(t_a, t_b), 400_001)  # the product is 0 after the earlier end
    numeric = trapezoid(power_profile(tau, t_a, gamma_a) * power_profile(tau, t_b, gamma_b), tau)
    closed = profile_inner_product(t_a, gamma_a, t_b, gamma_b)
    assert closed == pytest.approx(numeric, rel=1e-4)
    assert closed == pytest.approx(profile_inner_product(t_b, gamma_b, t_a, gamma_a), rel=1e-12)  # symmetric


def test_the_solve_returns_a_tracked_profile_itself():
    steps = np.arange(100, 1001, 100, dtype=np.float64)
    t_in = np.repeat(steps, 2)
    gamma_in = np.tile(gamma_from_sigma_rel(SIGMA_RELS), len(steps))
    for index in (len(t_in) - 1, len(t_in) - 2, 7):
        x = solve_coefficients(t_in, gamma_in, t_in[index], gamma_in[index])
        np.testing.assert_allclose(x, np.eye(len(t_in))[index], atol=1e-6)


def exact_power_average(theta: np.ndarray, gamma: float) -> float:
    """The power-function EMA of θ(1..T) in closed form: weight (τ^(γ+1) − (τ−1)^(γ+1))/T^(γ+1) for θ(τ), the
    profile's mass on (τ−1, τ], which is what the recursion of eq. (127) gives at one step per unit time."""
    tau = np.arange(1, len(theta) + 1, dtype=np.float64)
    weights = (tau ** (gamma + 1) - (tau - 1) ** (gamma + 1)) / len(theta) ** (gamma + 1)
    return float(np.sum(weights * theta))


# ------------------------------------------------------------------ the callback on a known training sequence
class KnownSequence(L.LightningModule):
    """A linear model whose single weight follows a known sequence: SGD (lr 1) on loss = −g(step)·w moves w by
    g(step) = a + b·step + c·step² at every step, so θ(τ) = Σ_{s<τ} g(s) in closed form."""

    def __init__(self):
        super().__init__()
        self.net = nn.Linear(1, 1, bias=False)
        nn.init.zeros_(self.net.weight)
        self.fixed = EMA(self.net, decay=0.9999)  # the module's own EMA, whose warm-up lasts the whole fit

    def on_train_batch_end(self, *args):
        self.fixed.update(self.net)

    @staticmethod
    def rate(step: int) -> float:
        return 1.0 + 0.01 * step - 2e-5 * step**2

    def training_step(self, batch, batch_idx):
        return -self.rate(self.global_step) * self.net.weight.sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=1.0)

    def on_save_checkpoint(self, checkpoint):
        checkpoint["vdmlab"] = {}  # what load_checkpoint recognises a vdmlab checkpoint by

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.zeros(10_000, 1), batch_size=1)

    @classmethod
    def theta(cls, steps: int) -> np.ndarray:
        """θ(τ) after each of the first ``steps`` optimizer steps."""
        return np.cumsum([cls.rate(s) for s in range(steps)])


def fit(module, steps: int, dirpath, every: int = 50, ckpt_path=None) -> tuple[L.Trainer, PostHocEMA]:
    callback = PostHocEMA(SIGMA_RELS, every_n_steps=every, dirpath=str(dirpath))
    trainer = L.Trainer(max_steps=steps, callbacks=[callback], logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    trainer.fit(module, ckpt_path=ckpt_path)
    return trainer, callback


@pytest.fixture(scope="module")
def known_run(tmp_path_factory):
    """500 steps of the known sequence with post-hoc EMA snapshots every 50 steps, and the checkpoint at the end."""
    folder = tmp_path_factory.mktemp("known")
    trainer, callback = fit(KnownSequence(), 500, folder / "posthoc_ema")
    trainer.save_checkpoint(folder / "checkpoints" / "last.ckpt")
    return folder, callback, trainer.lightning_module


def test_the_tracked_averages_are_the_closed_form_power_function_averages(known_run):
    _, callback, _ = known_run
    theta = KnownSequence.theta(500)
    for gamma, ema in zip(callback.gammas, callback.emas):
        assert float(ema.weight) == pytest.approx(exact_power_average(theta, gamma), rel=1e-5)  # float32 sums


def test_power_ema_beta_is_zero_at_the_first_step():
    assert power_ema_beta(6.9, 1) == 0.0 and 0 < power_ema_beta(6.9, 2) < power_ema_beta(6.9, 100) < 1


def test_a_tracked_sigma_rel_is_reconstructed_as_the_tracked_weights(known_run):
    folder, callback, _ = known_run
    for sigma_rel, ema in zip(SIGMA_RELS, callback.emas):
        weights, summary = posthoc_ema_weights(folder / "checkpoints" / "last.ckpt",
                                               OmegaConf.create({"sigma_rel": sigma_rel}))
        assert summary["step"] == 500 and summary["snapshots"] == 10
        torch.testing.assert_close(weights["weight"], ema.weight.detach(), rtol=1e-5, atol=0)


# between the tracked σ_rel (0.05, 0.10) the solve interpolates; outside them it extrapolates and errs more
@pytest.mark.parametrize(("sigma_rel", "tolerance"), [(0.06, 0.02), (0.08, 0.02), (0.03, 0.1), (0.15, 0.1)])
def test_a_reconstructed_sigma_rel_matches_its_closed_form_average(known_run, sigma_rel, tolerance):
    folder, callback, _ = known_run
    theta = KnownSequence.theta(500)
    exact = exact_power_average(theta, float(gamma_from_sigma_rel(sigma_rel)))
    weights, _ = posthoc_ema_weights(folder / "checkpoints" / "last.ckpt", OmegaConf.create({"sigma_rel": sigma_rel}))
    tracked = [float(ema.weight) for ema in callback.emas]
    # far closer to the exact average than either tracked profile is: the solve reconstructs, it does not pick
    assert abs(float(weights["weight"]) - exact) < tolerance * min(abs(t - exact) for t in tracked)


def test_the_warm_up_ema_is_close_to_the_power_function_ema_of_gamma_8(known_run):
    """decay (1+n)/(10+n) = 1 − 9/(n+10) and β = (1 − 1/t)^(γ+1) ≈ 1 − (γ+1)/t: γ = 8, σ_rel = 0.0905 (eq. (123))."""
    folder, callback, module = known_run
    fixed = float(module.fixed.net.weight)
    weights, _ = posthoc_ema_weights(folder / "checkpoints" / "last.ckpt",
                                     OmegaConf.create({"sigma_rel": float(sigma_rel_from_gamma(8.0))}))
    assert abs(float(weights["weight"]) - fixed) < 0.15 * min(abs(float(ema.weight) - fixed) for ema in callback.emas)


def test_ema_length_in_steps_is_sigma_rel_times_the_step(known_run):
    folder, _, _ = known_run
    ckpt = folder / "checkpoints" / "last.ckpt"
    by_length, summary = posthoc_ema_weights(ckpt, OmegaConf.create({"length": 40}))
    by_sigma, _ = posthoc_ema_weights(ckpt, OmegaConf.create({"sigma_rel": 40 / 500}))
    assert summary["sigma_rel"] == pytest.approx(0.08)
    torch.testing.assert_close(by_length["weight"], by_sigma["weight"])
    earlier, summary = posthoc_ema_weights(ckpt, OmegaConf.create({"sigma_rel": 0.05, "step": 230}))
    assert summary["step"] == 200  # the last snapshot before the step asked for
    for bad, match in (({"sigma_rel": 0.5}, "sigma_rel"), ({"sigma_rel": 0.05, "length": 10}, "one of them"),
                       ({"length": 400}, "ema.length")):
        with pytest.raises(ParameterError, match=match):
            posthoc_ema_weights(ckpt, OmegaConf.create(bad))


def test_a_resumed_run_continues_the_averages_and_keeps_every_snapshot(tmp_path):
    _, straight = fit(KnownSequence(), 300, tmp_path / "straight")
    trainer, _ = fit(KnownSequence(), 150, tmp_path / "first")
    trainer.save_checkpoint(tmp_path / "first" / "checkpoints" / "last.ckpt")
    trainer, resumed = fit(KnownSequence(), 300, tmp_path / "second",
                           ckpt_path=str(tmp_path / "first" / "checkpoints" / "last.ckpt"))
    for a, b in zip(straight.emas, resumed.emas):
        torch.testing.assert_close(a.weight, b.weight)
    ckpt = tmp_path / "second" / "checkpoints" / "last.ckpt"
    trainer.save_checkpoint(ckpt)
    dirs = snapshot_dirs(load_checkpoint(ckpt), ckpt, None)
    assert dirs[:2] == [tmp_path / "first", tmp_path / "second"]
    assert sorted(p.name for p in (tmp_path / "first").glob("*.pt")) == ["step00000050.pt", "step00000100.pt",
                                                                          "step00000150.pt"]
    _, summary = posthoc_ema_weights(ckpt, OmegaConf.create({"sigma_rel": 0.08}))
    assert summary["snapshots"] == 6 and summary["step"] == 300  # 50 ... 300 from both folders


def test_missing_snapshots_are_a_clear_error(tmp_path):
    trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu")
    trainer.fit(KnownSequence())
    trainer.save_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    with pytest.raises(CheckpointError, match="no post-hoc EMA snapshots"):
        posthoc_ema_weights(tmp_path / "checkpoints" / "last.ckpt", OmegaConf.create({"sigma_rel": 0.05}))


def test_bad_callback_arguments_name_the_key():
    with pytest.raises(ParameterError, match="sigma_rels"):
        PostHocEMA([0.05, 0.4])
    with pytest.raises(ParameterError, match="every_n_steps"):
        PostHocEMA(SIGMA_RELS, every_n_steps=0)


# ------------------------------------------------------------------ the digits, end to end
@pytest.mark.slow
def test_eval_py_reports_the_post_hoc_ema_it_evaluated(tmp_path):
    from vdmlab.cli.evaluate import run as eval_run
    from vdmlab.cli.train import run as train_run

    out = tmp_path / "run"
    train_run(compose_config(out, ["model.width=8", "model.num_res_blocks=1", "trainer.max_epochs=4", "logger=csv",
                                   "fid=null", "sampler.steps=4", "callbacks.sample_grid.every_n_epochs=1000",
                                   "callbacks.sample_grid.num_samples=4", "callbacks.posthoc_ema.every_n_steps=10",
                                   "trainer.check_val_every_n_epoch=4"]))
    assert sorted(p.name for p in (out / "posthoc_ema").glob("*.pt"))[-1] == "step00000044.pt"  # 4 epochs of 11
    ckpt = out / "checkpoints" / "last.ckpt"
    common = [f"ckpt_path={ckpt}", "bpd.num_samples=1", "fid=null", "logger=csv"]
    plain = eval_run(compose_config(tmp_path / "plain", common, "eval"))
    posthoc = eval_run(compose_config(tmp_path / "posthoc", [*common, "ema.sigma_rel=0.1"], "eval"))
    assert posthoc["ema/sigma_rel"] == 0.1 and posthoc["ema/step"] == 44 and posthoc["ema/snapshots"] == 5
    assert "ema/sigma_rel" not in plain and posthoc["test/bpd"] != plain["test/bpd"]
    assert json.loads((tmp_path / "posthoc" / "metrics.json").read_text())["ema/gamma"] == pytest.approx(
        float(gamma_from_sigma_rel(0.1)))
