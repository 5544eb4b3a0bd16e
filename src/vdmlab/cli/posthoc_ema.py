"""``ema.sigma_rel=<σ_rel>`` (or ``ema.length=<steps>``) of eval.py and sample.py: replace a checkpoint's EMA weights
by the post-hoc EMA of that length, reconstructed from the run's power-function EMA snapshots (EDM2 App. C.3)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from vdmlab.checks import ParameterError
from vdmlab.cli.checkpoints import CheckpointError, load_checkpoint
from vdmlab.posthoc_ema import SIGMA_REL_MAX, combine_state_dicts, gamma_from_sigma_rel, solve_coefficients

log = logging.getLogger("vdmlab")
STATE_KEY = "PostHocEMA"  # the callback's state in a checkpoint (vdmlab.callbacks.posthoc_ema.PostHocEMA)


def snapshot_dirs(checkpoint: dict, ckpt_path: str | Path, given: str | None) -> list[Path]:
    """Where the run's snapshots are: ``ema.snapshots`` when given, else the folders the checkpoint's callback state
    lists (every folder of a resumed run) and the run folder's ``posthoc_ema/`` next to ``checkpoints/``."""
    if given:
        return [Path(given)]
    state = checkpoint.get("callbacks", {}).get(STATE_KEY, {})
    dirs = [Path(d) for d in state.get("snapshot_dirs", [])]
    return [*dirs, Path(ckpt_path).resolve().parent.parent / "posthoc_ema"]


def load_snapshots(dirs: list[Path], max_step: int) -> list[dict[str, Any]]:
    """Every snapshot of steps ≤ ``max_step`` in ``dirs``, one per step (the last folder listed wins), by step."""
    by_step: dict[int, Path] = {}
    for folder in dirs:
        for path in sorted(folder.glob("step*.pt")) if folder.is_dir() else []:
            step = int(path.stem[4:])
            if step <= max_step:
                by_step[step] = path
    return [torch.load(by_step[s], map_location="cpu", weights_only=True) for s in sorted(by_step)]


def target_sigma_rel(ema: DictConfig, step: int) -> float:
    """σ_rel asked for: ``ema.sigma_rel``, or ``ema.length`` (the profile's standard deviation in optimizer steps)
    divided by the step reconstructed."""
    sigma_rel, length = ema.get("sigma_rel"), ema.get("length")
    if sigma_rel is not None and length is not None:
        raise ParameterError(("ema.sigma_rel", "ema.length"), (sigma_rel, length), "give one of them")
    if length is not None:
        sigma_rel = float(length) / step
    if not 0 < float(sigma_rel) < SIGMA_REL_MAX:
        raise ParameterError("ema.length" if length is not None else "ema.sigma_rel", length or sigma_rel,
                             f"σ_rel must lie in (0, {SIGMA_REL_MAX:.4f}) (EDM2: 0.01 ... 0.25); ema.length is "
                             f"σ_rel times the step reconstructed ({step})")
    return float(sigma_rel)


def posthoc_ema_weights(ckpt_path: str | Path, ema: DictConfig) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """The denoiser's weights of the post-hoc EMA that ``ema`` asks for, at the checkpoint's step (or the last
    snapshot before it), and a summary for metrics.json: σ_rel, its γ, the step and the snapshots used."""
    checkpoint = load_checkpoint(ckpt_path)
    step = int(ema.get("step") or checkpoint.get("global_step", 0))
    dirs = snapshot_dirs(checkpoint, ckpt_path, ema.get("snapshots"))
    snapshots = load_snapshots(dirs, step)
    if not snapshots:
        raise CheckpointError(
            f"ema.sigma_rel/ema.length: no post-hoc EMA snapshots up to step {step} in {', '.join(map(str, dirs))}; "
            f"train with the posthoc_ema callback (conf/callbacks/default.yaml), point ema.snapshots= at the run's "
            f"posthoc_ema/ folder, or drop ema.* to use the checkpoint's own EMA"
        )
    if snapshots[-1]["step"] != step:
        log.warning("post-hoc EMA: no snapshot at step %d, reconstructing at the last one, step %d", step,
                    snapshots[-1]["step"])
    step = snapshots[-1]["step"]
    sigma_rel = target_sigma_rel(ema, step)
    gamma = float(gamma_from_sigma_rel(sigma_rel))
    t_in = np.array([s["step"] for s in snapshots for _ in s["gammas"]], dtype=np.float64)
    gamma_in = np.array([g for s in snapshots for g in s["gammas"]])
    coefficients = solve_coefficients(t_in, gamma_in, step, gamma)
    weights = combine_state_dicts([net for s in snapshots for net in s["nets"]], coefficients)
    return weights, {"sigma_rel": sigma_rel, "gamma": gamma, "step": step, "snapshots": len(snapshots)}


def apply_posthoc_ema(module, ckpt_path: str | Path, ema: DictConfig | None, prefix: str = "ema/") -> dict[str, float]:
    """Load the post-hoc EMA weights into ``module.ema.net`` when ``ema.sigma_rel`` or ``ema.length`` is set;
    returns the summary with its keys prefixed (empty when neither is set: the checkpoint's own EMA stays)."""
    if not ema or (ema.get("sigma_rel") is None and ema.get("length") is None):
        return {}
    weights, summary = posthoc_ema_weights(ckpt_path, ema)
    module.ema.net.load_state_dict(weights)
    log.info("post-hoc EMA of %s: sigma_rel %.4f (gamma %.2f) at step %d from %d snapshots", ckpt_path,
             summary["sigma_rel"], summary["gamma"], summary["step"], summary["snapshots"])
    return {f"{prefix}{k}": v for k, v in summary.items()}
