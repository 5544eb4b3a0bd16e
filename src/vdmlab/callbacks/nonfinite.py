"""The non-finite guard: skip optimizer steps whose gradients are NaN/inf, stop after too many in a row, and keep a
checkpoint from before the divergence (``good.ckpt``) that the stop message tells how to resume from."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import lightning as L
import torch

log = logging.getLogger("vdmlab")


class NonFiniteLossError(RuntimeError):
    """Training produced too many consecutive non-finite losses or gradients."""


class NonFiniteGuard(L.Callback):
    """Skip every optimizer step with a non-finite gradient (a NaN/inf loss gives one), count them
    (``train/nonfinite_steps``) and stop after ``patience`` consecutive ones.

    It keeps ``<dirpath>/good.ckpt``: the state at the start of training, replaced after each validation whose
    val/bpd is finite, at most ``max_bpd`` and at most ``(1 + tolerance)`` times the best so far, so a run that
    explodes (finite but huge weights) before it produces NaNs never overwrites it. The stop message gives the
    command that resumes from it with a lower learning rate (train.py applies a changed ``module.optimizer.lr``
    on resume).

    Args:
        patience: consecutive non-finite steps (each skipped) before training stops.
        dirpath: where good.ckpt is written (the run's checkpoints/ folder); None: no good.ckpt.
        tolerance: a validation counts as good up to this fraction above the best val/bpd.
        max_bpd: a validation above this many bits/dim is never good (an exploded model).
    """

    def __init__(self, patience: int = 20, dirpath: str | None = None, tolerance: float = 0.1, max_bpd: float = 64.0):
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise ValueError(f"callbacks.nonfinite_guard.patience={patience!r} is invalid: it must be an integer >= 1")
        self.patience, self.tolerance, self.max_bpd = patience, float(tolerance), float(max_bpd)
        self.dirpath = Path(dirpath) if dirpath else None
        self.nonfinite_steps, self.consecutive = 0, 0
        self.best_bpd, self.good_step = math.inf, None
        self.resume_command: str | None = None  # set by train.py: this run's resume command, without ckpt_path

    @property
    def good_path(self) -> Path | None:
        return self.dirpath / "good.ckpt" if self.dirpath else None

    def state_dict(self) -> dict[str, Any]:
        return {"nonfinite_steps": self.nonfinite_steps, "best_bpd": self.best_bpd, "good_step": self.good_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.nonfinite_steps = int(state_dict.get("nonfinite_steps", 0))
        self.best_bpd = float(state_dict.get("best_bpd", math.inf))
        self.good_step = state_dict.get("good_step")

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        """Checkpoints written before the guard was a callback keep the count under ``checkpoint["vdmlab"]``."""
        self.nonfinite_steps = int(checkpoint.get("vdmlab", {}).get("nonfinite_steps", self.nonfinite_steps))

    def _save_good(self, trainer: L.Trainer) -> None:
        if self.good_path is not None:
            trainer.save_checkpoint(self.good_path, weights_only=False)  # atomic (AtomicCheckpointIO under train.py)
            self.good_step = trainer.global_step

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # the starting weights (fresh or resumed) are the first good state; saving is collective under DDP, so rank 0
        # decides for every rank (each rank looking at the file itself races with rank 0 writing it, and hangs)
        if trainer.strategy.broadcast(self.good_path is not None and not self.good_path.exists(), src=0):
            self._save_good(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        bpd = trainer.callback_metrics.get("val/bpd")
        if trainer.sanity_checking or bpd is None or trainer.state.fn != "fit":
            return
        bpd = float(bpd)
        if math.isfinite(bpd) and bpd <= self.max_bpd and bpd <= (1 + self.tolerance) * self.best_bpd:
            self.best_bpd = min(self.best_bpd, bpd)
            self._save_good(trainer)

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any) -> None:
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        if not grads:
            return
        # one fused kernel and a single device-to-host sync per optimizer step (after all its micro-batches)
        if torch.isfinite(torch.stack(torch._foreach_norm(grads))).all():
            self.consecutive = 0
            return
        for p in pl_module.parameters():
            p.grad = None  # AdamW skips parameters without gradients: the step becomes a no-op
        self.nonfinite_steps += 1
        self.consecutive += 1
        pl_module.log("train/nonfinite_steps", float(self.nonfinite_steps), on_step=True, on_epoch=False)
        if self.consecutive >= self.patience:
            raise NonFiniteLossError(self._advice(optimizer))

    def _advice(self, optimizer: Any) -> str:
        lr = float(optimizer.param_groups[0].get("initial_lr", optimizer.param_groups[0]["lr"]))
        head = (f"{self.consecutive} consecutive training steps had a non-finite loss or gradient "
                f"({self.nonfinite_steps} skipped in total); stopping.")
        if self.good_path is None or not self.good_path.exists():
            return f"{head} Lower module.optimizer.lr (now {lr:g}) or check the data for NaNs."
        command = self.resume_command or "python train.py"
        return (f"{head} The weights from before the divergence (step {self.good_step}) are in {self.good_path}; "
                f"resume from them with a lower learning rate:\n  {command} ckpt_path={self.good_path} "
                f"module.optimizer.lr={lr / 10:g}\n(or check the data for NaNs)")
