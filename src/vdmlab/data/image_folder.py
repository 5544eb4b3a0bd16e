"""A folder of image files (searched recursively), resized and center-cropped to squares, K = 256.

Images are read lazily per item with PIL, converted to "L" (channels=1) or "RGB" (channels=3), resized so
that the shorter side is ``image_size``, center-cropped to ``image_size`` x ``image_size`` and mapped to
x = 2·pixel/255 - 1. The file list is sorted and split with a seeded permutation.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torchvision.transforms.functional as TF
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from vdmlab.checks import ParameterError, check_bool, check_choice, check_float, check_folder, check_int
from vdmlab.data.base import DiffusionDataModule, levels_to_values

DEFAULT_EXTENSIONS = ("png", "jpg", "jpeg", "bmp", "webp", "gif")


def normalize_extensions(extensions: Sequence[str]) -> tuple[str, ...]:
    """Lower-case extensions without the leading dot, e.g. (".PNG", "jpg") → ("png", "jpg")."""
    if isinstance(extensions, str):
        extensions = [extensions]
    result = tuple(str(e).lower().lstrip(".") for e in extensions)
    if not result or not all(result):
        raise ValueError(f"extensions must be a non-empty list of file extensions, got {list(extensions)!r}")
    return result


def find_images(root: Path, extensions: Sequence[str]) -> list[Path]:
    """Sorted image files below ``root`` (recursive), skipping hidden files and folders."""
    suffixes = {"." + e for e in normalize_extensions(extensions)}
    files = [
        path
        for path in root.rglob("*")
        if path.suffix.lower() in suffixes
        and path.is_file()
        and not any(part.startswith(".") for part in path.relative_to(root).parts)
    ]
    return sorted(files, key=lambda p: str(p))


def first_unreadable(files: Sequence[Path]) -> tuple[Path, Exception] | None:
    """The first file that PIL cannot open and verify, with the error; None when all are fine."""
    for path in files:
        try:
            with Image.open(path) as image:
                image.verify()
        except Exception as err:  # PIL raises UnidentifiedImageError, OSError, SyntaxError, ...
            return path, err
    return None


def split_sizes(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int, int]:
    """(train, val, test) sizes: rounded fractions, at least 1 each (if the fraction > 0) when n >= 3."""
    n_val, n_test = round(val_fraction * n), round(test_fraction * n)
    if n >= 3:
        n_val = max(n_val, 1) if val_fraction > 0 else 0
        n_test = max(n_test, 1) if test_fraction > 0 else 0
    while n_val + n_test >= n and n_val + n_test > 0:  # keep at least one training image
        if n_val >= n_test:
            n_val -= 1
        else:
            n_test -= 1
    return n - n_val - n_test, n_val, n_test


def load_image(path: Path, image_size: int, channels: int) -> Tensor:
    """Read one image as uint8 [C, image_size, image_size] (resize shorter side, center-crop)."""
    try:
        with Image.open(path) as image:
            image = image.convert("L" if channels == 1 else "RGB")
            image = TF.resize(image, image_size, interpolation=TF.InterpolationMode.BICUBIC, antialias=True)
            image = TF.center_crop(image, [image_size, image_size])
            return TF.pil_to_tensor(image)
    except Exception as err:
        raise OSError(f"could not read image file {path}: {type(err).__name__}: {err}") from err


class ImageFileDataset(Dataset):
    """Lazily loaded image files, each yielded as float32 [C, S, S] on the 256-level grid of [-1, 1]."""

    def __init__(self, files: Sequence[Path], image_size: int, channels: int):
        """``files``: image paths; ``image_size``: output side S; ``channels``: 1 (gray) or 3 (RGB)."""
        self.files = list(files)
        self.image_size = image_size
        self.channels = channels

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> Tensor:
        return levels_to_values(load_image(self.files[index], self.image_size, self.channels), 256)


class ImageFolderDataModule(DiffusionDataModule):
    """Any folder of images (png, jpg, jpeg, bmp, webp, gif by default), K = 256, data_shape (C, S, S)."""

    def __init__(
        self,
        root: str,
        image_size: int = 32,
        channels: int = 3,
        extensions: Sequence[str] = DEFAULT_EXTENSIONS,
        val_fraction: float = 0.05,
        test_fraction: float = 0.05,
        verify_images: bool = True,
        **common,
    ):
        """
        Args:
            root: folder searched recursively for image files (required; hidden files/folders are skipped).
            image_size: output side S; images are resized (shorter side to S) and center-cropped to S x S.
            channels: 1 (converted to grayscale "L") or 3 (converted to "RGB").
            extensions: accepted file extensions, case-insensitive, with or without the dot.
            val_fraction: fraction of the images used for validation (at least 1 when there are >= 3 images).
            test_fraction: fraction of the images used for testing (at least 1 when there are >= 3 images).
            verify_images: check in ``setup`` that every file opens with PIL (``verify()``), naming the first
                bad file; turn off only for huge folders already known to be clean.
            common: the arguments of every datamodule (see :class:`~vdmlab.data.base.DiffusionDataModule`);
                here ``seed`` also seeds the train/val/test split.
        """
        channels = check_choice("channels", channels, (1, 3))
        image_size = check_int("image_size", image_size, 1)
        fractions = {name: check_float(name, value, minimum=0.0, maximum=1.0, open_max=True)
                     for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction))}
        if sum(fractions.values()) >= 1:
            raise ParameterError(tuple(fractions), tuple(fractions.values()),
                                 "val_fraction + test_fraction must be < 1 to leave training images")
        self.verify_images = check_bool("verify_images", verify_images)
        self.root = Path(str(root)).expanduser()
        super().__init__(num_levels=256, data_shape=(channels, image_size, image_size), **common)
        self.image_size, self.channels = image_size, channels
        self.extensions = normalize_extensions(extensions)
        self.val_fraction, self.test_fraction = fractions["val_fraction"], fractions["test_fraction"]

    def check_location(self) -> None:
        """The root folder must exist (a stat, nothing is read)."""
        check_folder("root", self.root)

    def list_files(self) -> list[Path]:
        """All image files below ``root``, with clear errors for a missing root, no images or a bad file."""
        if not self.root.is_dir():
            what = "is a file, not a folder" if self.root.exists() else "does not exist"
            raise FileNotFoundError(
                f"image folder {self.root.resolve()} {what}; set dataset.root to a folder of images"
            )
        files = find_images(self.root, self.extensions)
        if not files:
            raise ValueError(
                f"no image files found in {self.root.resolve()} (searched recursively for the extensions "
                f"{', '.join(self.extensions)}); put images there or set dataset.root / dataset.extensions"
            )
        if self.verify_images:
            bad = first_unreadable(files)
            if bad is not None:
                path, err = bad
                raise ValueError(
                    f"unreadable or corrupt image file {path.resolve()} ({type(err).__name__}: {err}); "
                    f"remove or replace it"
                )
        return files

    def build_splits(self) -> tuple[Dataset, Dataset, Dataset]:
        """Scan and verify the folder, then split the sorted files with a permutation seeded by ``seed``."""
        files = self.list_files()
        n_train, n_val, _ = split_sizes(len(files), self.val_fraction, self.test_fraction)
        order = np.random.default_rng(self.seed).permutation(len(files))
        shuffled = [files[i] for i in order]
        parts = shuffled[:n_train], shuffled[n_train : n_train + n_val], shuffled[n_train + n_val :]
        return tuple(ImageFileDataset(part, self.image_size, self.channels) for part in parts)
