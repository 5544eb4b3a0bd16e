"""``python train.py``: compose the config, build everything, fit, test and log the final metrics table
(console and the run folder's train.log)."""

from __future__ import annotations

import logging
import os
import shlex
import socket
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf, open_dict

from vdmlab.callbacks.interrupt import CheckpointOnInterrupt
from vdmlab.callbacks.nonfinite import NonFiniteGuard
from vdmlab.checkpoint_io import AtomicCheckpointIO
from vdmlab.cli.build import build_run, resolved_config
from vdmlab.cli.checkpoints import CheckpointError, check_resume_config, load_checkpoint, resolve_ckpt_path
from vdmlab.cli.common import format_table
from vdmlab.cli.rerun import continue_previous_job, record_job_end, record_job_start, set_threads
from vdmlab.cli.validate import ConfigError, validate_config
from vdmlab.loggers import capture_warnings, finish_loggers

log = logging.getLogger("vdmlab")

# the EMA copy of the denoiser is in eval mode on purpose; and a Lightning/torch version notice users cannot act on
warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training.*")
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")


def instantiate_all(group: DictConfig | None) -> list[Any]:
    """Instantiate every ``_target_`` entry of a dict-of-configs group (callbacks, loggers); a factory may return
    None to opt out (the W&B logger does when wandb is not installed)."""
    if not group:
        return []
    built = [instantiate(node) for node in group.values() if isinstance(node, DictConfig) and "_target_" in node]
    return [obj for obj in built if obj is not None]


def continue_in_run_dir(cfg: DictConfig, ckpt_path: str) -> None:
    """Resume where the checkpoint's run lives: same output folder (logs appended, not replaced) and the
    same W&B run id, so the logged curves continue."""
    path = Path(ckpt_path).resolve()
    if path.parent.name != "checkpoints":
        return
    with open_dict(cfg):
        cfg.paths.output_dir = str(path.parent.parent)
        wandb_id = load_checkpoint(path).get("vdmlab_loggers", {}).get("wandb")
        if wandb_id and cfg.get("logger") and "wandb" in cfg.logger:
            cfg.logger.wandb.id = wandb_id
            cfg.logger.wandb.resume = "allow"
    log.info("resuming %s in %s", path, cfg.paths.output_dir)


def save_final_checkpoint(trainer: L.Trainer, path: Path) -> None:
    """Write the final state to last.ckpt (atomically: AtomicCheckpointIO), also when training stopped mid-epoch on
    max_steps."""
    trainer.save_checkpoint(path, weights_only=False)  # the full, resumable state (optimizer, loops, callbacks)


def resume_command(cfg: DictConfig, output_dir: Path | None, drop: tuple[str, ...] = ()) -> str:
    """The command line that continues this run: this run's overrides (less ``drop``) plus ``ckpt_path=last
    resume_dir=<folder>``; with ``output_dir=None`` the overrides alone."""
    from hydra.core.hydra_config import HydraConfig

    overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    kept = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") not in ("ckpt_path", "resume_dir", *drop)]
    resume = ["ckpt_path=last", f"resume_dir={output_dir}"] if output_dir is not None else []
    return "python " + shlex.join(["train.py", *kept, *resume])


class ConfiguredLearningRate(L.Callback):
    """On resume, train with the configured ``module.optimizer.lr`` instead of the checkpoint's (Lightning restores
    the optimizer's and the LR schedule's learning rates): the schedule's current factor is kept."""

    def __init__(self, lr: float):
        self.lr = float(lr)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for optimizer in trainer.optimizers:
            for group in optimizer.param_groups:
                old = float(group.get("initial_lr", group["lr"]))
                group["lr"] = group["lr"] * self.lr / old if old else self.lr
                if "initial_lr" in group:
                    group["initial_lr"] = self.lr
        for config in trainer.lr_scheduler_configs:
            config.scheduler.base_lrs = [self.lr for _ in config.scheduler.base_lrs]
        log.info("resuming with module.optimizer.lr=%g (the checkpoint's learning rate is replaced)", self.lr)


