"""``python sample.py ckpt_path=... sampler=ddim sampler.steps=50``: a PNG grid and an .npz of EMA samples."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from vdmlab.callbacks.samples import save_samples
from vdmlab.cli.build import build_from_checkpoint, build_sampler
from vdmlab.cli.common import pick_device
from vdmlab.loggers import capture_warnings

log = logging.getLogger("vdmlab")


def run(cfg: DictConfig) -> Path:
    """Draw ``num_samples`` samples; returns the path of the .npz written into the run dir (and logs what it wrote
    to the console and sample.log)."""
    capture_warnings()
    if cfg.num_samples < 1 or cfg.batch_size < 1:
        raise ValueError(f"num_samples={cfg.num_samples} and batch_size={cfg.batch_size} must be >= 1")
    device = pick_device(cfg.device)
    built = build_from_checkpoint(cfg.ckpt_path)
    module = built.module.to(device)
    with open_dict(cfg):  # the sampling schedule's endpoints default to the checkpoint's
        for key in ("logsnr_min", "logsnr_max"):
            if cfg.diffusion[key] is None:
                cfg.diffusion[key] = getattr(module.schedule, key)
    sampler = build_sampler(cfg)
    schedule = instantiate(cfg.sampling_schedule) if cfg.get("sampling_schedule") else None
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    batches = []
    for start in range(0, cfg.num_samples, cfg.batch_size):
        n = min(cfg.batch_size, cfg.num_samples - start)
        batches.append(module.sample(n, steps=sampler["steps"], sampler=sampler["fn"], clip_x=sampler["clip_x"],
                                     schedule=schedule or sampler["schedule"], generator=generator).cpu())
    x = torch.cat(batches)
    out = Path(cfg.paths.output_dir)
    grid = save_samples(x[: min(len(x), 256)], out / "samples.png")
    npz = out / "samples.npz"
    np.savez_compressed(npz, x=x.numpy(), ckpt_path=str(cfg.ckpt_path),
                        sampler=OmegaConf.to_yaml(cfg.sampler), seed=cfg.seed)
    log.info("%d samples from %s\n  grid: %s\n  array: %s (x in [-1, 1], shape %s)", len(x), cfg.ckpt_path, grid, npz,
             tuple(x.shape))
    return npz
