"""Decoding an image folder with a pool of worker processes: the same tensor as decoding in this process, in file
order, and a bad file still named in the error."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vdmlab.data import image_folder as IF


def write_pngs(root: Path, n: int, size: int = 10, seed: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size + i % 3, 3), dtype=np.uint8)).save(root / f"{i:04d}.png")
    return IF.find_images(root, ["png"])


def test_worker_pool_decodes_the_same_tensor_in_file_order(tmp_path, monkeypatch):
    files = write_pngs(tmp_path / "imgs", 23)
    monkeypatch.setattr(IF, "DECODE_CHUNK", 4)  # 6 tasks over 2 workers (forked: they see the patched size)
    assert IF.decode_workers(2, len(files)) == 2 and IF.decode_workers(None, 3) == 0
    pooled = IF.decode_images(files, 8, 3, workers=2)
    alone = IF.decode_images(files, 8, 3, workers=0)
    assert pooled.dtype == torch.uint8 and pooled.shape == (23, 3, 8, 8)
    assert torch.equal(pooled, alone)
    assert torch.equal(pooled[17], IF.load_image(files[17], 8, 3))


def test_a_too_small_file_decoded_by_a_worker_is_named(tmp_path, monkeypatch):
    files = write_pngs(tmp_path / "imgs", 12)
    Image.fromarray(np.zeros((3, 3, 3), np.uint8)).save(files[9])
    monkeypatch.setattr(IF, "DECODE_CHUNK", 4)
    with pytest.raises(IF.ImageTooSmallError, match=files[9].name):
        IF.decode_images(files, 8, 3, workers=2)
