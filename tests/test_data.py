"""Tests of the data layer (vdmlab.data) on real files written to tmp_path; no mocks, no downloads."""

from __future__ import annotations

import gzip
import pickle
import socket
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vdmlab.data import (
    TOY2D_NAMES,
    CIFAR10DataModule,
    DatasetNotFoundError,
    DigitsDataModule,
    ImageFolderDataModule,
    MNISTDataModule,
    Toy2DDataModule,
    make_toy2d,
    quantize,
)
from vdmlab.data.toy2d import five_cluster_centres

# the common datamodule arguments the configs set (conf/dataset/*.yaml); the constructors require them
LOADERS = {"eval_batch_size": None, "num_workers": 0}
COMMON = {"batch_size": 128, **LOADERS}


def assert_on_grid(x: torch.Tensor, num_levels: int) -> None:
    """x is float32, in [-1, 1] and exactly on the K-level grid."""
    assert x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1
    assert torch.equal(quantize(x, num_levels), x)


def stack(dataset) -> torch.Tensor:
    """All items of a dataset stacked into one tensor (items must be single tensors, not tuples)."""
    items = [dataset[i] for i in range(len(dataset))]
    assert all(isinstance(item, torch.Tensor) for item in items)
    return torch.stack(items)


def first_batch(dm) -> torch.Tensor:
    return next(iter(dm.train_dataloader()))


# --------------------------------------------------------------------------------------------- helpers
def test_quantize_snaps_to_nearest_level():
    x = torch.tensor([-1.0, -0.99, 0.0, 0.49, 0.51, 1.0, 1.7, -3.0])
    q = quantize(x, 5)  # grid -1, -0.5, 0, 0.5, 1
    assert torch.equal(q, torch.tensor([-1.0, -1.0, 0.0, 0.5, 0.5, 1.0, 1.0, -1.0]))
    grid = -1 + 2 * torch.arange(256) / 255
    assert torch.allclose(quantize(grid, 256), grid, atol=1e-7)


# --------------------------------------------------------------------------------------------- digits
@pytest.fixture(scope="module")
def digits() -> DigitsDataModule:
    dm = DigitsDataModule(batch_size=64, **LOADERS)
    dm.setup()
    return dm


def test_digits_contract_before_setup():
    dm = DigitsDataModule(**COMMON)
    assert dm.num_levels == 17 and dm.data_shape == (1, 8, 8) and dm.data_dim == 64
    assert dm.train_set is None  # nothing loaded yet


def test_digits_splits(digits: DigitsDataModule):
    sizes = [len(digits.train_set), len(digits.val_set), len(digits.test_set)]
    assert sizes == [1437, 180, 180]
    idx = digits.split_indices
    all_idx = np.concatenate([idx["train"], idx["val"], idx["test"]])
    assert len(np.unique(all_idx)) == 1797  # disjoint and complete
    rows = {
        split: {x.numpy().tobytes() for x in stack(ds)}
        for split, ds in (("train", digits.train_set), ("val", digits.val_set), ("test", digits.test_set))
    }
    assert not (rows["train"] & rows["val"] or rows["train"] & rows["test"] or rows["val"] & rows["test"])
    assert [len(digits.train_labels), len(digits.val_labels), len(digits.test_labels)] == sizes
    assert digits.train_labels.dtype == torch.int64


def test_digits_values_and_shapes(digits: DigitsDataModule):
    x = stack(digits.train_set)
    assert x.shape == (1437, 1, 8, 8)
    assert_on_grid(x, 17)
    assert x.min() == -1 and x.max() == 1
    levels = torch.round((x + 1) * 8)
    assert set(levels.unique().tolist()) <= set(range(17)) and len(levels.unique()) == 17


def test_digits_setup_idempotent(digits: DigitsDataModule):
    train_set = digits.train_set
    digits.setup("fit")
    assert digits.train_set is train_set


