"""Interruptions that never cost a run: a real signal (SIGTERM, SIGINT, SIGUSR1) delivered to ``python train.py`` at
the start, middle and end of an epoch, during validation, during the FID and during the test, then ``ckpt_path=last``,
ends with bitwise the weights of a run trained straight through (CPU), and the run's earlier outputs are kept.
Each test chains its interruptions through one run (interrupt, resume, interrupt again, ...), so one folder sees them
all; SIGUSR1 runs under a fake SLURM job whose ``scontrol`` records how it was called."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO

from vdmlab.cli.checkpoints import load_checkpoint

TESTS = Path(__file__).resolve().parent
#: a tiny run: 11 optimizer steps per epoch, validation (2 batches) and FID every epoch, 3 epochs, then the test (2
#: batches) with its FID
TINY = ["model.width=8", "model.num_res_blocks=1", "dataset.batch_size=128", "dataset.eval_batch_size=90", "logger=csv",
        "sampler.steps=4",
        "callbacks.sample_grid.every_n_epochs=1000", "callbacks.schedule_plot.every_n_epochs=1000",
        "callbacks.progress_bar.refresh_rate=0", "module.lr_scheduler.warmup_steps=5", "fid.every_n_epochs=1",
        "fid.num_samples=20", "fid.steps=2", "fid.floor=false", "fid.batch_size=20", "fid.stats_dir=null",
        "trainer.max_epochs=3", "trainer.check_val_every_n_epoch=1", "trainer.deterministic=true"]


def train(log_dir: Path, *extra: str, env: dict | None = None) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(TESTS)]),
                   "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", **(env or {})}
    return subprocess.run([sys.executable, "train.py", *TINY, f"paths.log_dir={log_dir}", *extra], cwd=REPO,
                          capture_output=True, text=True, timeout=600, env=environment)


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> dict:
    """The uninterrupted run's final checkpoint."""
    log_dir = tmp_path_factory.mktemp("straight")
    result = train(log_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    return load_checkpoint(next(log_dir.glob("train/runs/*/checkpoints/last.ckpt")))


def interrupted_chain(tmp_path: Path, sig: str, moments: list[str], env: dict | None = None) -> tuple[Path, list[str]]:
    """Run, interrupting with ``sig`` at each moment in turn (each resume continues the same run folder with the
    command the interrupt message printed), then finish; returns the run folder and every output."""
    log_dir, outputs, run_dir = tmp_path / "logs", [], None
    for i, moment in enumerate([*moments, None]):
        extra = ["+callbacks.signal_at._target_=signal_at.SignalAt", f"+callbacks.signal_at.at={moment}",
                 f"+callbacks.signal_at.sig={sig}"] if moment else []
        resume = ["ckpt_path=last", f"resume_dir={run_dir}"] if run_dir else []
        result = train(log_dir, *extra, *resume, env=env)
        outputs.append(result.stdout + result.stderr)
        assert result.returncode == 0, f"run {i} ({moment}):\n{result.stderr[-3000:]}"
        if moment:
            assert f"Received {sig}" in outputs[-1] and "Resume this run with" in outputs[-1], outputs[-1][-2000:]
            assert "test" in moment or f"Interrupted by {sig}" in outputs[-1]  # the callback wrote last.ckpt
            printed = outputs[-1].split("Resume this run with")[-1].split()
            run_dir = run_dir or Path(next(a for a in printed if a.startswith("resume_dir=")).split("=", 1)[1])
            assert "ckpt_path=last" in printed
    return run_dir, outputs


def assert_same_weights(straight: dict, run_dir: Path) -> None:
    final = load_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    assert final["global_step"] == straight["global_step"] == 33
    for key, value in straight["state_dict"].items():
        assert torch.equal(value, final["state_dict"][key]), key  # model, EMA and schedule state, bitwise
    assert not list(run_dir.glob("checkpoints/.*partial"))  # no temporary file left behind
    assert not list(run_dir.glob("checkpoints/last-v*.ckpt"))  # one last.ckpt, never a stale one beside a newer


def validated_epochs(run_dir: Path) -> list[int]:
    import csv

    with open(run_dir / "csv" / "metrics.csv", newline="") as file:
        return sorted({int(row["epoch"]) for row in csv.DictReader(file) if row.get("val/bpd")})


@pytest.mark.slow
def test_sigterm_at_epoch_start_middle_end_validation_fid_and_test_resumes_bitwise(straight, tmp_path):
    run_dir, outputs = interrupted_chain(tmp_path, "SIGTERM", [
        "train_epoch_start:0:0",  # the start of an epoch
        "train_batch_end:0:5",    # the middle
        "train_batch_end:0:10",   # the end: the epoch's last batch, before its validation
        "val_batch_end:1:0",      # during validation (the reported case: one epoch was skipped on resume)
        "val_epoch_end:2:0",      # during the FID of the last epoch
        "test_batch_end:*:0",     # during the test
    ])
    assert_same_weights(straight, run_dir)
    assert validated_epochs(run_dir)[-1] == 2  # the earlier part of the metrics was kept and continued
    assert "test/bpd" in outputs[-1]


@pytest.mark.slow
def test_ctrl_c_mid_epoch_during_validation_and_at_the_end_resumes_bitwise(straight, tmp_path):
    run_dir, _ = interrupted_chain(tmp_path, "SIGINT", ["train_batch_end:0:5", "val_batch_end:1:0",
                                                        "train_batch_end:2:10"])
    assert_same_weights(straight, run_dir)


@pytest.mark.slow
def test_sigusr1_under_slurm_checkpoints_requeues_and_resumes_bitwise(straight, tmp_path):
    """Lightning's SLURMEnvironment(auto_requeue=True) path: a SIGUSR1 writes last.ckpt at the next safe point and
    then calls ``scontrol requeue <job id>`` (here a fake scontrol on PATH that records its arguments)."""
    bin_dir, calls = tmp_path / "bin", tmp_path / "scontrol.calls"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    (bin_dir / "scontrol").chmod(0o755)
    slurm = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "SLURM_JOB_ID": "4242", "SLURM_NTASKS": "1",
             "SLURM_JOB_NAME": "train", "SLURM_NODELIST": "localhost", "SLURM_PROCID": "0", "SLURM_LOCALID": "0",
             "SLURM_NODEID": "0"}
    run_dir, outputs = interrupted_chain(tmp_path, "SIGUSR1", ["train_batch_end:0:10", "val_epoch_end:1:0",
                                                               "train_batch_end:2:3"], env=slurm)
    assert calls.read_text().split("\n")[:3] == ["requeue 4242"] * 3
    assert all("Requeued SLURM job 4242" in out for out in outputs[:3])
    assert_same_weights(straight, run_dir)


def test_sigusr1_outside_slurm_checkpoints_without_requeueing(tmp_path):
    """Outside SLURM a SIGUSR1 still stops with a checkpoint and the resume command (it used to kill the run)."""
    result = train(tmp_path, "+callbacks.signal_at._target_=signal_at.SignalAt", "+callbacks.signal_at.at=train_batch_end:0:2",
                   "+callbacks.signal_at.sig=SIGUSR1", "fid=null", "test=false")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Requeued" not in result.stdout + result.stderr
    last = next(tmp_path.glob("train/runs/*/checkpoints/last.ckpt"))
    assert load_checkpoint(last)["global_step"] == 3
    assert signal.SIGUSR1  # the signal exists on this platform
