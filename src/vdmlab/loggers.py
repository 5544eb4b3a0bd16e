"""Experiment loggers: a CSV logger that appends when a run resumes, a Weights & Biases factory that groups
runs by sweep, tags them by their config choices and goes offline by itself when there are no credentials (the
mode is passed to ``wandb.init``, never set process-wide through ``WANDB_MODE``), the one way every command
finishes its loggers, and the console format of the job log (conf/hydra/default.yaml)."""

from __future__ import annotations

import csv
import logging
import netrc
import os
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from lightning.pytorch.loggers import CSVLogger as LightningCSVLogger
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn

log = logging.getLogger("vdmlab")

MAX_TAG_LENGTH = 64  # W&B rejects longer tags


def has_wandb_credentials() -> bool:
    """True when ``WANDB_API_KEY`` is set or the netrc file (``$NETRC`` or ~/.netrc) has an entry for the W&B host."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname
    path = os.environ.get("NETRC") or os.path.join(os.path.expanduser("~"), ".netrc")
    try:
        return netrc.netrc(path).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def resolve_mode(mode: str = "auto") -> str:
    """``auto`` → the user's ``WANDB_MODE`` if set, else ``online`` with credentials and ``offline`` without."""
    if mode != "auto":
        return mode
    return os.environ.get("WANDB_MODE") or ("online" if has_wandb_credentials() else "offline")


def _hydra_config() -> Any | None:
    try:
        from hydra.core.hydra_config import HydraConfig

        return HydraConfig.get()
    except (ImportError, ValueError):
        return None


def _is_multirun(hydra_cfg: Any) -> bool:
    from hydra.types import RunMode

    return hydra_cfg.get("mode") == RunMode.MULTIRUN


def sweep_group(save_dir: str | os.PathLike) -> str:
    """One W&B group per sweep: the multirun folder's name (all its jobs share it), or the run folder's name."""
    hydra_cfg = _hydra_config()
    if hydra_cfg is not None and _is_multirun(hydra_cfg):
        return Path(str(hydra_cfg.sweep.dir)).name
    if hydra_cfg is not None and hydra_cfg.runtime.get("output_dir"):
        return Path(str(hydra_cfg.runtime.output_dir)).name
    return Path(save_dir).resolve().name


def run_name(choices: Mapping[str, str], fallback: str = "run") -> str:
    """``<weighting>-<schedule>-<parameterization>`` (or ``fallback``), with the job number appended inside a sweep."""
    name = "-".join(str(v) for v in choices.values() if v) or fallback
    hydra_cfg = _hydra_config()
    if hydra_cfg is not None and _is_multirun(hydra_cfg):
        name += f"-{hydra_cfg.job.num}"
    return name


def run_tags(choices: Mapping[str, str], weighting: Any = None, extra: Iterable[str] = ()) -> list[str]:
    """``group=option`` for every choice, ``monotonic``/``non-monotonic`` from the built weighting, then ``extra``."""
    tags = [f"{group}={option}" for group, option in choices.items() if option]
    if weighting is not None and hasattr(weighting, "monotonic"):
        tags.append("monotonic" if weighting.monotonic else "non-monotonic")
    tags += [str(t) for t in extra]
    return list(dict.fromkeys(t[:MAX_TAG_LENGTH] for t in tags))


class VDMWandbLogger(WandbLogger):
    """Lightning's WandbLogger that prints the ``wandb sync`` command of an offline run once the run exists."""

    @property
    def experiment(self) -> Any:
        created = self._experiment is None
        run = WandbLogger.experiment.fget(self)  # rank-zero only: other ranks get a dummy experiment
        if created and getattr(run, "offline", False) is True:
            sync_dir = Path(run.dir).parent
            log.info("W&B offline run saved in %s\n  upload it later with: wandb sync %s", sync_dir, sync_dir)
        return run


