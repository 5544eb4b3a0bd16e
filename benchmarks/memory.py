"""Peak resident memory of a piece of work on Linux: the process's peak RSS (VmHWM) reset after the imports, so that
a measurement in a fresh process is the work's own and not the import-time peak."""

from __future__ import annotations

import multiprocessing as mp
import resource
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any


def current_rss_mib() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize() / 2**20


def reset_peak() -> float:
    """Reset the peak RSS to the current RSS (Linux ``clear_refs`` 5) and return the current RSS (MiB)."""
    Path("/proc/self/clear_refs").write_text("5")
    return current_rss_mib()


def peak_rss_mib() -> float:
    """Peak RSS (MiB) since the last :func:`reset_peak` (since the start without one)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**10  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10


def _child(queue, fn, args) -> None:
    try:
        queue.put(fn(*args))
    except Exception as err:  # reported in the row, the other rows still run
        print(f"{getattr(fn, '__name__', fn)}{args}: {type(err).__name__}: {err}", file=sys.stderr)
        queue.put({"error": f"{type(err).__name__}: {err}"})


def in_fresh_process(fn: Callable[..., Any], *args) -> Any:
    """``fn(*args)`` (a module-level function) in a spawned process; returns what it returns."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(queue, fn, args))
    proc.start()
    value = queue.get()
    proc.join()
    return value
