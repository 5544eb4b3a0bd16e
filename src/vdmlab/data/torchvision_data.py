"""MNIST and CIFAR-10 through ``torchvision.datasets``, with an explicit error on machines without internet.

Both are 8-bit (K = 256, x = 2·pixel/255 - 1). The validation set is the last ``val_size`` images of the
official training split (deterministic); the test set is the official test split. Each split is loaded
once into a uint8 tensor and converted to float per item.

When the files are missing and cannot be downloaded, :class:`DatasetNotFoundError` says which folder the
files must be copied into and from which URL to get them. Files that were copied in compressed form
(MNIST ``*.gz`` in ``<root>/MNIST/raw``, ``<root>/cifar-10-python.tar.gz``) are unpacked locally.
"""

from __future__ import annotations

import abc
import gzip
import shutil
import tarfile
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.datasets.utils import extract_archive

from vdmlab.checks import check_bool, check_folder, check_int
from vdmlab.data.base import DatasetNotFoundError, DiffusionDataModule
from vdmlab.data.datasets import LevelDataset

_FIX = (
    "download them on a machine with internet and copy them there, "
    "or set dataset.root=... to a folder that has them"
)


class _CIFAR10Files(torchvision.datasets.CIFAR10):
    """torchvision's CIFAR10 that checks the extracted batch files for presence instead of their md5.

    The downloaded archive is still md5-checked by ``download()``; skipping the per-batch md5 avoids hashing
    170 MB at every start and accepts files in the genuine format written by other tools.
    """

    train_list = [[name, None] for name, _ in torchvision.datasets.CIFAR10.train_list]
    test_list = [[name, None] for name, _ in torchvision.datasets.CIFAR10.test_list]
    meta = {**torchvision.datasets.CIFAR10.meta, "md5": None}


class _TorchvisionDataModule(DiffusionDataModule, abc.ABC):
    """Shared logic: make sure the files are there (download or explain), load, split off validation."""

    dataset_name: str
    label_classes = 10  # MNIST digits and CIFAR-10 classes

    def __init__(self, root: str | Path, download: bool, val_size: int, data_shape: tuple[int, ...], **common):
        """``root``, ``download``, ``val_size``: see the subclasses; ``common``: see ``DiffusionDataModule``."""
        self.download = check_bool("download", download)
        self.root = Path(str(root)).expanduser()
        self.val_size = check_int("val_size", val_size, 0)
        super().__init__(num_levels=256, data_shape=data_shape, **common)

    def check_location(self) -> None:
        """Without ``download`` the root folder must exist (a stat, nothing is read)."""
        if not self.download:
            check_folder("root", self.root)
        self.train_labels: Tensor | None = None
        self.val_labels: Tensor | None = None
        self.test_labels: Tensor | None = None
        self._unpack_errors: list[str] = []

    # --- subclass hooks -------------------------------------------------------------------------------
    @property
    @abc.abstractmethod
    def files_folder(self) -> Path:
        """The folder the dataset's files must be in."""

    @abc.abstractmethod
    def files_present(self) -> bool:
        """Whether all files needed by :meth:`load_split` are on disk (unpacking local archives if needed)."""

    @abc.abstractmethod
    def run_download(self) -> None:
        """Download the files with torchvision (may raise anything when offline)."""

    @abc.abstractmethod
    def expected_files(self) -> str:
        """Human-readable description of the files :meth:`files_present` looks for."""

    @abc.abstractmethod
    def download_urls(self) -> list[str]:
        """The URLs the files are downloaded from."""

    @abc.abstractmethod
    def load_split(self, train: bool) -> tuple[Tensor, Tensor]:
        """Official split as (uint8 images [N, C, H, W], int64 labels [N])."""

    # --- shared logic ---------------------------------------------------------------------------------
    def ensure_files(self) -> None:
        """Return when the files are on disk; download them if allowed; else raise DatasetNotFoundError."""
        self._unpack_errors = []
        if self.files_present():
            return
        if not self.download:
            raise self._not_found("download=False, so nothing was downloaded")
        try:
            self.run_download()
        except Exception as err:  # torchvision raises URLError, RuntimeError, OSError, ... when offline
            raise self._not_found(f"the download failed with {type(err).__name__}: {err}") from err
        if not self.files_present():
            raise self._not_found("the download finished but the files are still missing")

    def _note_unpack_error(self, error: str | None) -> None:
        """Remember why a local archive could not be unpacked (reported if the files stay missing)."""
        if error is not None:
            self._unpack_errors.append(error)

    def _not_found(self, reason: str) -> DatasetNotFoundError:
        """The error that explains where the files go and how to get them."""
        urls = " or ".join(self.download_urls())
        if self._unpack_errors:
            reason += "; " + "; ".join(self._unpack_errors)
        return DatasetNotFoundError(
            f"{self.dataset_name} files not found: expected {self.expected_files()} in the folder "
            f"{self.files_folder.resolve()} ({reason}; download URL: {urls}). "
            f"Fix: {_FIX} (it must then contain {self.files_folder.relative_to(self.root)} below it)."
        )

    def prepare_data(self) -> None:
        """Check for (or download) the files; runs on one process only."""
        self.ensure_files()

    def build_splits(self) -> tuple[Dataset, Dataset, Dataset]:
        """Load both official splits and take the last ``val_size`` training images as validation."""
        self.ensure_files()
        train_images, train_labels = self.load_split(train=True)
        test_images, test_labels = self.load_split(train=False)
        n_train = len(train_images) - self.val_size
        if n_train < 1:
            raise ValueError(
                f"val_size={self.val_size} leaves no training images out of the {len(train_images)} of "
                f"{self.dataset_name}; set dataset.val_size < {len(train_images)}"
            )
        self.train_labels, self.val_labels = train_labels[:n_train], train_labels[n_train:]
        self.test_labels = test_labels
        return (
            LevelDataset(train_images[:n_train], self.num_levels),
            LevelDataset(train_images[n_train:], self.num_levels),
            LevelDataset(test_images, self.num_levels),
        )


