"""``python eval.py ckpt_path=...``: bits/dim (full ELBO) and FID of a checkpoint's EMA weights on a split."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from vdmlab.cli.build import build_from_checkpoint
from vdmlab.cli.common import format_table, pick_device
from vdmlab.cli.train import instantiate_all
from vdmlab.data.base import UniqueIndexDataset
from vdmlab.loggers import capture_warnings, finish_loggers
from vdmlab.metrics.bpd import evaluate_bpd
from vdmlab.metrics.fid import FIDMetric, fid_feature, split_fid

SPLITS = ("train", "val", "test")
log = logging.getLogger("vdmlab")


def split_loader(datamodule, split: str) -> DataLoader:
    """An unshuffled loader of ``(index, x)`` over one split."""
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is invalid: choose one of {', '.join(SPLITS)}")
    datamodule.setup()
    dataset = getattr(datamodule, f"{split}_set")
    return DataLoader(UniqueIndexDataset(dataset), batch_size=datamodule.eval_batch_size, shuffle=False)


def evaluate_fid(module, datamodule, split: str, cfg: DictConfig, device: torch.device) -> dict[str, float]:
    """FID of ``cfg.num_samples`` EMA samples against every image of the split (cached statistics), with the
    real-vs-real floor and ``cfg.repeats`` sample seeds."""
    feature = fid_feature(cfg.feature, module.data_shape, module.num_levels)
    metric = FIDMetric(feature, cfg.inception_path, reset_real_features=False).to(device)
    start = time.time()
    values = split_fid(metric, datamodule, split,
                       lambda r: module.compute_fid(metric, int(cfg.num_samples), int(cfg.steps), int(cfg.batch_size), repeat=r),
                       cfg.stats_dir, int(cfg.repeats), bool(cfg.floor), int(cfg.batch_size), int(module.seed))
    return {**values, "fid_seconds": time.time() - start}


def run(cfg: DictConfig) -> dict[str, float]:
    """Evaluate one checkpoint; logs a table (console and eval.log), writes metrics.json into the run dir and
    sends the metrics to the loggers."""
    capture_warnings()
    device = pick_device(cfg.device)
    overrides = {f"dataset.{k}": v for k, v in (cfg.get("dataset") or {}).items()}
    built = build_from_checkpoint(cfg.ckpt_path, overrides)
    module = built.module.to(device)
    torch.manual_seed(cfg.seed)
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    loader = split_loader(built.datamodule, cfg.split)
    bpd = evaluate_bpd(module.ema.net, module.schedule, module.parameterization, loader, module.num_levels,
                       num_samples=int(cfg.bpd.num_samples), timesteps=cfg.bpd.timesteps, generator=generator,
                       device=device, seed=int(cfg.seed))
    metrics = {f"{cfg.split}/{k}": float(v) for k, v in bpd.items()}
    if cfg.get("fid"):
        fid = evaluate_fid(module, built.datamodule, cfg.split, cfg.fid, device)
        metrics.update({f"{cfg.split}/{k}": float(v) for k, v in fid.items()})
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps({"ckpt_path": str(cfg.ckpt_path), **metrics}, indent=2))
    loggers = instantiate_all(cfg.get("logger"))
    try:
        for logger in loggers:
            logger.log_metrics(metrics, step=0)
    finally:
        finish_loggers(loggers)
    log.info("Evaluated %s on the %s split (%s)\n%s\nmetrics written to %s", cfg.ckpt_path, cfg.split, device,
             format_table(metrics), out / "metrics.json")
    return metrics
