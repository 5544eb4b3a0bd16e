"""A folder of image files (searched recursively), resized and center-cropped to squares, K = 256.

The rule for every image (any size, mode or aspect ratio; docs/datasets.md):

- converted with PIL to "L" (channels=1) or "RGB" (channels=3; an alpha channel is dropped, palettes expanded);
- an image whose shorter side is smaller than ``image_size`` is an error naming the file (no silent upsampling);
- resized (bicubic, antialiased) so that the shorter side is ``image_size``, then center-cropped to
  ``image_size`` x ``image_size`` (for an odd excess the crop starts at round((side - S)/2)); so a folder of mixed
  sizes and aspect ratios gives one shape;
- mapped to x = 2·pixel/255 - 1.

The whole folder is decoded once into a uint8 tensor ``[N, C, S, S]`` (by a pool of worker processes, one per core,
with a progress bar); with ``cache_dir`` that tensor (with the
labels) is stored in ``<cache_dir>/<key>.pt``, the key a hash of the folder's files (relative paths, sizes, mtimes),
``image_size`` and ``channels``: a later run loads it instead of decoding, and any added, removed or changed file
makes a new key. A cache file that cannot be read is moved aside (``.corrupt-<n>``) and rebuilt.

Class sub-folders: when every image lies in a first-level sub-folder of ``root``, the sub-folder names (sorted) are
the classes; ``labels`` (int64 per image) and ``class_names`` are stored in the cache and exposed on the datamodule
and on each split dataset (``dataset.labels``). Images directly in ``root`` mean no labels (``class_names == []``).
The file list is sorted and split with a seeded permutation; the training order is the EpochSampler's, a function
of (seed, epoch), resumable.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from vdmlab.cache import atomic_save, load_checked
from vdmlab.checks import ParameterError, check_bool, check_choice, check_float, check_folder, check_int
from vdmlab.data.base import DiffusionDataModule
from vdmlab.data.datasets import LevelDataset

log = logging.getLogger("vdmlab")

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


class ImageTooSmallError(ValueError):
    """An image's shorter side is smaller than ``image_size`` (it would have to be upsampled)."""


def load_image(path: Path, image_size: int, channels: int) -> Tensor:
    """Read one image as uint8 [C, image_size, image_size] (resize shorter side, center-crop)."""
    try:
        with Image.open(path) as image:
            if min(image.size) < image_size:
                width, height = image.size
                raise ImageTooSmallError(
                    f"image file {path} is {width}x{height}, smaller than dataset.image_size={image_size} on its shorter "
                    f"side, and vdmlab does not upsample: set dataset.image_size<={min(image.size)}, or remove or "
                    f"enlarge the file"
                )
            image = image.convert("L" if channels == 1 else "RGB")
            image = TF.resize(image, image_size, interpolation=TF.InterpolationMode.BICUBIC, antialias=True)
            image = TF.center_crop(image, [image_size, image_size])
            return TF.pil_to_tensor(image)
    except ImageTooSmallError:
        raise
    except Exception as err:
        raise OSError(f"could not read image file {path}: {type(err).__name__}: {err}") from err


#: files decoded per task of the worker pool (one progress step)
DECODE_CHUNK = 512


def _decode_chunk(paths: Sequence[Path], image_size: int, channels: int) -> np.ndarray:
    """uint8 ``[n, C, S, S]`` of ``paths`` (a worker's task)."""
    return np.stack([load_image(path, image_size, channels).numpy() for path in paths])


def decode_workers(workers: int | None, num_files: int) -> int:
    """Worker processes for decoding ``num_files``: ``workers``, or every usable core (None); 0 for a small folder."""
    if num_files <= DECODE_CHUNK:  # one chunk: starting processes would cost more than they save
        return 0
    if workers is None:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return 0 if workers <= 1 else int(workers)


def decode_images(files: Sequence[Path], image_size: int, channels: int, workers: int | None = None) -> Tensor:
    """Decode ``files`` into one uint8 tensor ``[N, C, S, S]`` (filled in place, in file order) by ``load_image``,
    ``DECODE_CHUNK`` files per task of a pool of ``decode_workers(workers)`` processes, with a progress bar (ETA)."""
    from tqdm.auto import tqdm

    levels = torch.empty((len(files), channels, image_size, image_size), dtype=torch.uint8)
    chunks = [files[i : i + DECODE_CHUNK] for i in range(0, len(files), DECODE_CHUNK)]
    n_workers = decode_workers(workers, len(files))
    pool = None
    bar = tqdm(total=len(files), desc="decoding images", unit="img", leave=False, dynamic_ncols=True, mininterval=1.0,
               disable=None)
    try:
        if n_workers == 0:
            parts = (_decode_chunk(chunk, image_size, channels) for chunk in chunks)
        else:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else None)
            pool = ProcessPoolExecutor(max_workers=min(n_workers, len(chunks)), mp_context=context)
            parts = pool.map(_decode_chunk, chunks, [image_size] * len(chunks), [channels] * len(chunks))
        start = 0
        for part in parts:  # in file order
            levels[start : start + len(part)] = torch.from_numpy(part)
            start += len(part)
            bar.update(len(part))
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    return levels


class DecodedImages(LevelDataset):
    """A split of a decoded image folder: uint8 levels [N, C, S, S], its ``files`` and (with class folders) ``labels``."""

    def __init__(self, levels: Tensor, files: Sequence[Path], labels: Tensor | None):
        super().__init__(levels, 256)
        self.files = list(files)
        self.labels = labels


