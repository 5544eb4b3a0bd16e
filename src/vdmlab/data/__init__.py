"""Datamodules of vdmlab: every dataset on a K-level grid in [-1, 1], see :mod:`vdmlab.data.base`."""

from vdmlab.data.base import (
    DatasetNotFoundError,
    DiffusionDataModule,
    LevelDataset,
    levels_to_values,
    quantize,
    values_to_levels,
)
from vdmlab.data.digits import DigitsDataModule
from vdmlab.data.image_folder import ImageFolderDataModule
from vdmlab.data.torchvision_data import CIFAR10DataModule, MNISTDataModule
from vdmlab.data.toy2d import TOY2D_NAMES, Toy2DDataModule, make_toy2d

__all__ = [
    "CIFAR10DataModule",
    "DatasetNotFoundError",
    "DiffusionDataModule",
    "DigitsDataModule",
    "ImageFolderDataModule",
    "LevelDataset",
    "MNISTDataModule",
    "TOY2D_NAMES",
    "Toy2DDataModule",
    "levels_to_values",
    "make_toy2d",
    "quantize",
    "values_to_levels",
]
