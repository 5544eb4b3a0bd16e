"""Save a resumable checkpoint when training is interrupted: SIGTERM (a scheduler's pre-emption), SIGUSR1 (SLURM's
warning before pre-emption or the time limit; then the job is requeued) or Ctrl-C (SIGINT).

Every signal only raises a flag (Lightning's ``received_sigterm``): Lightning stops at its next safe point (the end
of a training batch, of a validation batch or of the epoch), never inside an optimizer step, and this callback
writes ``last.ckpt`` there. A checkpoint written after the last batch of an epoch is labelled as written at that
epoch's end (Lightning's ``on_train_epoch_end`` state), since Lightning would otherwise resume it one epoch late.
"""

from __future__ import annotations

import copy
import logging
import os
import re
import signal
import subprocess
from pathlib import Path
from typing import Any

import lightning as L
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.utilities.exceptions import SIGTERMException

from vdmlab.cache import atomic_write_bytes
from vdmlab.checkpoint_io import checkpoint_bytes
from vdmlab.lightning_compat import cluster_environment, dump_checkpoint, request_safe_stop

log = logging.getLogger("vdmlab")

#: the signals that stop training with a checkpoint (SIGTERM is Lightning's own; the others are routed to it)
SIGNALS = ("SIGTERM", "SIGINT", "SIGUSR1")