class RunFolderLocked(CheckpointError):
    """Another process is writing into the run folder."""


LOCK_FILE = ".run.lock"


def lock_run_folder(folder: Path) -> Path | None:
    """Take ``<folder>/.run.lock`` (pid and host) so that two runs never write into one folder; a lock whose process
    is gone (same host) is taken over. DDP ranks other than 0 (started by the launcher) take none."""
    if int(os.environ.get("LOCAL_RANK", "0") or 0) > 0 or int(os.environ.get("NODE_RANK", "0") or 0) > 0:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    lock, host = folder / LOCK_FILE, socket.gethostname()
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            owner = lock.read_text().split()
            pid, owner_host = (int(owner[0]), owner[1]) if len(owner) == 2 and owner[0].isdigit() else (0, host)
            alive = owner_host != host
            if owner_host == host and pid > 0:
                try:
                    os.kill(pid, 0)
                    alive = True
                except ProcessLookupError:
                    alive = False
                except PermissionError:
                    alive = True
            if alive:
                raise RunFolderLocked(
                    f"{folder} is in use by another run (process {pid} on {owner_host}, {lock}); two runs never write "
                    f"into one folder: wait for it to end, or start a new run (without ckpt_path/resume_dir). If that "
                    f"process is gone, delete {lock}") from None
            log.warning("taking over the stale lock %s (process %d is gone)", lock, pid)
            lock.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as file:
            file.write(f"{os.getpid()} {host}\n")
        return lock
    raise RunFolderLocked(f"could not lock {folder} ({lock})")


#: the trainer's counters: (key, smallest value, the "no limit" values it also takes)
TRAINER_COUNTS = (("max_epochs", 1, (-1, None)), ("max_steps", 1, (-1,)), ("check_val_every_n_epoch", 1, (None,)),
                  ("log_every_n_steps", 1, ()), ("accumulate_grad_batches", 1, ()), ("num_nodes", 1, ()),
                  ("num_sanity_val_steps", 0, (-1,)))


def check_trainer(trainer: DictConfig) -> None:
    """The trainer's counters are integers in range, named by their key (Lightning would fail later with a bare
    assertion, or train nothing and report untrained metrics for ``max_epochs=0``)."""
    for key, minimum, no_limit in TRAINER_COUNTS:
        if key not in trainer:
            continue
        value = trainer[key]
        if value in no_limit and not isinstance(value, bool):
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            allowed = " or ".join([f"an integer >= {minimum}", *(str(v).replace("None", "null") for v in no_limit)])
            extra = " (a run that trains nothing)" if value == 0 and key in ("max_epochs", "max_steps") else ""
            raise ConfigError(f"trainer.{key}={value!r} is invalid{extra}: it must be {allowed}")


def build_trainer(cfg: DictConfig, callbacks: list, loggers: list) -> L.Trainer:
    """The Lightning trainer, with atomic checkpoint writes; a trainer the machine cannot provide (trainer=gpu
    without a GPU) is a ConfigError naming the option."""
    plugins = [*(instantiate(cfg.trainer.plugins) if cfg.trainer.get("plugins") else []), AtomicCheckpointIO()]
    trainer_cfg = OmegaConf.to_container(cfg.trainer, resolve=True)  # resolved: ${paths...} needs the whole config
    trainer_cfg.pop("plugins", None)
    try:
        return instantiate(trainer_cfg, callbacks=callbacks, logger=loggers or False, plugins=plugins)
    except Exception as error:  # noqa: BLE001 - Lightning's MisconfigurationException, wrapped by Hydra
        cause = error
        while cause.__cause__ is not None:
            cause = cause.__cause__
        if type(cause).__name__ not in ("MisconfigurationException", "RuntimeError", "ValueError"):
            raise
        raise ConfigError(f"trainer (accelerator={cfg.trainer.get('accelerator')}, devices={cfg.trainer.get('devices')})"
                          f" cannot start on this machine: {cause}. Choose another trainer, e.g. trainer=cpu") from None


