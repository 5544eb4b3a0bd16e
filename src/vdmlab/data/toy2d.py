"""Toy 2-D datasets in the [-1, 1]² box, quantized to a K-level grid, with analytic densities where known.

- ``five_clusters``: the five-cluster set of Figure 2.4, an equal-weight mixture of 5 isotropic Gaussians
  (std ``noise``, default 0.08) with centres evenly spaced on a circle of radius 0.6;
- ``moons``: scikit-learn's ``make_moons`` (noise default 0.05), rescaled into the box with a margin
  (no analytic density);
- ``checkerboard``: uniform on the 8 black squares of a 4x4 checkerboard over [-0.8, 0.8]²;
- ``ring``: uniform angle, radius ~ N(0.6, noise²) (noise default 0.03);
- ``gaussian``: N(0, noise² I) (noise default 0.25).

``log_prob`` is the density of the continuous, unquantized distribution before the clip to the box: the
clip moves a negligible mass (five_clusters: every centre is >= 5 std from the box edge) and quantization
is a perturbation of at most half a grid step.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from sklearn.datasets import make_moons
from torch import Tensor
from torch.utils.data import Dataset

from vdmlab.checks import ParameterError, check_int, check_positive
from vdmlab.data.base import DiffusionDataModule
from vdmlab.data.datasets import LevelDataset, level_dtype, values_to_levels

TOY2D_NAMES = ("five_clusters", "moons", "checkerboard", "ring", "gaussian")
DEFAULT_NOISE = {"five_clusters": 0.08, "moons": 0.05, "checkerboard": 0.0, "ring": 0.03, "gaussian": 0.25}
FIVE_CLUSTERS_RADIUS = 0.6
RING_RADIUS = 0.6
CHECKER_HALF_WIDTH = 0.8
CHECKER_CELLS = 4
MOONS_MARGIN = 0.8  # moons' x-range [-1, 2] is mapped onto [-0.8, 0.8] (same scale for y)


def _check_name(name: str) -> None:
    """Raise a ValueError listing the allowed names unless ``name`` is one of them."""
    if name not in TOY2D_NAMES:
        raise ParameterError("name", name, f"unknown toy2d dataset name; allowed names: {', '.join(TOY2D_NAMES)}")


def _noise(name: str, noise: float | None) -> float:
    """The noise scale of ``name``: ``noise`` itself, or the dataset's default when None."""
    value = DEFAULT_NOISE[name] if noise is None else float(noise)
    if value < 0 or (value == 0 and name in ("five_clusters", "ring", "gaussian")):
        raise ValueError(f"noise for toy2d {name!r} must be > 0, got {value}")
    return value


def five_cluster_centres() -> np.ndarray:
    """The 5 mixture centres [5, 2], evenly spaced on the circle of radius 0.6, the first one at the top."""
    angles = math.pi / 2 + 2 * math.pi * np.arange(5) / 5
    return FIVE_CLUSTERS_RADIUS * np.stack([np.cos(angles), np.sin(angles)], axis=1)


def _sample_five_clusters(n: int, rng: np.random.Generator, noise: float) -> np.ndarray:
    """Equal-weight mixture of 5 isotropic Gaussians."""
    component = rng.integers(0, 5, size=n)
    return five_cluster_centres()[component] + noise * rng.standard_normal((n, 2))


def _sample_moons(n: int, rng: np.random.Generator, noise: float) -> np.ndarray:
    """sklearn's two moons, affinely mapped (same scale on both axes) into the box."""
    points, _ = make_moons(n_samples=n, noise=noise, random_state=int(rng.integers(0, 2**31 - 1)))
    return (points - np.array([0.5, 0.25])) * (MOONS_MARGIN / 1.5)


def _checker_black_cells() -> np.ndarray:
    """Lower-left corners [8, 2] of the black squares ((i + j) even) of the 4x4 board."""
    width = 2 * CHECKER_HALF_WIDTH / CHECKER_CELLS
    cells = [(i, j) for i in range(CHECKER_CELLS) for j in range(CHECKER_CELLS) if (i + j) % 2 == 0]
    return -CHECKER_HALF_WIDTH + width * np.array(cells, dtype=np.float64)


