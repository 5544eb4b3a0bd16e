"""Common base of all vdmlab datamodules and the data-location error.

Every dataset lives on a K-level grid in [-1, 1]: level k ∈ {0, …, K-1} is the value ``-1 + 2k/(K-1)``
(for 8-bit images K = 256, x = 2·pixel/255 - 1); the grid's formulas (``levels_to_values``, ``values_to_levels``)
belong to the likelihood, :mod:`vdmlab.diffusion.likelihood`, whose decoder puts its K logits on the same points.
``num_levels`` (K) and ``data_shape`` are known right after ``__init__`` so that the model can be built before
``setup``; datasets yield one float32 tensor of shape ``data_shape`` per item.

Class labels, for class-conditional models, come with the batches only when asked (``conditional=True``,
``dataset.conditional=true``): training batches are then ``(x, y)`` and evaluation batches ``(index, x, y)``
instead of ``x`` and ``(index, x)``; :func:`split_batch` splits any of these forms. ``num_classes`` is known
after ``__init__`` (None for unconditional data).

The data layer imports in one direction: :mod:`~vdmlab.data.datasets` (the datasets and batch forms) and
:mod:`~vdmlab.data.samplers` (the example order) import nothing of it, :mod:`~vdmlab.data.device` imports
those two, and this module all three; the datasets' names are re-exported here.
"""

from __future__ import annotations

import abc
import logging
import math

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from vdmlab.checks import ParameterError, check_bool, check_choice, check_int
from vdmlab.data.datasets import (  # noqa: F401 - the datasets, batch forms and the grid, re-exported
    LabelledDataset,
    LevelDataset,
    StackedBatch,
    UniqueIndexDataset,
    collate,
    level_dtype,
    levels_to_values,
    quantize,
    split_batch,
    split_index_batch,
    values_to_levels,
)
from vdmlab.data.device import DeviceBatches, choose_on_device, level_source
from vdmlab.data.samplers import EpochSampler
from vdmlab.distributed import rank_and_world
from vdmlab.lightning_compat import batches_done

log = logging.getLogger("vdmlab")

ON_DEVICE_CHOICES = ("auto", "true", "false")


class DatasetNotFoundError(FileNotFoundError):
    """The files of a dataset are not on disk and could not be downloaded (e.g. on an offline machine)."""


