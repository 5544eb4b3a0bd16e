"""A progress bar with ETA for the evaluation loops (FID features and samples, bits/dim)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from vdmlab.distributed import rank_and_world


def progress(iterable: Iterable, total: int | None = None, desc: str = "", unit: str = "batch") -> Iterator:
    """``iterable`` with a tqdm bar (count, rate, ETA) on rank 0 when stderr is a terminal; silent elsewhere."""
    from tqdm.auto import tqdm

    return iter(tqdm(iterable, total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True, mininterval=1.0,
                     disable=None if rank_and_world()[0] == 0 else True))