def test_digits_loaders(digits: DigitsDataModule):
    train = digits.train_dataloader()
    assert len(train) == 1437 // 64  # drop_last
    batch = next(iter(train))
    assert batch.shape == (64, 1, 8, 8) and batch.dtype == torch.float32
    for loader, dataset in ((digits.val_dataloader(), digits.val_set), (digits.test_dataloader(), digits.test_set)):
        indices, xs = zip(*loader)  # evaluation batches carry dataset indices for exact DDP metrics
        assert torch.equal(torch.cat(xs), stack(dataset))  # no shuffle, no drop
        assert torch.equal(torch.cat(indices), torch.arange(len(dataset)))


def test_loader_settings():
    dm = DigitsDataModule(batch_size=32, eval_batch_size=100, num_workers=2, on_device="false")
    train, val = dm.train_dataloader(), dm.val_dataloader()  # setup() runs on demand
    assert train.batch_size == 32 and val.batch_size == 100
    assert train.persistent_workers and train.num_workers == 2
    assert not DigitsDataModule(on_device="false", **COMMON).train_dataloader().persistent_workers
    held = DigitsDataModule(batch_size=32, eval_batch_size=100, num_workers=0)  # on_device=auto: gathered on device
    assert held.train_dataloader().batch_size == 32 and held.val_dataloader().batch_size == 100


def test_digits_shuffle_reproducible():
    a, b, c = (DigitsDataModule(batch_size=32, seed=s, **LOADERS) for s in (0, 0, 1))
    for dm in (a, b, c):
        dm.setup()
    assert torch.equal(first_batch(a), first_batch(b))
    assert torch.equal(first_batch(a), first_batch(a))  # a fresh loader restarts the same order
    assert not torch.equal(first_batch(a), first_batch(c))


def test_batch_larger_than_train_set_is_explained():
    dm = Toy2DDataModule(n_train=10, n_val=5, n_test=5, batch_size=16, **LOADERS)
    with pytest.raises(ValueError, match="batch_size"):
        dm.train_dataloader()


# --------------------------------------------------------------------------------------------- toy2d
@pytest.mark.parametrize("name", TOY2D_NAMES)
def test_toy2d_generates_on_grid(name: str):
    dm = Toy2DDataModule(name=name, n_train=500, n_val=100, n_test=50, batch_size=100, **LOADERS)
    assert dm.num_levels == 256 and dm.data_shape == (2,)
    dm.setup()
    x = stack(dm.train_set)
    assert x.shape == (500, 2)
    assert_on_grid(x, 256)
    assert len(dm.val_set) == 100 and len(dm.test_set) == 50
    assert first_batch(dm).shape == (100, 2)
    raw = make_toy2d(name, 7, np.random.default_rng(0))
    assert raw.shape == (7, 2) and np.isfinite(raw).all()


def test_toy2d_deterministic_from_seed():
    a, b, c = (Toy2DDataModule(n_train=200, n_val=20, n_test=20, seed=s, **COMMON) for s in (3, 3, 4))
    for dm in (a, b, c):
        dm.setup()
    assert torch.equal(stack(a.train_set), stack(b.train_set))
    assert not torch.equal(stack(a.train_set), stack(c.train_set))
    # each split has its own stream, so the test set does not depend on n_train
    d = Toy2DDataModule(n_train=50, n_val=20, n_test=20, seed=3, **COMMON)
    d.setup()
    assert torch.equal(stack(a.test_set), stack(d.test_set))


def box_grid(n: int) -> tuple[torch.Tensor, float]:
    """Midpoints [n*n, 2] of an n x n grid of cells over [-1, 1]², and the cell area."""
    h = 2.0 / n
    c = -1 + h / 2 + h * torch.arange(n, dtype=torch.float64)
    xx, yy = torch.meshgrid(c, c, indexing="ij")
    return torch.stack([xx.reshape(-1), yy.reshape(-1)], 1), h * h


