"""Finding and safely loading checkpoints, with errors that say what is wrong and what to do."""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Any

import torch
from hydra.errors import CompactHydraException
from omegaconf import DictConfig


class CheckpointError(CompactHydraException, ValueError):
    """A checkpoint is missing, unreadable, or not a vdmlab checkpoint (python train.py prints its message alone,
    without a traceback; HYDRA_FULL_ERROR=1 shows it)."""


def find_last_checkpoints(log_dir: str | Path, task_name: str) -> list[Path]:
    """Every ``last.ckpt`` under ``<log_dir>/<task_name>/``, runs and multiruns alike, newest first."""
    pattern = os.path.join(str(log_dir), task_name, "**", "checkpoints", "last.ckpt")
    found = [Path(p) for p in glob.glob(pattern, recursive=True)]
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def explicit_run_dir() -> Path | None:
    """The run folder given on the command line as ``hydra.run.dir=...`` (a single run), else None."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    hydra = HydraConfig.get()
    if any(o.split("=", 1)[0].lstrip("+~") == "hydra.run.dir" for o in hydra.overrides.hydra):
        return Path(hydra.runtime.output_dir)
    return None


def resolve_ckpt_path(cfg: DictConfig) -> str | None:
    """``ckpt_path``: null (fresh run), an existing file, or "last": the ``last.ckpt`` of THIS run, i.e. of the
    folder ``resume_dir=`` (or ``hydra.run.dir=``) names, or the only run of this task that has one."""
    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path in (None, ""):
        return None
    if ckpt_path == "last":
        folder = cfg.get("resume_dir") or explicit_run_dir()
        if folder:
            path = Path(str(folder)).expanduser() / "checkpoints" / "last.ckpt"
            if not path.is_file():
                raise CheckpointError(f"ckpt_path=last: no {path}; give the folder of the run to resume "
                                      f"(resume_dir=<run folder>) or a checkpoint (ckpt_path=/path/to/last.ckpt)")
            load_checkpoint(path)
            return str(path)
        found = find_last_checkpoints(cfg.paths.log_dir, cfg.task_name)
        if not found:
            raise CheckpointError(
                f"ckpt_path=last: no last.ckpt under {cfg.paths.log_dir}/{cfg.task_name}/; "
                f"train once without ckpt_path, or give the checkpoint's path: ckpt_path=/path/to/last.ckpt"
            )
        if len(found) > 1:
            listed = "\n".join(f"  resume_dir={p.parent.parent}" for p in found)
            raise CheckpointError(
                f"ckpt_path=last: {len(found)} runs under {cfg.paths.log_dir}/{cfg.task_name}/ have a last.ckpt; "
                f"say which run to resume (newest first):\n{listed}")
        load_checkpoint(found[0])
        return str(found[0])
    path = Path(str(ckpt_path)).expanduser()
    if not path.is_file():
        raise CheckpointError(f"ckpt_path={ckpt_path}: no such file; give an existing .ckpt or ckpt_path=last")
    load_checkpoint(path)  # fail early, before any data is read, if it is corrupt or foreign
    return str(path)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a vdmlab checkpoint with ``weights_only=True``; corrupt or foreign files get a clear error."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unpickling failure means the same thing to the user
        raise CheckpointError(
            f"checkpoint {path} could not be read ({type(error).__name__}: {str(error)[:200]}); the file is corrupt "
            f"or truncated (e.g. a run killed while saving): use another checkpoint, e.g. the best one in the "
            f"same checkpoints/ folder"
        ) from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint or "vdmlab" not in checkpoint:
        raise CheckpointError(
            f"checkpoint {path} is not a vdmlab checkpoint (no 'state_dict'/'vdmlab' entries); "
            f"give a .ckpt written by python train.py"
        )
    return checkpoint


#: config prefixes whose change alters the model or the objective: refused on resume (resume_check=false overrides)
MODEL_KEYS = ("model.", "parameterization.", "weighting.", "schedule.", "diffusion.", "dataset.", "module.timesteps",
              "module.p_uncond", "module.time_sampler.")
#: keys under those prefixes that only say where or how fast data is read, not what is learned
DATA_ACCESS_KEYS = ("dataset.root", "dataset.download", "dataset.num_workers", "dataset.eval_batch_size",
                    "dataset.batch_size", "dataset.on_device", "dataset.pin_memory", "dataset.persistent_workers",
                    "dataset.cache_dir")


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a.b": value}`` for every leaf of nested dicts (lists are leaves)."""
    if not isinstance(tree, dict):
        return {prefix.rstrip("."): tree}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        flat.update(flatten(value, f"{prefix}{key}."))
    return flat


def current_spelling(stored: dict) -> dict:
    """A stored config with options that earlier versions spelled differently rewritten to today's spelling of the
    same thing, so that resuming an older run is not refused for a change of spelling: the time sampler stored as a
    Hydra partial of a function (``{_target_: f, _partial_: true}``) is today ``hydra.utils.get_method`` of ``f``,
    and a UNet stored before augmentation labels existed had none (``model.augment_dim: 0``)."""
    stored = dict(stored)
    sampler = (stored.get("module") or {}).get("time_sampler")
    if isinstance(sampler, dict) and set(sampler) == {"_target_", "_partial_"} and sampler["_partial_"] is True:
        time_sampler = {"_target_": "hydra.utils.get_method", "path": sampler["_target_"]}
        stored["module"] = {**stored["module"], "time_sampler": time_sampler}
    model = stored.get("model")
    if isinstance(model, dict) and str(model.get("_target_", "")).endswith(".UNet") and "augment_dim" not in model:
        stored["model"] = {**model, "augment_dim": 0}
    return stored


def config_differences(stored: dict, requested: dict) -> tuple[list[str], list[str]]:
    """``(refused, allowed)``: the ``key: stored -> requested`` lines of the options that differ, split into those
    that change the model or the objective (:data:`MODEL_KEYS`) and the harmless rest (epochs, loggers, FID ...).
    A key absent on one side counts as null there; the stored side is read in today's spelling (:func:`current_spelling`)."""
    a, b = flatten(current_spelling(stored)), flatten(requested)
    refused, allowed = [], []
    for key in sorted(set(a) | set(b)):
        old, new = a.get(key), b.get(key)
        if old == new or key in ("ckpt_path", "resume_dir", "resume_check") or key.startswith(("paths.", "hydra.")):
            continue
        line = f"{key}: {old!r} -> {new!r}"
        guarded = key.startswith(MODEL_KEYS) and not key.startswith(DATA_ACCESS_KEYS)
        (refused if guarded else allowed).append(line)
    return refused, allowed


def check_resume_config(path: str | Path, stored: dict | None, requested: dict, enforce: bool = True) -> list[str]:
    """Refuse to resume ``path`` with options that change the model or the objective (a :class:`CheckpointError`
    listing them and the deliberate override ``resume_check=false``); return the harmless differences."""
    if not stored:
        return []
    refused, allowed = config_differences(stored, requested)
    if refused and enforce:
        raise CheckpointError(
            f"resuming {path} with options that change the model or the objective it was trained with:\n"
            + "\n".join(f"  {line}" for line in refused)
            + "\nresume with the checkpoint's own values (drop these overrides), start a new run without ckpt_path, "
            "or, deliberately, fine-tune it under the new options with resume_check=false"
        )
    return refused + allowed if not enforce else allowed
