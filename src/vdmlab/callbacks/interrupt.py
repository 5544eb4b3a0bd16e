"""Save a resumable checkpoint when training is interrupted (SIGTERM from a scheduler, or Ctrl-C)."""

from __future__ import annotations

import os
from pathlib import Path

import lightning as L
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_info


class CheckpointOnInterrupt(L.Callback):
    """On SIGTERM or KeyboardInterrupt during ``fit``, write ``<dirpath>/last.ckpt`` (atomically: a temporary
    file renamed over the old one, so an interrupted save never destroys the previous checkpoint).

    Lightning stops at the end of the current training batch, so the state is consistent: model, EMA,
    optimizer, LR schedule, schedule parameters/statistics, RNG states and the position in the epoch.
    """

    def __init__(self, dirpath: str | os.PathLike):
        self.dirpath = Path(dirpath)
        self.saved: Path | None = None

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, (SIGTERMException, KeyboardInterrupt)) or not trainer.training:
            return
        path = self.dirpath / "last.ckpt"
        tmp = self.dirpath / ".last.ckpt.partial"
        trainer.save_checkpoint(tmp, weights_only=False)  # the full, resumable state; collective under DDP
        if trainer.is_global_zero:
            os.replace(tmp, path)
            self.saved = path
            rank_zero_info(f"Interrupted ({type(exception).__name__}) at step {trainer.global_step}: saved {path}; "
                           f"resume with ckpt_path=last (or ckpt_path={path})")


class LoggerIds(L.Callback):
    """Store each logger's run id in checkpoints (``checkpoint["vdmlab_loggers"]``), so that a resumed run
    continues the same W&B run instead of starting a new one."""

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        ids = {}
        for logger in trainer.loggers:
            if type(logger).__name__.lower().find("wandb") >= 0 and getattr(logger, "_experiment", None) is not None:
                ids["wandb"] = str(logger.version)
        checkpoint["vdmlab_loggers"] = ids
