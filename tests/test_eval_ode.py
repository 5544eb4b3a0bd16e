"""eval.py's likelihood=[elbo,ode] and the sample metrics on a checkpoint made by a tiny real training run."""

import json
import math
import subprocess
import sys

import pytest
from conftest import REPO, compose_config

from vdmlab.cli import evaluate
from vdmlab.cli.train import run as train_run


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A checkpoint of a tiny digits model after a few real optimizer steps."""
    out = tmp_path_factory.mktemp("tiny") / "run"
    cfg = compose_config(out, ["trainer.max_epochs=1", "+trainer.limit_train_batches=3", "+trainer.limit_val_batches=1",
                               "fid=null", "callbacks.sample_grid.every_n_epochs=1000", "logger=csv",
                               "model.width=16", "model.num_res_blocks=1", "sampler.steps=5"])
    train_run(cfg)
    return out / "checkpoints" / "last.ckpt"


def test_eval_reports_elbo_and_ode_bits_per_dim_with_standard_errors_and_times(tiny_checkpoint, tmp_path):
    cfg = compose_config(tmp_path / "eval", [f"ckpt_path={tiny_checkpoint}", "logger=csv", "fid=null",
                                             "likelihood=[elbo,ode]", "bpd.num_samples=2", "ode.num_examples=6",
                                             "ode/solver=rk4", "ode.solver.steps=2", "ode/divergence=hutchinson",
                                             "ode.divergence.num_probes=2", "ode.num_draws=2"], "eval")
    metrics = evaluate.run(cfg)
    for key in ("bpd", "bpd_se", "seconds", "ode_bpd", "ode_bpd_se", "ode_bpd_iw", "ode_seconds", "ode_nfe"):
        assert math.isfinite(metrics[f"test/{key}"]), key
    assert metrics["test/ode_n"] == 6 and metrics["test/ode_nfe"] == 8
    assert metrics["test/ode_bpd_iw"] <= metrics["test/ode_bpd"]
    stored = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert stored["test/ode_bpd"] == pytest.approx(metrics["test/ode_bpd"])


def test_eval_refuses_an_unknown_likelihood(tiny_checkpoint, tmp_path):
    cfg = compose_config(tmp_path / "eval", [f"ckpt_path={tiny_checkpoint}", "fid=null", "likelihood=[elbo,exact]"],
                         "eval")
    with pytest.raises(ValueError, match=r"likelihood=\[elbo,ode\]"):
        evaluate.run(cfg)


@pytest.mark.slow
def test_eval_py_prints_ode_bits_per_dim_and_the_sample_metrics(tiny_checkpoint, tmp_path):
    result = subprocess.run([sys.executable, "eval.py", f"ckpt_path={tiny_checkpoint}", "likelihood=[ode]",
                             "ode.num_examples=4", "ode.solver.steps=2", "fid.num_samples=100", "fid.steps=4",
                             "fid.kid_blocks=4", f"paths.log_dir={tmp_path}"],
                            cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    for key in ("test/ode_bpd", "test/fid", "test/kid", "test/kid_se", "test/precision", "test/recall",
                "test/class_0", "test/classes_missing"):
        assert key in result.stdout, key
    metrics = json.loads(next(tmp_path.glob("eval/runs/*/metrics.json")).read_text())
    assert sum(metrics[f"test/class_{c}"] for c in range(10)) == 100
    assert "test/bpd" not in metrics  # likelihood=[ode] skips the ELBO


@pytest.mark.slow
def test_sampler_nfe_benchmark_writes_its_table(tiny_checkpoint, tmp_path):
    out = tmp_path / "nfe"
    result = subprocess.run([sys.executable, "benchmarks/sampler_nfe.py", "--ckpt", str(tiny_checkpoint), "--n", "20",
                             "--nfe", "2", "4", "--samplers", "ddim", "edm", "--out", str(out)],
                            cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert [(r["sampler"], r["nfe"]) for r in rows] == [("ddim", 2), ("ddim", 4), ("edm", 2), ("edm", 4)]
    assert all(math.isfinite(r["fid"]) and 0 <= r["precision"] <= 1 for r in rows)
    assert "| edm |" in out.with_suffix(".md").read_text()


@pytest.mark.slow
def test_ode_toy2d_script_compares_with_the_analytic_density(tmp_path):
    run = tmp_path / "toy"
    train_run(compose_config(run, ["dataset=toy2d", "model=mlp", "model.hidden=32", "model.depth=1",
                                   "trainer.max_epochs=1", "+trainer.limit_train_batches=3",
                                   "+trainer.limit_val_batches=1", "fid=null", "logger=csv",
                                   "callbacks.sample_grid.every_n_epochs=1000"]))
    figure = tmp_path / "ode_toy2d.png"
    result = subprocess.run([sys.executable, "scripts/ode_toy2d.py", "--ckpt", str(run / "checkpoints" / "last.ckpt"),
                             "--n", "50", "--steps", "2", "--grid", "8", "--out", str(figure)],
                            cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    numbers = json.loads(figure.with_suffix(".json").read_text())
    assert figure.is_file() and numbers["n"] == 50 and math.isfinite(numbers["pearson_r"])
