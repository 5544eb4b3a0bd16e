"""Power-function EMA profiles tracked during training, with snapshots for post-hoc EMA (EDM2 §3, App. C).

Beside the module's own EMA (``module.ema_decay``, used for validation and the checkpoint's samples) this callback
keeps one averaged copy of the denoiser per σ_rel and writes all of them every ``every_n_steps`` optimizer steps
(and at the end of training) to ``<dirpath>/step<N>.pt``. ``python eval.py ... ema.sigma_rel=s`` and
``python sample.py ... ema.sigma_rel=s`` then reconstruct the weights of any other EMA length from those snapshots
(vdmlab.posthoc_ema.solve_coefficients). The averages are in the checkpoint (the callback's state), so a resumed run
continues them exactly; its snapshot folders, old and new, are listed there too, and no snapshot is ever deleted.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch

from vdmlab.checks import ParameterError, check_int
from vdmlab.posthoc_ema import gamma_from_sigma_rel, power_ema_beta

log = logging.getLogger("vdmlab")


def snapshot_path(dirpath: str | Path, step: int) -> Path:
    """The snapshot file of one optimizer step."""
    return Path(dirpath) / f"step{step:08d}.pt"


class PostHocEMA(L.Callback):
    """Track power-function EMAs of ``pl_module.net`` for each σ_rel in ``sigma_rels`` and snapshot them.

    Args:
        sigma_rels: the tracked relative EMA lengths (EDM2: 0.05 and 0.10).
        every_n_steps: snapshot period in optimizer steps (a snapshot is also written at the end of training).
        dirpath: the snapshot folder (the run folder's ``posthoc_ema/``).
    """

    def __init__(self, sigma_rels: list[float] = (0.05, 0.10), every_n_steps: int = 200,
                 dirpath: str = "posthoc_ema") -> None:
        if not sigma_rels:
            raise ParameterError("callbacks.posthoc_ema.sigma_rels", sigma_rels, "list at least one σ_rel, e.g. [0.05,0.10]")
        try:
            self.gammas = [float(g) for g in gamma_from_sigma_rel(list(sigma_rels))]
        except ValueError as error:
            raise ParameterError("callbacks.posthoc_ema.sigma_rels", list(sigma_rels), str(error)) from None
        self.sigma_rels = [float(s) for s in sigma_rels]
        self.every_n_steps = check_int("callbacks.posthoc_ema.every_n_steps", every_n_steps, 1)
        self.dirpath = str(dirpath)
        self.snapshot_dirs: list[str] = [self.dirpath]
        self.emas: list[torch.nn.Module] = []
        self._step = 0  # the optimizer step the averages have reached
        self._loaded: dict[str, Any] | None = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.emas = [copy.deepcopy(pl_module.net).requires_grad_(False).eval() for _ in self.gammas]
        if self._loaded is not None:  # resumed: continue the averages, keep the earlier snapshot folders
            state, self._loaded = self._loaded, None
            if [float(s) for s in state["sigma_rels"]] != self.sigma_rels:
                raise ParameterError("callbacks.posthoc_ema.sigma_rels", self.sigma_rels,
                                     f"the checkpoint tracked {state['sigma_rels']}: resume with the same sigma_rels")
            for ema, ema_state in zip(self.emas, state["emas"]):
                ema.load_state_dict(ema_state)
            self._step = int(state["step"])
            self.snapshot_dirs = [d for d in state["snapshot_dirs"] if d != self.dirpath] + [self.dirpath]
        else:
            self._step = trainer.global_step
            if self._step:
                log.warning("post-hoc EMA starts at step %d: its profiles average the weights from there on",
                            self._step)

    @torch.no_grad()
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        step = trainer.global_step
        if step == self._step:  # a micro-batch of gradient accumulation: no optimizer step yet
            return
        self._step = step
        params = [p.detach() for p in pl_module.net.parameters()]
        for gamma, ema in zip(self.gammas, self.emas):
            torch._foreach_lerp_(list(ema.parameters()), params, 1.0 - power_ema_beta(gamma, step))
        if step % self.every_n_steps == 0:
            self.save_snapshot(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.save_snapshot(trainer, pl_module)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if self.emas:  # an interrupted run keeps a snapshot of its last step (its last.ckpt has the same)
            self.save_snapshot(trainer, pl_module)

    @torch.no_grad()
    def save_snapshot(self, trainer: L.Trainer, pl_module: L.LightningModule) -> Path | None:
        """Write every tracked average at the current step (rank 0; an existing file of this step is kept)."""
        path = snapshot_path(self.dirpath, self._step)
        if not trainer.is_global_zero or self._step == 0 or path.exists():
            return None
        for ema in self.emas:  # buffers are not averaged: the network's own
            for ema_buffer, buffer in zip(ema.buffers(), pl_module.net.buffers()):
                ema_buffer.copy_(buffer)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"step": self._step, "sigma_rels": self.sigma_rels, "gammas": self.gammas,
                    "nets": [{k: v.detach().cpu() for k, v in ema.state_dict().items()} for ema in self.emas]},
                   path.with_suffix(".tmp"))
        path.with_suffix(".tmp").replace(path)  # never a half-written snapshot
        return path

    def state_dict(self) -> dict[str, Any]:
        return {"sigma_rels": self.sigma_rels, "step": self._step, "snapshot_dirs": list(self.snapshot_dirs),
                "emas": [ema.state_dict() for ema in self.emas]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._loaded = state_dict
        self.snapshot_dirs = list(state_dict.get("snapshot_dirs", []))