class MNISTDataModule(_TorchvisionDataModule):
    """MNIST, 1 x 28 x 28 (or 1 x 32 x 32 with ``pad_to_32``, padded with -1), K = 256."""

    dataset_name = "MNIST"
    _names = (
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    )

    def __init__(
        self,
        root: str,
        *,
        pad_to_32: bool,
        download: bool = True,
        val_size: int = 5000,
        **common,
    ):
        """
        Args:
            root: data folder; the files live in ``<root>/MNIST/raw``.
            pad_to_32: pad each side by 2 pixels of value -1 to 32 x 32.
            download: download the files when missing (needs internet); without it ``root`` must exist.
            val_size: the last ``val_size`` official training images form the validation set.
            common: the arguments of every datamodule (see :class:`~vdmlab.data.base.DiffusionDataModule`).
        """
        side = 32 if check_bool("pad_to_32", pad_to_32) else 28
        super().__init__(root=root, download=download, val_size=val_size, data_shape=(1, side, side), **common)
        self.pad_to_32 = bool(pad_to_32)
        if self.pad_to_32:
            warnings.warn(
                "dataset.pad_to_32=true: bits/dim are then per pixel of the padded 32x32 image (the 4-pixel border of -1 "
                "is cheap to model), not comparable with MNIST results per 28x28 pixel; the default pad_to_32=false with "
                "the dataset's UNet (28 → 14 → 7) reports bits/dim per real pixel",
                stacklevel=2,
            )

    @property
    def files_folder(self) -> Path:
        return self.root / "MNIST" / "raw"

    def files_present(self) -> bool:
        """All four idx files present, gunzipping ``*.gz`` copies if only those are there."""
        for name in self._names:
            path = self.files_folder / name
            packed = path.with_name(name + ".gz")
            if not path.is_file() and packed.is_file():
                self._note_unpack_error(_gunzip(packed, path))
        return all((self.files_folder / name).is_file() for name in self._names)

    def run_download(self) -> None:
        torchvision.datasets.MNIST(str(self.root), train=True, download=True)

    def expected_files(self) -> str:
        return ", ".join(self._names) + " (uncompressed, or the same names + .gz)"

    def download_urls(self) -> list[str]:
        return [mirror + "train-images-idx3-ubyte.gz (etc.)" for mirror in torchvision.datasets.MNIST.mirrors]

    def load_split(self, train: bool) -> tuple[Tensor, Tensor]:
        data = torchvision.datasets.MNIST(str(self.root), train=train, download=False)
        images = data.data.to(torch.uint8).unsqueeze(1)
        if self.pad_to_32:
            images = F.pad(images, (2, 2, 2, 2), value=0)  # level 0 is -1
        return images.contiguous(), data.targets.to(torch.int64)


