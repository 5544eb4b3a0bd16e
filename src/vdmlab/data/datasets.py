"""The datasets behind every datamodule: integer levels on the K-level grid, labels beside them, dataset indices.

Every dataset lives on a K-level grid in [-1, 1]: level k ∈ {0, …, K-1} is the value ``-1 + 2k/(K-1)``
(for 8-bit images K = 256, x = 2·pixel/255 - 1); the grid's formulas (``levels_to_values``, ``values_to_levels``)
belong to the likelihood, :mod:`vdmlab.diffusion.likelihood`. A :class:`LevelDataset` stores the integer levels
and yields float32 values; :class:`LabelledDataset` adds class labels, ``(x, y)``; :class:`UniqueIndexDataset` adds
the dataset index that evaluation metrics use to count each example once under DDP. :func:`split_batch` splits
every batch form these make. This module imports nothing else of :mod:`vdmlab.data`.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.data import Dataset, default_collate

from vdmlab.diffusion.likelihood import levels_to_values, values_to_levels


def quantize(x: Tensor, num_levels: int) -> Tensor:
    """Snap values in [-1, 1] (clamped first) to the nearest point of the K-level grid; returns float32."""
    return levels_to_values(values_to_levels(x, num_levels), num_levels)


def level_dtype(num_levels: int) -> torch.dtype:
    """Smallest integer dtype that stores the levels 0..K-1 (uint8 for K <= 256)."""
    return torch.uint8 if num_levels <= 256 else torch.int32


class LevelDataset(Dataset):
    """In-memory dataset of integer levels [N, *data_shape], converted to float32 in [-1, 1] per item."""

    def __init__(self, levels: Tensor, num_levels: int):
        """``levels``: integer tensor [N, *data_shape] with entries in 0..num_levels-1."""
        if levels.is_floating_point():
            raise TypeError(f"levels must be an integer tensor, got {levels.dtype}")
        if levels.numel() and (int(levels.min()) < 0 or int(levels.max()) >= num_levels):
            raise ValueError(f"levels must lie in 0..{num_levels - 1}")
        self.levels = levels
        self.num_levels = int(num_levels)

    def __len__(self) -> int:
        return int(self.levels.shape[0])

    def __getitem__(self, index: int) -> Tensor:
        return levels_to_values(self.levels[index], self.num_levels)

    def __getitems__(self, indices: list[int]) -> Tensor:
        """A whole batch at once (the DataLoader's batched fetch): one indexing and conversion instead of B."""
        return levels_to_values(self.levels[torch.as_tensor(indices, dtype=torch.long)], self.num_levels)


class StackedBatch(tuple):
    """A batch that a dataset's ``__getitems__`` already stacked, e.g. ``(x, y)``: passed through by the collate."""


class LabelledDataset(Dataset):
    """Wraps a dataset of x with a label tensor ``[N]``: item i is ``(x_i, y_i)``."""

    def __init__(self, dataset: Dataset, labels: Tensor):
        if len(labels) != len(dataset):
            raise ValueError(f"{len(labels)} labels for a dataset of {len(dataset)} examples")
        self.dataset, self.labels = dataset, torch.as_tensor(labels, dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        return self.dataset[index], self.labels[index]

    def __getitems__(self, indices: list[int]):
        """A whole batch ``(x, y)`` at once when the wrapped dataset stacks batches itself."""
        if not hasattr(self.dataset, "__getitems__"):
            return [self[i] for i in indices]
        return StackedBatch((self.dataset.__getitems__(indices), self.labels[torch.as_tensor(indices, dtype=torch.long)]))


class UniqueIndexDataset(Dataset):
    """Wraps a dataset so that item i is ``(i, dataset[i])``, or ``(i, x_i, y_i)`` for a labelled one: the index
    lets metrics drop DDP padding duplicates."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        item = self.dataset[index]
        return (index, *item) if isinstance(item, tuple) else (index, item)


def split_batch(batch) -> tuple[Tensor | None, Tensor, Tensor | None]:
    """``(index, x, y)`` from any batch form: ``x``, ``(x, y)``, ``(index, x)`` or ``(index, x, y)``; missing ones are None.

    x is the floating-point member; an index is integer-valued, so ``(x, y)`` and ``(index, x)`` are told apart.
    """
    if isinstance(batch, Tensor):
        return None, batch, None
    batch = tuple(batch)
    if len(batch) == 3:
        return batch
    first, second = batch
    if isinstance(first, Tensor) and first.is_floating_point():
        return None, first, second
    return first, second, None


def split_index_batch(batch) -> tuple[Tensor | None, Tensor]:
    """``(index, x)`` from a batch of :class:`UniqueIndexDataset` or ``(None, x)`` from a plain tensor batch."""
    index, x, _ = split_batch(batch)
    return index, x


def collate(batch):
    """Batches that a dataset's ``__getitems__`` already stacked pass through; anything else is collated as usual."""
    if isinstance(batch, StackedBatch):
        return tuple(batch)
    return batch if isinstance(batch, Tensor) else default_collate(batch)
