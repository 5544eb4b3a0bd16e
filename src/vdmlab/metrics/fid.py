"""FID as a torchmetric whose feature extractor stays out of the LightningModule (docs/architecture.md, traps).

:class:`FIDMetric` extends torchmetrics' ``FrechetInceptionDistance`` (its float64 feature sums, its DDP
reduction, ``reset_real_features``) with:

- two extractors that both take images in the data convention, floats in [-1, 1], ``[B, C, H, W]``:
  ``feature="digits"`` (default): the 64-d penultimate features of the shipped digits classifier
  (:mod:`vdmlab.metrics.digits_classifier`), on ``[B, 1, 8, 8]`` digits as they are (no rescaling);
  ``feature="inception"``/``2048`` (or 64/192/768): InceptionV3 (torch-fidelity weights, the reference FID
  network). Images are mapped to uint8 by round((x + 1)·127.5), grayscale is repeated to 3 channels and the
  resize to 299x299 is torch-fidelity's TF1-compatible bilinear one (``antialias=False``, as in the reference);
- the extractor kept out of module registration: it is never in ``state_dict()`` (of the metric or of a
  LightningModule holding it), never switched to train mode, never wrapped by DDP, never cast by ``.half()``;
  it follows the images' device on ``update``;
- ``compute()`` returning the float64 value (torchmetrics casts it to the features' float32), and
  :meth:`FIDMetric.compute_dict`, which reports the score with its sample count,
  ``{"fid", "fid_n", "fid_n_real"}`` (FID@2k ≠ FID@50k).

Memory: the statistics are torchmetrics' running sums Σf, Σffᵀ and n (float64, F + F² numbers per set), whatever the
number of images; loops over images show a progress bar with ETA on a terminal. Samples written to disk batch by
batch and resumable: :mod:`vdmlab.metrics.fid_samples`.

Distributed evaluation: feature sums are summed over ranks, so each image must be fed on exactly one rank.
Feed real images with :meth:`FIDMetric.update_from_dataset` (unpadded shards, not ``DistributedSampler``) and
generated ones with :func:`vdmlab.metrics.fid_samples.sharded_sample_fid` (each batch of samples, with its own seed,
made on one rank), so that the ranks together make exactly ``n_fake``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn
from torchmetrics.image.fid import FrechetInceptionDistance

from vdmlab.cache import atomic_save, load_checked
from vdmlab.checks import ParameterError
from vdmlab.distributed import rank_and_world
from vdmlab.metrics.digits_classifier import DigitsClassifier, load_digits_classifier
from vdmlab.metrics.progress import progress

INCEPTION_WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_WEIGHTS_URL = "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/" + INCEPTION_WEIGHTS_FILE
INCEPTION_FEATURES = (64, 192, 768, 2048)


class InceptionWeightsNotFoundError(FileNotFoundError):
    """The InceptionV3 weights for FID are neither at the given path nor downloadable (offline machine)."""


def to_uint8(x: Tensor) -> Tensor:
    """Images in [-1, 1] → uint8 in [0, 255] by round((x + 1)·127.5), after clamping."""
    return ((x.clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8)


class FrozenExtractor(nn.Module):
    """Base of the FID extractors: no gradients and always in eval mode, whatever ``train()`` is asked."""

    num_features: int

    def train(self, mode: bool = True) -> FrozenExtractor:
        return super().train(False)


class DigitsFeatures(FrozenExtractor):
    """Digits-classifier features of ``[B, 1, 8, 8]`` images in [-1, 1] → ``[B, 64]`` (float32, no autocast)."""

    def __init__(self, classifier: DigitsClassifier | None = None):
        super().__init__()
        self.classifier = (classifier if classifier is not None else load_digits_classifier()).requires_grad_(False)
        self.num_features = self.classifier.num_features
        self.eval()

    def forward(self, x: Tensor) -> Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            return self.classifier.features(x.float())


def inception_hub_path() -> Path:
    """Where torch-fidelity downloads (and looks for) the InceptionV3 weights: ``<torch hub>/checkpoints``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS_FILE


