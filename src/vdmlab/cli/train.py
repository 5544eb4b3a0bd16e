"""``python train.py``: compose the config, build everything, fit, test and print the final metrics."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from vdmlab.cli.build import build_run
from vdmlab.cli.checkpoints import resolve_ckpt_path
from vdmlab.cli.validate import validate_config

log = logging.getLogger("vdmlab")


def instantiate_all(group: DictConfig | None) -> list[Any]:
    """Instantiate every ``_target_`` entry of a dict-of-configs group (callbacks, loggers)."""
    if not group:
        return []
    return [instantiate(node) for node in group.values() if isinstance(node, DictConfig) and "_target_" in node]


def format_metrics(metrics: dict[str, float]) -> str:
    """A two-column table of the final metrics."""
    keys = sorted(metrics)
    width = max((len(k) for k in keys), default=10)
    rows = [f"  {k:<{width}}  {metrics[k]:.4f}" for k in keys]
    return "\n".join([f"  {'metric':<{width}}  value", f"  {'-' * width}  ------", *rows])


def finish_loggers(loggers: list[Any]) -> None:
    """Close every logger; W&B needs an explicit finish per job or multirun jobs share one run (design §6)."""
    for logger in loggers:
        if hasattr(logger, "finalize"):
            logger.finalize("success")
    try:
        import wandb

        if wandb.run is not None:
            wandb.finish()
    except ImportError:
        pass


def run(cfg: DictConfig) -> float | None:
    """Train (and test) one configuration; returns the final val/bpd for sweepers."""
    validate_config(cfg)
    L.seed_everything(cfg.seed, workers=True)
    torch.set_float32_matmul_precision("high")
    built = build_run(cfg)
    callbacks, loggers = instantiate_all(cfg.get("callbacks")), instantiate_all(cfg.get("logger"))
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    output_dir = Path(cfg.paths.output_dir)
    if trainer.is_global_zero:
        log.info("output dir: %s", output_dir)
        for logger in loggers:
            logger.log_hyperparams(OmegaConf.to_container(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]),
                                                          resolve=True))
    start = time.time()
    try:
        if cfg.get("train", True):
            trainer.fit(built.module, datamodule=built.datamodule, ckpt_path=resolve_ckpt_path(cfg))
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if "/" in k}
        if cfg.get("test", True):
            trainer.test(built.module, datamodule=built.datamodule, verbose=False)
            metrics.update({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")})
    finally:
        finish_loggers(loggers)
    if trainer.is_global_zero:
        metrics["time/minutes"] = (time.time() - start) / 60
        metrics["train/steps"] = float(trainer.global_step)
        print(f"\nFinished {cfg.task_name} in {output_dir}\n{format_metrics(metrics)}", flush=True)
    return metrics.get("val/bpd")
