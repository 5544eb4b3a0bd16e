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


def write_search(folder, values):
    """A search folder as hparams_search writes it: per trial .hydra/{config,hydra,overrides}.yaml and metrics.json."""
    import json

    import yaml

    sweeper = {"_target_": "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper",
               "params": {"model.width": "choice(32, 64)", "module.optimizer.lr": "tag(log, interval(1e-4, 1e-2))",
                          "schedule": "choice(linear, cosine)"}}
    for number, (params, value) in enumerate(values):
        meta = folder / str(number) / ".hydra"
        meta.mkdir(parents=True)
        (meta / "config.yaml").write_text(yaml.safe_dump({"seed": 0}))
        (meta / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"sweeper": sweeper}}))
        (meta / "overrides.yaml").write_text(yaml.safe_dump([f"{k}={v}" for k, v in params.items()]))
        if value is not None:
            (folder / str(number) / "metrics.json").write_text(json.dumps({"val/bpd": value}))


def test_search_report_ranks_trials_and_finds_the_parameter_that_decides_the_objective(tmp_path):
    import random

    from vdmlab.analysis.compare import compare
    from vdmlab.analysis.search import importances, read_trials, search_space

    rng = random.Random(0)
    values = []
    for _ in range(16):  # the objective is decided by the width; lr and schedule are noise
        params = {"model.width": rng.choice([32, 64]), "module.optimizer.lr": 10 ** rng.uniform(-4, -2),
                  "schedule": rng.choice(["linear", "cosine"])}
        values.append((params, 2.0 + (0.5 if params["model.width"] == 32 else 0.0) + rng.gauss(0, 0.01)))
    values.append(({"model.width": 64, "module.optimizer.lr": 1e-3, "schedule": "linear"}, None))  # unfinished
    write_search(tmp_path, values)
    space = search_space(tmp_path)
    assert set(space) == {"model.width", "module.optimizer.lr", "schedule"}
    trials = read_trials(tmp_path, space)
    assert len(trials) == 16 and all(isinstance(t.params["model.width"], int) for t in trials)
    shares = importances(trials, space)
    assert abs(sum(shares.values()) - 1) < 1e-6 and max(shares, key=shares.get) == "model.width"
    table = compare(tmp_path)["markdown"].read_text()
    assert "## Search" in table and "16 finished trials" in table and "| model.width |" in table
    ranked = [line for line in table.split("## Search")[1].splitlines() if line.startswith("| 1 |")]
    best = min(trials, key=lambda t: t.value)
    assert ranked and f"| {best.number} | {best.value:.4f} | 64 |" in ranked[0]
