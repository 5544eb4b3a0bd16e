"""Reliability: start-up validation, exact resume, SIGTERM, the non-finite guard, safe checkpoint loading and data
errors. Every bad input must give a message naming the problem and leave earlier outputs untouched."""

import csv
import hashlib
import math
import os
import signal
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import REPO, compose_config
from torch import nn

from vdmlab.callbacks.nonfinite import NonFiniteGuard, NonFiniteLossError
from vdmlab.cli.build import build_run
from vdmlab.cli.checkpoints import CheckpointError, load_checkpoint
from vdmlab.cli.train import run
from vdmlab.cli.validate import ConfigError
from vdmlab.data import DigitsDataModule
from vdmlab.diffusion.parameterization import EpsParameterization
from vdmlab.diffusion.schedules import LinearSchedule
from vdmlab.diffusion.weighting import ELBOWeighting
from vdmlab.models import UNet
from vdmlab.module import DiffusionModule

SMALL = ["model.width=16", "model.num_res_blocks=1", "dataset.batch_size=64", "fid=null", "logger=csv",
         "callbacks.sample_grid.every_n_epochs=1000", "sampler.steps=4", "module.lr_scheduler.warmup_steps=5",
         "callbacks.progress_bar.refresh_rate=0"]


def tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def earlier_run(tmp_path):
    """An earlier run's outputs that bad inputs must not touch."""
    folder = tmp_path / "logs" / "train" / "runs" / "earlier"
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "checkpoints" / "last.ckpt").write_bytes(os.urandom(2048))
    (folder / "csv").mkdir()
    (folder / "csv" / "metrics.csv").write_text("step,val/bpd\n1,3.0\n")
    return folder


BAD_INPUTS = [
    (["diffusion.logsnr_min=5", "diffusion.logsnr_max=5"], ["schedule.logsnr_min=5", "logsnr_min < logsnr_max"]),
    (["model.width=-8"], ["model.width=-8", "integer >= 1"]),
    (["weighting=sigmoid", "weighting.bias=inf"], ["weighting.bias=inf", "finite number"]),
    (["sampler.steps=0"], ["sampler.steps=0", "integer >= 1"]),
    (["dataset=image_folder", "dataset.root=/no/such/folder"], ["dataset.root='/no/such/folder'", "existing folder"]),
    (["module.timesteps=0"], ["module.timesteps=0", "continuous time"]),
]


@pytest.mark.parametrize("overrides,expected", BAD_INPUTS, ids=[o[0][-1] for o in BAD_INPUTS])
def test_bad_config_is_rejected_at_start_up_naming_key_value_and_allowed(overrides, expected, make_config, earlier_run):
    before = tree_digest(earlier_run.parent.parent.parent)
    cfg = make_config([*SMALL, *overrides, f"paths.log_dir={earlier_run.parent.parent.parent}"])
    with pytest.raises(ConfigError) as error:
        run(cfg)
    for text in expected:
        assert text in str(error.value)
    assert tree_digest(earlier_run.parent.parent.parent) == before
    assert not (Path(cfg.paths.output_dir) / "checkpoints").exists()  # nothing was trained


