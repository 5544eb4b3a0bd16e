"""Hyperparameter search: the CPU-time budget stops a real fit, and hparams_search=digits_optuna runs a real Optuna
multirun whose trials are ordinary run folders."""

import subprocess
import sys
import time

import pytest
from conftest import REPO

from vdmlab.callbacks.budget import CPUTimeBudget
from vdmlab.cli.build import build_run
from vdmlab.cli.train import instantiate_all

TINY = ["model.width=16", "model.num_res_blocks=1", "fid=null", "logger=csv", "test=false"]


def test_cpu_time_budget_stops_a_real_fit_after_its_budget(make_config):
    import lightning as L
    from hydra.utils import instantiate

    cfg = make_config([*TINY, "trainer.max_steps=100000", "trainer.max_epochs=100000", "callbacks=default",
                       "~callbacks.sample_grid", "~callbacks.schedule_plot"])
    built = build_run(cfg)
    budget = CPUTimeBudget(seconds=1.0)
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=[*instantiate_all(cfg.callbacks), budget], logger=False)
    start = time.process_time()
    trainer.fit(built.module, datamodule=built.datamodule)
    assert trainer.should_stop and 0 < trainer.global_step < 100000
    assert budget.used() >= 1.0 and time.process_time() - start >= 1.0


def test_cpu_time_budget_rejects_a_non_positive_budget():
    with pytest.raises(ValueError, match="seconds=0 is invalid"):
        CPUTimeBudget(0)


@pytest.mark.slow
def test_optuna_search_runs_trials_and_reports_the_best(tmp_path):
    # No paths.* override: the default paths resolve below the launch folder although Optuna's sweeper reads the
    # sweep folder before Hydra has set its config (where ${hydra:runtime.cwd} cannot be resolved).
    cmd = [sys.executable, str(REPO / "train.py"), "-m", "hparams_search=digits_optuna", "hydra.sweeper.n_trials=2",
           "hydra.sweeper.sampler.n_startup_trials=2", "callbacks.cpu_budget.seconds=2", "module.eval_num_samples=1",
           "~callbacks.sample_grid", "~callbacks.schedule_plot"]
    out = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Best parameters" in out.stdout + out.stderr
    assert "HydraConfig was not set" not in out.stderr
    sweep = next((tmp_path / "outputs" / "hparams_search" / "multiruns").iterdir())
    assert (sweep / "optimization_results.yaml").is_file()
    trials = sorted(p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit())
    assert len(trials) == 2 and all((t / "csv" / "metrics.csv").is_file() for t in trials)


def test_launch_dir_is_hydras_cwd_once_set_and_the_process_cwd_before(tmp_path, monkeypatch, make_config):
    from hydra.core.hydra_config import HydraConfig

    from vdmlab.resolvers import launch_dir

    monkeypatch.chdir(tmp_path)
    HydraConfig.instance().cfg = None  # as at on_multirun_start / sweeper.setup
    assert launch_dir() == str(tmp_path)
    cfg = make_config()  # sets HydraConfig with runtime.cwd = the test's run folder
    assert launch_dir() == cfg.hydra.runtime.cwd != str(tmp_path)
    assert cfg.paths.root_dir == cfg.hydra.runtime.cwd
