"""Start-up validation of a composed config: every message names the key, the bad value and what is allowed.

Runs before any data is read. Unknown group options are already rejected by Hydra with the list of options.
"""

from __future__ import annotations

import math
from pathlib import Path

from omegaconf import DictConfig


class ConfigError(ValueError):
    """One or more config values are invalid."""


def _number(value) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _check_positive(errors: list[str], cfg: DictConfig, group: str, keys: tuple[str, ...], minimum: int = 1) -> None:
    node = cfg.get(group) or {}
    for key in keys:
        if key in node and node[key] is not None and not (_number(node[key]) is not None and node[key] >= minimum):
            errors.append(f"{group}.{key}={node[key]!r} is invalid: it must be an integer >= {minimum}")


def validate_config(cfg: DictConfig) -> None:
    """Raise ConfigError listing every invalid value of ``cfg``."""
    errors: list[str] = []
    schedule = cfg.get("schedule") or {}
    lo, hi = _number(schedule.get("logsnr_min")), _number(schedule.get("logsnr_max"))
    if lo is None or hi is None or not (math.isfinite(lo) and math.isfinite(hi)) or lo >= hi:
        errors.append(
            f"schedule.logsnr_min={schedule.get('logsnr_min')!r} and schedule.logsnr_max={schedule.get('logsnr_max')!r} "
            f"are invalid: they must be finite with logsnr_min < logsnr_max (set diffusion.logsnr_min/logsnr_max)"
        )
    _check_positive(errors, cfg, "model", ("width", "hidden", "emb_dim"), 1)
    _check_positive(errors, cfg, "model", ("num_res_blocks", "depth"), 0)
    weighting = cfg.get("weighting") or {}
    for key in ("bias", "gamma", "mean", "std", "sigma_data"):
        if key in weighting and not (_number(weighting[key]) is not None and math.isfinite(float(weighting[key]))):
            errors.append(f"weighting.{key}={weighting[key]!r} is invalid: it must be a finite number")
    for key in ("gamma", "std", "sigma_data"):
        if key in weighting and (_number(weighting[key]) or 0.0) <= 0:
            errors.append(f"weighting.{key}={weighting[key]!r} is invalid: it must be > 0")
    _check_positive(errors, cfg, "sampler", ("steps",), 1)
    _check_positive(errors, cfg, "dataset", ("batch_size",), 1)
    timesteps = cfg.get("module", {}).get("timesteps")
    if timesteps is not None and not (_number(timesteps) is not None and timesteps >= 1):
        errors.append(f"module.timesteps={timesteps!r} is invalid: null (continuous time) or an integer >= 1")
    p_uncond = (cfg.get("module") or {}).get("p_uncond", 0.0)
    if not (_number(p_uncond) is not None and 0.0 <= float(p_uncond) < 1.0):
        errors.append(f"module.p_uncond={p_uncond!r} is invalid: the label dropout must lie in [0, 1), e.g. 0.1")
    guidance = (cfg.get("sampler") or {}).get("guidance", 0.0)
    if not (_number(guidance) is not None and math.isfinite(float(guidance))):
        errors.append(f"sampler.guidance={guidance!r} is invalid: a finite number (0: no guidance)")
    dataset = cfg.get("dataset") or {}
    root = dataset.get("root")
    if "root" in dataset and not dataset.get("download", False):
        if root is None or not Path(str(root)).is_dir():
            errors.append(
                f"dataset.root={root!r} is not an existing folder: point dataset.root at the folder that holds the data"
            )
    if errors:
        raise ConfigError("invalid configuration:\n  - " + "\n  - ".join(errors))