class DiffusionDataModule(L.LightningDataModule, abc.ABC):
    """Base datamodule: batch sizes, seeded shuffling, idempotent ``setup`` and the K/shape contract.

    Subclasses set ``num_levels`` and ``data_shape`` (via this ``__init__``), take their own arguments, pass the
    common ones below through (``**common``) and implement :meth:`build_splits`, which returns the
    (train, val, test) datasets. Constructors only check and store their arguments; data are read in ``setup``.

    Args (common to every datamodule; the dataset configs in conf/dataset/ hold their values):
        batch_size: training batch size (the last incomplete batch is dropped).
        eval_batch_size: batch size of validation/test loaders; None means ``batch_size``.
        num_workers: DataLoader worker processes (0 = load in the main process).
        seed: seeds the training shuffle order (and any random split or generation of the subclass).
        pin_memory: pin host memory in the DataLoaders (useful when training on a GPU).
        conditional: yield class labels with the batches, ``(x, y)`` and ``(index, x, y)``, for class-conditional
            models (``dataset.conditional``). A dataset with class labels states how many classes it has
            (``label_classes`` class attribute, or a ``classes`` list) and provides the labels of each split as
            ``<split>_labels`` tensors on the datamodule or as a ``labels`` tensor on the split's dataset.
        on_device: ``auto`` | ``true`` | ``false``: hold in-memory splits of integer levels on the training device
            and gather batches there (:mod:`vdmlab.data.device`); ``auto`` when they fit.
    """

    label_classes: int | None = None  # number of classes of the dataset's labels (None: no labels)

    def __init__(
        self,
        num_levels: int,
        data_shape: tuple[int, ...],
        *,
        batch_size: int,
        eval_batch_size: int | None,
        num_workers: int,
        seed: int = 0,
        pin_memory: bool = False,
        conditional: bool = False,
        on_device: str | bool = "auto",
    ):
        """``num_levels``: K, the number of quantization levels; ``data_shape``: the per-example shape, e.g.
        (C, H, W) for images or (2,) for 2-D points; the rest: see the class docstring."""
        super().__init__()
        self.num_levels = check_int("num_levels", num_levels, 2)
        self.data_shape = tuple(int(d) for d in data_shape)
        self.batch_size = check_int("batch_size", batch_size, 1)
        eval_batch_size = check_int("eval_batch_size", eval_batch_size, 1, optional=True)
        self.eval_batch_size = eval_batch_size if eval_batch_size is not None else self.batch_size
        self.num_workers = check_int("num_workers", num_workers, 0)
        self.seed = check_int("seed", seed)
        self.pin_memory = check_bool("pin_memory", pin_memory)
        self.conditional = check_bool("conditional", conditional)
        if isinstance(on_device, bool):  # YAML reads true/false as booleans; auto stays a string
            on_device = "true" if on_device else "false"
        self.on_device = check_choice("on_device", on_device, ON_DEVICE_CHOICES)
        self.on_device_reasons: dict[str, str] = {}  # split -> why it is (not) held on the device, as logged
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None
        self._resume: dict[str, int] | None = None

    @property
    def data_dim(self) -> int:
        """Number of scalar dimensions per example, prod(data_shape)."""
        return math.prod(self.data_shape)

    @property
    def num_classes(self) -> int | None:
        """Number of classes of a conditional datamodule (labels 0..num_classes-1); None when unconditional."""
        if not self.conditional:
            return None
        classes = getattr(self, "classes", None)
        count = self.label_classes if self.label_classes is not None else (len(classes) if classes else None)
        if not count:
            raise ParameterError(
                "conditional", self.conditional,
                f"{type(self).__name__} has no class labels to condition on; set dataset.conditional=false, or use a "
                f"dataset with labels (digits, mnist, cifar10, or image_folder with one sub-folder per class)"
            )
        return int(count)

    def split_labels(self, split: str) -> Tensor:
        """The int64 labels ``[N]`` of one split (``train``, ``val`` or ``test``), checked against ``num_classes``."""
        self._require_setup()
        dataset = getattr(self, f"{split}_set")
        labels = getattr(self, f"{split}_labels", None)
        if labels is None:
            labels = getattr(dataset, "labels", None)
        if labels is None:
            raise ValueError(
                f"{type(self).__name__} gives no labels for its {split} split, so it cannot be conditional; "
                f"set dataset.conditional=false"
            )
        labels = torch.as_tensor(labels, dtype=torch.int64)
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            raise ValueError(
                f"the {split} labels of {type(self).__name__} lie in [{int(labels.min())}, {int(labels.max())}], "
                f"outside [0, {self.num_classes}): fix the labels or the dataset's number of classes"
            )
        return labels

    def split_dataset(self, split: str) -> Dataset:
        """One split as the loaders see it: items x, or ``(x, y)`` when conditional."""
        self._require_setup()
        dataset = getattr(self, f"{split}_set")
        return LabelledDataset(dataset, self.split_labels(split)) if self.conditional else dataset

    def check_location(self) -> None:
        """Raise a ``ParameterError`` when the data cannot be where the arguments say (start-up validation calls
        it before any data is read; it may stat paths but reads nothing). Datasets generated or bundled: nothing."""

    @abc.abstractmethod
    def build_splits(self) -> tuple[Dataset, Dataset, Dataset]:
        """Create and return the (train, val, test) datasets; called once by :meth:`setup`."""

    def setup(self, stage: str | None = None) -> None:
        """Build ``train_set``, ``val_set`` and ``test_set`` (all of them, whatever the stage); idempotent."""
        if self.train_set is not None:
            return
        self.train_set, self.val_set, self.test_set = self.build_splits()

    def _require_setup(self) -> None:
        """Call :meth:`setup` if the user asks for a loader without having called it."""
        if self.train_set is None:
            self.setup()

    def _device(self) -> torch.device:
        """The device the attached trainer trains on (the CPU without a trainer)."""
        trainer = self.trainer
        return trainer.strategy.root_device if trainer is not None else torch.device("cpu")

    def _loader(self, dataset: Dataset, batch_size: int, train: bool, split: str = "train"):
        """Batches of a split: device-resident (``on_device``) or a DataLoader with the shared worker settings;
        training batches are shuffled (seeded per epoch) and the last incomplete one dropped.

        The sampler shards across DDP ranks itself (the trainer runs with ``use_distributed_sampler=False``)
        and, for training, resumes mid-epoch from the position stored by :meth:`state_dict`.
        """
        sampler = EpochSampler(len(dataset), seed=self.seed, shuffle=train)
        if train and self._resume is not None:
            sampler.skip(self._resume["epoch"], self._resume["batches_done"] * batch_size)
            self._resume = None
        device = self._device()
        held, reason = choose_on_device(self.on_device, dataset, device, split)
        if self.on_device_reasons.get(split) != reason and rank_and_world()[0] == 0:
            log.info(reason)
        self.on_device_reasons[split] = reason
        if held:
            source, labels = level_source(dataset)
            return DeviceBatches(source, batch_size, sampler, device, drop_last=train,
                                 with_index=isinstance(dataset, UniqueIndexDataset), labels=labels)
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            drop_last=train,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=self.pin_memory,
            collate_fn=collate,
        )

    def state_dict(self) -> dict[str, int]:
        """Where training stands in the current epoch, so a resumed run continues with the same batches."""
        trainer = self.trainer
        if trainer is None or not trainer.training:
            return {}
        return {"epoch": int(trainer.current_epoch),
                "batches_done": batches_done(trainer)}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        """Remember the position of a resumed epoch; the next training loader skips what was consumed."""
        self._resume = dict(state_dict) if state_dict else None

    def train_dataloader(self) -> DataLoader:
        """Shuffled (reproducibly, from ``seed``) training batches; the last incomplete batch is dropped."""
        self._require_setup()
        n = len(self.train_set)
        if n < self.batch_size:
            raise ValueError(
                f"batch_size={self.batch_size} is larger than the {n} training examples of "
                f"{type(self).__name__}, so drop_last=True would leave no training batch; "
                f"set dataset.batch_size <= {n}"
            )
        return self._loader(self.split_dataset("train"), self.batch_size, train=True, split="train")

    def val_dataloader(self) -> DataLoader:
        """Validation batches ``(index, x)`` (``(index, x, y)`` when conditional) in a fixed order (no shuffle, no
        drop); the index lets metrics count every example once under DDP, where the sampler pads with duplicates."""
        self._require_setup()
        return self._loader(UniqueIndexDataset(self.split_dataset("val")), self.eval_batch_size, train=False, split="val")

    def test_dataloader(self) -> DataLoader:
        """Test batches ``(index, x)`` (``(index, x, y)`` when conditional) in a fixed order (no shuffle, no drop)."""
        self._require_setup()
        return self._loader(UniqueIndexDataset(self.split_dataset("test")), self.eval_batch_size, train=False,
                            split="test")
