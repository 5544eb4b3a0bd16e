"""On-disk caches (decoded image folders, FID statistics): atomic writes, and bad files moved aside, never deleted."""

from __future__ import annotations

import errno
import hashlib
import io
import os
import shutil
import warnings
from pathlib import Path

import torch
from hydra.errors import CompactHydraException


class DiskFullError(CompactHydraException, OSError):
    """A write did not fit on its filesystem; the previous file (if any) is untouched (python train.py prints the
    message alone)."""


def atomic_write_bytes(data: bytes, path: str | os.PathLike) -> None:
    """Write ``data`` to ``path`` atomically on any local filesystem: a temporary file in the target's own folder
    (so the rename never crosses filesystems), flushed and fsynced, then renamed over the target and the folder
    fsynced. A crash or a full disk leaves either the old file or the new one, never a truncated one; a full disk
    raises :class:`DiskFullError` naming the folder and the space needed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        with open(tmp, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except OSError as error:
        tmp.unlink(missing_ok=True)
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            free = shutil.disk_usage(path.parent).free
            kept = f"the previous {path.name} is untouched" if path.exists() else "nothing was written"
            raise DiskFullError(
                error.errno, f"no space left in {path.parent} to write {path.name}: it needs {len(data) / 2**20:.1f} "
                f"MiB, {free / 2**20:.1f} MiB are free; {kept}. Free some space there or write elsewhere "
                f"(paths.log_dir=...)") from None
        raise
    try:  # make the rename itself durable
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
    except OSError:  # some filesystems do not support fsync on folders
        pass


def checksum_path(path: Path) -> Path:
    """The SHA-256 file beside a cache file: ``<name>.sha256``."""
    return path.with_name(f"{path.name}.sha256")


def atomic_save(obj, path: Path) -> None:
    """``torch.save`` to memory, then :func:`atomic_write_bytes`, then its SHA-256 beside it (``<name>.sha256``):
    a crash leaves no half-written file, and :func:`load_checked` rebuilds a file whose bytes changed since."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    data = buffer.getvalue()
    checksum_path(Path(path)).unlink(missing_ok=True)  # never a stale checksum beside a new file
    atomic_write_bytes(data, path)
    atomic_write_bytes(hashlib.sha256(data).hexdigest().encode(), checksum_path(Path(path)))


def move_aside(path: Path, reason: str, what: str = "cache") -> Path:
    """Rename an unusable cache file to ``<name>.corrupt-<n>`` (the first free n), warn, and return the new path."""
    n = 0
    while (aside := path.with_name(f"{path.name}.corrupt-{n}")).exists():
        n += 1
    path.replace(aside)
    warnings.warn(f"{what} {path} is unusable ({reason}); moved it to {aside} and rebuilding it", stacklevel=3)
    return aside


def load_checked(path: Path, check, what: str = "cache") -> dict | None:
    """The dict stored at ``path`` if its SHA-256 matches ``<name>.sha256`` and ``check(obj)`` holds; None when
    absent; an unreadable, altered or mismatching file is moved aside with a warning (and None returned, so the
    caller rebuilds it)."""
    if not path.is_file():
        return None
    stored = checksum_path(path)
    if stored.is_file():  # caches written before checksums have none: their content checks still apply
        actual = hashlib.sha256(path.read_bytes()).hexdigest()
        if stored.read_text().strip() != actual:
            stored.unlink()
            move_aside(path, "its SHA-256 does not match the one stored when it was written", what)
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
