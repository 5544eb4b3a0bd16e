"""On-disk caches (decoded image folders, FID statistics): atomic writes, and bad files moved aside, never deleted."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch


def atomic_save(obj, path: Path) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename: a crash leaves no half-written cache."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    torch.save(obj, tmp)
    tmp.replace(path)


def move_aside(path: Path, reason: str, what: str = "cache") -> Path:
    """Rename an unusable cache file to ``<name>.corrupt-<n>`` (the first free n), warn, and return the new path."""
    n = 0
    while (aside := path.with_name(f"{path.name}.corrupt-{n}")).exists():
        n += 1
    path.replace(aside)
    warnings.warn(f"{what} {path} is unusable ({reason}); moved it to {aside} and rebuilding it", stacklevel=3)
    return aside


def load_checked(path: Path, check, what: str = "cache") -> dict | None:
    """The dict stored at ``path`` if ``check(obj)`` holds; None when absent; an unreadable or mismatching file is
    moved aside with a warning (and None returned, so the caller rebuilds it)."""
    if not path.is_file():
        return None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling errors, truncated files: all mean "rebuild"
        first_line = (str(err).strip().splitlines() or [""])[0][:200]
        move_aside(path, f"{type(err).__name__}: {first_line}", what)
        return None
    problem = check(obj)
    if problem:
        move_aside(path, problem, what)
        return None
    return obj
