"""FID during training: val/fid every ``fid.every_n_epochs`` epochs and test/fid at the end, from a
DiffusionModule's EMA samples (the options: :class:`vdmlab.options.FIDOptions`, conf/train.yaml's ``fid``)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import torch
from torch import nn

from vdmlab.metrics.fid import FIDMetric, split_fid
from vdmlab.metrics.fid_samples import sharded_sample_fid
from vdmlab.options import FIDOptions

if TYPE_CHECKING:
    from vdmlab.module import DiffusionModule

STAGES = ("val", "test")


class FIDEvaluation(nn.Module):
    """One FID metric per stage (a module, so that it follows the DiffusionModule's device; the feature extractor
    and the statistics are never in ``state_dict``), and when to use it."""

    def __init__(self, options: FIDOptions, data_shape: tuple[int, ...], num_levels: int):
        super().__init__()
        self.options = options
        feature = options.extractor_feature(data_shape, num_levels)
        self.metrics = nn.ModuleDict({stage: FIDMetric(feature, options.inception_path, reset_real_features=False)
                                      for stage in STAGES})

    def due(self, stage: str, epoch: int, sanity_checking: bool) -> bool:
        """Whether ``stage``'s epoch end computes FID: test always, val every ``every_n_epochs`` epochs (0: never)."""
        if stage == "test":
            return True
        every = self.options.every_n_epochs
        return bool(every) and not sanity_checking and (epoch + 1) % every == 0

    @torch.no_grad()
    def evaluate(self, module: DiffusionModule, stage: str) -> dict[str, float]:
        """FID of ``num_samples`` EMA samples against the ``stage`` split, with its sample count (collective)."""
        metric, options = self.metrics[stage], self.options
        return split_fid(metric, module.trainer.datamodule, stage,
                         lambda r: compute_fid(module, metric, options.num_samples, options.steps, options.batch_size, r),
                         options.stats_dir, options.repeats, options.floor, options.batch_size, module.seed)


@torch.no_grad()
def compute_fid(module: DiffusionModule, metric: FIDMetric, num_samples: int, steps: int, batch_size: int = 500,
                repeat: int = 0, folder: str | os.PathLike | None = None) -> dict[str, float]:
    """Feed this rank's share of ``num_samples`` fresh EMA samples of ``module`` (sample seed ``repeat``) to
    ``metric`` and compute FID (collective). Batch b of the samples is drawn with its own seed, whatever the number
    of ranks; with a ``folder`` each batch is written there as it is made and a rerun reuses them
    (:mod:`vdmlab.metrics.fid_samples`; then the result's ``fid_batches_loaded`` counts the reused batches).

    A conditional model draws every class equally often (sample i gets label i mod C) with the sampler's guidance;
    on the digits the result also holds ``class_acc``, the fraction of samples that the shipped digits classifier
    assigns to the label they were drawn for.
    """
    def sample(n, generator, y=None):
        return module.sample(n, steps=steps, generator=generator, labels=y)

    conditional = module.num_classes is not None
    return sharded_sample_fid(metric, sample, num_samples, batch_size, module.num_levels, int(module.seed), repeat,
                              folder,
                              labels=(lambda indices: module.labels.balanced(indices, module.device)) if conditional
                              else None,
                              classifier=getattr(metric.extractor, "classifier", None) if conditional else None)

