"""The order of the examples: :class:`EpochSampler`, a function of (seed, epoch) only, DDP-sharded and resumable.

Both batch paths take their order from it, the DataLoader's and the device-resident one (:mod:`vdmlab.data.device`),
so they yield the same batches. This module imports nothing else of :mod:`vdmlab.data`.
"""

from __future__ import annotations

import torch
from torch.utils.data import Sampler

from vdmlab.distributed import rank_and_world


class EpochSampler(Sampler[int]):
    """Indices in an order that depends only on (seed, epoch), sharded across DDP ranks, and resumable.

    With ``shuffle`` each epoch is ``randperm(n)`` from a generator seeded with ``seed + epoch`` (Lightning
    calls :meth:`set_epoch`), so a resumed run sees the same order as an uninterrupted one. Under DDP the
    order is padded with its first indices to a multiple of the world size and rank r takes every world-th
    index from r (as ``DistributedSampler`` does; evaluation metrics drop the duplicates by index).
    :meth:`skip` drops the examples a resumed epoch has already consumed; ``len`` stays that of a full epoch,
    which is what Lightning's restored batch counter expects.
    """

    def __init__(self, num_examples: int, seed: int = 0, shuffle: bool = True):
        self.num_examples, self.seed, self.shuffle = int(num_examples), int(seed), bool(shuffle)
        self.epoch = 0
        self._skip: tuple[int, int] | None = None  # (epoch, examples to skip in that epoch)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def skip(self, epoch: int, num_examples: int) -> None:
        """Skip the first ``num_examples`` of this rank's order the next time ``epoch`` is iterated."""
        self._skip = (int(epoch), int(num_examples))

    def _order(self) -> list[int]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.num_examples, generator=generator).tolist()
        else:
            order = list(range(self.num_examples))
        rank, world = rank_and_world()
        if world > 1:
            order += order[: (-len(order)) % world]
            order = order[rank::world]
        return order

    def __iter__(self):
        order = self._order()
        if self._skip is not None and self._skip[0] == self.epoch:
            order = order[self._skip[1] :]
            self._skip = None
        return iter(order)

    def __len__(self) -> int:
        _, world = rank_and_world()
        return -(-self.num_examples // world)