def _sample_checkerboard(n: int, rng: np.random.Generator, noise: float) -> np.ndarray:
    """Uniform on the black squares (``noise`` is ignored)."""
    width = 2 * CHECKER_HALF_WIDTH / CHECKER_CELLS
    corners = _checker_black_cells()
    return corners[rng.integers(0, len(corners), size=n)] + width * rng.random((n, 2))


def _sample_ring(n: int, rng: np.random.Generator, noise: float) -> np.ndarray:
    """Uniform angle, Gaussian radius around ``RING_RADIUS``."""
    angle = rng.uniform(0, 2 * math.pi, size=n)
    radius = RING_RADIUS + noise * rng.standard_normal(n)
    return radius[:, None] * np.stack([np.cos(angle), np.sin(angle)], axis=1)


def _sample_gaussian(n: int, rng: np.random.Generator, noise: float) -> np.ndarray:
    """Centred isotropic Gaussian."""
    return noise * rng.standard_normal((n, 2))


_SAMPLERS: dict[str, Callable[[int, np.random.Generator, float], np.ndarray]] = {
    "five_clusters": _sample_five_clusters,
    "moons": _sample_moons,
    "checkerboard": _sample_checkerboard,
    "ring": _sample_ring,
    "gaussian": _sample_gaussian,
}


def make_toy2d(name: str, n: int, rng: np.random.Generator, noise: float | None = None) -> np.ndarray:
    """Draw ``n`` points [n, 2] (float64, unquantized and unclipped) of toy dataset ``name`` from ``rng``.

    ``noise`` None uses the dataset's default (see ``DEFAULT_NOISE``).
    """
    _check_name(name)
    return _SAMPLERS[name](int(n), rng, _noise(name, noise))


def has_density(name: str) -> bool:
    """Whether toy dataset ``name`` has an analytic density (all but moons)."""
    _check_name(name)
    return name != "moons"


def toy2d_log_prob(name: str, x: Tensor, noise: float | None = None) -> Tensor:
    """Natural-log density [N] of the continuous toy distribution ``name`` at points x [N, 2]."""
    _check_name(name)
    if not has_density(name):
        raise ValueError(f"{name} has no analytic density")
    x = torch.as_tensor(x)
    if not x.is_floating_point():
        x = x.to(torch.get_default_dtype())
    if x.ndim != 2 or x.shape[-1] != 2:
        raise ValueError(f"log_prob expects points of shape [N, 2], got {tuple(x.shape)}")
    sigma = _noise(name, noise)
    if name == "five_clusters":
        return _five_clusters_log_prob(x, sigma)
    if name == "checkerboard":
        return _checkerboard_log_prob(x)
    if name == "ring":
        return _ring_log_prob(x, sigma)
    return _gaussian_log_prob(x, sigma)


def _gaussian_log_prob(x: Tensor, sigma: float) -> Tensor:
    """log N(x; 0, σ² I) in 2-D."""
    return -(x**2).sum(-1) / (2 * sigma**2) - math.log(2 * math.pi * sigma**2)


def _five_clusters_log_prob(x: Tensor, sigma: float) -> Tensor:
    """Exact equal-weight GMM log density via logsumexp over the 5 components."""
    centres = torch.as_tensor(five_cluster_centres(), dtype=x.dtype, device=x.device)
    sq_dist = ((x[:, None, :] - centres[None]) ** 2).sum(-1)
    log_norm = math.log(5) + math.log(2 * math.pi * sigma**2)
    return torch.logsumexp(-sq_dist / (2 * sigma**2), dim=1) - log_norm


