"""``python eval.py ckpt_path=...``: bits/dim (full ELBO and/or the probability-flow ODE), FID, KID,
precision/recall and the class histogram of a checkpoint's EMA weights on a split."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from vdmlab.checks import check_float
from vdmlab.cli.autoguidance import attach_guide
from vdmlab.cli.build import build_from_checkpoint
from vdmlab.cli.common import format_table, pick_device
from vdmlab.cli.diagnostics import run_diagnostics
from vdmlab.cli.posthoc_ema import apply_posthoc_ema
from vdmlab.cli.train import instantiate_all
from vdmlab.data.base import UniqueIndexDataset
from vdmlab.fid_evaluation import compute_fid
from vdmlab.loggers import capture_warnings, finish_loggers
from vdmlab.metrics.bpd import evaluate_bpd
from vdmlab.metrics.fid import FIDMetric, build_extractor, fid_feature, split_fid
from vdmlab.metrics.ode_bpd import evaluate_ode_bpd
from vdmlab.metrics.sample_metrics import RecordingExtractor, sample_metrics

SPLITS = ("train", "val", "test")
LIKELIHOODS = ("elbo", "ode")
log = logging.getLogger("vdmlab")


def split_loader(datamodule, split: str) -> DataLoader:
    """An unshuffled loader of ``(index, x)`` over one split, ``(index, x, y)`` for a conditional datamodule."""
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is invalid: choose one of {', '.join(SPLITS)}")
    datamodule.setup()
    return DataLoader(UniqueIndexDataset(datamodule.split_dataset(split)), batch_size=datamodule.eval_batch_size,
                      shuffle=False)


def evaluate_fid(module, datamodule, split: str, cfg: DictConfig, device: torch.device) -> dict[str, float]:
    """FID of ``cfg.num_samples`` EMA samples against every image of the split over ``cfg.repeats`` sample seeds,
    the real-vs-real floor (cached under ``cfg.stats_dir``), and KID, precision/recall (and the digits' class
    histogram) of the first repeat's samples from the same features."""
    feature = fid_feature(cfg.feature, module.data_shape, module.num_levels)
    # keeps (a capped random subset of) the features for KID & co.
    recorder = RecordingExtractor(build_extractor(feature, cfg.inception_path), limit=cfg.get("metrics_subset"))
    metric = FIDMetric(recorder, reset_real_features=False).to(device)
    # KID and precision/recall need the real features themselves, not the cached sums: extract them (one pass)
    metric.update_from_dataset(getattr(datamodule, f"{split}_set"), real=True, batch_size=int(cfg.batch_size))
    real, fake = recorder.take(), []

    def fake_fid(repeat: int) -> dict[str, float]:
        values = compute_fid(module, metric, int(cfg.num_samples), int(cfg.steps), int(cfg.batch_size), repeat=repeat,
                             folder=cfg.get("samples_dir"))  # with a folder: batches written as made, reused on a rerun
        if cfg.get("samples_dir"):
            log.info("FID samples of repeat %d: %d batches reused from %s", repeat, values.pop("fid_batches_loaded"),
                     cfg.samples_dir)
        fake.append(recorder.take())  # this repeat's sample features
        return values

    start = time.time()
    values = split_fid(metric, datamodule, split, fake_fid, cfg.stats_dir, int(cfg.repeats), bool(cfg.floor),
                       int(cfg.batch_size), int(module.seed))
    seconds = time.time() - start
    recorder.take()  # the floor's train images
    extra = sample_metrics(real, fake[0], recorder.extractor, k=int(cfg.pr_k), kid_blocks=int(cfg.kid_blocks), seed=0)
    return {**values, "fid_seconds": seconds, **extra}


def likelihood_choice(cfg: DictConfig) -> tuple[str, ...]:
    """The NLLs asked for by ``likelihood=[elbo,ode]``, checked."""
    chosen = cfg.get("likelihood", ["elbo"])
    chosen = (chosen,) if isinstance(chosen, str) else tuple(chosen or ())
    unknown = [c for c in chosen if c not in LIKELIHOODS]
    if unknown:
        raise ValueError(f"likelihood={list(chosen)} names {unknown}: choose from {list(LIKELIHOODS)}, "
                         f"e.g. likelihood=[elbo,ode]")
    return chosen