class CIFAR10DataModule(_TorchvisionDataModule):
    """CIFAR-10, 3 x 32 x 32, K = 256."""

    dataset_name = "CIFAR-10"

    def __init__(
        self,
        root: str,
        download: bool = True,
        val_size: int = 5000,
        **common,
    ):
        """
        Args:
            root: data folder; the files live in ``<root>/cifar-10-batches-py``
                (or as the archive ``<root>/cifar-10-python.tar.gz``, unpacked on first use).
            download: download the files when missing (needs internet); without it ``root`` must exist.
            val_size: the last ``val_size`` official training images form the validation set.
            common: the arguments of every datamodule (see :class:`~vdmlab.data.base.DiffusionDataModule`).
        """
        super().__init__(root=root, download=download, val_size=val_size, data_shape=(3, 32, 32), **common)

    @property
    def files_folder(self) -> Path:
        return self.root / _CIFAR10Files.base_folder

    def _file_names(self) -> list[str]:
        lists = _CIFAR10Files.train_list + _CIFAR10Files.test_list
        return [name for name, _ in lists] + [_CIFAR10Files.meta["filename"]]

    def files_present(self) -> bool:
        """All batch files present, extracting ``<root>/cifar-10-python.tar.gz`` if only that is there."""
        archive = self.root / _CIFAR10Files.filename
        if not self.files_folder.is_dir() and archive.is_file():
            self._note_unpack_error(_untar(archive, self.root))
        return all((self.files_folder / name).is_file() for name in self._file_names())

    def run_download(self) -> None:
        _CIFAR10Files(str(self.root), train=True, download=True)

    def expected_files(self) -> str:
        archive = self.root.resolve() / _CIFAR10Files.filename
        return ", ".join(self._file_names()) + f" (or the archive {archive})"

    def download_urls(self) -> list[str]:
        return [_CIFAR10Files.url]

    def load_split(self, train: bool) -> tuple[Tensor, Tensor]:
        data = _CIFAR10Files(str(self.root), train=train, download=False)
        images = torch.from_numpy(np.ascontiguousarray(data.data.transpose(0, 3, 1, 2)))
        return images.to(torch.uint8), torch.as_tensor(data.targets, dtype=torch.int64)


def _gunzip(src: Path, dst: Path) -> str | None:
    """Decompress ``src`` (.gz) to ``dst`` via a temporary file; returns an error description on failure.

    A truncated or corrupt archive (e.g. left by an interrupted download) leaves no partial ``dst``.
    """
    tmp = dst.with_name(dst.name + ".part")
    try:
        with gzip.open(src, "rb") as fin, open(tmp, "wb") as fout:
            shutil.copyfileobj(fin, fout)
    except (OSError, EOFError) as err:
        tmp.unlink(missing_ok=True)
        return f"could not unpack {src}: {type(err).__name__}: {err}"
    tmp.replace(dst)
    return None


def _untar(archive: Path, dest: Path) -> str | None:
    """Extract ``archive`` into ``dest``; returns an error description on failure."""
    try:
        extract_archive(str(archive), str(dest))
    except (OSError, EOFError, tarfile.TarError) as err:
        return f"could not unpack {archive}: {type(err).__name__}: {err}"
    return None
