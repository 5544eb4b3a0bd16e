"""The ELBO profile over λ of a training run on its test split, at the end of ``trainer.test`` (train.py's test stage).

It evaluates the EMA network with the run's schedule, weighting and parameterization (:func:`vdmlab.metrics.profile.
evaluate_profile`) and writes ``profile.json``, ``profile.csv``, ``profile.png`` and ``per_example_bpd.csv`` into
``<run>/diagnostics/``, and sends the profile to every logger of the trainer. The evaluation noise comes from the
callback's own ``seed`` (not the training seed), so the runs of a sweep are paired example by example
(``compare.py`` reads these files). Rank zero computes it alone, on the whole test split (on its first batch
under ``trainer.fast_dev_run``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import lightning as L
from torch.utils.data import DataLoader

from vdmlab.data.base import UniqueIndexDataset
from vdmlab.diffusion.weighting import Weighting
from vdmlab.metrics.profile import evaluate_profile, log_profile


class ELBOProfile(L.Callback):
    """At test end: the ELBO integrand and the trained weighted integrand over ``num_bins`` λ bins, the rate–distortion
    curve and the per-example bits/dim of the test split, into ``dirpath`` and the loggers.

    Args:
        dirpath: output folder (the run's ``diagnostics/``).
        num_bins: equal-width λ bins over [λ_min, λ_max].
        draws_per_bin: stratified λ draws per bin and example.
        elbo_samples: λ draws per example of the per-example negative ELBO.
        seed: evaluation noise, shared by every run so that runs pair.
        scored_with: further weightings whose weighted losses are scored from the same draws (the matrix).
        enabled: false skips it.
    """

    def __init__(self, dirpath: str, num_bins: int = 16, draws_per_bin: int = 2, elbo_samples: int = 8, seed: int = 0,
                 scored_with: Mapping[str, Weighting] | None = None, enabled: bool = True):
        self.dirpath, self.num_bins, self.draws_per_bin = Path(dirpath), int(num_bins), int(draws_per_bin)
        self.elbo_samples, self.seed, self.scored_with, self.enabled = int(elbo_samples), int(seed), scored_with, enabled

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.enabled or trainer.global_rank != 0 or trainer.datamodule is None:
            return
        dataset = trainer.datamodule.split_dataset("test")
        loader = DataLoader(UniqueIndexDataset(dataset), batch_size=trainer.datamodule.eval_batch_size, shuffle=False)
        profile = evaluate_profile(pl_module.elbo_model(self.elbo_samples, pl_module.timesteps), pl_module.weighting,
                                   loader, num_bins=self.num_bins, draws_per_bin=self.draws_per_bin, seed=self.seed,
                                   scored_with=self.scored_with, device=pl_module.device,
                                   max_examples=loader.batch_size if trainer.fast_dev_run else None)  # a smoke test: one batch
        profile.write(self.dirpath)
        log_profile(trainer.loggers, profile, prefix="test/profile")