def wandb_logger(
    project: str = "vdmlab",
    group: str | None = None,
    job_type: str = "train",
    name: str | None = None,
    tags: Iterable[str] = (),
    choices: Mapping[str, str] | None = None,
    weighting: Any = None,
    save_dir: str | os.PathLike = ".",
    mode: str = "auto",
    log_model: bool = False,
    **kwargs: Any,
) -> VDMWandbLogger | None:
    """A W&B logger for one job, or None (with a warning) when wandb is not installed.

    Args:
        project: the W&B project.
        group: null → one group per sweep (:func:`sweep_group`).
        job_type: e.g. ``train``; the config passes ``${task_name}``.
        name: null → :func:`run_name` of the choices.
        tags: extra tags, after those of :func:`run_tags`.
        choices: ``{group: option}`` of the config groups to tag (weighting, schedule, parameterization).
        weighting: the built weighting, whose ``monotonic`` attribute gives the monotonic/non-monotonic tag.
        save_dir: where the ``wandb/`` folder goes: the run's output dir.
        mode: ``auto`` (online with credentials, else offline), ``online``, ``offline`` or ``disabled``.
        log_model: upload checkpoints as artifacts (Lightning's ``log_model``).
        kwargs: passed on to ``wandb.init``.
    """
    try:
        import wandb  # noqa: F401
    except ImportError:
        rank_zero_warn("logger.wandb: wandb is not installed (pip install wandb); this run logs without W&B")
        return None
    choices = {str(k): str(v) for k, v in (choices or {}).items() if v is not None}
    requested, mode = mode, resolve_mode(mode)
    if requested == "auto" and mode == "offline" and not os.environ.get("WANDB_MODE") and rank_zero_only.rank == 0:
        log.info("W&B offline: no WANDB_API_KEY and no netrc entry for the W&B host; `wandb sync` uploads it later")
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    return VDMWandbLogger(
        project=project,
        group=group or sweep_group(save_dir),
        job_type=job_type,
        name=name or run_name(choices, job_type),
        tags=run_tags(choices, weighting, tags),
        save_dir=str(save_dir),
        mode=mode,
        log_model=log_model,
        **kwargs,
    )


class _AppendingWriter(ExperimentWriter):
    """Lightning's CSV writer without the deletion of an existing metrics.csv: a resumed run appends to it."""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as file:
                header = next(csv.reader(file), [])
            self.metrics_keys = sorted(header)


class CSVLogger(LightningCSVLogger):
    """CSV logger that never deletes earlier logs: resuming a run (``ckpt_path=last``) continues metrics.csv."""

    @property
    @rank_zero_experiment
    def experiment(self) -> _AppendingWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment


def finish_wandb() -> None:
    """``wandb.finish()`` if a run is open: without it the next job of a multirun logs into the same run."""
    if "wandb" not in sys.modules:
        return
    import wandb

    if wandb.run is not None:
        wandb.finish()


def finish_loggers(loggers: Iterable[Any], status: str = "success") -> None:
    """Close every logger of a command (train, eval), then the W&B run: each job of a multirun gets its own."""
    for logger in loggers:
        if hasattr(logger, "finalize"):
            logger.finalize(status)
    finish_wandb()


class ConsoleFormatter(logging.Formatter):
    """The console side of the job log: the bare message (the job log file keeps time, logger and level), with
    the level in front for warnings and errors."""

    def format(self, record: logging.LogRecord) -> str:
        message = super().format(record)
        return message if record.levelno < logging.WARNING else f"{record.levelname}: {message}"


def capture_warnings() -> None:
    """Send Python warnings (Lightning's hints among them) through logging, so the job log holds them too; only
    when Hydra has set up the job log in this run's folder, so library use and tests are untouched."""
    hydra_cfg = _hydra_config()
    output_dir = hydra_cfg.runtime.get("output_dir") if hydra_cfg is not None else None
    if output_dir and any(isinstance(h, logging.FileHandler) and Path(h.baseFilename).parent == Path(output_dir)
                          for h in logging.getLogger().handlers):
        logging.captureWarnings(True)