def _checkerboard_log_prob(x: Tensor) -> Tensor:
    """log(1/area) on the black squares, -inf elsewhere."""
    width = 2 * CHECKER_HALF_WIDTH / CHECKER_CELLS
    cell = torch.floor((x + CHECKER_HALF_WIDTH) / width)
    inside = ((cell >= 0) & (cell < CHECKER_CELLS)).all(-1)
    black = inside & (cell.sum(-1).remainder(2) == 0)
    area = len(_checker_black_cells()) * width**2
    inside_value = torch.full_like(x[:, 0], -math.log(area))
    return torch.where(black, inside_value, torch.full_like(inside_value, -math.inf))


def _ring_log_prob(x: Tensor, sigma: float) -> Tensor:
    """Exact density (N(r; R, σ²) + N(-r; R, σ²)) / (2πr), r = |x|, of a uniform angle and Gaussian radius.

    The second term accounts for negative radii (points reflected through the origin); the density has an
    integrable singularity (+inf) at the origin itself.
    """
    r = x.norm(dim=-1)
    log_norm = 0.5 * math.log(2 * math.pi * sigma**2)
    scale = 2 * sigma**2
    log_radial = torch.logaddexp(-((r - RING_RADIUS) ** 2) / scale, -((r + RING_RADIUS) ** 2) / scale)
    return log_radial - log_norm - torch.log(2 * math.pi * r)


class Toy2DDataModule(DiffusionDataModule):
    """Toy 2-D point clouds (data_shape (2,)), generated from ``seed`` and quantized to K levels."""

    def __init__(
        self,
        name: str = "five_clusters",
        n_train: int = 8000,
        n_val: int = 1000,
        n_test: int = 1000,
        noise: float | None = None,
        num_levels: int = 256,
        **common,
    ):
        """
        Args:
            name: one of "five_clusters", "moons", "checkerboard", "ring", "gaussian".
            n_train: number of training points.
            n_val: number of validation points.
            n_test: number of test points.
            noise: noise scale (five_clusters: component std; moons: sklearn noise; ring: radial std;
                gaussian: std; ignored by checkerboard); None uses the dataset's default.
            num_levels: K; the points are quantized to the K-level grid of [-1, 1] (discrete likelihood).
            common: the arguments of every datamodule (see :class:`~vdmlab.data.base.DiffusionDataModule`);
                here ``seed`` also seeds the data generation (each split from its own stream).
        """
        _check_name(name)
        super().__init__(num_levels=num_levels, data_shape=(2,), **common)
        n_train, n_val, n_test = (check_int(arg, value, 0) for arg, value in
                                  (("n_train", n_train), ("n_val", n_val), ("n_test", n_test)))
        check_positive("noise", noise, optional=True)
        self.name = name
        self.n_train, self.n_val, self.n_test = int(n_train), int(n_val), int(n_test)
        self.noise = _noise(name, noise)
        self.has_density = has_density(name)

    def log_prob(self, x: Tensor) -> Tensor:
        """Analytic continuous log density [N] at x [N, 2]; ValueError for datasets without one (moons)."""
        return toy2d_log_prob(self.name, x, self.noise)

    def sample_fn(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """Fresh unquantized points [n, 2] from the same distribution (see :func:`make_toy2d`)."""
        return make_toy2d(self.name, n, rng, self.noise)

    def generate_levels(self, split: str) -> Tensor:
        """Integer grid levels [n, 2] of ``split`` ("train"/"val"/"test"), from the stream (seed, split)."""
        index = ("train", "val", "test").index(split)
        n = getattr(self, f"n_{split}")
        rng = np.random.default_rng([self.seed, index])
        points = torch.from_numpy(self.sample_fn(n, rng)).clamp(-1.0, 1.0)
        return values_to_levels(points, self.num_levels).to(level_dtype(self.num_levels))

    def build_splits(self) -> tuple[Dataset, Dataset, Dataset]:
        """Generate the three splits (independently seeded, so n_train does not change val/test)."""
        return tuple(LevelDataset(self.generate_levels(s), self.num_levels) for s in ("train", "val", "test"))