CACHE_VERSION = 1


def folder_key(root: Path, files: Sequence[Path], image_size: int, channels: int) -> str:
    """Hash of what the decoded tensor depends on: the files' relative paths, sizes and mtimes, S and C."""
    digest = hashlib.sha1(f"v{CACHE_VERSION}|{image_size}|{channels}\n".encode())
    for path in files:
        stat = path.stat()
        digest.update(f"{path.relative_to(root).as_posix()}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:20]


def class_labels(root: Path, files: Sequence[Path]) -> tuple[Tensor | None, list[str]]:
    """(labels, class names) when every file lies in a first-level sub-folder of ``root``; else (None, [])."""
    rel = [path.relative_to(root).parts for path in files]
    if not rel or any(len(parts) < 2 for parts in rel):
        return None, []
    names = sorted({parts[0] for parts in rel})
    index = {name: i for i, name in enumerate(names)}
    return torch.tensor([index[parts[0]] for parts in rel], dtype=torch.int64), names


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
        decode_workers: int | None = None,
        *,
        cache_dir: str | None,
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
                bad file, before decoding (skipped when the decoded cache is valid); turn off only for huge folders
                already known to be clean.
            decode_workers: processes that decode the folder the first time (None: every usable core; 0 or 1: this
                process); folders of at most ``DECODE_CHUNK`` files are decoded in this process.
            cache_dir: folder of the decoded uint8 cache, keyed by the files (None: decode in memory at every start).
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
        self.decode_workers = check_int("decode_workers", decode_workers, 0, optional=True)
        self.root = Path(str(root)).expanduser()
        super().__init__(num_levels=256, data_shape=(channels, image_size, image_size), **common)
        self.image_size, self.channels = image_size, channels
        self.extensions = normalize_extensions(extensions)
        self.val_fraction, self.test_fraction = fractions["val_fraction"], fractions["test_fraction"]
        if cache_dir is not None and not isinstance(cache_dir, (str, os.PathLike)):
            raise ParameterError("cache_dir", cache_dir, "null (no cache) or a folder (created when first written)")
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else None
        self.labels: Tensor | None = None
        self.class_names: list[str] = []
        self.cache_path: Path | None = None

    def check_location(self) -> None:
        """The root folder must exist (a stat, nothing is read)."""
        check_folder("root", self.root)

    @property
    def classes(self) -> list[str]:
        """The class sub-folder names (empty when the images are not all in class folders): from the decoded set
        after ``setup``, else from a listing of ``root`` (file names only, nothing decoded), so that a conditional
        model (``dataset.conditional=true``) knows ``num_classes`` before the data are read."""
        if self.class_names or not self.root.is_dir():
            return self.class_names
        return class_labels(self.root, find_images(self.root, self.extensions))[1]

    def list_files(self, verify: bool | None = None) -> list[Path]:
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
        if self.verify_images if verify is None else verify:
            bad = first_unreadable(files)
            if bad is not None:
                path, err = bad
                raise ValueError(
                    f"unreadable or corrupt image file {path.resolve()} ({type(err).__name__}: {err}); "
                    f"remove or replace it"
                )
        return files

    def decode(self) -> tuple[list[Path], Tensor, Tensor | None, list[str]]:
        """(files, uint8 levels [N, C, S, S], labels, class names), from the cache when it matches the folder."""
        files = self.list_files(verify=False)
        key = folder_key(self.root, files, self.image_size, self.channels)
        rel = [path.relative_to(self.root).as_posix() for path in files]
        if self.cache_dir is not None:
            self.cache_path = self.cache_dir / f"image_folder-{key}.pt"
            shape = (len(files), *self.data_shape)

            def problem(obj) -> str | None:
                ok = (isinstance(obj, dict) and obj.get("key") == key and obj.get("files") == rel
                      and isinstance(obj.get("levels"), Tensor) and obj["levels"].dtype == torch.uint8
                      and tuple(obj["levels"].shape) == shape)
                return None if ok else f"its content does not match the folder {self.root} (key {key})"

            cached = load_checked(self.cache_path, problem, "image folder cache")
            if cached is not None:
                return files, cached["levels"], cached["labels"], list(cached["class_names"])
        if self.verify_images:
            self.list_files(verify=True)
        log.info("decoding %d images of %s to %dx%d (once%s)", len(files), self.root, self.image_size, self.image_size,
                 f"; cached in {self.cache_path}" if self.cache_path else "")
        levels = decode_images(files, self.image_size, self.channels, self.decode_workers)
        labels, names = class_labels(self.root, files)
        if self.cache_path is not None:
            atomic_save({"key": key, "version": CACHE_VERSION, "files": rel, "levels": levels, "labels": labels,
                         "class_names": names, "root": str(self.root.resolve())}, self.cache_path)
        return files, levels, labels, names

    def build_splits(self) -> tuple[Dataset, Dataset, Dataset]:
        """Decode (or load) the folder, then split the sorted files with a permutation seeded by ``seed``."""
        files, levels, labels, self.class_names = self.decode()
        self.labels = labels
        n_train, n_val, _ = split_sizes(len(files), self.val_fraction, self.test_fraction)
        order = np.random.default_rng(self.seed).permutation(len(files))
        parts = order[:n_train], order[n_train : n_train + n_val], order[n_train + n_val :]
        return tuple(
            DecodedImages(levels[torch.as_tensor(idx, dtype=torch.long)], [files[i] for i in idx],
                          None if labels is None else labels[torch.as_tensor(idx, dtype=torch.long)])
            for idx in parts
        )
