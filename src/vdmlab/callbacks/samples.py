"""Sample grids: images as a PNG grid, 2-D data as a scatter plot, saved to the run dir and sent to loggers."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import torch
import torchvision
from matplotlib.figure import Figure  # the OO API: no pyplot backend is touched (notebooks stay inline)
from torch import Tensor


def save_samples(x: Tensor, path: str | Path, nrow: int | None = None) -> Path:
    """Write samples in [-1, 1]: images ``[N, C, H, W]`` as a grid, flat data ``[N, D]`` as a scatter of the first two dims."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    x = x.detach().float().cpu()
    if x.ndim == 4:
        nrow = nrow or int(np.ceil(np.sqrt(x.shape[0])))
        grid = torchvision.utils.make_grid((x + 1) / 2, nrow=nrow, padding=1, pad_value=1.0)
        if grid.shape[-1] < 256:  # upscale tiny images (8x8 digits) so the PNG is readable
            scale = int(np.ceil(256 / grid.shape[-1]))
            grid = torch.nn.functional.interpolate(grid[None], scale_factor=scale, mode="nearest")[0]
        torchvision.utils.save_image(grid, path)
    else:
        flat = x.reshape(x.shape[0], -1)
        fig = Figure(figsize=(4, 4), dpi=100)
        ax = fig.subplots()
        ax.scatter(flat[:, 0], flat[:, 1], s=3, alpha=0.6)
        ax.set(xlim=(-1.05, 1.05), ylim=(-1.05, 1.05), aspect="equal", title=f"{x.shape[0]} samples")
        fig.savefig(path, bbox_inches="tight")
    return path


def class_rows(num_classes: int | None, num_samples: int, device=None) -> tuple[Tensor | None, int | None]:
    """Labels for a grid with a row per class (``num_samples // num_classes`` columns, at least 1) and the row
    length; ``(None, None)`` for an unconditional model."""
    if not num_classes:
        return None, None
    per_class = max(1, num_samples // num_classes)
    return torch.arange(num_classes, device=device).repeat_interleave(per_class), per_class


def log_image(trainer: L.Trainer, key: str, path: Path) -> None:
    """Send a PNG to every logger that takes images (W&B, TensorBoard); others keep the file on disk."""
    for logger in trainer.loggers:
        experiment = getattr(logger, "experiment", None)
        if hasattr(logger, "log_image"):  # WandbLogger
            logger.log_image(key=key, images=[str(path)], step=trainer.global_step)
        elif hasattr(experiment, "add_image"):  # TensorBoard SummaryWriter
            image = torchvision.io.read_image(str(path), mode=torchvision.io.ImageReadMode.RGB)
            experiment.add_image(key, image, global_step=trainer.global_step)


class SampleGrid(L.Callback):
    """Every ``every_n_epochs`` validations (and at the end of training) draw EMA samples and save a grid; for a
    class-conditional model one row per class (with the sampler's guidance)."""

    def __init__(self, every_n_epochs: int = 25, num_samples: int = 64, seed: int = 0, dirname: str = "samples"):
        if every_n_epochs < 1 or num_samples < 1:
            raise ValueError("callbacks.sample_grid.every_n_epochs and num_samples must be >= 1")
        self.every_n_epochs, self.num_samples, self.seed, self.dirname = every_n_epochs, num_samples, seed, dirname
        self.last_path: Path | None = None

    def _draw(self, trainer: L.Trainer, pl_module: L.LightningModule, name: str) -> None:
        if not trainer.is_global_zero:
            return
        generator = torch.Generator(device=pl_module.device).manual_seed(self.seed)
        labels, nrow = class_rows(getattr(pl_module, "num_classes", None), self.num_samples, pl_module.device)
        x = pl_module.sample(self.num_samples if labels is None else len(labels), generator=generator, labels=labels)
        self.last_path = save_samples(x, Path(trainer.default_root_dir) / self.dirname / f"{name}.png", nrow=nrow)
        log_image(trainer, "samples", self.last_path)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        self._draw(trainer, pl_module, f"epoch_{trainer.current_epoch + 1:04d}")

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._draw(trainer, pl_module, "final")
