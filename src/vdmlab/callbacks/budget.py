"""Stop training after a budget of CPU time, so that runs compared at "equal compute" really are.

Lightning's ``trainer.max_time`` counts wall-clock time, which on a shared machine depends on whatever else runs
there: two trials with the same ``max_time`` can get very different numbers of steps. The CPU time of the training
process (``time.process_time``: user + system time of all its threads) is what the run itself consumed; with one
torch thread per process (``threads=1``) it is close to the compute the run was given, whatever the load.
"""

from __future__ import annotations

import time

import lightning as L
from lightning.pytorch.utilities.rank_zero import rank_zero_info


class CPUTimeBudget(L.Callback):
    """Stop ``fit`` at the end of the first training step after ``seconds`` of process CPU time since fit started.

    Like ``max_time`` it stops through ``trainer.should_stop``, so the validation of the current epoch still runs
    and the checkpoints and the final metrics are those of the last step. Under DDP every rank stops at the same
    step (rank 0 decides, and the decision is broadcast).
    """

    def __init__(self, seconds: float):
        if not float(seconds) > 0:
            raise ValueError(f"seconds={seconds!r} is invalid: the CPU-time budget must be > 0 seconds")
        self.seconds = float(seconds)
        self._start: float | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.process_time()

    def used(self) -> float:
        """CPU seconds consumed since fit started."""
        return 0.0 if self._start is None else time.process_time() - self._start

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args) -> None:
        stop = trainer.strategy.broadcast(self.used() >= self.seconds)
        if stop and not trainer.should_stop:
            trainer.should_stop = True
            rank_zero_info(f"CPU-time budget of {self.seconds:.0f} s reached at step {trainer.global_step}; stopping")
