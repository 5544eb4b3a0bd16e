"""``python eval.py ckpt_path=...``: bits/dim (full ELBO) and FID of a checkpoint's EMA weights on a split."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from vdmlab.cli.build import build_from_checkpoint
from vdmlab.cli.common import format_table, pick_device
from vdmlab.cli.train import finish_loggers, instantiate_all
from vdmlab.data.base import UniqueIndexDataset
from vdmlab.metrics.bpd import evaluate_bpd
from vdmlab.metrics.fid import FIDMetric, fid_feature

SPLITS = ("train", "val", "test")


def split_loader(datamodule, split: str) -> DataLoader:
    """An unshuffled loader of ``(index, x)`` over one split, ``(index, x, y)`` for a conditional datamodule."""
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is invalid: choose one of {', '.join(SPLITS)}")
    datamodule.setup()
    return DataLoader(UniqueIndexDataset(datamodule.split_dataset(split)), batch_size=datamodule.eval_batch_size,
                      shuffle=False)


def evaluate_fid(module, dataset, cfg: DictConfig, device: torch.device) -> dict[str, float]:
    """FID of ``cfg.num_samples`` EMA samples against every image of ``dataset``."""
    feature = fid_feature(cfg.feature, module.data_shape, module.num_levels)
    metric = FIDMetric(feature, cfg.inception_path, reset_real_features=False).to(device)
    metric.update_from_dataset(dataset, real=True, batch_size=int(cfg.batch_size))
    start = time.time()
    values = module.compute_fid(metric, int(cfg.num_samples), int(cfg.steps), int(cfg.batch_size))
    extra = {"class_acc": values["class_acc"]} if "class_acc" in values else {}
    return {"fid": values["fid"], "fid_n": values["fid_n"], "fid_n_real": values["fid_n_real"], **extra,
            "fid_seconds": time.time() - start}


def run(cfg: DictConfig) -> dict[str, float]:
    """Evaluate one checkpoint; prints a table, writes metrics.json into the run dir and logs to the loggers."""
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
    if module.num_classes is not None:  # p(x) of the same conditional model, with the null label (same noise)
        uncond = evaluate_bpd(module.ema.net, module.schedule, module.parameterization, loader, module.num_levels,
                              num_samples=int(cfg.bpd.num_samples), timesteps=cfg.bpd.timesteps,
                              generator=torch.Generator(device=device).manual_seed(cfg.seed), device=device,
                              seed=int(cfg.seed), null_class=module.num_classes)
        metrics.update({f"{cfg.split}/bpd_uncond": uncond["bpd"], f"{cfg.split}/bpd_uncond_se": uncond["bpd_se"]})
    if cfg.get("fid"):
        fid = evaluate_fid(module, getattr(built.datamodule, f"{cfg.split}_set"), cfg.fid, device)
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
    print(f"\nEvaluated {cfg.ckpt_path} on the {cfg.split} split ({device})\n{format_table(metrics)}\n"
          f"metrics written to {out / 'metrics.json'}", flush=True)
    return metrics