def test_five_clusters_density():
    dm = Toy2DDataModule(name="five_clusters", **COMMON)
    assert dm.has_density
    points, area = box_grid(400)
    log_p = dm.log_prob(points)
    assert log_p.shape == (points.shape[0],)
    # Midpoint rule with cell side 0.005 = σ/16: its error on a Gaussian is far below 1e-6, and the mass
    # outside the box is < 1e-5 (every centre is 0.4 = 5σ from the nearest edge), so 1e-3 is generous.
    assert abs(float(log_p.exp().sum() * area) - 1.0) < 1e-3
    centres = torch.as_tensor(five_cluster_centres())
    assert (dm.log_prob(centres) > dm.log_prob(torch.zeros(1, 2, dtype=torch.float64)) + 5).all()
    assert (dm.log_prob(centres) > dm.log_prob(centres + 0.3)).all()


def test_checkerboard_density():
    dm = Toy2DDataModule(name="checkerboard", **COMMON)
    points, area = box_grid(400)  # cell edges fall on the board's edges: the quadrature is exact
    p = dm.log_prob(points).exp()
    assert abs(float(p.sum() * area) - 1.0) < 1e-9
    assert torch.unique(p).tolist() == [0.0, pytest.approx(1 / 1.28)]
    inside = dm.log_prob(torch.tensor([[-0.7, -0.7], [-0.3, -0.3]]))
    outside = dm.log_prob(torch.tensor([[-0.3, -0.7], [0.9, 0.9]]))
    assert torch.isfinite(inside).all() and torch.isinf(outside).all()


def test_moons_has_no_density():
    dm = Toy2DDataModule(name="moons", **COMMON)
    assert not dm.has_density
    with pytest.raises(ValueError, match="moons has no analytic density"):
        dm.log_prob(torch.zeros(2, 2))


def test_toy2d_unknown_name_lists_allowed():
    with pytest.raises(ValueError) as info:
        Toy2DDataModule(name="spirals", **COMMON)
    for name in TOY2D_NAMES:
        assert name in str(info.value)


