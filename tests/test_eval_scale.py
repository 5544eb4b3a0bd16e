"""Evaluation that scales: FID samples made in batches that are written as they are made, resumed after an
interruption and split across DDP ranks with each sample seed used once; KID and precision/recall on a bounded
uniform subset of the features (reservoir sampling); k-NN distances a block of rows at a time."""

import math

import numpy as np
import pytest
import torch
from scale_workers import digits_fid_metric, noise_sampler

from vdmlab.metrics import fid_samples as FS
from vdmlab.metrics.sample_metrics import RecordingExtractor, coverage_fraction, knn_radii


@pytest.fixture(scope="module")
def metric():
    return digits_fid_metric()


# ------------------------------------------------------------------ the seed partition
@pytest.mark.parametrize("num_samples,batch_size", [(1000, 128), (7, 3), (5, 10)])
def test_rank_batches_cover_every_batch_once_for_any_world_size(num_samples, batch_size):
    n_batches = FS.num_batches(num_samples, batch_size)
    for world in (1, 2, 3, 4, 8):
        parts = [list(FS.rank_batches(num_samples, batch_size, r, world)) for r in range(world)]
        flat = sorted(b for part in parts for b in part)
        assert flat == list(range(n_batches))  # disjoint and complete
        indices = sorted(i for b in flat for i in FS.batch_indices(b, num_samples, batch_size))
        assert indices == list(range(num_samples))  # every sample index exactly once


def test_batch_seeds_are_distinct_across_batches_and_repeats():
    seeds = [FS.batch_seed(0, r, b) for r in range(5) for b in range(2000)]
    assert len(set(seeds)) == len(seeds)


def test_levels_round_trip_the_k_level_grid():
    for k in (2, 17, 256):
        levels = torch.arange(k, dtype=torch.uint8)
        assert torch.equal(FS.to_levels(FS.from_levels(levels, k), k), levels)


# ------------------------------------------------------------------ resume
def test_interrupted_sampling_resumes_to_the_uninterrupted_fid(metric, tmp_path, capsys):
    sample = noise_sampler()
    whole = FS.sharded_sample_fid(metric, sample, 230, 40, 17, seed=5)  # in memory only: nothing written
    calls = []

    def interrupted(n, generator):
        if len(calls) == 3:
            raise KeyboardInterrupt("stopped after 3 batches")
        calls.append(generator.initial_seed())
        return sample(n, generator)

    with pytest.raises(KeyboardInterrupt):
        FS.sharded_sample_fid(metric, interrupted, 230, 40, 17, seed=5, folder=tmp_path)
    assert FS.stored_batches(tmp_path, 0) == [0, 1, 2]  # written the moment they were made
    said = capsys.readouterr().err  # what was kept, where, and how to go on
    assert "3 of 6 batches" in said and str(tmp_path / "repeat0") in said and "rerun the same command" in said
    assert not list((tmp_path / "repeat0").glob(".*"))  # no temporary file left behind
    calls.clear()
    resumed = FS.sharded_sample_fid(metric, interrupted, 230, 40, 17, seed=5, folder=tmp_path)
    assert calls == [FS.batch_seed(5, 0, b) for b in (3, 4, 5)]  # only the missing batches were sampled
    assert resumed["fid_batches_loaded"] == 3 and resumed["fid_n"] == whole["fid_n"] == 230
    assert resumed["fid"] == pytest.approx(whole["fid"], rel=1e-12)
    stored = np.concatenate([np.load(FS.batch_path(tmp_path, 0, b)) for b in range(6)])
    assert stored.shape == (230, 1, 8, 8) and stored.dtype == np.uint8 and stored.max() <= 16


def test_an_interruption_without_a_folder_says_how_to_keep_the_samples(metric, capsys):
    def interrupted(n, generator):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        FS.sharded_sample_fid(metric, interrupted, 100, 40, 17, seed=1)
    said = capsys.readouterr().err
    assert "not kept" in said and "fid.samples_dir=" in said


def test_a_truncated_batch_file_is_sampled_again(metric, tmp_path):
    sample = noise_sampler()
    first = FS.sharded_sample_fid(metric, sample, 100, 40, 17, seed=1, folder=tmp_path)
    np.save(FS.batch_path(tmp_path, 0, 1), np.zeros((3, 1, 8, 8), np.uint8))  # wrong length: not trusted
    again = FS.sharded_sample_fid(metric, sample, 100, 40, 17, seed=1, folder=tmp_path)
    assert again["fid_batches_loaded"] == 2 and again["fid"] == pytest.approx(first["fid"], rel=1e-12)


# ------------------------------------------------------------------ two DDP ranks
@pytest.mark.slow
def test_two_ranks_use_each_seed_once_and_give_the_single_process_fid(metric, tmp_path):
    from ddp_workers import run_ranks
    from scale_workers import sharded_fid

    single = FS.sharded_sample_fid(metric, noise_sampler(), 230, 40, 17, seed=5)
    results = sorted(run_ranks(sharded_fid, 2, str(tmp_path / "init")))
    seeds = [s for _, _, seen in results for s in seen]
    assert sorted(seeds) == sorted(FS.batch_seed(5, 0, b) for b in range(6))  # each seed once across the ranks
    assert [len(seen) for _, _, seen in results] == [3, 3]
    for _, values, _ in results:
        assert values["fid_n"] == 230 and values["fid"] == pytest.approx(single["fid"], rel=1e-9)


# ------------------------------------------------------------------ bounded features for KID and precision/recall
class Identity(torch.nn.Module):
    num_features = 2

    def forward(self, x):
        return x


def test_recorder_keeps_everything_without_a_limit_and_a_subset_of_the_rows_with_one():
    rows = torch.arange(200, dtype=torch.float64).repeat(2, 1).T
    full, capped = RecordingExtractor(Identity()), RecordingExtractor(Identity(), limit=30, seed=3)
    for part in rows.split(7):
        full(part)
        capped(part)
    assert torch.equal(full.take(), rows)
    kept = capped.take()
    assert kept.shape == (30, 2) and len(set(kept[:, 0].tolist())) == 30 and set(kept[:, 0].tolist()) <= set(range(200))
    assert capped.take().shape == (0, 2)  # take() starts a new reservoir


def test_reservoir_keeps_each_row_with_probability_limit_over_n():
    n, limit, trials = 40, 10, 1500
    counts = torch.zeros(n)
    rows = torch.arange(n, dtype=torch.float64).repeat(2, 1).T
    for seed in range(trials):
        recorder = RecordingExtractor(Identity(), limit=limit, seed=seed)
        for part in rows.split(6):
            recorder.record(part)
        counts[recorder.take()[:, 0].long()] += 1
    p = limit / n
    se = math.sqrt(trials * p * (1 - p))
    assert counts.sum() == trials * limit
    assert (counts - trials * p).abs().max() < 4.5 * se  # every row, first or last, equally likely


def test_chunked_distances_give_the_unchunked_radii_and_coverage():
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(300, 5, generator=gen, dtype=torch.float64), torch.randn(250, 5, generator=gen, dtype=torch.float64)
    whole = torch.cdist(a, a).kthvalue(4, dim=1).values
    for chunk in (7, 10_000):  # equal up to cdist's round-off (its matrix-product path depends on the shapes)
        torch.testing.assert_close(knn_radii(a, 3, chunk=chunk), whole, rtol=1e-12, atol=1e-12)
    radii = knn_radii(a, 3)
    direct = float((torch.cdist(b, a) <= radii[None, :]).any(1).double().mean())
    assert coverage_fraction(b, a, radii, chunk=11) == direct