def _weights_help() -> str:
    return (
        f"FID needs torch-fidelity's InceptionV3 weights file {INCEPTION_WEIGHTS_FILE} (the port of the TF-FID graph "
        f"that torchmetrics uses): download {INCEPTION_WEIGHTS_URL} on a machine with internet access and either put "
        f"it at {inception_hub_path()} (the torch hub cache; TORCH_HOME moves it) or pass its path as "
        f"fid.inception_path=/path/to/{INCEPTION_WEIGHTS_FILE}; or set fid=null to train and evaluate without FID"
    )


class InceptionFeatures(FrozenExtractor):
    """InceptionV3 pool features of images in [-1, 1], 1 or 3 channels, any size → ``[B, num_features]``.

    Args:
        num_features: 2048 (the standard FID layer), 768, 192 or 64.
        weights_path: a local copy of torch-fidelity's ``weights-inception-2015-12-05-6726825d.pth``; None means
            the torch hub cache, downloading there when online.
    """

    def __init__(self, num_features: int = 2048, weights_path: str | os.PathLike | None = None):
        super().__init__()
        if num_features not in INCEPTION_FEATURES:
            raise ValueError(f"Inception FID features must be one of {INCEPTION_FEATURES}, got {num_features!r}")
        try:
            from torchmetrics.image.fid import NoTrainInceptionV3
            from torchmetrics.utilities.imports import _TORCH_FIDELITY_AVAILABLE
        except ImportError as err:  # pragma: no cover - torchmetrics is a core dependency
            raise ModuleNotFoundError("Inception FID needs torchmetrics' image module") from err
        if not _TORCH_FIDELITY_AVAILABLE:
            raise ModuleNotFoundError("Inception FID needs torch-fidelity: pip install 'vdmlab[fid]'")
        if weights_path is not None:
            weights_path = Path(weights_path).expanduser()
            if not weights_path.is_file():
                raise InceptionWeightsNotFoundError(
                    f"InceptionV3 weights not found at fid.inception_path={weights_path}; {_weights_help()}"
                )
        try:
            self.inception = NoTrainInceptionV3(
                name="inception-v3-compat",
                features_list=[str(num_features)],
                feature_extractor_weights_path=None if weights_path is None else str(weights_path),
                antialias=False,
            )
        except Exception as err:  # URLError (offline), unpickling or key errors (corrupt file): all mean "get the file"
            where = weights_path if weights_path is not None else inception_hub_path()
            raise InceptionWeightsNotFoundError(
                f"could not load the InceptionV3 weights for FID from {where} ({type(err).__name__}: {err}); "
                f"{_weights_help()}"
            ) from err
        self.num_features = num_features
        self.eval()

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return self.inception(to_uint8(x))


def fid_feature(feature: str | int | nn.Module, data_shape: tuple[int, ...], num_levels: int) -> str | int | nn.Module:
    """``auto`` → the shipped digits classifier for 8x8 digits (17 levels), Inception-2048 for anything else."""
    if feature != "auto":
        return feature
    return "digits" if (tuple(data_shape), int(num_levels)) == ((1, 8, 8), 17) else 2048


def check_inception_path(feature: str | int | nn.Module, inception_path: str | os.PathLike | None) -> None:
    """A given ``fid.inception_path`` must be a file when ``feature`` (resolved, not ``auto``) is Inception's."""
    if inception_path is None or isinstance(feature, nn.Module) or feature == "digits":
        return
    if not Path(str(inception_path)).expanduser().is_file():
        raise ParameterError("fid.inception_path", str(inception_path), f"it is not a file: {_weights_help()}")


