"""FID samples at scale: batched, written to disk as they are made, resumable, split across DDP ranks.

The ``num_samples`` samples are cut into batches of ``batch_size``; batch b holds the global sample indices
``[b·batch_size, (b + 1)·batch_size)`` and is drawn with its own generator, seeded by :func:`batch_seed` from
(seed, repeat, b) alone. Hence

- the samples do not depend on how many ranks made them, nor on whether the run was interrupted;
- DDP rank r makes the batches ``b ≡ r (mod world size)`` (:func:`rank_batches`): every batch, and so every sample
  seed, is used exactly once across the ranks, and FIDMetric's feature sums (summed over ranks) see every sample once;
- with a folder, each batch is written as ``<folder>/repeat<r>/batch<b>.npy`` (its data levels as uint8,
  ``[n, C, H, W]``; written to a temporary name, then renamed, so a file that exists is complete) the moment it
  is made; a restarted run loads the batches already written and samples only the missing ones. The metric is fed
  from the stored levels in both cases, so a resumed FID is the uninterrupted one.

The memory of FID itself does not grow with N: FIDMetric keeps Σf, Σffᵀ and n (float64), one batch of images is
in memory at a time.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from vdmlab import seeds
from vdmlab.distributed import all_reduce_sum, rank_and_world
from vdmlab.metrics.digits_classifier import class_matches
from vdmlab.metrics.progress import progress


def batch_seed(seed: int, repeat: int, batch: int) -> int:
    """The sample seed of FID batch ``batch`` of repeat ``repeat``: one seed per (repeat, batch), rank-independent."""
    return seed + 1 + seeds.FID_REPEAT_STRIDE * repeat + seeds.FID_BATCH_STRIDE * batch


def num_batches(num_samples: int, batch_size: int) -> int:
    return -(-int(num_samples) // int(batch_size))


def batch_indices(batch: int, num_samples: int, batch_size: int) -> range:
    """The global sample indices of batch ``batch``."""
    return range(batch * batch_size, min((batch + 1) * batch_size, num_samples))


def rank_batches(num_samples: int, batch_size: int, rank: int | None = None, world_size: int | None = None) -> range:
    """The batches this rank makes, ``range(rank, num_batches, world_size)``: disjoint across ranks, covering all."""
    if rank is None or world_size is None:
        rank, world_size = rank_and_world()
    return range(rank, num_batches(num_samples, batch_size), world_size)


def to_levels(x: Tensor, num_levels: int) -> Tensor:
    """Images in [-1, 1] on the K-level grid → their level indices 0..K-1 (uint8, K ≤ 256)."""
    return ((x.float().clamp(-1.0, 1.0) + 1.0) * (0.5 * (num_levels - 1))).round().to(torch.uint8)


def from_levels(levels: Tensor, num_levels: int) -> Tensor:
    """Level indices → the images 2k/(K-1) - 1 in [-1, 1] (float32)."""
    return levels.float() * (2.0 / (num_levels - 1)) - 1.0


def batch_path(folder: Path, repeat: int, batch: int) -> Path:
    return Path(folder) / f"repeat{repeat}" / f"batch{batch:07d}.npy"


def load_batch(path: Path, expected: int) -> Tensor | None:
    """The stored levels of one batch, or None when the file is missing or holds the wrong number of samples."""
    if not path.is_file():
        return None
    try:
        levels = torch.from_numpy(np.load(path))
    except (OSError, ValueError) as err:  # unreadable: sampled again (the file is replaced, not trusted)
        print(f"FID samples: {path} is unreadable ({type(err).__name__}: {err}); sampling that batch again")
        return None
    return levels if levels.shape[0] == expected else None


def save_batch(path: Path, levels: Tensor) -> None:
    """Write ``levels`` to ``path`` atomically (temporary file in the same folder, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npy")
    np.save(tmp, levels.cpu().numpy())
    os.replace(tmp, path)


def stored_batches(folder: Path, repeat: int) -> list[int]:
    """The batch numbers already written for ``repeat``."""
    found = (re.fullmatch(r"batch(\d+)\.npy", p.name) for p in (Path(folder) / f"repeat{repeat}").glob("batch*.npy"))
    return sorted(int(m.group(1)) for m in found if m)


def interrupted_message(folder: str | os.PathLike | None, repeat: int, total: int) -> str:
    """What an interrupted FID sampling kept, and how to go on from it."""
    if folder is None:
        return ("FID sampling interrupted: its samples were not kept. Set fid.samples_dir=<folder> to write them as "
                "they are made; a rerun of the same command then samples only the missing batches.")
    done = len(stored_batches(Path(folder), repeat))
    return (f"FID sampling interrupted: {done} of {total} batches of repeat {repeat} are saved in "
            f"{Path(folder) / f'repeat{repeat}'}; rerun the same command to sample only the missing ones.")


def sharded_sample_fid(metric, sample: Callable[..., Tensor], num_samples: int, batch_size: int, num_levels: int,
                       seed: int, repeat: int = 0, folder: str | os.PathLike | None = None,
                       labels: Callable[[range], Tensor] | None = None, classifier=None) -> dict[str, float]:
    """FID of ``num_samples`` samples made batch by batch (see the module docstring) against ``metric``'s real
    statistics; collective under DDP (every rank must call it).

    ``sample(n, generator)`` (unconditional) or ``sample(n, generator, y)`` (``labels(indices)`` gives the class
    labels of global sample indices) returns n images in [-1, 1] on the K = ``num_levels`` grid. With ``folder``
    the batches are written there as they are made and reused on a restart. With a ``classifier`` the result holds
    ``class_acc`` (conditional models), summed over ranks. With ``folder`` also ``fid_batches_loaded``: the batches
    read from it.
    """
    metric.reset()  # keeps the real statistics when the metric was built with reset_real_features=False
    device = metric.device
    correct, total, loaded = 0.0, 0.0, 0
    batches = rank_batches(num_samples, batch_size)
    try:
        for b in progress(batches, total=len(batches), desc=f"FID samples (repeat {repeat})"):
            indices = batch_indices(b, num_samples, batch_size)
            path = batch_path(Path(folder), repeat, b) if folder is not None else None
            levels = load_batch(path, len(indices)) if path is not None else None
            y = labels(indices) if labels is not None else None
            if levels is None:
                generator = torch.Generator(device=device).manual_seed(batch_seed(seed, repeat, b))
                x = sample(len(indices), generator) if y is None else sample(len(indices), generator, y)
                levels = to_levels(x, num_levels)
                if path is not None:
                    save_batch(path, levels)
            else:
                loaded += 1
            x = from_levels(levels.to(device), num_levels)
            metric.update(x, real=False)
            if y is not None and classifier is not None:
                correct, total = correct + float(class_matches(classifier, x, y).sum()), total + len(x)
    except KeyboardInterrupt:
        print(interrupted_message(folder, repeat, num_batches(num_samples, batch_size)), file=sys.stderr, flush=True)
        raise
    values = metric.compute_dict()
    counts = all_reduce_sum(torch.tensor([correct, total, loaded], dtype=torch.float64, device=device))
    if labels is not None and classifier is not None:
        values["class_acc"] = float(counts[0] / counts[1].clamp_min(1))
    if folder is not None:
        values["fid_batches_loaded"] = int(counts[2])
    return values
