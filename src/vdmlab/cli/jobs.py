"""Hydra callbacks: every job of a multirun self-contained (multirun + DDP and W&B traps), and no run folder
left behind by a configuration that fails validation (:class:`NoFolderOnConfigError`).

Lightning's DDP launcher starts ranks > 0 by re-running ``sys.argv`` plus ``hydra.run.dir=<HydraConfig run.dir>``.
Inside ``python train.py -m ...`` that would re-run the whole sweep in every child, each under a new ``${now:}``
folder. Before each job this callback therefore points both at the job alone: ``sys.argv`` becomes
``train.py <this job's overrides>`` and ``hydra.run.dir`` becomes this job's folder, so a child runs exactly this
job, in this job's folder. After the job it restores ``sys.argv``, removes the distributed environment variables
Lightning set (else the next job believes its processes were started externally and waits for ranks that never
come), destroys the process group and finishes any W&B run still open.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
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



def missing_folders(path: str | os.PathLike) -> list[Path]:
    """``path`` and those of its parents that do not exist yet, deepest first."""
    missing, folder = [], Path(path).absolute()
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    return missing


class NoFolderOnConfigError(Callback):
    """A run whose configuration fails validation leaves no run folder behind.

    Hydra makes the run folder, its ``.hydra/`` and the job log before the task function can validate anything.
    This callback notes, before that, which folders of the run (or sweep) path are new; after a job that failed
    with a :class:`ConfigError` or :class:`CheckpointError` it removes Hydra's files from the job's folder and
    then the new folders, each only if it is empty by then: a folder that existed before is never removed, and
    nothing but Hydra's own files is ever deleted.
    """

    def __init__(self) -> None:
        self._new: list[Path] = []

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._new = missing_folders(config.hydra.run.dir)  # ${now:} is cached: the same folder run_job makes

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._new = missing_folders(config.hydra.sweep.dir)

    def on_job_end(self, config: DictConfig, job_return: Any = None, **kwargs: Any) -> None:
        from hydra.core.utils import JobStatus

        from vdmlab.cli.checkpoints import CheckpointError
        from vdmlab.cli.validate import ConfigError

        error = getattr(job_return, "_return_value", None)
        if getattr(job_return, "status", None) != JobStatus.FAILED or not isinstance(error, ConfigError | CheckpointError):
            return
        job_dir = Path(config.hydra.runtime.output_dir).absolute()
        if not self._new or not (job_dir == self._new[-1] or self._new[-1] in job_dir.parents):
            return  # the job's folder existed before this run
        hydra_files = [job_dir / str(config.hydra.output_subdir) / f"{name}.yaml"
                       for name in ("config", "hydra", "overrides")] if config.hydra.output_subdir else []
        for handler in list(logging.getLogger().handlers):  # the job log: closed before it is removed
            if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename).parent == job_dir:
                handler.close()
                logging.getLogger().removeHandler(handler)
                hydra_files.append(Path(handler.baseFilename))
        for file in hydra_files:
            file.unlink(missing_ok=True)
        folders = [job_dir / str(config.hydra.output_subdir)] if config.hydra.output_subdir else []
        folders += [job_dir, *(p for p in job_dir.parents if p in self._new)]
        for folder in folders:
            try:
                folder.rmdir()  # only an empty folder goes
            except OSError:
                break