def build_extractor(feature: str | int | nn.Module = "digits", inception_path: str | os.PathLike | None = None) -> nn.Module:
    """The FID feature extractor named by ``feature``: "digits", "inception", 64/192/768/2048, or a module as is."""
    if isinstance(feature, nn.Module):
        return feature
    if feature == "digits":
        return DigitsFeatures()
    if feature == "inception":
        return InceptionFeatures(2048, inception_path)
    if isinstance(feature, (int, str)) and str(feature).isdigit() and int(feature) in INCEPTION_FEATURES:
        return InceptionFeatures(int(feature), inception_path)
    raise ValueError(f"fid.feature must be 'digits', 'inception' or one of {INCEPTION_FEATURES}, got {feature!r}")


def frechet_distance(mu1: Tensor, cov1: Tensor, mu2: Tensor, cov2: Tensor) -> Tensor:
    """‖μ₁ - μ₂‖² + tr(Σ₁ + Σ₂ - 2(Σ₁Σ₂)^½), the Fréchet distance of two Gaussians (Dowson & Landau 1982).

    tr((Σ₁Σ₂)^½) is the sum of the square roots of the eigenvalues of Σ₁Σ₂, which are real and >= 0 (Σ₁Σ₂ is
    similar to the PSD Σ₁^½Σ₂Σ₁^½); round-off may make tiny ones negative, whose complex roots have real part 0.
    """
    tr_sqrt = torch.linalg.eigvals(cov1 @ cov2).sqrt().real.sum()
    return (mu1 - mu2).square().sum() + cov1.trace() + cov2.trace() - 2.0 * tr_sqrt


