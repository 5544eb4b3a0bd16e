"""scikit-learn's 8x8 handwritten digits: the default dataset, bundled with scikit-learn (works offline).

1797 images with integer intensities 0..16, i.e. K = 17 levels, mapped to x = 2v/16 - 1. Splits:
``train_test_split(test_size=0.2, random_state=0)`` gives 1437 training images; the 360 held-out images
are split in half (again ``random_state=0``) into 180 validation and 180 test images.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch.utils.data import Dataset

from vdmlab.data.base import DiffusionDataModule
from vdmlab.data.datasets import LevelDataset

DIGITS_NUM_LEVELS = 17
DIGITS_SHAPE = (1, 8, 8)


def digits_split_indices() -> dict[str, np.ndarray]:
    """Indices into ``load_digits()`` of the fixed splits: 1437 train, 180 val, 180 test."""
    indices = np.arange(len(load_digits().target))
    train, held = train_test_split(indices, test_size=0.2, random_state=0)
    val, test = train_test_split(held, test_size=0.5, random_state=0)
    return {"train": train, "val": val, "test": test}


def digits_splits() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The fixed splits as ``{split: (levels uint8 [N, 1, 8, 8], labels int64 [N])}``."""
    bunch = load_digits()
    levels = np.rint(bunch.data).astype(np.uint8).reshape(-1, *DIGITS_SHAPE)
    labels = bunch.target.astype(np.int64)
    return {name: (levels[idx], labels[idx]) for name, idx in digits_split_indices().items()}


class DigitsDataModule(DiffusionDataModule):
    """sklearn digits, 1 x 8 x 8, K = 17.

    After ``setup`` the labels are kept as ``train_labels``/``val_labels``/``test_labels`` (int64 tensors)
    and the row indices into ``load_digits()`` as ``split_indices``; the datasets yield only x, and the loaders
    add the labels when ``conditional``.
    """

    label_classes = 10

    def __init__(self, **common):
        """``common``: the arguments of every datamodule (batch sizes, workers, seed; see
        :class:`~vdmlab.data.base.DiffusionDataModule`); ``seed`` orders the shuffle only, the splits are fixed."""
        super().__init__(num_levels=DIGITS_NUM_LEVELS, data_shape=DIGITS_SHAPE, **common)
        self.train_labels: torch.Tensor | None = None
        self.val_labels: torch.Tensor | None = None
        self.test_labels: torch.Tensor | None = None
        self.split_indices: dict[str, np.ndarray] | None = None  # indices into load_digits(), per split

    def build_splits(self) -> tuple[Dataset, Dataset, Dataset]:
        """Load the digits and build the three fixed splits (and their label tensors)."""
        splits = digits_splits()
        self.split_indices = digits_split_indices()
        datasets = []
        for name in ("train", "val", "test"):
            levels, labels = splits[name]
            datasets.append(LevelDataset(torch.from_numpy(levels), self.num_levels))
            setattr(self, f"{name}_labels", torch.from_numpy(labels))
        return tuple(datasets)
