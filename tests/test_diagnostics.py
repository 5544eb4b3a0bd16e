"""The diagnostics end to end: a real sweep of train.py (two weightings × two seeds, W&B offline) whose test stage
writes the ELBO profile through the callback into every run and every logger, and compare.py's diagnostics section
(paired differences, the gap over λ, the cross-objective matrix, the figures); eval.py and sample.py on a checkpoint."""

import csv
import json
import os
import subprocess
import sys

import pytest
from conftest import REPO
from test_sweeps import TINY
from wandb_offline import read_offline_run

from vdmlab.analysis.compare import compare


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("diagnostics")
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    (tmp / "netrc").write_text("")
    env.update(NETRC=str(tmp / "netrc"), WANDB_SILENT="true", WANDB_DIR=str(tmp / "wandb_dir"), OMP_NUM_THREADS="1",
               WANDB_CACHE_DIR=str(tmp / "wandb_cache"), WANDB_CONFIG_DIR=str(tmp / "wandb_config"))
    cmd = [sys.executable, "train.py", "-m", "weighting=elbo,edm", "seed=0,1", "logger=wandb", *TINY,
           "callbacks.elbo_profile.num_bins=8", "callbacks.elbo_profile.draws_per_bin=1", f"hydra.sweep.dir={tmp / 'sweep'}"]
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return tmp / "sweep"


@pytest.mark.slow
def test_test_stage_writes_the_profile_into_every_run_and_logger(sweep):
    for job in ("0", "1", "2", "3"):
        folder = sweep / job / "diagnostics"
        profile = json.loads((folder / "profile.json").read_text())
        assert len(profile["bins"]) == 8 and len(profile["rate_distortion"]) == 9
        assert {f"scored/{w}" for w in ("elbo", "sigmoid", "v", "edm", "iddpm", "min_snr")} <= set(profile["summary"])
        with open(folder / "per_example_bpd.csv") as f:
            assert len(list(csv.DictReader(f))) == profile["summary"]["n"] > 100  # the whole test split
        assert (folder / "profile.png").stat().st_size > 1000
        (run_dir,) = (sweep / job / "wandb").glob("offline-run-*")
        run = read_offline_run(run_dir)  # W&B: the bins as series over λ and the headline numbers in the summary
        assert {"test/profile/logsnr", "test/profile/bin/elbo_bpd_per_logsnr", "test/profile/summary/bpd"} <= set(run["summary"])
        assert run["group"] == sweep.name  # one group: W&B overlays the runs' test/profile/bin/* over test/profile/logsnr
        header = (sweep / job / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
        assert {"test/profile/logsnr", "test/profile/bin/elbo_bpd_per_logsnr",
                "test/profile/summary/profile_diffusion"} <= set(header)


@pytest.mark.slow
def test_compare_reports_paired_differences_the_matrix_and_the_figures(sweep):
    paths = compare(sweep)
    text = paths["markdown"].read_text()
    assert "reference: elbo" in text and "### Paired differences" in text and "### Cross-objective matrix" in text
    edm_row = next(line for line in text.splitlines() if line.startswith("| edm") and "n=" in line)
    assert "(n=2)" in edm_row  # over the two shared training seeds
    assert "### Gap over λ" in text
    for key in ("profiles", "rate_distortion", "matrix"):
        assert paths[key].stat().st_size > 1000
    with pytest.raises(ValueError, match="names no group"):
        compare(sweep, reference="nonexistent")


@pytest.mark.slow
def test_eval_py_prints_the_profile_and_sample_py_reports_copying(sweep, tmp_path):
    ckpt = sweep / "0" / "checkpoints" / "last.ckpt"
    evaluated = subprocess.run([sys.executable, "eval.py", f"ckpt_path={ckpt}", "fid=null", "profile.num_bins=4",
                                "profile.num_examples=40", "copying.num_samples=20", "copying.steps=4", "copying.gap_points=3",
                                f"hydra.run.dir={tmp_path / 'eval'}"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert "ELBO over λ" in evaluated.stdout and "near-copies" in evaluated.stdout
    for name in ("profile.png", "profile.json", "per_example_bpd.csv", "copying.json", "metrics.json"):
        assert (tmp_path / "eval" / name).is_file(), name
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert {"test/profile_diffusion", "test/copy_fraction", "test/copy_fraction_test"} <= set(metrics)
    sampled = subprocess.run([sys.executable, "sample.py", f"ckpt_path={ckpt}", "num_samples=16", "sampler.steps=4",
                              f"hydra.run.dir={tmp_path / 'sample'}"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert sampled.returncode == 0, sampled.stderr[-3000:]
    metrics = json.loads((tmp_path / "sample" / "metrics.json").read_text())
    assert {"copy_fraction", "copy_fraction_test", "nn_dist_ratio"} <= set(metrics)
