"""A test callback that makes the operating system deliver a real signal to this process at a chosen moment of
training, validation, FID or test (``+callbacks.signal_at.at=<hook>:<epoch>:<batch>``), as a scheduler would."""

import os
import signal

import lightning as L


class SignalAt(L.Callback):
    """Send ``sig`` to this process at ``at`` = ``"<hook>:<epoch>:<batch>"`` (hooks: train_epoch_start,
    train_batch_end, val_batch_end, val_epoch_end (just before the FID, which runs in the module's hook),
    test_batch_end); once."""

    def __init__(self, at: str, sig: str = "SIGTERM"):
        hook, epoch, batch = at.split(":")
        self.hook, self.batch, self.sig, self.sent = hook, int(batch), getattr(signal, sig), False
        self.epoch = None if epoch == "*" else int(epoch)  # "*": any epoch (the test stage)

    def _maybe(self, hook, trainer, batch_idx=0):
        if (not self.sent and hook == self.hook and self.epoch in (None, trainer.current_epoch) and batch_idx == self.batch
                and not trainer.sanity_checking):
            self.sent = True
            os.kill(os.getpid(), self.sig)

    def on_train_epoch_start(self, trainer, pl_module):
        self._maybe("train_epoch_start", trainer)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._maybe("train_batch_end", trainer, batch_idx)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self._maybe("val_batch_end", trainer, batch_idx)

    def on_validation_epoch_end(self, trainer, pl_module):
        self._maybe("val_epoch_end", trainer)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self._maybe("test_batch_end", trainer, batch_idx)
