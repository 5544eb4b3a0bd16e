"""Evaluation: bits/dim of untrained vs trained models, val/test agreement, exactness under DDP, and the
eval.py / sample.py commands on a checkpoint made by a short real training run."""

import json
import math
import re
import signal
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from conftest import REPO, compose_config

from vdmlab.cli import evaluate
from vdmlab.cli.build import build_from_checkpoint, build_run
from vdmlab.cli.common import stop_cleanly_on_ctrl_c
from vdmlab.cli.train import run as train_run
from vdmlab.data import DigitsDataModule, LevelDataset
from vdmlab.diffusion.parameterization import EpsParameterization
from vdmlab.diffusion.schedules import LinearSchedule
from vdmlab.diffusion.weighting import ELBOWeighting
from vdmlab.metrics.bpd import evaluate_bpd
from vdmlab.models import UNet
from vdmlab.module import DiffusionModule


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A checkpoint of a small digits model after a short real training run (25 epochs, 275 steps)."""
    out = tmp_path_factory.mktemp("trained") / "run"
    cfg = compose_config(out, ["trainer.max_epochs=25", "fid=null", "callbacks.sample_grid.every_n_epochs=1000",
                               "module.lr_scheduler.warmup_steps=50", "logger=csv", "model.width=32",
                               "model.num_res_blocks=2", "sampler.steps=20"])
    train_run(cfg)
    return out / "checkpoints" / "last.ckpt"


def eval_config(tmp_path, ckpt, overrides):
    return compose_config(tmp_path / "eval", [f"ckpt_path={ckpt}", "logger=csv", *overrides], "eval")


def test_untrained_bpd_is_finite_and_far_above_the_trained_one(trained, tmp_path):
    built = build_from_checkpoint(str(trained))
    fresh = build_run(compose_config(tmp_path / "fresh", ["fid=null"])).module
    loader = evaluate.split_loader(built.datamodule, "val")
    scores = {}
    for name, module in (("trained", built.module), ("untrained", fresh)):
        scores[name] = evaluate_bpd(module.elbo_model(num_samples=4, timesteps=None), loader, seed=0)
    assert math.isfinite(scores["untrained"]["bpd"])
    assert scores["untrained"]["bpd"] > scores["trained"]["bpd"] + 2.0
    assert scores["trained"]["bpd"] < math.log2(17)  # the uniform baseline


def test_val_and_test_bpd_agree_within_standard_errors(trained, tmp_path):
    results = {split: evaluate.run(eval_config(tmp_path / split, trained, [f"split={split}", "fid=null",
                                                                           "bpd.num_samples=8"]))
               for split in ("val", "test")}
    val, test = results["val"], results["test"]
    se = math.sqrt(val["val/bpd_se"] ** 2 + test["test/bpd_se"] ** 2)
    assert abs(val["val/bpd"] - test["test/bpd"]) < 3 * se
    for split, metrics in results.items():  # the three terms add up to the total
        parts = metrics[f"{split}/diffusion"] + metrics[f"{split}/prior"] + metrics[f"{split}/reconstruction"]
        assert parts == pytest.approx(metrics[f"{split}/bpd"], rel=1e-5)


def test_eval_py_and_sample_py_run_on_the_checkpoint(trained, tmp_path):
    env_log = f"paths.log_dir={tmp_path}"
    result = subprocess.run([sys.executable, "eval.py", f"ckpt_path={trained}", "split=test", "fid.num_samples=200",
                             "fid.steps=10", env_log], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "test/bpd" in result.stdout and "test/fid" in result.stdout
    metrics = json.loads(next(tmp_path.glob("eval/runs/*/metrics.json")).read_text())
    assert metrics["test/fid_n"] == 200 and math.isfinite(metrics["test/fid"])
    eval_log = next(tmp_path.glob("eval/runs/*/eval.log")).read_text()  # the job log holds the table too
    assert "test/bpd" in eval_log and "(FID@200" in eval_log and "metrics written to" in eval_log
    result = subprocess.run([sys.executable, "sample.py", f"ckpt_path={trained}", "sampler=ddim", "sampler.steps=20",
                             "sampling_schedule=cosine", "num_samples=16", env_log],
                            cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = next(tmp_path.glob("sample/runs/*"))
    x = np.load(run_dir / "samples.npz")["x"]
    assert x.shape == (16, 1, 8, 8) and (run_dir / "samples.png").is_file()
    assert "16 samples from" in (run_dir / "sample.log").read_text() and "samples.npz" in result.stdout
    levels = np.linspace(-1, 1, 17, dtype=np.float32)
    assert np.isclose(x[..., None], levels, atol=1e-6).any(-1).all()  # decoded to the 17 data levels
    metrics = json.loads((run_dir / "metrics.json").read_text())  # unconditional digits: the class histogram
    assert sum(metrics[f"class_{c}"] for c in range(10)) == 16 and metrics["fid_n"] == 16
    assert metrics["class_max_min"] >= 1 and 0 <= metrics["class_chi2_p"] <= 1
    assert sum(metrics[f"nn_class_{c}"] for c in range(10)) == 16  # and by the nearest training image's label
    assert 0 <= metrics["nn_class_chi2_p"] <= 1


def test_eval_py_interrupted_while_sampling_exits_cleanly_and_resumes(trained, tmp_path):
    """Ctrl-C during FID sampling: exit status 130, no traceback, the batches made so far kept; the same command
    then samples only the missing batches and gives the FID of an uninterrupted run."""
    samples = tmp_path / "samples"
    command = [sys.executable, "eval.py", f"ckpt_path={trained}", "fid.num_samples=1000", "fid.batch_size=20",
               "fid.steps=20", "fid.floor=false", "profile=null", "copying=null", f"fid.samples_dir={samples}",
               f"paths.log_dir={tmp_path}"]
    job = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while len(list(samples.glob("repeat0/batch*.npy"))) < 2 and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    job.send_signal(signal.SIGINT)
    _, err = job.communicate(timeout=120)
    assert job.returncode == 130, err[-3000:]
    assert "Traceback" not in err and "rerun the same command" in err and "eval.py interrupted (Ctrl-C)" in err
    kept = len(list(samples.glob("repeat0/batch*.npy")))
    assert 2 <= kept < 50  # 50 batches: the signal came while sampling
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    resumed = json.loads(max(tmp_path.glob("eval/runs/*/metrics.json"), key=lambda p: p.stat().st_mtime).read_text())
    reused = re.search(r"repeat 0: (\d+) batches reused", result.stdout + result.stderr)
    assert reused and int(reused.group(1)) >= kept and resumed["test/fid_n"] == 1000
    whole = evaluate.run(eval_config(tmp_path / "whole", trained, ["fid.num_samples=1000", "fid.batch_size=20",
                                                                   "fid.steps=20", "fid.floor=false", "profile=null",
                                                                   "copying=null"]))
    assert resumed["test/fid"] == pytest.approx(whole["test/fid"], rel=1e-9)


def test_sample_py_interrupted_exits_with_130_and_one_line(trained, tmp_path):
    job = subprocess.Popen([sys.executable, "sample.py", f"ckpt_path={trained}", "num_samples=5000", "sampler.steps=1000",
                            f"paths.log_dir={tmp_path}"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob("sample/runs/*/.hydra")) and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(3)  # inside the command: loading the checkpoint or sampling
    job.send_signal(signal.SIGINT)
    _, err = job.communicate(timeout=120)
    assert job.returncode == 130, err[-3000:]
    assert "Traceback" not in err and "sample.py interrupted (Ctrl-C)" in err and "samples.npz" in err
    assert not list(tmp_path.glob("sample/runs/*/samples.npz"))


def test_a_ctrl_c_becomes_exit_status_130_and_one_line(capsys):
    assert stop_cleanly_on_ctrl_c("x.py", lambda: 7, "it writes out.json") == 7

    def interrupted():
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as stop:
        stop_cleanly_on_ctrl_c("x.py", interrupted, "it writes out.json")
    assert stop.value.code == 130 and stop.value.__cause__ is None and stop.value.__suppress_context__
    assert capsys.readouterr().err == "x.py interrupted (Ctrl-C): it writes out.json only when it runs to the end.\n"


class SevenValDigits(DigitsDataModule):
    """Digits with 7 validation examples: 2 DDP ranks must pad to 8, duplicating one example (a LevelDataset, so
    that ``dataset.on_device=auto`` gathers the batches on the device on every rank)."""

    def build_splits(self):
        train, val, test = super().build_splits()
        return train, LevelDataset(val.levels[:7], val.num_levels), test


def small_module():
    torch.manual_seed(0)
    net = UNet(width=16, num_res_blocks=1, data_shape=(1, 8, 8))
    return DiffusionModule(net, LinearSchedule(-5.0, 10.0), ELBOWeighting(), EpsParameterization(), 17, (1, 8, 8),
                           optimizer=partial(torch.optim.AdamW, lr=1e-3), eval_num_samples=2)


def validate_single_and_ddp(make_module, make_datamodule) -> dict[int, dict[str, float]]:
    """``trainer.validate`` metrics of fresh modules in one process and on 2 DDP CPU ranks, keyed by the rank count."""
    results = {}
    for devices, strategy in ((1, "auto"), (2, "ddp_spawn")):
        trainer = L.Trainer(accelerator="cpu", devices=devices, strategy=strategy, logger=False,
                            enable_progress_bar=False, enable_model_summary=False, inference_mode=False,
                            use_distributed_sampler=False)
        results[devices] = trainer.validate(make_module(), datamodule=make_datamodule(), verbose=False)[0]
    return results


@pytest.mark.slow
def test_bits_per_dim_under_ddp_equals_single_process():
    results = validate_single_and_ddp(small_module, lambda: SevenValDigits(batch_size=128, eval_batch_size=3, num_workers=0))
    assert results[2]["val/bpd"] == pytest.approx(results[1]["val/bpd"], rel=1e-6)
    assert results[2]["val/bpd_se"] == pytest.approx(results[1]["val/bpd_se"], rel=1e-5)


def test_checkpoint_holds_no_fid_extractor_weights(trained):
    checkpoint = torch.load(trained, map_location="cpu", weights_only=True)
    assert not [k for k in checkpoint["state_dict"] if "inception" in k or "extractor" in k or "classifier" in k]
    assert Path(trained).stat().st_size < 20e6
