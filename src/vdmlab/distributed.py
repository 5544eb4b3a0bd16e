"""The one lookup of the DDP rank and world size, and the one all-reduce, shared by data, schedules and metrics.

Without an initialised ``torch.distributed`` process group every function acts as a single process (rank 0 of 1).
"""

from __future__ import annotations

import torch
from torch import Tensor


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of this process: (0, 1) unless torch.distributed is initialised."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_reduce_sum(x: Tensor) -> Tensor:
    """Sum ``x`` over DDP ranks in place (a no-op on a single process) and return it."""
    if rank_and_world()[1] > 1:
        torch.distributed.all_reduce(x, op=torch.distributed.ReduceOp.SUM)
    return x