# --------------------------------------------------------------------------------------------- MNIST
def write_idx(path: Path, array: np.ndarray, magic: int) -> None:
    """IDX file: big-endian magic (0x0803 images / 0x0801 labels), big-endian dims, then uint8 data."""
    header = struct.pack(">I", magic) + struct.pack(">" + "I" * array.ndim, *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_fake_mnist(root: Path, n_train: int = 20, n_test: int = 10, compress: bool = False) -> dict:
    """Tiny MNIST in torchvision's layout ``root/MNIST/raw``; returns the arrays written."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": (rng.integers(0, 256, (n_train, 28, 28)), 0x00000803),
        "train-labels-idx1-ubyte": (rng.integers(0, 10, n_train), 0x00000801),
        "t10k-images-idx3-ubyte": (rng.integers(0, 256, (n_test, 28, 28)), 0x00000803),
        "t10k-labels-idx1-ubyte": (rng.integers(0, 10, n_test), 0x00000801),
    }
    arrays["train-images-idx3-ubyte"][0][0, 0, 0] = 0
    arrays["train-images-idx3-ubyte"][0][0, 0, 1] = 255
    for name, (array, magic) in arrays.items():
        write_idx(raw / name, array, magic)
        if compress:
            (raw / (name + ".gz")).write_bytes(gzip.compress((raw / name).read_bytes()))
            (raw / name).unlink()
    return {name: array for name, (array, _) in arrays.items()}


def test_mnist_loads_fake_files(tmp_path: Path):
    arrays = write_fake_mnist(tmp_path)
    dm = MNISTDataModule(root=str(tmp_path), download=False, val_size=5, batch_size=4, **LOADERS, pad_to_32=False)
    assert dm.num_levels == 256 and dm.data_shape == (1, 28, 28)
    dm.prepare_data()
    dm.setup()
    assert [len(dm.train_set), len(dm.val_set), len(dm.test_set)] == [15, 5, 10]
    train = stack(dm.train_set)
    assert train.shape == (15, 1, 28, 28)
    assert_on_grid(train, 256)
    assert train.min() == -1 and train.max() == 1
    images = torch.from_numpy(arrays["train-images-idx3-ubyte"]).float()
    # val = the last val_size images of the official train split
    assert torch.allclose(dm.val_set[0][0], 2 * images[15] / 255 - 1, atol=1e-6)
    test_image = torch.from_numpy(arrays["t10k-images-idx3-ubyte"][9]).float()
    assert torch.allclose(dm.test_set[9][0], 2 * test_image / 255 - 1, atol=1e-6)
    assert torch.equal(dm.val_labels, torch.from_numpy(arrays["train-labels-idx1-ubyte"][15:]).long())
    assert first_batch(dm).shape == (4, 1, 28, 28)


def test_mnist_pad_and_gz(tmp_path: Path):
    write_fake_mnist(tmp_path, compress=True)  # only the .gz files, as copied from the download site
    dm = MNISTDataModule(root=str(tmp_path), download=False, val_size=5, pad_to_32=True, **COMMON)
    assert dm.data_shape == (1, 32, 32)
    dm.setup()
    x = stack(dm.test_set)
    assert x.shape == (10, 1, 32, 32)
    assert_on_grid(x, 256)
    assert (x[..., :2, :] == -1).all() and (x[..., :, -2:] == -1).all()


# --------------------------------------------------------------------------------------------- CIFAR-10
def write_fake_cifar(root: Path, per_batch: int = 4, n_test: int = 10) -> list[np.ndarray]:
    """Tiny CIFAR-10 in ``root/cifar-10-batches-py``: pickled dicts with uint8 data [N, 3072] and labels.

    torchvision unpickles with ``encoding="latin1"`` and reads ``entry["data"]``; the genuine (Python 2)
    files have ``str`` keys, which a Python-3 pickle reproduces with str (not bytes) keys.
    """
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    batches = []
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        n = n_test if name == "test_batch" else per_batch
        data = rng.integers(0, 256, (n, 3072)).astype(np.uint8)
        batches.append(data)
        entry = {"batch_label": name, "labels": rng.integers(0, 10, n).tolist(), "data": data}
        (folder / name).write_bytes(pickle.dumps(entry, protocol=2))
    meta = {"label_names": [f"class{i}" for i in range(10)], "num_cases_per_batch": per_batch}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return batches


def test_cifar10_loads_fake_files(tmp_path: Path):
    batches = write_fake_cifar(tmp_path)
    dm = CIFAR10DataModule(root=str(tmp_path), download=False, val_size=6, batch_size=5, **LOADERS)
    assert dm.num_levels == 256 and dm.data_shape == (3, 32, 32)
    dm.prepare_data()
    dm.setup()
    assert [len(dm.train_set), len(dm.val_set), len(dm.test_set)] == [14, 6, 10]
    x = stack(dm.train_set)
    assert x.shape == (14, 3, 32, 32)
    assert_on_grid(x, 256)
    last = torch.from_numpy(batches[4][-1].reshape(3, 32, 32)).float()  # CHW layout of the 3072 bytes
    assert torch.allclose(dm.val_set[5], 2 * last / 255 - 1, atol=1e-6)
    assert first_batch(dm).shape == (5, 3, 32, 32)


# --------------------------------------------------------------------------------------------- missing data
@pytest.mark.parametrize(
    ("cls", "folder", "url"),
    [(MNISTDataModule, "MNIST/raw", "mnist"), (CIFAR10DataModule, "cifar-10-batches-py", "cifar-10")],
)
def test_missing_files_without_download(tmp_path: Path, cls, folder: str, url: str):
    dm = cls(root=str(tmp_path / "empty"), download=False, **COMMON, **({"pad_to_32": False} if cls is MNISTDataModule else {}))
    for step in (dm.prepare_data, dm.setup):
        with pytest.raises(DatasetNotFoundError) as info:
            step()
        message = str(info.value)
        assert str((tmp_path / "empty" / folder).resolve()) in message
        assert url in message and "http" in message and "dataset.root" in message
    assert isinstance(info.value, FileNotFoundError)


def _network_reachable() -> bool:
    try:
        socket.create_connection(("ossci-datasets.s3.amazonaws.com", 443), timeout=1).close()
        return True
    except OSError:
        return False


@pytest.mark.parametrize("cls", [MNISTDataModule, CIFAR10DataModule])
def test_missing_files_download_fails_offline(tmp_path: Path, cls):
    if _network_reachable():
        pytest.skip("network reachable: a real download is out of scope for unit tests")
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(2)
    try:
        dm = cls(root=str(tmp_path), download=True, **COMMON, **({"pad_to_32": False} if cls is MNISTDataModule else {}))
        with pytest.raises(DatasetNotFoundError, match="download failed") as info:
            dm.prepare_data()
    finally:
        socket.setdefaulttimeout(previous)
    assert str(dm.files_folder.resolve()) in str(info.value)


# --------------------------------------------------------------------------------------------- image folder
@pytest.fixture
def image_dir(tmp_path: Path) -> Path:
    """Five images of different sizes and modes, one in a subfolder, plus a non-image file."""
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    Image.new("RGB", (40, 30), (255, 0, 128)).save(root / "a.png")
    Image.new("RGB", (16, 16), (10, 20, 30)).save(root / "b.PNG")
    Image.new("L", (50, 64), 200).save(root / "sub" / "c.png")
    Image.new("RGBA", (33, 21), (0, 255, 0, 255)).save(root / "sub" / "d.png")
    Image.new("RGB", (20, 25), (0, 0, 255)).save(root / "e.bmp")
    (root / "notes.txt").write_text("not an image")
    return root


@pytest.mark.parametrize("channels", [1, 3])
def test_image_folder_loads(image_dir: Path, channels: int):
    dm = ImageFolderDataModule(cache_dir=None, root=str(image_dir), image_size=12, channels=channels, batch_size=2, **LOADERS)
    assert dm.num_levels == 256 and dm.data_shape == (channels, 12, 12)
    dm.setup()
    sizes = [len(dm.train_set), len(dm.val_set), len(dm.test_set)]
    assert sizes == [3, 1, 1]
    x = torch.cat([stack(dm.train_set), stack(dm.val_set), stack(dm.test_set)])
    assert x.shape == (5, channels, 12, 12)
    assert_on_grid(x, 256)
    assert first_batch(dm).shape == (2, channels, 12, 12)
    again = ImageFolderDataModule(cache_dir=None, root=str(image_dir), image_size=12, channels=channels, **COMMON)
    again.setup()
    assert again.val_set.files == dm.val_set.files  # seeded split


def test_image_folder_pixel_values(image_dir: Path):
    dm = ImageFolderDataModule(cache_dir=None, root=str(image_dir), image_size=8, channels=3, val_fraction=0,
                               test_fraction=0, **COMMON)
    dm.setup()
    files = dm.train_set.files
    x = dm.train_set[files.index(image_dir / "a.png")]
    expected = torch.tensor([255.0, 0.0, 128.0]) * 2 / 255 - 1  # a constant image stays constant
    assert torch.allclose(x, expected[:, None, None].expand(3, 8, 8), atol=1e-6)


def test_image_folder_empty(tmp_path: Path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    dm = ImageFolderDataModule(cache_dir=None, root=str(tmp_path / "empty"), **COMMON)
    with pytest.raises(ValueError) as info:
        dm.setup()
    assert str((tmp_path / "empty").resolve()) in str(info.value)
    for ext in ("png", "jpg", "jpeg", "bmp", "webp", "gif"):
        assert ext in str(info.value)


def test_image_folder_corrupt_file(image_dir: Path):
    bad = image_dir / "sub" / "broken.png"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8).tobytes())
    with pytest.raises(ValueError, match="broken.png") as info:
        ImageFolderDataModule(cache_dir=None, root=str(image_dir), **COMMON).setup()
    assert str(bad.resolve()) in str(info.value)


def test_image_folder_missing_root(tmp_path: Path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError) as info:
        ImageFolderDataModule(cache_dir=None, root=str(missing), **COMMON).setup()
    assert str(missing.resolve()) in str(info.value) and "dataset.root" in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "match"), [({"channels": 2}, "channels"), ({"image_size": 0}, "image_size")]
)
def test_image_folder_bad_arguments(image_dir: Path, kwargs: dict, match: str):
    with pytest.raises(ValueError, match=match):
        ImageFolderDataModule(cache_dir=None, root=str(image_dir), **kwargs, **COMMON)
