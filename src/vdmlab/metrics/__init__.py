"""Evaluation metrics: bits/dim and FID as torchmetrics (exact under DDP), and the digits feature extractor."""

from vdmlab.metrics.bpd import BitsPerDim, UniqueIndexDataset, evaluate_bpd, mean_and_standard_error, split_index_batch
from vdmlab.metrics.digits_classifier import (
    DigitsClassifier,
    DigitsClassifierWeightsError,
    default_weights_path,
    load_digits_classifier,
)
from vdmlab.metrics.fid import (
    DigitsFeatures,
    FIDMetric,
    InceptionFeatures,
    InceptionWeightsNotFoundError,
    build_extractor,
    fid_from_images,
    frechet_distance,
    inception_hub_path,
    shard_indices,
)

__all__ = [
    "BitsPerDim",
    "DigitsClassifier",
    "DigitsClassifierWeightsError",
    "DigitsFeatures",
    "FIDMetric",
    "InceptionFeatures",
    "InceptionWeightsNotFoundError",
    "UniqueIndexDataset",
    "build_extractor",
    "default_weights_path",
    "evaluate_bpd",
    "fid_from_images",
    "frechet_distance",
    "inception_hub_path",
    "load_digits_classifier",
    "mean_and_standard_error",
    "shard_indices",
    "split_index_batch",
]