def interrupted_at_epoch_end(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``checkpoint`` whose fit loop reads "epoch finished, its end not yet recorded" when it was written
    after the epoch's completion was counted: the state Lightning writes in ``on_train_epoch_end`` and resumes
    from exactly. Written as it is, the checkpoint pairs the next epoch's number with the finished epoch's batch
    count, and the datamodule skips the whole next epoch on resume."""
    fit = checkpoint.get("loops", {}).get("fit_loop", {})
    epoch = fit.get("epoch_progress")
    if not epoch:
        return checkpoint
    total, current = epoch["total"], epoch["current"]
    finished = all(progress[k] == progress["completed"] for progress in (total, current)
                   for k in ("ready", "started", "processed"))
    batches = fit.get("epoch_loop.batch_progress", {}).get("current", {})
    if not finished or current["completed"] == 0 or not batches.get("completed"):
        return checkpoint  # mid-epoch (Lightning resumes these exactly) or no epoch yet
    checkpoint = copy.copy(checkpoint)
    checkpoint["loops"] = copy.deepcopy(checkpoint["loops"])
    for progress in (checkpoint["loops"]["fit_loop"]["epoch_progress"][k] for k in ("total", "current")):
        progress["completed"] -= 1
    checkpoint["epoch"] = checkpoint["loops"]["fit_loop"]["epoch_progress"]["current"]["completed"]
    for key, value in checkpoint.items():  # the datamodule's position (DiffusionDataModule.state_dict) likewise
        if isinstance(value, dict) and {"epoch", "batches_done"} <= set(value):
            checkpoint[key] = {**value, "epoch": checkpoint["epoch"]}
    return checkpoint


def slurm_job_id() -> str | None:
    """The job id ``scontrol requeue`` takes (``<array job>_<task>`` for array jobs), or None outside SLURM."""
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array_job is not None and os.environ.get("SLURM_ARRAY_TASK_ID") is not None:
        return f"{array_job}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ.get("SLURM_JOB_ID")


class CheckpointOnInterrupt(L.Callback):
    """On SIGTERM, SIGUSR1 or Ctrl-C during ``fit``, write ``<dirpath>/last.ckpt`` (atomically) at Lightning's next
    safe point and stop; under SLURM with ``SLURMEnvironment(auto_requeue=True)`` (Lightning's default there), a
    SIGUSR1 also requeues the job (``scontrol requeue``) once the checkpoint is written. A second Ctrl-C stops at
    once, without a checkpoint.

    ``resume_command`` (set by train.py) is printed as the way to continue this run.
    """

    def __init__(self, dirpath: str | os.PathLike, resume_command: str | None = None):
        self.dirpath = Path(dirpath)
        self.resume_command = resume_command
        self.saved: Path | None = None
        self.signal_name: str | None = None
        self.requeued: str | None = None
        self._previous: dict[int, Any] = {}
        self._trainer: L.Trainer | None = None

    # ------------------------------------------------------------------ signals
    def _handler(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if signum == signal.SIGINT and self.signal_name == "SIGINT":
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        self.signal_name = self.signal_name or name
        log.warning("Received %s: stopping at the end of the current step with a checkpoint", name)
        if self._trainer is not None:
            request_safe_stop(self._trainer)  # Lightning's safe stop

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Route SIGINT and SIGUSR1 to the safe stop before Lightning registers its own handlers (so that it keeps
        ours for SIGUSR1); SIGTERM's flag is Lightning's own, ours only records the name."""
        if stage not in ("fit", "test"):
            return
        self._trainer, self.signal_name, self.saved, self.requeued = trainer, None, None, None
        for name in SIGNALS:
            signum = getattr(signal, name, None)
            if signum is None:
                continue
            try:
                self._previous[signum] = signal.signal(signum, self._handler)
            except ValueError:  # not the main thread: Lightning's SIGTERM handling only
                return

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        for signum, handler in self._previous.items():
            try:
                signal.signal(signum, handler)
            except (ValueError, TypeError):
                pass
        self._previous, self._trainer = {}, None

    # ------------------------------------------------------------------ the checkpoint
    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, (SIGTERMException, KeyboardInterrupt)) or trainer.state.fn != "fit":
            return
        if isinstance(exception, KeyboardInterrupt) and self.signal_name == "SIGINT":
            return  # a second Ctrl-C: the state may be mid-step; keep the last good checkpoint
        path = self.dirpath / "last.ckpt"
        checkpoint = dump_checkpoint(trainer)  # collective under DDP
        if trainer.is_global_zero:
            atomic_write_bytes(checkpoint_bytes(interrupted_at_epoch_end(checkpoint)), path)
            self.saved = path
            name = self.signal_name or type(exception).__name__
            resume = self.resume_command or f"python train.py ckpt_path={path}"
            log.warning("Interrupted by %s at step %d: saved %s. Resume this run with:\n  %s", name,
                        trainer.global_step, path, resume)
            if name == "SIGUSR1":
                self._requeue(trainer)
        self.teardown(trainer, pl_module, "fit")

    def _requeue(self, trainer: L.Trainer) -> None:
        """``scontrol requeue <job>`` under SLURM with Lightning's ``SLURMEnvironment(auto_requeue=True)``."""
        environment = cluster_environment(trainer)
        job = slurm_job_id()
        if not (isinstance(environment, SLURMEnvironment) and environment.auto_requeue and job):
            return
        if not re.fullmatch(r"[0-9_-]+", job):
            log.warning("not requeueing: SLURM job id %r is not a job number", job)
            return
        try:
            result = subprocess.call(["scontrol", "requeue", job])
        except FileNotFoundError:
            log.warning("SIGUSR1 under SLURM but scontrol is not on PATH: job %s not requeued", job)
            return
        if result == 0:
            self.requeued = job
            log.warning("Requeued SLURM job %s: it restarts from %s", job, self.saved)
        else:
            log.warning("scontrol requeue %s failed with exit code %d", job, result)


class LoggerIds(L.Callback):
    """Store each logger's run id in checkpoints (``checkpoint["vdmlab_loggers"]``), so that a resumed run
    continues the same W&B run instead of starting a new one."""

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        ids = {}
        for logger in trainer.loggers:
            if type(logger).__name__.lower().find("wandb") >= 0 and getattr(logger, "_experiment", None) is not None:
                ids["wandb"] = str(logger.version)
        checkpoint["vdmlab_loggers"] = ids
