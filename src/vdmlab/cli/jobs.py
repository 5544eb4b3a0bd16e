"""Hydra callback that keeps every job of a multirun self-contained (design §6, multirun + DDP and W&B traps).

Lightning's DDP launcher starts ranks > 0 by re-running ``sys.argv`` plus ``hydra.run.dir=<HydraConfig run.dir>``.
Inside ``python train.py -m ...`` that would re-run the whole sweep in every child, each under a new ``${now:}``
folder. Before each job this callback therefore points both at the job alone: ``sys.argv`` becomes
``train.py <this job's overrides>`` and ``hydra.run.dir`` becomes this job's folder, so a child runs exactly this
job, in this job's folder. After the job it restores ``sys.argv``, removes the distributed environment variables
Lightning set (else the next job believes its processes were started externally and waits for ranks that never
come), destroys the process group and finishes any W&B run still open.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, open_dict, read_write

from vdmlab.loggers import finish_wandb

DISTRIBUTED_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE", "RANK", "GROUP_RANK",
                   "LOCAL_WORLD_SIZE")
CONFIG_FLAGS = ("-cp", "--config-path", "-cn", "--config-name", "-cd", "--config-dir")


def config_flags(argv: list[str]) -> list[str]:
    """The config-location flags of a Hydra command line (``-cn name``, ``--config-dir=dir``, ...), in order."""
    kept, i = [], 0
    while i < len(argv):
        flag = argv[i].split("=", 1)[0]
        if flag in CONFIG_FLAGS:
            takes_next = "=" not in argv[i] and i + 1 < len(argv)
            kept += argv[i: i + 2] if takes_next else [argv[i]]
            i += 2 if takes_next else 1
        else:
            i += 1
    return kept


def single_job_argv(argv: list[str], task_overrides: list[str]) -> list[str]:
    """``train.py [config flags] <overrides of one job>``: the command line that re-runs just this job."""
    return [argv[0], *config_flags(argv[1:]), *task_overrides]


class MultirunJob(Callback):
    """Point DDP children at the current multirun job and clean up distributed and W&B state after it."""

    def __init__(self) -> None:
        self._argv: list[str] | None = None
        self._env: dict[str, str | None] = {}

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        if config.hydra.get("mode") != RunMode.MULTIRUN or "LOCAL_RANK" in os.environ:
            return  # a single run, or a process that a cluster (SLURM, torchrun) started: nothing is re-launched
        self._argv = list(sys.argv)
        self._env = {key: os.environ.get(key) for key in DISTRIBUTED_ENV}
        sys.argv = single_job_argv(sys.argv, list(config.hydra.overrides.task))
        with read_write(config.hydra), open_dict(config.hydra):
            config.hydra.run.dir = config.hydra.runtime.output_dir
        HydraConfig.instance().set_config(config)

    def on_job_end(self, config: DictConfig, job_return: Any = None, **kwargs: Any) -> None:
        finish_wandb()
        if self._argv is None:
            return
        sys.argv, self._argv = self._argv, None
        for key, value in self._env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()