def evaluate_ode(module, dataset, cfg: DictConfig, batch_size: int, device: torch.device, seed: int) -> dict:
    """ODE bits/dim bounds (and their time) on the first ``cfg.num_examples`` examples of ``dataset``."""
    if cfg.num_examples is not None:
        dataset = torch.utils.data.Subset(dataset, range(min(int(cfg.num_examples), len(dataset))))
    loader = DataLoader(UniqueIndexDataset(dataset), batch_size=int(cfg.batch_size or batch_size), shuffle=False)
    result = evaluate_ode_bpd(module.ema.net, module.schedule, module.parameterization, loader, module.num_levels,
                              solver=instantiate(cfg.solver), divergence=instantiate(cfg.divergence),
                              dequantization=instantiate(cfg.dequantization), num_draws=int(cfg.num_draws),
                              device=device, seed=seed)
    result["ode_n"] = result.pop("n")
    result["ode_seconds"] = result.pop("seconds")
    return result


def run(cfg: DictConfig) -> dict[str, float]:
    """Evaluate one checkpoint; logs a table (console and eval.log), writes metrics.json into the run dir and
    sends the metrics to the loggers."""
    capture_warnings()
    device = pick_device(cfg.device)
    overrides = {f"dataset.{k}": v for k, v in (cfg.get("dataset") or {}).items()}
    built = build_from_checkpoint(cfg.ckpt_path, overrides)
    module = built.module.to(device)
    if (cfg.get("sampler") or {}).get("guidance") is not None:  # the FID samples' guidance weight
        module.sampler.guidance = check_float("sampler.guidance", cfg.sampler.guidance)
    metrics = {**apply_posthoc_ema(module, cfg.ckpt_path, cfg.get("ema")),
               **attach_guide(module, cfg.get("guide_ckpt"), device, cfg.get("guide_ema"))}
    torch.manual_seed(cfg.seed)
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    loader = split_loader(built.datamodule, cfg.split)
    likelihoods = likelihood_choice(cfg)
    if "elbo" in likelihoods:
        bpd = evaluate_bpd(module.elbo_model(num_samples=int(cfg.bpd.num_samples), timesteps=cfg.bpd.timesteps), loader,
                           generator=generator, device=device, seed=int(cfg.seed), num_classes=module.num_classes)
        metrics.update({f"{cfg.split}/{k}": float(v) for k, v in bpd.items()})  # with bpd_uncond, bpd_mixture
    if "ode" in likelihoods:  # of p(x|y) with the true labels for a conditional model
        ode = evaluate_ode(module, loader.dataset.dataset, cfg.ode, loader.batch_size, device, int(cfg.seed))
        metrics.update({f"{cfg.split}/{k}": float(v) for k, v in ode.items()})
    if cfg.get("fid"):
        fid = evaluate_fid(module, built.datamodule, cfg.split, cfg.fid, device)
        metrics.update({f"{cfg.split}/{k}": float(v) for k, v in fid.items()})
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    diagnostics = run_diagnostics(module, built.datamodule, loader, cfg, device, out)  # profile over λ, copying
    metrics.update(diagnostics.metrics)
    record = {"ckpt_path": str(cfg.ckpt_path), "guide_ckpt": cfg.get("guide_ckpt"), **metrics}
    (out / "metrics.json").write_text(json.dumps(record, indent=2))
    loggers = instantiate_all(cfg.get("logger"))
    try:
        for logger in loggers:
            logger.log_metrics(metrics, step=0)
        diagnostics.log(loggers, cfg.split)
    finally:
        finish_loggers(loggers)
    log.info("Evaluated %s on the %s split (%s)\n%s\n%smetrics written to %s", cfg.ckpt_path, cfg.split, device,
             format_table(metrics), diagnostics.text, out / "metrics.json")
    return metrics
