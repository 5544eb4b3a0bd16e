"""Shared test setup: the tests directory is importable (for ``oracles``) and torch uses few threads."""

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
# With pytest-xdist every worker gets one thread (and so do the subprocesses it starts): two workers with two
# threads each on two cores run several times slower than with one.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
else:
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
# W&B is the default logger: in-process tests never talk to W&B (nor write to ~/.config/wandb); the sweep tests
# run train.py in subprocesses with their own environment and exercise the real offline mode.
os.environ.setdefault("WANDB_MODE", "disabled")


from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from omegaconf import DictConfig, open_dict  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = str(REPO / "conf")


def compose_config(output_dir: Path, overrides: list[str] = (), config_name: str = "train") -> DictConfig:
    """Compose the real config as ``python train.py`` would, with outputs under ``output_dir``."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name, overrides=list(overrides), return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.hydra.runtime.cwd = str(output_dir)
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    output_dir.mkdir(parents=True, exist_ok=True)
    return cfg


@pytest.fixture
def make_config(tmp_path):
    """``make_config(overrides)`` → a composed config writing into this test's tmp folder."""
    return lambda overrides=(), name="train": compose_config(tmp_path / "run", overrides, name)
