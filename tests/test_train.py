"""The training application end to end: every config group composes and instantiates; fast dev runs for every
dataset, parameterization and weighting with a real Lightning trainer; and train.py as a real subprocess."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO
from hydra.utils import instantiate
from test_data import write_fake_cifar, write_fake_mnist

from vdmlab.cli.build import build_run
from vdmlab.cli.train import run


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (REPO / "conf" / group).glob("*.yaml"))


FDR = ["debug=fdr", "logger=csv"]


@pytest.mark.parametrize("group", ["dataset", "model", "schedule", "weighting", "parameterization", "sampler", "trainer",
                                   "logger", "callbacks", "paths", "hydra", "debug", "experiment"])
def test_every_config_group_composes_and_instantiates(group, make_config, tmp_path):
    for option in options(group):
        overrides = [f"{group}={option}"]
        if group == "dataset" and option == "image_folder":
            overrides.append(f"dataset.root={tmp_path}")
        if group == "dataset" and option == "toy2d":
            overrides.append("model=mlp")
        if group == "dataset" and option != "digits":
            overrides.append("fid=null")  # Inception weights cannot be downloaded here
        cfg = make_config(overrides)
        if group in ("dataset", "model", "schedule", "weighting", "parameterization"):
            built = build_run(cfg)
            assert built.module.schedule is not None
        elif group == "sampler":
            assert callable(instantiate(cfg.sampler.fn))
        elif group == "trainer":
            assert cfg.trainer._target_ == "lightning.Trainer"
        elif group in ("logger", "callbacks"):
            for node in (cfg.get(group) or {}).values():
                if "_target_" in node and "Wandb" not in node._target_:
                    assert instantiate(node) is not None


def fast_dev_run(make_config, overrides):
    cfg = make_config([*FDR, *overrides])
    run(cfg)
    return cfg


@pytest.mark.parametrize("parameterization", options("parameterization"))
def test_fast_dev_run_every_parameterization(parameterization, make_config):
    fast_dev_run(make_config, [f"parameterization={parameterization}"])


@pytest.mark.parametrize("weighting", options("weighting"))
def test_fast_dev_run_every_weighting(weighting, make_config):
    fast_dev_run(make_config, [f"weighting={weighting}", "schedule=cosine"])


@pytest.mark.parametrize("schedule", options("schedule"))
def test_fast_dev_run_every_schedule_and_sampler(schedule, make_config):
    sampler = {"linear": "ddim", "cosine": "heun"}.get(schedule, "ancestral")
    fast_dev_run(make_config, [f"schedule={schedule}", f"sampler={sampler}"])


def test_fast_dev_run_discrete_time(make_config):
    fast_dev_run(make_config, ["module.timesteps=100"])


def test_fast_dev_run_toy2d_with_mlp(make_config):
    fast_dev_run(make_config, ["dataset=toy2d", "model=mlp", "dataset.n_train=512", "dataset.n_val=64",
                               "dataset.n_test=64", "dataset.batch_size=64"])


def test_fast_dev_run_mnist_from_torchvision_files(make_config, tmp_path):
    write_fake_mnist(tmp_path / "data", n_train=40, n_test=10)
    fast_dev_run(make_config, ["dataset=mnist", f"dataset.root={tmp_path / 'data'}", "dataset.download=false",
                               "dataset.val_size=8", "dataset.batch_size=8", "dataset.num_workers=0",
                               "model.channel_mults=[1,2]", "model.width=16"])


def test_fast_dev_run_cifar10_from_torchvision_files(make_config, tmp_path):
    write_fake_cifar(tmp_path / "data", per_batch=8, n_test=10)
    fast_dev_run(make_config, ["dataset=cifar10", f"dataset.root={tmp_path / 'data'}", "dataset.download=false",
                               "dataset.val_size=8", "dataset.batch_size=8", "dataset.num_workers=0",
                               "model.channel_mults=[1,2]", "model.width=16", "model.attention_resolutions=[16]"])


def test_fast_dev_run_image_folder(make_config, tmp_path):
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(12):
        Image.fromarray((torch.rand(20, 24, 3) * 255).byte().numpy()).save(folder / f"{i}.png")
    fast_dev_run(make_config, ["dataset=image_folder", f"dataset.root={folder}", "dataset.image_size=8",
                               "dataset.batch_size=4", "dataset.num_workers=0", "model.width=16"])


def test_short_training_run_writes_checkpoint_samples_and_improves(make_config):
    """A real (short) fit: the checkpoint and sample grid land in the run dir and val/bpd beats uniform."""
    cfg = make_config(["trainer.max_epochs=20", "callbacks.sample_grid.every_n_epochs=10", "sampler=ddim",
                       "sampler.steps=20", "module.lr_scheduler.warmup_steps=20", "model.width=32",
                       "model.num_res_blocks=2", "fid.every_n_epochs=10", "fid.num_samples=100", "fid.steps=10"])
    val_bpd = run(cfg)
    out = Path(cfg.paths.output_dir)
    assert (out / "checkpoints" / "last.ckpt").is_file()
    assert (out / "samples" / "epoch_0010.png").is_file() and (out / "samples" / "final.png").is_file()
    assert (out / "plots" / "schedule_start.png").is_file()
    assert (out / "csv" / "metrics.csv").is_file()
    header = (out / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"val/fid", "val/fid_n", "test/fid", "test/bpd", "val/bpd_se", "train/loss_variance"} <= set(header)
    assert val_bpd < torch.log2(torch.tensor(17.0)).item()  # the uniform baseline, 4.09 bits/dim


@pytest.mark.slow
def test_train_py_subprocess_from_repo_root(tmp_path):
    cmd = [sys.executable, "train.py", "schedule=cosine", "weighting=sigmoid", "parameterization=v",
           "trainer.max_epochs=3", "sampler.steps=10", "fid.num_samples=100", "fid.steps=5", "logger=csv",
           f"paths.log_dir={tmp_path}"]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "val/bpd" in result.stdout
    assert list(tmp_path.glob("train/runs/*/checkpoints/last.ckpt"))
    assert list(tmp_path.glob("train/runs/*/samples/final.png"))
