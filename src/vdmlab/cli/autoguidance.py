"""``guide_ckpt=<a weaker checkpoint> sampler.guidance=w`` of eval.py and sample.py: autoguidance (Karras et al. 2024,
"Guiding a diffusion model with a bad version of itself"), ε̂ = ε̂_main + w·(ε̂_main − ε̂_guide).

The guide is any vdmlab checkpoint of the same data (an earlier checkpoint of the same run, a smaller network, another
parameterization or schedule: the denoisers are conditioned on λ and combined through ε and x̂, Table 4.2), sampled
with its EMA weights, or with the post-hoc EMA that ``guide_ema.sigma_rel`` asks for.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from omegaconf import DictConfig

from vdmlab.cli.build import build_from_checkpoint
from vdmlab.cli.posthoc_ema import apply_posthoc_ema

log = logging.getLogger("vdmlab")


def check_guide(main, guide, guide_ckpt: str | Path) -> None:
    """The guide must model the same data as the main model: data shape, levels K and classes."""
    for name in ("data_shape", "num_levels", "num_classes"):
        if getattr(main, name) != getattr(guide, name):
            raise ValueError(
                f"guide_ckpt={guide_ckpt} has {name} {getattr(guide, name)} but the checkpoint sampled has "
                f"{getattr(main, name)}: the guide must be trained on the same data (same dataset, image size, "
                f"levels and dataset.conditional), e.g. an earlier checkpoint of the same run"
            )


def attach_guide(module, guide_ckpt: str | None, device: torch.device, guide_ema: DictConfig | None = None) -> dict:
    """Set ``module.guide`` to the denoiser of ``guide_ckpt`` (nothing when it is null); returns the guide's post-hoc
    EMA summary (``guide_ema/*``; empty without ``guide_ema.*``)."""
    if not guide_ckpt:
        return {}
    guide = build_from_checkpoint(str(guide_ckpt)).module.to(device)
    check_guide(module, guide, guide_ckpt)
    summary = apply_posthoc_ema(guide, guide_ckpt, guide_ema, prefix="guide_ema/")
    module.guide = lambda labels: guide.parameterization.denoiser(guide.ema.net, cond=labels)
    log.info("autoguidance with %s (w = sampler.guidance = %s)", guide_ckpt, getattr(module.sampler, "guidance", None))
    return summary
