"""Checkpoint writes that are atomic on every filesystem (the trainer's ``plugins``; conf/trainer/default.yaml).

Lightning's own writer serializes to memory and then writes the target through fsspec, which on a local folder on
another filesystem than the temporary folder copies over the target: a crash during the copy leaves a truncated
``last.ckpt`` and a full disk leaves a truncated file. This writer always goes through
:func:`vdmlab.cache.atomic_write_bytes` (temporary file in the target's folder, fsync, rename).
"""

from __future__ import annotations

import io
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from vdmlab.cache import atomic_write_bytes


def checkpoint_bytes(checkpoint: dict[str, Any]) -> bytes:
    """The serialized checkpoint (``torch.save`` format)."""
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    return buffer.getvalue()


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose ``save_checkpoint`` writes in the target's own folder, fsyncs and renames."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options (got {storage_options!r})")
        atomic_write_bytes(checkpoint_bytes(checkpoint), path)
