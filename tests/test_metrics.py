"""Metrics: bits/dim (exact under DDP padding), the shipped digits classifier, FID and its known traps (docs/architecture.md)."""

from __future__ import annotations

import json
import math
import os
import socket
from datetime import timedelta

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, Subset

from vdmlab.data import DigitsDataModule
from vdmlab.diffusion.likelihood import ELBOModel
from vdmlab.metrics import (
    BitsPerDim,
    DigitsClassifierWeightsError,
    DigitsFeatures,
    FIDMetric,
    InceptionWeightsNotFoundError,
    UniqueIndexDataset,
    default_weights_path,
    evaluate_bpd,
    fid_from_images,
    frechet_distance,
    load_digits_classifier,
    shard_indices,
)

DATA_DIM = 64  # 1 x 8 x 8 digits
EPS64 = torch.finfo(torch.float64).eps


@pytest.fixture(scope="module")
def digits():
    """The digits splits as stacked tensors in [-1, 1] plus the test labels."""
    dm = DigitsDataModule(batch_size=128, eval_batch_size=None, num_workers=0)
    dm.setup()
    stack = lambda ds: torch.stack([ds[i] for i in range(len(ds))])
    return {"train": stack(dm.train_set), "val": stack(dm.val_set), "test": stack(dm.test_set), "test_labels": dm.test_labels}


@pytest.fixture(scope="module")
def extractor():
    return DigitsFeatures(load_digits_classifier())


# ----------------------------------------------------------------------------------------------- bits/dim


def fixed_nats(x: torch.Tensor) -> torch.Tensor:
    """A deterministic per-example 'negative ELBO' of x, so DDP and single-process runs see identical values."""
    return 100.0 + 7.0 * (x + 1.0).pow(2).flatten(1).sum(1)


def toy_images(n: int) -> torch.Tensor:
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(n)) * 2 - 1


def numpy_bpd(nats: np.ndarray) -> tuple[float, float]:
    scale = DATA_DIM * math.log(2.0)
    return nats.mean() / scale, nats.std(ddof=1) / math.sqrt(len(nats)) / scale


@pytest.mark.parametrize("use_index", [False, True])
def test_bits_per_dim_mean_and_standard_error_match_numpy(use_index):
    nats = torch.randn(101, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 30 + 200
    metric = BitsPerDim(data_dim=DATA_DIM)
    for chunk, index in zip(nats.split(17), torch.arange(101).split(17)):
        metric.update(chunk, index=index if use_index else None)
    mean, se = numpy_bpd(nats.numpy())
    stats = metric.stats()
    assert stats["n"] == 101
    np.testing.assert_allclose(float(metric.compute()), mean, rtol=1e-12)
    np.testing.assert_allclose(float(stats["bpd_se"]), se, rtol=1e-9)  # sum-of-squares variance in float64
    np.testing.assert_allclose(float(metric.standard_error()), se, rtol=1e-9)


def test_bits_per_dim_drops_repeated_indices_and_rejects_mixed_modes():
    nats = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64) * 100
    metric = BitsPerDim(data_dim=DATA_DIM)
    metric.update(nats[:3], index=torch.tensor([0, 1, 2]))
    metric.update(torch.tensor([999.0, 400.0]), index=torch.tensor([0, 3]))  # index 0 again: a padding duplicate
    assert metric.stats()["n"] == 4
    np.testing.assert_allclose(float(metric.compute()), numpy_bpd(nats.numpy())[0], rtol=1e-12)
    with pytest.raises(ValueError, match="one mode"):
        metric.update(nats)


