"""Device-resident data: a split of integer levels held once on the training device, batches gathered there.

For datasets that fit in device memory (every :class:`~vdmlab.data.datasets.LevelDataset`: digits, toy 2-D, MNIST,
CIFAR-10, with their class labels when conditional) the DataLoader's per-batch Python work and host-to-device copy
cost more than a small network's step. :class:`DeviceBatches` holds the split's stored levels (uint8 for K <= 256)
on the device and yields each batch with one index gather and one batched conversion (``levels_to_values``), and
the labels of a :class:`~vdmlab.data.datasets.LabelledDataset` with the same gather. It takes its order from the
same :class:`~vdmlab.data.samplers.EpochSampler` as the DataLoader path, a function of (seed, epoch) only, sharded
across DDP ranks and resumable mid-epoch with ``skip``, so both paths yield the same batches bit for bit. Lightning
takes any iterable with a ``sampler`` (it calls ``sampler.set_epoch``) and a length; its batch transfer is a no-op
on tensors already on the device.

``dataset.on_device``: ``auto`` holds a split on the device when it is a LevelDataset (labelled or not) whose levels
take less than :data:`AUTO_FRACTION` of the free device memory (on the CPU the levels already live in host memory:
no copy is made), ``true`` requires it, ``false`` keeps the DataLoader.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import torch
from torch import Tensor
from torch.utils.data import Dataset

from vdmlab.data.datasets import LabelledDataset, LevelDataset, UniqueIndexDataset, levels_to_values
from vdmlab.data.samplers import EpochSampler

log = logging.getLogger("vdmlab")

AUTO_FRACTION = 0.25  # `auto` holds a split on an accelerator when it takes less than this share of free memory


def level_source(dataset: Dataset) -> tuple[LevelDataset, Tensor | None] | None:
    """The LevelDataset behind a split and its labels, through :class:`UniqueIndexDataset` and
    :class:`LabelledDataset` (labels None when unlabelled), or None for any other dataset."""
    if isinstance(dataset, UniqueIndexDataset):
        dataset = dataset.dataset
    labels = None
    if isinstance(dataset, LabelledDataset):
        dataset, labels = dataset.dataset, dataset.labels
    return (dataset, labels) if isinstance(dataset, LevelDataset) else None


def free_memory(device: torch.device) -> int | None:
    """Free bytes on a CUDA device; None on the CPU (the levels are already in host memory there)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    return None


def _size(nbytes: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if nbytes >= scale:
            return f"{nbytes / scale:.0f} {unit}" if nbytes / scale >= 10 else f"{nbytes / scale:.1f} {unit}"
    return f"{nbytes} B"


def choose_on_device(mode: str, dataset: Dataset, device: torch.device, split: str) -> tuple[bool, str]:
    """Whether to hold ``dataset`` on ``device`` under ``dataset.on_device=mode``, and the reason, for the log."""
    source = level_source(dataset)
    if mode == "false":
        return False, f"dataset.on_device=false: the {split} split goes through the DataLoader"
    if source is None:
        inner = dataset
        while isinstance(inner, (UniqueIndexDataset, LabelledDataset)):
            inner = inner.dataset
        reason = f"the {split} split is a {type(inner).__name__}, not a LevelDataset of integer levels"
        if mode == "true":
            raise ValueError(f"dataset.on_device=true needs in-memory integer levels, but {reason}; "
                             f"set dataset.on_device=auto or false")
        return False, f"dataset.on_device=auto: {reason}, so it goes through the DataLoader"
    levels = source[0].levels
    what = f"{'x'.join(str(d) for d in levels.shape)} {str(levels.dtype).removeprefix('torch.')} {split} split"
    nbytes = levels.numel() * levels.element_size()
    free = free_memory(device)
    if mode == "auto" and free is not None and nbytes > AUTO_FRACTION * free:
        return False, (f"dataset.on_device=auto: the {what} ({_size(nbytes)}) is over {AUTO_FRACTION:.0%} of the "
                       f"{_size(free)} free on {device}, so it goes through the DataLoader")
    where = f"{device}" if free is not None else f"{device} (host memory: the levels stay where they are)"
    return True, f"dataset.on_device={mode}: holding the {what} ({_size(nbytes)}) on {where}"


class DeviceBatches:
    """Batches of a LevelDataset gathered on the device in the order of an :class:`EpochSampler`.

    Yields float32 tensors ``[B, *data_shape]`` (or ``(index, x)`` with ``with_index``, as the evaluation
    DataLoaders do), exactly the values the DataLoader path yields for the same sampler; with ``labels`` (int64
    ``[N]``, a conditional split) ``(x, y)`` and ``(index, x, y)``.
    """

    batch_sampler = None  # Lightning inspects a loader's ``sampler`` and ``batch_sampler`` (set_epoch, shuffle check)

    def __init__(self, dataset: LevelDataset, batch_size: int, sampler: EpochSampler, device: torch.device,
                 drop_last: bool, with_index: bool = False, labels: Tensor | None = None):
        self.levels = dataset.levels.to(device)
        self.labels = None if labels is None else torch.as_tensor(labels, dtype=torch.int64).to(device)
        self.num_levels = dataset.num_levels
        self.batch_size, self.sampler, self.device = int(batch_size), sampler, torch.device(device)
        self.drop_last, self.with_index = bool(drop_last), bool(with_index)

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[Tensor | tuple[Tensor, ...]]:
        order = torch.as_tensor(list(self.sampler), dtype=torch.long)  # this rank's (seed, epoch) order, skip applied
        stop = len(order) - len(order) % self.batch_size if self.drop_last else len(order)
        order = order[:stop].to(self.device, non_blocking=True)  # one copy per epoch
        for start in range(0, stop, self.batch_size):
            index = order[start:start + self.batch_size]
            batch = (levels_to_values(self.levels[index], self.num_levels),)
            if self.labels is not None:
                batch += (self.labels[index],)
            if self.with_index:
                batch = (index, *batch)
            yield batch if len(batch) > 1 else batch[0]
