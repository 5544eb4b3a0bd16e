"""``python train.py``: compose the config, build everything, fit, test and log the final metrics table
(console and the run folder's train.log)."""

from __future__ import annotations

import logging
import os
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, open_dict

from vdmlab.cli.build import build_run, resolved_config
from vdmlab.cli.checkpoints import load_checkpoint, resolve_ckpt_path
from vdmlab.cli.common import format_table
from vdmlab.cli.rerun import continue_previous_job, record_job_end, record_job_start, set_threads
from vdmlab.cli.validate import validate_config
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
    """Write the final state to last.ckpt (atomically), also when training stopped mid-epoch on max_steps."""
    tmp = path.parent / ".last.ckpt.partial"
    trainer.save_checkpoint(tmp, weights_only=False)  # the full, resumable state (optimizer, loops, callbacks)
    if trainer.is_global_zero:
        os.replace(tmp, path)


def run(cfg: DictConfig) -> float | None:
    """Train (and test) one configuration; logs the final metrics table and returns val/bpd for sweepers."""
    capture_warnings()
    validate_config(cfg)
    set_threads(cfg.get("threads", "auto"))
    finished = continue_previous_job(cfg) if cfg.get("train", True) else None
    if finished is not None:
        return finished.get("val/bpd")
    record_job_start(cfg)
    ckpt_path = resolve_ckpt_path(cfg) if cfg.get("train", True) else None
    if ckpt_path:
        continue_in_run_dir(cfg, ckpt_path)
    L.seed_everything(cfg.seed, workers=True)
    torch.set_float32_matmul_precision("high")
    built = build_run(cfg)
    callbacks, loggers = instantiate_all(cfg.get("callbacks")), instantiate_all(cfg.get("logger"))
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    output_dir = Path(cfg.paths.output_dir)
    if trainer.is_global_zero:
        log.info("output dir: %s", output_dir)
        for logger in loggers:
            logger.log_hyperparams(resolved_config(cfg))
    start = time.time()
    try:
        if cfg.get("train", True):
            try:
                trainer.fit(built.module, datamodule=built.datamodule, ckpt_path=ckpt_path, weights_only=True)
            except SIGTERMException:
                log.warning("Interrupted by SIGTERM at step %d; the state is in %s. Resume with: python train.py "
                            "ckpt_path=last (plus the same overrides)", trainer.global_step,
                            output_dir / "checkpoints" / "last.ckpt")
                return None
            save_final_checkpoint(trainer, output_dir / "checkpoints" / "last.ckpt")
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if "/" in k}
        if cfg.get("test", True):
            trainer.test(built.module, datamodule=built.datamodule, verbose=False)
            metrics.update({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")})
    finally:
        finish_loggers(loggers)
    if trainer.is_global_zero:
        metrics["time/minutes"] = (time.time() - start) / 60
        metrics["train/steps"] = trainer.global_step
        record_job_end(cfg, metrics)
        log.info("Finished %s in %s\n%s", cfg.task_name, output_dir, format_table(dict(sorted(metrics.items()))))
    return metrics.get("val/bpd")
