"""Sweeps that survive pre-emption, and jobs that share the machine's cores.

Re-running ``python train.py -m ...`` with the same overrides and ``hydra.sweep.dir=<the earlier sweep folder>``
continues that sweep: every job folder records its overrides (``job.json``) when it starts and its final metrics
(``metrics.json``) when it ends. A job whose folder has ``metrics.json`` is skipped (its stored val/bpd is returned
to the sweeper); a job with a ``checkpoints/last.ckpt`` but no ``metrics.json`` was interrupted and resumes from it
(exactly, in the same folder, W&B run and CSV log); the others start fresh. A folder that holds a different job
(other overrides under the same job number) is an error, never overwritten.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, open_dict

from vdmlab.cli.validate import ConfigError

log = logging.getLogger("vdmlab")

JOB_FILE = "job.json"  # the overrides of the job that owns the folder, written when it starts
DONE_FILE = "metrics.json"  # the final metrics, written when the job has finished


def _hydra() -> Any | None:
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get() if HydraConfig.initialized() else None


def multirun_overrides() -> list[str] | None:
    """This job's task overrides inside a multirun (``python train.py -m``), else None."""
    from hydra.types import RunMode

    hydra = _hydra()
    if hydra is None or hydra.get("mode") != RunMode.MULTIRUN:
        return None
    return list(hydra.overrides.task)


def previous_job(cfg: DictConfig) -> tuple[str, Any] | None:
    """What an earlier run of this sweep left in this job's folder: ``("done", metrics)``, ``("resume", ckpt)`` or
    None (nothing: start fresh). Only inside a multirun and without an explicit ``ckpt_path``."""
    overrides = multirun_overrides()
    if overrides is None or cfg.get("ckpt_path"):
        return None
    folder = Path(cfg.paths.output_dir)
    record = folder / JOB_FILE
    if record.is_file():
        stored = json.loads(record.read_text()).get("overrides")
        if stored != overrides:
            raise ConfigError(
                f"{folder} holds a job of an earlier sweep with the overrides {stored}, not {overrides}: to continue "
                f"that sweep re-run it with the same command line; for a different sweep give a new hydra.sweep.dir"
            )
    if (folder / DONE_FILE).is_file():
        return "done", json.loads((folder / DONE_FILE).read_text())
    last = folder / "checkpoints" / "last.ckpt"
    return ("resume", str(last)) if last.is_file() else None


def continue_previous_job(cfg: DictConfig) -> dict[str, float] | None:
    """Apply :func:`previous_job`: the stored metrics of a finished job (to skip it), or None after pointing
    ``ckpt_path`` at an interrupted job's last checkpoint (or for a fresh job)."""
    found = previous_job(cfg)
    if found is None:
        return None
    state, value = found
    if state == "done":
        log.info("%s finished in an earlier run of this sweep (%s): skipped", cfg.paths.output_dir, DONE_FILE)
        return value
    log.info("%s was interrupted in an earlier run of this sweep: resuming from %s", cfg.paths.output_dir, value)
    with open_dict(cfg):
        cfg.ckpt_path = value
    return None


def _write_json(path: Path, content: dict) -> None:
    """Write ``content`` as JSON atomically (a temporary file renamed over the target)."""
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(json.dumps(content, indent=2))
    os.replace(tmp, path)


def record_job_start(cfg: DictConfig) -> None:
    """``job.json``: this job's overrides, so a later re-run of the sweep knows whose folder this is."""
    overrides = multirun_overrides()
    if overrides is not None:
        folder = Path(cfg.paths.output_dir)
        folder.mkdir(parents=True, exist_ok=True)
        _write_json(folder / JOB_FILE, {"overrides": overrides})


def record_job_end(cfg: DictConfig, metrics: dict[str, float]) -> None:
    """``metrics.json``: the final metrics; its presence marks the job finished."""
    _write_json(Path(cfg.paths.output_dir) / DONE_FILE, {k: float(v) for k, v in metrics.items()})


def set_threads(threads: int | str | None) -> None:
    """torch threads for this process: an int, or ``auto`` — cores / n_jobs under a parallel launcher (joblib),
    so that parallel jobs do not oversubscribe the cores, and torch's default otherwise."""
    if threads in (None, "auto"):
        hydra = _hydra()
        n_jobs = int(hydra.launcher.get("n_jobs") or 1) if hydra is not None and "launcher" in hydra else 1
        cores = os.cpu_count() or 1
        if n_jobs == 1:
            return
        threads = 1 if n_jobs < 0 else max(1, cores // n_jobs)
    elif not (isinstance(threads, int) and threads >= 1):
        raise ConfigError(f"threads={threads!r} is invalid: an integer >= 1 or auto")
    torch.set_num_threads(int(threads))
    os.environ["OMP_NUM_THREADS"] = str(threads)  # DataLoader workers and subprocesses inherit it
    log.info("torch threads: %d", threads)
