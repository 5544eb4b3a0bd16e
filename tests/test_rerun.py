"""Sweeps that survive: a multirun killed mid-job, re-run into the same sweep folder, skips the finished job and
resumes the interrupted one from its last checkpoint; a different sweep in that folder is refused; ``threads``."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import REPO

from vdmlab.cli.rerun import DONE_FILE, JOB_FILE, set_threads
from vdmlab.cli.validate import ConfigError

STEPS_PER_EPOCH = 1437 // 128  # the digits training split, full batches only
EPOCHS = 8


def sweep_command(sweep_dir, weightings="elbo,sigmoid"):
    return [sys.executable, str(REPO / "train.py"), "-m", f"weighting={weightings}", f"hydra.sweep.dir={sweep_dir}",
            "model.width=16", "model.num_res_blocks=1", f"trainer.max_epochs={EPOCHS}", "fid=null", "logger=csv",
            "test=false", "~callbacks.sample_grid", "~callbacks.schedule_plot", "threads=1",
            "trainer.check_val_every_n_epoch=1"]  # a checkpoint every epoch: job 1 is killed mid-run


@pytest.mark.slow
def test_a_killed_sweep_rerun_skips_finished_jobs_and_resumes_the_interrupted_one(tmp_path):
    sweep = tmp_path / "sweep"
    proc = subprocess.Popen(sweep_command(sweep), cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 400
    while not (sweep / "1" / "checkpoints" / "last.ckpt").is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)  # pre-empted without a grace period: no checkpoint on exit
    proc.wait()
    assert (sweep / "0" / DONE_FILE).is_file(), "job 0 should have finished before job 1 wrote a checkpoint"
    assert not (sweep / "1" / DONE_FILE).is_file(), "job 1 finished before it could be killed: raise EPOCHS"
    finished = {p: p.read_bytes() for p in (sweep / "0").rglob("*") if p.is_file() and ".hydra" not in p.parts
                and p.suffix != ".log"}
    interrupted_step = torch.load(sweep / "1" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    assert 0 < interrupted_step < EPOCHS * STEPS_PER_EPOCH

    again = subprocess.run(sweep_command(sweep), cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    log = again.stdout + again.stderr
    assert "finished in an earlier run of this sweep" in log and "resuming from" in log
    assert {p: p.read_bytes() for p in finished} == finished  # the finished job was not touched
    done = json.loads((sweep / "1" / DONE_FILE).read_text())
    assert done["train/steps"] == EPOCHS * STEPS_PER_EPOCH  # resumed, not restarted: the step count continued
    resumed_log = (sweep / "1" / "train.log").read_text()
    assert "resuming" in resumed_log

    other = subprocess.run(sweep_command(sweep, "edm"), cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert other.returncode != 0 and "holds a job of an earlier sweep" in other.stdout + other.stderr
    assert json.loads((sweep / "0" / JOB_FILE).read_text())["overrides"][0] == "weighting=elbo"
    assert (sweep / "0" / DONE_FILE).is_file()


def test_threads_sets_torch_threads_and_rejects_nonsense():
    before = torch.get_num_threads()
    try:
        set_threads(1)
        assert torch.get_num_threads() == 1
        set_threads("auto")  # outside a parallel launcher: torch's default is left alone
        assert torch.get_num_threads() == 1
        with pytest.raises(ConfigError, match="threads=0 is invalid"):
            set_threads(0)
    finally:
        torch.set_num_threads(before)


@pytest.mark.slow
def test_joblib_launcher_runs_jobs_in_parallel_with_a_share_of_the_cores_each(tmp_path):
    cmd = [sys.executable, str(REPO / "train.py"), "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
           "weighting=elbo,sigmoid", f"hydra.sweep.dir={tmp_path / 'sweep'}", "debug=fdr", "logger=csv",
           "model.width=16", "model.num_res_blocks=1"]
    out = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    share = max(1, (os.cpu_count() or 1) // 2)
    for job in ("0", "1"):
        log = next((tmp_path / "sweep" / job).glob("*.log")).read_text()  # <task_name>.log
        assert f"torch threads: {share}" in log
        assert (tmp_path / "sweep" / job / DONE_FILE).is_file()
