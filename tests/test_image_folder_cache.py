"""Image folders at scale: decoded once into a cached uint8 tensor keyed by the files, rebuilt when they change,
a corrupt cache moved aside and rebuilt, class sub-folders as labels, the size/crop rule and its errors."""

import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vdmlab.data import image_folder as IF
from vdmlab.data.image_folder import ImageFolderDataModule, ImageTooSmallError


def write_classes(root: Path, per_class: int = 4, size: int = 12) -> None:
    rng = np.random.default_rng(0)
    for name in ("cat", "dog", "emu"):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (size, size + 3 * i, 3), dtype=np.uint8)).save(root / name / f"{i}.png")


def datamodule(root: Path, cache: Path, **kwargs) -> ImageFolderDataModule:
    dm = ImageFolderDataModule(root=str(root), image_size=8, cache_dir=str(cache), val_fraction=0.2, test_fraction=0.2,
                               batch_size=2, eval_batch_size=None, num_workers=0, **kwargs)
    dm.setup()
    return dm


def all_levels(dm) -> torch.Tensor:
    return torch.cat([dm.train_set.levels, dm.val_set.levels, dm.test_set.levels])


def test_folder_is_decoded_once_and_loaded_from_the_cache(tmp_path, monkeypatch):
    write_classes(tmp_path / "images")
    first = datamodule(tmp_path / "images", tmp_path / "cache")
    assert first.cache_path.is_file() and first.train_set.levels.dtype == torch.uint8
    monkeypatch.setattr(IF, "load_image", lambda *a, **k: pytest.fail("decoded again instead of using the cache"))
    second = datamodule(tmp_path / "images", tmp_path / "cache")
    assert second.cache_path == first.cache_path
    assert torch.equal(all_levels(second), all_levels(first)) and second.val_set.files == first.val_set.files


def test_changed_files_rebuild_the_cache_and_keep_the_old_one(tmp_path):
    write_classes(tmp_path / "images")
    first = datamodule(tmp_path / "images", tmp_path / "cache")
    changed = tmp_path / "images" / "cat" / "0.png"
    Image.new("RGB", (12, 12), (1, 2, 3)).save(changed)
    os.utime(changed, ns=(time.time_ns(), time.time_ns() + 10**9))  # a later mtime, whatever the clock resolution
    second = datamodule(tmp_path / "images", tmp_path / "cache")
    assert second.cache_path != first.cache_path and first.cache_path.is_file()  # the earlier cache is not lost
    index = [str(f) for f in second.train_set.files + second.val_set.files + second.test_set.files].index(str(changed))
    assert (all_levels(second)[index] == torch.tensor([1, 2, 3], dtype=torch.uint8)[:, None, None]).all()
    (tmp_path / "images" / "dog" / "extra.png").write_bytes(changed.read_bytes())
    third = datamodule(tmp_path / "images", tmp_path / "cache")
    assert third.cache_path not in (first.cache_path, second.cache_path) and len(all_levels(third)) == 13


def test_corrupt_cache_is_moved_aside_and_rebuilt(tmp_path):
    write_classes(tmp_path / "images")
    good = datamodule(tmp_path / "images", tmp_path / "cache")
    good.cache_path.write_bytes(b"\x00garbage")
    with pytest.warns(UserWarning, match="image folder cache.*unusable.*moved it to"):
        rebuilt = datamodule(tmp_path / "images", tmp_path / "cache")
    assert torch.equal(all_levels(rebuilt), all_levels(good))
    assert good.cache_path.with_name(good.cache_path.name + ".corrupt-0").read_bytes() == b"\x00garbage"


def test_class_subfolders_are_labels_kept_in_the_cache(tmp_path, monkeypatch):
    write_classes(tmp_path / "images")
    dm = datamodule(tmp_path / "images", tmp_path / "cache")
    assert dm.class_names == ["cat", "dog", "emu"] and dm.classes == dm.class_names and dm.labels.shape == (12,)
    for split in (dm.train_set, dm.val_set, dm.test_set):
        assert [dm.class_names[k] for k in split.labels.tolist()] == [f.parent.name for f in split.files]
    monkeypatch.setattr(IF, "load_image", lambda *a, **k: pytest.fail("decoded again"))
    again = datamodule(tmp_path / "images", tmp_path / "cache")
    assert torch.equal(again.train_set.labels, dm.train_set.labels) and len(again.class_names) == 3


def test_images_in_the_root_mean_no_labels(tmp_path):
    write_classes(tmp_path / "images")
    Image.new("RGB", (9, 9)).save(tmp_path / "images" / "loose.png")
    dm = datamodule(tmp_path / "images", tmp_path / "cache")
    assert dm.labels is None and dm.class_names == [] and dm.num_classes is None and dm.train_set.labels is None


def test_rule_mixed_sizes_non_square_gray_and_odd_sizes(tmp_path):
    root = tmp_path / "mixed"
    root.mkdir()
    wide = np.zeros((20, 31, 3), dtype=np.uint8)  # 31 wide, 20 high: shorter side 20 = S, crop 31 → 20 from x = 6
    wide[:, :6] = (255, 0, 0)
    wide[:, 6:26] = (0, 255, 0)
    wide[:, 26:] = (0, 0, 255)
    Image.fromarray(wide).save(root / "wide.png")
    Image.new("L", (40, 57), 77).save(root / "gray_odd.png")
    Image.new("RGBA", (25, 20), (5, 6, 7, 0)).save(root / "alpha.png")
    dm = ImageFolderDataModule(root=str(root), image_size=20, channels=3, val_fraction=0, test_fraction=0,
                               cache_dir=None, batch_size=2, eval_batch_size=None, num_workers=0)
    dm.setup()
    levels = {f.name: dm.train_set.levels[i] for i, f in enumerate(dm.train_set.files)}
    assert all(v.shape == (3, 20, 20) for v in levels.values())
    assert (levels["wide.png"] == torch.tensor([0, 255, 0], dtype=torch.uint8)[:, None, None]).all()  # the centre only
    assert (levels["gray_odd.png"] == 77).all()  # grayscale repeated into RGB
    assert (levels["alpha.png"] == torch.tensor([5, 6, 7], dtype=torch.uint8)[:, None, None]).all()  # alpha dropped


def test_image_smaller_than_image_size_names_the_file_and_the_fix(tmp_path):
    write_classes(tmp_path / "images", size=12)
    Image.new("RGB", (12, 5)).save(tmp_path / "images" / "dog" / "tiny.png")
    with pytest.raises(ImageTooSmallError, match=r"tiny.png is 12x5.*dataset.image_size=8.*dataset.image_size<=5"):
        datamodule(tmp_path / "images", tmp_path / "cache")
    assert not list((tmp_path / "cache").glob("*.pt"))  # nothing half-written


def test_training_order_is_a_function_of_seed_and_epoch(tmp_path):
    write_classes(tmp_path / "images")
    orders = []
    for _ in range(2):
        dm = datamodule(tmp_path / "images", tmp_path / "cache")
        sampler = dm.train_dataloader().sampler
        epoch_orders = []
        for epoch in (0, 1):
            sampler.set_epoch(epoch)
            epoch_orders.append(list(sampler))
        orders.append(epoch_orders)
    assert orders[0] == orders[1] and orders[0][0] != orders[0][1]
