"""Finding and safely loading checkpoints, with errors that say what is wrong and what to do."""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, or not a vdmlab checkpoint."""


def find_last_checkpoint(log_dir: str | Path, task_name: str) -> Path | None:
    """The newest ``last.ckpt`` under ``<log_dir>/<task_name>/``, runs and multiruns alike."""
    pattern = os.path.join(str(log_dir), task_name, "**", "checkpoints", "last.ckpt")
    found = [Path(p) for p in glob.glob(pattern, recursive=True)]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def resolve_ckpt_path(cfg: DictConfig) -> str | None:
    """``ckpt_path``: null (fresh run), "last" (newest last.ckpt of this task) or an existing file."""
    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path in (None, ""):
        return None
    if ckpt_path == "last":
        found = find_last_checkpoint(cfg.paths.log_dir, cfg.task_name)
        if found is None:
            raise CheckpointError(
                f"ckpt_path=last: no last.ckpt under {cfg.paths.log_dir}/{cfg.task_name}/; "
                f"train once without ckpt_path, or give the checkpoint's path: ckpt_path=/path/to/last.ckpt"
            )
        return str(found)
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
