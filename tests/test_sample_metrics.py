"""KID, improved precision/recall and the digits class histogram (sample metrics from the FID features)."""

import torch

from vdmlab.data import DigitsDataModule
from vdmlab.metrics.fid import DigitsFeatures, FIDMetric
from vdmlab.metrics.sample_metrics import (
    RecordingExtractor,
    class_counts,
    class_histogram,
    kid,
    mmd2_unbiased,
    nearest_neighbour_classes,
    precision_recall,
    sample_metrics,
)


def gaussian(n, shift=0.0, seed=0, dim=8):
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) + shift


def test_kid_of_two_draws_of_one_distribution_is_zero_within_its_standard_error():
    result = kid(gaussian(1000, seed=0), gaussian(1000, seed=1), num_blocks=10)
    assert abs(result["kid"]) < 3 * result["kid_se"]
    shifted = kid(gaussian(1000, seed=0), gaussian(1000, 0.5, seed=1), num_blocks=10)
    assert shifted["kid"] > 5 * shifted["kid_se"] > 0


def test_unbiased_mmd_is_symmetric_and_grows_with_the_shift():
    a, b = gaussian(200, seed=0), gaussian(200, 0.3, seed=1)
    torch.testing.assert_close(mmd2_unbiased(a, b), mmd2_unbiased(b, a))
    assert mmd2_unbiased(a, gaussian(200, 1.0, seed=1)) > mmd2_unbiased(a, b) > 0


def test_precision_and_recall_are_one_for_identical_sets_and_fall_when_shifted():
    real = gaussian(500)
    assert precision_recall(real, real.clone()) == {"precision": 1.0, "recall": 1.0}
    near, far = precision_recall(real, gaussian(500, 1.0, seed=1)), precision_recall(real, gaussian(500, 3.0, seed=1))
    assert far["precision"] < near["precision"] < 1.0 and far["recall"] < near["recall"] < 1.0
    # a generator that covers only part of the data keeps its precision but loses recall
    half = real[real[:, 0] > 0]
    partial = precision_recall(real, half)
    assert partial["precision"] == 1.0 and partial["recall"] < 0.8


def test_class_histogram_sums_to_n_and_flags_missing_classes():
    logits = torch.nn.functional.one_hot(torch.tensor([0, 0, 3, 9, 3]), 10).double()
    result = class_histogram(logits, 10)
    assert sum(result[f"class_{c}"] for c in range(10)) == 5
    assert result["class_0"] == 2 and result["class_3"] == 2 and result["classes_missing"] == 7
    assert result["class_max_min"] == float("inf")


def test_class_flatness_statistics_separate_a_uniform_from_a_skewed_histogram():
    uniform = class_histogram(torch.nn.functional.one_hot(torch.arange(1000) % 10, 10).double(), 10)
    assert uniform["class_max_min"] == 1.0 and uniform["class_chi2_p"] == 1.0
    skewed_labels = torch.cat([torch.arange(900) % 10, torch.full((100,), 9)])  # 90 of each, 190 nines
    skewed = class_histogram(torch.nn.functional.one_hot(skewed_labels, 10).double(), 10)
    assert skewed["class_max_min"] == 190 / 90 and skewed["class_chi2_p"] < 1e-6


def test_recorded_digits_features_give_fid_and_the_histogram_of_real_digits():
    data = DigitsDataModule(batch_size=128, eval_batch_size=180, num_workers=0)
    data.setup()
    x = torch.stack([data.test_set[i] for i in range(len(data.test_set))])
    half = len(x) // 2
    recorder = RecordingExtractor(DigitsFeatures())
    metric = FIDMetric(recorder)
    metric.update(x[:half], real=True)
    real = recorder.take()
    metric.update(x[half:], real=False)
    fake = recorder.take()
    assert real.shape == (half, 64) and fake.shape == (len(x) - half, 64) and recorder.take().numel() == 0
    result = sample_metrics(real, fake, recorder.extractor, kid_blocks=5)
    assert sum(result[f"class_{c}"] for c in range(10)) == len(x) - half
    assert result["classes_missing"] == 0  # held-out real digits contain every class
    # the real half's flatness is reported beside the samples' as their reference
    assert 1 <= result["class_max_min_real"] < float("inf") and 0 <= result["class_chi2_p_real"] <= 1
    assert abs(result["kid"]) < 4 * result["kid_se"] + 1e-3  # two halves of one split
    assert float(metric.compute()) >= 0


def test_nearest_neighbour_classes_read_digits_without_a_classifier():
    """A copy of a training image gets that image's label; held-out digits get their own label nearly always
    (1-NN in pixel space is a good digit classifier); the counts carry the same flatness keys under a prefix."""
    data = DigitsDataModule(batch_size=128, eval_batch_size=180, num_workers=0)
    data.setup()
    train = torch.stack([data.train_set[i] for i in range(len(data.train_set))])
    copies = nearest_neighbour_classes(train[:300], train, data.train_labels, chunk=64)
    assert torch.equal(copies, data.train_labels[:300])
    val = torch.stack([data.val_set[i] for i in range(len(data.val_set))])
    accuracy = (nearest_neighbour_classes(val, train, data.train_labels) == data.val_labels).double().mean()
    assert accuracy > 0.95
    counts = class_counts(copies, 10, prefix="nn_class")
    assert sum(counts[f"nn_class_{c}"] for c in range(10)) == 300 and counts["nn_classes_missing"] == 0
    assert counts == {k.replace("class", "nn_class", 1): v
                      for k, v in class_histogram(torch.nn.functional.one_hot(copies, 10).double(), 10).items()}
