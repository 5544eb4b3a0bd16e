"""The few Lightning internals vdmlab reads, in one place (tests/test_lightning_compat.py checks each of them).

Lightning has no public API for these; when an upgrade moves one, tests/test_lightning_compat.py fails naming it,
and only this module (and the range pinned in pyproject.toml, below the next minor release) changes. Tested with
lightning 2.6.6. ``vdmlab.loggers`` subclasses Lightning's CSV writer through its private ``_fs``,
``_experiment`` and ``_check_log_dir_exists``; the same test checks that they are still there.
"""

from __future__ import annotations

import lightning as L


def attached_trainer(module: L.LightningModule) -> L.Trainer | None:
    """The trainer running ``module``, or None for a module used on its own (``module.trainer`` raises then)."""
    return module._trainer


def writes_step_logs(trainer: L.Trainer) -> bool:
    """Whether this training step's ``on_step`` logs are written (every ``log_every_n_steps``, or a fast dev run)."""
    return bool(trainer.fast_dev_run) or bool(trainer._logger_connector.should_update_logs)


def uses_distributed_sampler(trainer: L.Trainer) -> bool:
    """Whether the trainer replaces the loaders' samplers by a ``DistributedSampler`` (``use_distributed_sampler``)."""
    return bool(getattr(trainer._accelerator_connector, "use_distributed_sampler", False))


def batches_done(trainer: L.Trainer) -> int:
    """Training batches completed in the current epoch (restored on resume; the running one counts after its end hooks)."""
    return int(trainer.fit_loop.epoch_loop.batch_progress.current.completed)


def is_last_batch(trainer: L.Trainer) -> bool:
    """Whether the training batch just run is the epoch's last."""
    return bool(trainer.fit_loop.epoch_loop.batch_progress.is_last_batch)


def request_safe_stop(trainer: L.Trainer) -> None:
    """Ask the fit loop to stop at its next safe point, as Lightning does on SIGTERM (``received_sigterm``)."""
    trainer._signal_connector.received_sigterm = True


def dump_checkpoint(trainer: L.Trainer) -> dict:
    """The full checkpoint dict Lightning would save now (collective under DDP)."""
    return trainer._checkpoint_connector.dump_checkpoint(weights_only=False)


def cluster_environment(trainer: L.Trainer):
    """The trainer's cluster environment (``SLURMEnvironment`` under SLURM)."""
    return trainer._accelerator_connector.cluster_environment
