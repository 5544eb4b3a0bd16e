"""The random streams of one run, split from its ``seed`` by the offsets of :mod:`vdmlab.seeds`, and the time
stratification of a training step split into micro-batches.

Training noise (t, ε, label dropout) comes from one generator per process, seeded ``seed + rank`` stride and
saved in checkpoints, so that a resumed run draws what the uninterrupted one would; every other stream
(evaluation, the logging-only train/bpd terms, FID samples) is a fresh generator derived from the seed and
counters, so it never moves the training noise.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from vdmlab import seeds


class NoiseStreams:
    """The generators of one run's ``seed`` on one process (``rank``)."""

    def __init__(self, seed: int):
        self.seed = int(seed)
        self._train: torch.Generator | None = None
        self._saved: Tensor | None = None  # a checkpoint's training-generator state, applied when it is next made

    def train(self, device: torch.device, rank: int) -> torch.Generator:
        """The training-noise generator on ``device``, seeded ``seed + rank`` stride (DDP ranks draw different
        t and ε), continuing from a loaded checkpoint's state."""
        if self._train is None or self._train.device != device:
            self._train = torch.Generator(device=device).manual_seed(self.seed + seeds.TRAIN_RANK_STRIDE * rank)
            if self._saved is not None:
                self._train.set_state(self._saved)
                self._saved = None
        return self._train

    def state(self) -> Tensor | None:
        """The training generator's state for a checkpoint (None before it was first used)."""
        return None if self._train is None else self._train.get_state()

    def load_state(self, state: Tensor | None) -> None:
        """Continue the training noise from a checkpoint's ``state`` (None: from the seed)."""
        self._train, self._saved = None, state

    def stage_seed(self, stage: str) -> int:
        """The evaluation seed of a split: ``seed`` for val, offset for test."""
        return self.seed + {"val": 0, "test": seeds.TEST_OFFSET}[stage]

    def evaluation(self, stage: str, batch_idx: int, rank: int, device: torch.device) -> torch.Generator:
        """Common random numbers for evaluation: the same noise every epoch, different per batch and rank."""
        return torch.Generator(device=device).manual_seed(
            self.stage_seed(stage) + seeds.EVAL_BATCH_STRIDE * batch_idx + seeds.EVAL_RANK_STRIDE * rank)

    def logging(self, step: int, device: torch.device) -> torch.Generator:
        """Noise for the logging-only train/bpd terms of optimizer step ``step``, apart from the training noise."""
        return torch.Generator(device=device).manual_seed(self.seed + seeds.LOG_STEP_STRIDE * (step + 1))


class StepTimes:
    """Diffusion times of the micro-batches of one optimizer step: with k micro-batches per step the time sampler
    draws the step's k·B times at its first micro-batch and micro-batch j takes their strata j·B … (j+1)·B - 1, so
    that the step sees one stratified set of k·B times, as one batch k times larger would (k = 1: one draw each)."""

    def __init__(self, time_sampler: Callable[..., Tensor]):
        self.time_sampler = time_sampler
        self._step: Tensor | None = None  # the current optimizer step's k·B times

    def __call__(self, batch_size: int, micro_batch: int, accumulation: int, generator: torch.Generator,
                 device: torch.device) -> Tensor:
        """Times ``[batch_size]`` of micro-batch ``micro_batch`` (counted over the epoch) of ``accumulation``."""
        if accumulation == 1:
            return self.time_sampler(batch_size, generator=generator, device=device)
        j = micro_batch % accumulation
        if j == 0 or self._step is None or self._step.numel() < (j + 1) * batch_size:
            self._step = self.time_sampler(accumulation * batch_size, generator=generator, device=device)
        return self._step[j * batch_size:(j + 1) * batch_size]