def _ddp_worker(rank: int, world_size: int, port: int, sizes: list[int], out_dir: str) -> None:
    """One rank: bits/dim over a DistributedSampler (which pads), and FID over unpadded shards."""
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size, timeout=timedelta(seconds=60))
    try:
        results = {}
        for n in sizes:
            dataset = UniqueIndexDataset(toy_images(n))
            sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=False)  # as Lightning
            exact, naive = BitsPerDim(data_dim=DATA_DIM), BitsPerDim(data_dim=DATA_DIM)
            for index, x in DataLoader(dataset, batch_size=3, sampler=sampler):
                exact.update(fixed_nats(x), index=index)
                naive.update(fixed_nats(x))
            results[n] = {"exact": exact.stats(), "compute": exact.compute(), "naive": naive.stats()}
        dm = DigitsDataModule(batch_size=128, eval_batch_size=None, num_workers=0)
        dm.setup()
        fid = FIDMetric(DigitsFeatures(load_digits_classifier()))
        fid.update_from_dataset(UniqueIndexDataset(dm.test_set), real=True)
        fid.update(torch.stack([dm.val_set[i] for i in shard_indices(len(dm.val_set))]), real=False)
        results["fid"] = fid.compute_dict()
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_bits_per_dim_and_fid_count_each_example_once(tmp_path, digits, extractor):
    sizes = [7, 5, 10]  # 7 -> 8 and 5 -> 6 with one padding duplicate on 2 ranks; 10 divides evenly
    mp.spawn(_ddp_worker, args=(2, _free_port(), sizes, str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    for n in sizes:
        mean, se = numpy_bpd(fixed_nats(toy_images(n)).double().numpy())
        for result in ranks:  # every rank gets the same synchronised value
            assert int(result[n]["exact"]["n"]) == n
            np.testing.assert_allclose(float(result[n]["compute"]), mean, rtol=1e-12)
            np.testing.assert_allclose(float(result[n]["exact"]["bpd"]), mean, rtol=1e-12)
            np.testing.assert_allclose(float(result[n]["exact"]["bpd_se"]), se, rtol=1e-9)
            padded = n + n % 2
            assert int(result[n]["naive"]["n"]) == padded  # the trap: sums count the padding duplicate
            if padded != n:
                assert not math.isclose(float(result[n]["naive"]["bpd"]), mean, rel_tol=1e-9)
    expected = fid_from_images(digits["test"], digits["val"], feature=extractor)
    for result in ranks:
        assert result["fid"]["fid_n"] == len(digits["val"]) and result["fid"]["fid_n_real"] == len(digits["test"])
        np.testing.assert_allclose(result["fid"]["fid"], expected, rtol=1e-9)


@pytest.mark.parametrize("n, world_size", [(7, 2), (10, 3), (2, 4)])
def test_shard_indices_partition_without_padding(n, world_size):
    shards = [list(shard_indices(n, rank, world_size)) for rank in range(world_size)]
    assert sorted(i for shard in shards for i in shard) == list(range(n))


@pytest.mark.parametrize("parameterization", ["eps", "energy"])
def test_evaluate_bpd_untrained_unet_reports_finite_terms(parameterization):
    from vdmlab.diffusion.parameterization import EnergyParameterization, EpsParameterization
    from vdmlab.diffusion.schedules import CosineSchedule
    from vdmlab.models import UNet

    torch.manual_seed(0)
    net = UNet(in_channels=1, image_size=8, width=16, num_res_blocks=1)
    param = {"eps": EpsParameterization, "energy": EnergyParameterization}[parameterization]()
    dm = DigitsDataModule(batch_size=128, eval_batch_size=None, num_workers=0)
    dm.setup()
    loader = DataLoader(UniqueIndexDataset(Subset(dm.test_set, range(40))), batch_size=16)
    run = lambda: evaluate_bpd(ELBOModel(net, CosineSchedule(-10.0, 10.0), param, num_levels=dm.num_levels), loader,
                               generator=torch.Generator().manual_seed(0))
    result = run()
    assert result["n"] == 40 and result["seconds"] > 0
    for key in ("bpd", "bpd_se", "diffusion", "prior", "reconstruction"):
        assert math.isfinite(result[key]), key
    assert result["bpd_se"] > 0 and min(result["diffusion"], result["prior"], result["reconstruction"]) >= 0
    # the mean of the sum is the sum of the means, up to float32 rounding of the per-example sums
    assert math.isclose(result["bpd"], result["diffusion"] + result["prior"] + result["reconstruction"], rel_tol=1e-6)
    assert run()["bpd"] == result["bpd"]  # seeded generator: reproducible
    assert net.training  # mode restored


# ----------------------------------------------------------------------------------------- the classifier


def test_shipped_classifier_matches_its_recorded_test_accuracy(digits):
    path = default_weights_path()
    record = json.loads(path.with_suffix(".json").read_text())
    model = load_digits_classifier()
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    with torch.no_grad():
        correct = int((model(digits["test"]).argmax(1) == digits["test_labels"]).sum())
    assert correct == record["test_correct"] and len(digits["test"]) == record["test_total"]
    assert record["test_accuracy"] >= 0.97
    assert sum(p.numel() for p in model.parameters()) == record["num_parameters"]
    assert path.stat().st_size == record["file_bytes"] < 1_000_000
    assert model.features(digits["test"][:5]).shape == (5, model.num_features)


def test_corrupt_or_missing_classifier_file_gives_a_clear_error(tmp_path):
    corrupt = tmp_path / "digits_classifier.pt"
    corrupt.write_bytes(default_weights_path().read_bytes()[:1000])  # truncated
    with pytest.raises(DigitsClassifierWeightsError, match="train_digits_classifier.py") as info:
        load_digits_classifier(corrupt)
    assert str(corrupt) in str(info.value)
    torch.save({"conv1.weight": torch.zeros(3)}, corrupt)  # readable, wrong keys
    with pytest.raises(DigitsClassifierWeightsError, match="train_digits_classifier.py"):
        load_digits_classifier(corrupt)
    with pytest.raises(FileNotFoundError, match="train_digits_classifier.py"):
        load_digits_classifier(tmp_path / "missing.pt")


# ------------------------------------------------------------------------------------------------------ FID


def test_frechet_distance_matches_scipy_sqrtm():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(6, 6, generator=g, dtype=torch.float64), torch.randn(6, 6, generator=g, dtype=torch.float64)
    cov1, cov2 = a @ a.T + 0.1 * torch.eye(6, dtype=torch.float64), b @ b.T
    mu1, mu2 = torch.randn(6, generator=g, dtype=torch.float64), torch.randn(6, generator=g, dtype=torch.float64)
    root = scipy.linalg.sqrtm(cov1.numpy() @ cov2.numpy()).real
    expected = float(((mu1 - mu2) ** 2).sum() + cov1.trace() + cov2.trace()) - 2 * np.trace(root)
    np.testing.assert_allclose(float(frechet_distance(mu1, cov1, mu2, cov2)), expected, rtol=1e-9)


def test_fid_of_a_set_against_itself_is_zero(digits, extractor):
    metric = FIDMetric(extractor)
    metric.update(digits["test"], real=True)
    metric.update(digits["test"], real=False)
    assert metric.real_features_cov_sum.dtype == torch.float64  # statistics accumulate in float64
    fid = metric.compute()
    assert fid.dtype == torch.float64
    # Each square-rooted eigenvalue carries at most sqrt(F·eps)·λ_max of float64 round-off, F = 64 features.
    cov = torch.cov(extractor(digits["test"]).double().T)
    assert abs(float(fid)) < extractor.num_features * math.sqrt(extractor.num_features * EPS64) * float(cov.trace())
    assert metric.compute_dict() == {"fid": float(fid), "fid_n": 180, "fid_n_real": 180}


def test_fid_agrees_with_torchmetrics_on_the_same_statistics(digits, extractor):
    from torchmetrics.image.fid import FrechetInceptionDistance

    metric = FIDMetric(extractor)
    metric.update(digits["test"], real=True)
    metric.update(digits["val"], real=False)
    reference = FrechetInceptionDistance.compute(metric)  # torchmetrics' own formula, returned in float32
    np.testing.assert_allclose(float(metric.compute()), float(reference), rtol=1e-5)


def test_fid_rises_monotonically_with_noise(digits, extractor):
    """More Gaussian noise (clamped to [-1, 1]) on the generated set → larger FID.

    Against the set itself the FID starts at 0 and rises from the smallest noise on. The val split against the
    test split has a finite-sample floor (FID ≈ 4 at 180 vs 180) that noise up to std ≈ 0.1 does not rise
    above (it even lowers it slightly, for this particular pair of splits), so there monotonicity is checked
    from std 0.2 on.
    """
    test, val = digits["test"], digits["val"]
    noise = lambda x: torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    noisy = lambda x, std: (x + std * noise(x)).clamp(-1.0, 1.0)
    against_itself = [fid_from_images(test, noisy(test, std), feature=extractor) for std in (0.0, 0.05, 0.1, 0.2, 0.4, 0.8)]
    assert all(b > a for a, b in zip(against_itself, against_itself[1:])), against_itself
    against_val = [fid_from_images(test, noisy(val, std), feature=extractor) for std in (0.0, 0.2, 0.4, 0.8)]
    assert all(b > a for a, b in zip(against_val, against_val[1:])), against_val


def test_extractor_stays_out_of_state_dict_and_in_eval_mode(digits, extractor):
    import lightning as L
    from torchmetrics.image.fid import FrechetInceptionDistance

    class Holder(L.LightningModule):
        def __init__(self, metric):
            super().__init__()
            self.net = nn.Linear(2, 2)
            self.fid = metric

    module = Holder(FIDMetric(extractor))
    assert set(module.state_dict()) == {"net.weight", "net.bias"}
    module.load_state_dict(module.state_dict())  # strict round trip
    module.train()
    module.fid.extractor.train()
    assert not module.fid.extractor.training and not extractor.classifier.training
    module.half()  # e.g. precision="16-true": neither the extractor nor the float64 statistics are cast
    assert extractor.classifier.conv1.weight.dtype == torch.float32
    module.fid.update(digits["test"][:8], real=True)
    assert module.fid.real_features_sum.dtype == torch.float64
    # the trap, for contrast: torchmetrics' metric registers the extractor, so a checkpoint would carry it
    leaky = Holder(FrechetInceptionDistance(feature=extractor, normalize=True))
    assert any(key.startswith("fid.inception.") for key in leaky.state_dict())


def test_inception_without_weights_gives_a_clear_error(tmp_path):
    missing = tmp_path / "weights-inception-2015-12-05-6726825d.pth"
    with pytest.raises(InceptionWeightsNotFoundError, match="fid.inception_path") as info:
        FIDMetric(feature="inception", inception_path=missing)
    assert str(missing) in str(info.value) and "checkpoints" in str(info.value)
    with pytest.raises(ValueError, match="digits"):
        FIDMetric(feature="vgg")
