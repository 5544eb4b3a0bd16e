"""Validate the last training step, whatever ``trainer.check_val_every_n_epoch`` says.

With validation every k epochs (``trainer.check_val_every_n_epoch=10``, the digits' default) Lightning validates only
epochs whose number is a multiple of k: a run of 25 epochs would end with the val/bpd of epoch 20, a run stopped by
``trainer.max_steps`` mid-epoch, by ``max_time`` or by a budget with an older one, and a run shorter than k epochs
with none at all, so that its checkpoint, its sweep objective and ``compare.py`` would read a stale or a missing
val/bpd. This callback makes the final step a validation step.
"""

from __future__ import annotations

import lightning as L

from vdmlab.lightning_compat import is_last_batch


class ValidateAtEnd(L.Callback):
    """Run validation after the last training step: the last batch of the last epoch (``max_epochs``), the step that
    reaches ``max_steps``, or a step after which another callback (a budget, ``max_time``) set ``should_stop``.

    It does so by setting the trainer's validation period to every epoch for that step, which Lightning reads right
    after ``on_train_batch_end``; keep it after callbacks that stop training (conf/callbacks/default.yaml lists it
    last). Every DDP rank takes the same decision from the same counters.
    """

    def __init__(self) -> None:
        self._period: int | None = None

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args) -> None:
        period = trainer.check_val_every_n_epoch
        if period in (None, 1) or not trainer.enable_validation:
            return
        last_epoch = (trainer.max_epochs is not None and trainer.max_epochs > 0
                      and trainer.current_epoch + 1 >= trainer.max_epochs and is_last_batch(trainer))
        last_step = trainer.max_steps is not None and trainer.max_steps > 0 and trainer.global_step >= trainer.max_steps
        if last_epoch or last_step or trainer.should_stop:
            if last_step:
                trainer.should_stop = True  # Lightning validates a step that stops the fit (once the epoch check passes)
            self._period, trainer.check_val_every_n_epoch = period, 1

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._period is not None:
            trainer.check_val_every_n_epoch, self._period = self._period, None