def run(cfg: DictConfig) -> float | None:
    """Train (and test) one configuration; logs the final metrics table and returns val/bpd for sweepers."""
    capture_warnings()
    check_trainer(cfg.trainer)
    validate_config(cfg)
    set_threads(cfg.get("threads", "auto"))
    finished = continue_previous_job(cfg) if cfg.get("train", True) else None
    if finished is not None:
        return finished.get("val/bpd")
    record_job_start(cfg)
    ckpt_path = resolve_ckpt_path(cfg) if cfg.get("train", True) else None
    if ckpt_path:
        continue_in_run_dir(cfg, ckpt_path)
    output_dir = Path(cfg.paths.output_dir)
    lock = lock_run_folder(output_dir) if cfg.get("train", True) else None
    try:
        return _run_locked(cfg, ckpt_path, output_dir)
    finally:
        if lock is not None:
            lock.unlink(missing_ok=True)


def _run_locked(cfg: DictConfig, ckpt_path: str | None, output_dir: Path) -> float | None:
    L.seed_everything(cfg.seed, workers=True)
    torch.set_float32_matmul_precision("high")
    built = build_run(cfg)
    stored = None
    if ckpt_path:
        stored = load_checkpoint(ckpt_path)["vdmlab"].get("config")
        for line in check_resume_config(ckpt_path, stored, built.module.run_config, cfg.get("resume_check", True)):
            log.info("resuming with a changed option: %s", line)
    callbacks, loggers = instantiate_all(cfg.get("callbacks")), instantiate_all(cfg.get("logger"))
    command = resume_command(cfg, output_dir)
    for callback in callbacks:
        if isinstance(callback, CheckpointOnInterrupt):
            callback.resume_command = command
        if isinstance(callback, NonFiniteGuard):
            callback.resume_command = resume_command(cfg, None, drop=("module.optimizer.lr",))
    lr = cfg.module.get("optimizer", {}).get("lr")
    stored_lr = (((stored or {}).get("module") or {}).get("optimizer") or {}).get("lr")
    if ckpt_path and lr is not None and stored_lr not in (None, lr):
        callbacks.append(ConfiguredLearningRate(lr))
    trainer = build_trainer(cfg, callbacks, loggers)
    if trainer.is_global_zero:
        log.info("output dir: %s", output_dir)
        for logger in loggers:
            logger.log_hyperparams(resolved_config(cfg))
    start = time.time()
    try:
        if cfg.get("train", True):
            try:
                trainer.fit(built.module, datamodule=built.datamodule, ckpt_path=ckpt_path, weights_only=True)
            except SIGTERMException:  # CheckpointOnInterrupt wrote last.ckpt and printed the resume command
                log.warning("Interrupted at step %d; the state is in %s. Resume this run with:\n  %s",
                            trainer.global_step, output_dir / "checkpoints" / "last.ckpt", command)
                return None
            save_final_checkpoint(trainer, output_dir / "checkpoints" / "last.ckpt")
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if "/" in k}
        if cfg.get("test", True):
            try:
                trainer.test(built.module, datamodule=built.datamodule, verbose=False)
            except SIGTERMException:  # training is complete in last.ckpt: resuming it only runs the test
                log.warning("Interrupted during the test; training is complete in %s. Resume this run with (only the "
                            "test remains):\n  %s",
                            output_dir / "checkpoints" / "last.ckpt", command)
                return None
            metrics.update({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")})
    finally:
        finish_loggers(loggers)
    if trainer.is_global_zero:
        metrics["time/minutes"] = (time.time() - start) / 60
        metrics["train/steps"] = trainer.global_step
        record_job_end(cfg, metrics)
        log.info("Finished %s in %s\n%s", cfg.task_name, output_dir, format_table(dict(sorted(metrics.items()))))
    return metrics.get("val/bpd")