def mean_and_covariance(feature_sum: Tensor, cov_sum: Tensor, n: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and unbiased covariance from Σf, Σffᵀ and n (float64)."""
    mean = feature_sum / n
    return mean, (cov_sum - n * torch.outer(mean, mean)) / (n - 1)


def shard_indices(n: int, rank: int | None = None, world_size: int | None = None) -> range:
    """This rank's share ``range(rank, n, world_size)`` of n items: disjoint, no padding, all ranks cover n.

    Defaults to the current torch.distributed rank and world size (0 and 1 when not distributed).
    """
    if rank is None or world_size is None:
        rank, world_size = rank_and_world()
    return range(rank, n, world_size)


class FIDMetric(FrechetInceptionDistance):
    """Fréchet distance between feature statistics of real and generated images, in [-1, 1] float images.

    ``update(imgs, real)``, ``compute()`` → float64 FID, ``compute_dict()`` → ``{"fid", "fid_n", "fid_n_real"}``.

    Args:
        feature: "digits" (default), "inception" (= 2048), 64/192/768/2048, or an extractor module taking
            [-1, 1] images and returning ``[B, F]`` with a ``num_features`` attribute.
        inception_path: local InceptionV3 weights file (only for Inception features).
        reset_real_features: False keeps the real statistics across ``reset()`` (compute them once).
        kwargs: torchmetrics ``Metric`` arguments.
    """

    def __init__(
        self,
        feature: str | int | nn.Module = "digits",
        inception_path: str | os.PathLike | None = None,
        reset_real_features: bool = True,
        **kwargs,
    ):
        extractor = build_extractor(feature, inception_path)
        super().__init__(feature=extractor, reset_real_features=reset_real_features, normalize=True, **kwargs)
        # Out of registration: not in state_dict(), not reached by train()/half()/DDP (docs/architecture.md).
        del self._modules["inception"]
        object.__setattr__(self, "inception", extractor)
        extractor.requires_grad_(False).eval()

    @property
    def extractor(self) -> nn.Module:
        """The feature extractor (frozen, eval mode, not a registered submodule)."""
        return self.inception

    @property
    def num_fake(self) -> int:
        """Generated images fed on this rank (use :meth:`compute_dict` for the all-rank count)."""
        return int(self.fake_features_num_samples)

    @property
    def num_real(self) -> int:
        """Real images fed on this rank."""
        return int(self.real_features_num_samples)

    def update(self, imgs: Tensor, real: bool) -> None:
        """Add the features of ``imgs`` (floats in [-1, 1], ``[B, C, H, W]``) to the real or fake statistics."""
        param = next(self.inception.parameters(), None)
        if param is not None and param.device != imgs.device:
            self.inception.to(imgs.device)
        with torch.no_grad():
            super().update(imgs, real)

    def update_from_dataset(self, dataset: Sequence, real: bool = True, batch_size: int = 256) -> int:
        """Feed every item of ``dataset`` once across ranks (unpadded shards); items are x or (index, x).

        Returns the number of images fed on this rank.
        """
        indices = shard_indices(len(dataset))
        starts = range(0, len(indices), batch_size)
        for start in progress(starts, total=len(starts), desc="FID features of real images"):
            items = [dataset[i] for i in indices[start : start + batch_size]]
            x = torch.stack([item[1] if isinstance(item, (tuple, list)) else item for item in items])
            self.update(x.to(self.device), real=real)
        return len(indices)

    def _fid(self) -> Tensor:
        """FID (float64) from the current, possibly synchronised, states."""
        if self.real_features_num_samples < 2 or self.fake_features_num_samples < 2:
            raise RuntimeError(
                f"FID needs at least 2 real and 2 generated images, got {int(self.real_features_num_samples)} "
                f"and {int(self.fake_features_num_samples)}"
            )
        mu_r, cov_r = mean_and_covariance(self.real_features_sum, self.real_features_cov_sum, self.real_features_num_samples)
        mu_f, cov_f = mean_and_covariance(self.fake_features_sum, self.fake_features_cov_sum, self.fake_features_num_samples)
        return frechet_distance(mu_r, cov_r, mu_f, cov_f)

    def compute(self) -> Tensor:
        """FID between the real and the generated statistics (float64 scalar, summed over ranks)."""
        return self._fid()

    def compute_dict(self) -> dict[str, float | int]:
        """``{"fid": value, "fid_n": generated images, "fid_n_real": real images}``, all ranks together.

        Under DDP this is a collective call: every rank must call it.
        """
        with self.sync_context():
            return {
                "fid": float(self._fid()),
                "fid_n": int(self.fake_features_num_samples),
                "fid_n_real": int(self.real_features_num_samples),
            }


def fid_from_images(
    real: Tensor,
    fake: Tensor,
    feature: str | int | nn.Module = "digits",
    batch_size: int = 256,
    device: torch.device | str | None = None,
    inception_path: str | os.PathLike | None = None,
) -> float:
    """FID between two image tensors in [-1, 1], ``[N, C, H, W]``, fed in batches of ``batch_size``."""
    metric = FIDMetric(feature=feature, inception_path=inception_path)
    device = torch.device(device) if device is not None else real.device
    metric.to(device)
    for images, is_real in ((real, True), (fake, False)):
        for start in range(0, images.shape[0], batch_size):
            metric.update(images[start : start + batch_size].to(device), real=is_real)
    return float(metric.compute())


# ------------------------------------------------------------------ real statistics cache, floor and repeats
STATS_VERSION = 1


def extractor_id(extractor: nn.Module) -> str:
    """A name of the feature extractor for cache keys: ``digits64``, ``inception2048``, ... or the class name.

    A wrapper that keeps its features (``sample_metrics.RecordingExtractor``) is named by the extractor it wraps."""
    extractor = getattr(extractor, "extractor", extractor)
    if isinstance(extractor, DigitsFeatures):
        return f"digits{extractor.num_features}"
    if isinstance(extractor, InceptionFeatures):
        return f"inception{extractor.num_features}"
    return f"{type(extractor).__name__}{getattr(extractor, 'num_features', '')}"


def dataset_fingerprint(dataset) -> str:
    """A content hash of a dataset: its stored levels (or files: paths, sizes, mtimes), else every item's bytes."""
    import hashlib

    digest = hashlib.sha1()
    from vdmlab.data.base import UniqueIndexDataset

    inner = dataset.dataset if isinstance(dataset, UniqueIndexDataset) else dataset
    levels = getattr(inner, "levels", None)
    if isinstance(levels, Tensor):
        digest.update(str(tuple(levels.shape)).encode())
        digest.update(levels.contiguous().cpu().numpy().tobytes())
    elif getattr(inner, "files", None) is not None:
        for path in inner.files:
            stat = Path(path).stat()
            digest.update(f"{path}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    else:
        for i in range(len(inner)):
            item = inner[i]
            digest.update((item[1] if isinstance(item, (tuple, list)) else item).numpy().tobytes())
    return digest.hexdigest()[:16]


def stats_key(name: str, split: str, extractor: nn.Module, data_shape: Sequence[int], fingerprint: str) -> str:
    """``<dataset>-<split>-<extractor>-<C>x<H>x<W>-<content hash>``: one cached statistics file per key."""
    shape = "x".join(str(int(d)) for d in data_shape)
    return f"{name}-{split}-{extractor_id(extractor)}-{shape}-{fingerprint}"


def load_stats(path: Path, key: str) -> dict | None:
    """The cached ``{feature_sum, cov_sum, n}`` at ``path`` for ``key``; None when absent; a bad file is moved aside."""

    def problem(stats) -> str | None:
        try:
            ok = (isinstance(stats, dict) and stats.get("key") == key and stats.get("version") == STATS_VERSION
                  and stats["feature_sum"].ndim == 1 and stats["cov_sum"].shape == (stats["feature_sum"].numel(),) * 2
                  and int(stats["n"]) >= 2 and bool(torch.isfinite(stats["cov_sum"]).all()))
        except (KeyError, AttributeError, TypeError) as err:
            return f"{type(err).__name__}: {err}"
        return None if ok else f"its content does not match the key {key}"

    return load_checked(path, problem, "FID statistics cache")


def save_stats(path: Path, key: str, feature_sum: Tensor, cov_sum: Tensor, n: int, **extra) -> None:
    """Write statistics atomically (a temporary file, then rename)."""
    atomic_save({"key": key, "version": STATS_VERSION, "feature_sum": feature_sum.double().cpu(),
                 "cov_sum": cov_sum.double().cpu(), "n": int(n), **extra}, path)


def fill_real_statistics(metric: FIDMetric, dataset: Sequence, cache_dir: str | os.PathLike | None, key: str,
                         batch_size: int = 256) -> str:
    """Set the metric's real statistics from ``<cache_dir>/<key>.pt`` or compute (and cache) them: "cached"/"computed".

    Under DDP a cached file is loaded on rank 0 only (the ranks' sums are added by ``compute_dict``); statistics
    computed on several ranks are not written (each rank holds only its shard).
    """
    rank, world = rank_and_world()
    path = Path(cache_dir) / f"{key}.pt" if cache_dir else None
    stats = load_stats(path, key) if path is not None else None
    metric.real_features_sum = torch.zeros_like(metric.real_features_sum)
    metric.real_features_cov_sum = torch.zeros_like(metric.real_features_cov_sum)
    metric.real_features_num_samples = torch.zeros_like(metric.real_features_num_samples)
    if stats is not None:
        if rank == 0:
            metric.real_features_sum = stats["feature_sum"].to(metric.real_features_sum)
            metric.real_features_cov_sum = stats["cov_sum"].to(metric.real_features_cov_sum)
            metric.real_features_num_samples = torch.tensor(int(stats["n"]), device=metric.device, dtype=torch.long)
        return "cached"
    metric.update_from_dataset(dataset, real=True, batch_size=batch_size)
    if path is not None and world == 1:
        save_stats(path, key, metric.real_features_sum, metric.real_features_cov_sum, int(metric.real_features_num_samples))
    return "computed"


def real_floor(metric: FIDMetric, other: Sequence, n: int, cache_dir: str | os.PathLike | None, key: str,
               seed: int = 0, batch_size: int = 256) -> dict[str, float | int]:
    """Real-vs-real floor: FID of ``n`` images of ``other`` (a seeded subset, e.g. the train split) against the metric's
    real statistics (the evaluated split), the value a generator of real images would get at FID@n."""
    n = min(int(n), len(other))
    path = Path(cache_dir) / f"{key}-floor{n}-seed{seed}.pt" if cache_dir else None
    stats = load_stats(path, f"{key}-floor{n}-seed{seed}") if path is not None else None
    probe = FIDMetric(feature=metric.extractor, reset_real_features=False).to(metric.device)
    if stats is None:
        order = torch.randperm(len(other), generator=torch.Generator().manual_seed(seed))[:n].tolist()
        probe.update_from_dataset([other[i] for i in order], real=False, batch_size=batch_size)
        with probe.sync_context():
            fake = (probe.fake_features_sum.clone(), probe.fake_features_cov_sum.clone(), int(probe.fake_features_num_samples))
        if path is not None and rank_and_world()[0] == 0:
            save_stats(path, f"{key}-floor{n}-seed{seed}", *fake)
    else:
        fake = (stats["feature_sum"], stats["cov_sum"], int(stats["n"]))
    with metric.sync_context():
        mu_r, cov_r = mean_and_covariance(metric.real_features_sum, metric.real_features_cov_sum,
                                          metric.real_features_num_samples)
    n_fake = torch.tensor(fake[2], dtype=torch.float64)
    mu_f, cov_f = mean_and_covariance(fake[0].to(mu_r), fake[1].to(cov_r), n_fake)
    return {"fid_floor": float(frechet_distance(mu_r, cov_r, mu_f, cov_f)), "fid_floor_n": int(fake[2])}


def fid_report(metric: FIDMetric, fake_fid, repeats: int = 1) -> dict[str, float | int]:
    """FID with its sample count over ``repeats`` sample seeds: ``fake_fid(r)`` returns ``compute_dict()`` for seed r.

    Returns ``fid`` (the mean), ``fid_std`` (the standard deviation over repeats, 0 for one), ``fid_n``, ``fid_n_real``
    and ``fid_repeats`` (and ``class_acc``, the mean over repeats, when the runs report it).
    """
    runs = [fake_fid(r) for r in range(max(1, int(repeats)))]
    values = torch.tensor([run["fid"] for run in runs], dtype=torch.float64)
    report = {"fid": float(values.mean()), "fid_std": float(values.std()) if len(runs) > 1 else 0.0,
              "fid_n": runs[0]["fid_n"], "fid_n_real": runs[0]["fid_n_real"], "fid_repeats": len(runs)}
    if "class_acc" in runs[0]:  # a conditional model: samples classified as their label, mean over repeats
        report["class_acc"] = sum(run["class_acc"] for run in runs) / len(runs)
    return report


def split_fid(metric: FIDMetric, datamodule, split: str, fake_fid, stats_dir: str | os.PathLike | None = None,
              repeats: int = 1, floor: bool = True, batch_size: int = 256, seed: int = 0) -> dict[str, float | int]:
    """FID against every image of ``datamodule``'s ``split``, its sample count, repeats and the real-vs-real floor.

    The split's statistics come from ``<stats_dir>/<key>.pt`` (computed and written once per dataset, split, feature
    extractor, resolution and content); ``fake_fid(r)`` feeds the generated images of repeat r and returns
    ``metric.compute_dict()``; the floor compares as many train images with the same statistics (cached too).
    """
    dataset = getattr(datamodule, f"{split}_set")
    key = stats_key(type(datamodule).__name__, split, metric.extractor, datamodule.data_shape, dataset_fingerprint(dataset))
    if int(metric.real_features_num_samples) == 0:
        fill_real_statistics(metric, dataset, stats_dir, key, batch_size)
    values = fid_report(metric, fake_fid, repeats)
    train = getattr(datamodule, "train_set", None)
    if floor and split != "train" and train is not None:
        floor_key = f"{key}-vs-train-{dataset_fingerprint(train)}"
        values.update(real_floor(metric, train, int(values["fid_n"]), stats_dir, floor_key, seed, batch_size))
    return values