def test_unknown_group_option_lists_the_allowed_options(tmp_path, earlier_run):
    before = tree_digest(earlier_run.parent.parent.parent)
    result = subprocess.run([sys.executable, "train.py", "schedule=cosin", f"paths.log_dir={earlier_run.parent.parent.parent}"],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "schedule" in result.stderr and "cosin" in result.stderr and "cosine" in result.stderr  # Hydra's list
    assert tree_digest(earlier_run.parent.parent.parent) == before


def test_corrupt_and_foreign_checkpoints_get_clear_errors(make_config, tmp_path, earlier_run):
    before = tree_digest(earlier_run)
    corrupt = earlier_run / "checkpoints" / "last.ckpt"
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        run(make_config([*SMALL, f"ckpt_path={corrupt}"]))
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    with pytest.raises(CheckpointError, match="not a vdmlab checkpoint"):
        load_checkpoint(foreign)
    with pytest.raises(CheckpointError, match="no such file"):
        run(make_config([*SMALL, f"ckpt_path={tmp_path / 'missing.ckpt'}"]))
    with pytest.raises(CheckpointError, match="no last.ckpt"):
        run(make_config([*SMALL, "ckpt_path=last", f"paths.log_dir={tmp_path / 'empty'}"]))
    assert tree_digest(earlier_run) == before


def test_data_the_model_cannot_take_is_named(make_config):
    with pytest.raises(Exception, match="model=unet takes square images"):
        build_run(make_config([*SMALL, "dataset=toy2d"]))


class SigtermAt(L.Callback):
    """Sends this process a real SIGTERM after a given optimizer step (what a cluster scheduler does)."""

    def __init__(self, step):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


def fit_steps(make_config, tmp_path, name, max_steps, ckpt_path=None, sigterm_at=None):
    overrides = [*SMALL, f"trainer.max_steps={max_steps}", "trainer.max_epochs=-1", "trainer.deterministic=true",
                 "test=false", f"paths.log_dir={tmp_path / name}"] + ([f"ckpt_path={ckpt_path}"] if ckpt_path else [])
    cfg = compose_config(tmp_path / name / "run", overrides)
    if sigterm_at is not None:
        with open_dict_callbacks(cfg):
            cfg.callbacks.sigterm = {"_target_": f"{__name__}.SigtermAt", "step": sigterm_at}
    run(cfg)
    return Path(cfg.paths.output_dir)  # resolved now: ${hydra:...} follows whichever config was composed last


def open_dict_callbacks(cfg):
    from omegaconf import open_dict

    return open_dict(cfg)


def test_resume_after_sigterm_is_bitwise_identical_to_training_straight_through(make_config, tmp_path):
    """N = 30 steps straight vs. 15 steps, SIGTERM, resume to 30 (the cut is mid-epoch: 22 steps per epoch)."""
    straight = fit_steps(make_config, tmp_path, "straight", 30)
    interrupted = fit_steps(make_config, tmp_path, "interrupted", 30, sigterm_at=15)
    last = interrupted / "checkpoints" / "last.ckpt"
    assert load_checkpoint(last)["global_step"] == 15
    resumed = fit_steps(make_config, tmp_path, "resumed", 30, ckpt_path=str(last))
    assert resumed == interrupted  # continued in the same run folder
    a = load_checkpoint(straight / "checkpoints" / "last.ckpt")
    b = load_checkpoint(last)
    assert a["global_step"] == b["global_step"] == 30
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key  # model, EMA and schedule state, bitwise
    with open(resumed / "csv" / "metrics.csv", newline="") as file:
        steps = [int(row["step"]) for row in csv.DictReader(file) if row.get("train/loss")]
    assert steps == sorted(steps) and steps[0] < 15 < steps[-1]  # the earlier part of the curve was kept and continued


@pytest.mark.slow
def test_sigterm_of_a_real_training_process_checkpoints_and_exits_cleanly(tmp_path):
    cmd = [sys.executable, "train.py", *SMALL, "trainer.max_epochs=1000", f"paths.log_dir={tmp_path}"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not list(tmp_path.glob("train/runs/*/plots/schedule_start.png")) and time.time() < deadline:
        time.sleep(0.5)
    time.sleep(3.0)  # let it take some steps
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert "Interrupted by SIGTERM" in out
    ckpt = next(tmp_path.glob("train/runs/*/checkpoints/last.ckpt"))
    step = load_checkpoint(ckpt)["global_step"]
    assert step > 0
    resume = subprocess.run([sys.executable, "train.py", *SMALL, "ckpt_path=last", f"trainer.max_steps={step + 5}",
                             "test=false", f"paths.log_dir={tmp_path}"], cwd=REPO, capture_output=True, text=True,
                            timeout=300)
    assert resume.returncode == 0, resume.stderr[-3000:]
    assert load_checkpoint(ckpt)["global_step"] == step + 5


class NaNAfter(nn.Module):
    """A denoiser that starts returning NaN after a number of forward calls (a diverging run)."""

    def __init__(self, calls):
        super().__init__()
        self.net, self.calls, self.count = UNet(width=16, num_res_blocks=1), calls, 0

    def forward(self, z, logsnr):
        self.count += 1
        out = self.net(z, logsnr)
        return out * float("nan") if self.training and self.count > self.calls else out


def test_nonfinite_losses_are_skipped_counted_and_stop_training_with_the_last_checkpoint_intact(tmp_path):
    module = DiffusionModule(NaNAfter(calls=25), LinearSchedule(-5.0, 10.0), ELBOWeighting(), EpsParameterization(),
                             17, (1, 8, 8), optimizer=partial(torch.optim.AdamW, lr=1e-3))
    checkpoints = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path, save_last=True)
    guard = NonFiniteGuard(patience=4, dirpath=str(tmp_path))
    trainer = L.Trainer(max_epochs=5, logger=False, enable_progress_bar=False, callbacks=[guard, checkpoints],
                        inference_mode=False, enable_model_summary=False)
    with pytest.raises(NonFiniteLossError, match="4 consecutive training steps had a non-finite loss or gradient"):
        trainer.fit(module, datamodule=DigitsDataModule(batch_size=64, eval_batch_size=None, num_workers=0))
    assert guard.nonfinite_steps == 4
    good = load_checkpoint(tmp_path / "last.ckpt")
    assert all(torch.isfinite(v).all() for v in good["state_dict"].values() if v.is_floating_point())
    assert good["global_step"] == 22  # the end of the first epoch, before the run diverged
    assert load_checkpoint(tmp_path / "good.ckpt")["global_step"] == 22  # the guard's own, from before the divergence
    assert math.isfinite(float(module.ema.net.net.conv_in.weight.sum()))
