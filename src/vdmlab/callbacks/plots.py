"""Plots of the noise schedule and weighting: λ(t), p(λ), w(λ) and p_w(t) (§4.5-4.7); a learned weighting
(``edm2_uncertainty``) is drawn as trained, w(λ)·e^{-u(λ)}, beside its base w(λ)."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from matplotlib.figure import Figure  # the OO API: no pyplot backend is touched (notebooks stay inline)

from vdmlab.callbacks.samples import log_image
from vdmlab.diffusion.schedules import Schedule
from vdmlab.diffusion.weighting import Weighting, augmentation_kernel

FLAT = 0.1  # a curve whose range is under 10 % of its size is drawn as flat, not auto-scaled into its rounding noise


def plot_curve(ax, x: torch.Tensor, y: torch.Tensor) -> None:
    """Plot ``y(x)``; a flat curve gets a y-range of ±50 % around its value, so it reads as the constant it is."""
    ax.plot(x, y)
    lo, hi = float(y.min()), float(y.max())
    centre = (lo + hi) / 2
    if hi - lo <= FLAT * abs(centre):
        half = 0.5 * abs(centre) or 1.0
        ax.set_ylim(centre - half, centre + half)


def kernel_density(schedule: Schedule, weighting: Weighting, t: torch.Tensor) -> torch.Tensor | str:
    """The augmentation kernel p_w(t) on ``t``, or the reason there is none (w constant or not monotonic)."""
    try:
        return augmentation_kernel(weighting, schedule, t).cpu()  # exact at both ends: no clamp needed
    except ValueError:
        return ("no kernel p_w(t): w is constant,\nits kernel is a point mass at t = 0" if weighting.monotonic
                else "no kernel p_w(t):\nw is not monotonic (eq. (4.148))")


@torch.no_grad()
def schedule_figure(schedule: Schedule, weighting: Weighting, title: str = "") -> Figure:
    """λ(t), p(λ) = -dt/dλ, w(λ) (normalised to max 1) and, when w has one, the augmentation kernel p_w(t); for a
    weighting without a kernel density three panels, the reason written under the weighting's."""
    state = next(iter([*schedule.parameters(), *schedule.buffers()]), None)  # learned/adaptive: on their device
    device = state.device if state is not None else torch.device("cpu")
    t = torch.linspace(0, 1, 501, device=device)
    logsnr = schedule.logsnr(t).float().cpu()
    grid = torch.linspace(schedule.logsnr_min, schedule.logsnr_max, 501, device=device)
    density = schedule.density(grid)
    w = weighting.trained_weight(grid, density).float().cpu()
    base = weighting(grid, density).float().cpu()
    learned = _learns(weighting)
    p_w = kernel_density(schedule, weighting, t)
    t, grid, density = t.cpu(), grid.cpu(), density.float().cpu()
    panels = 4 if isinstance(p_w, torch.Tensor) else 3
    fig = Figure(figsize=(4 * panels, 3.4), dpi=90)
    axes = fig.subplots(1, panels)
    plot_curve(axes[0], t, logsnr)
    axes[0].set(xlabel="t", ylabel="λ(t)", title="schedule")
    plot_curve(axes[1], grid, density)
    axes[1].set(xlabel="λ", ylabel="p(λ)", title="importance density p(λ)")
    plot_curve(axes[2], grid, w / w.max().clamp_min(1e-30))
    kind = "monotonic" if weighting.monotonic else "non-monotonic"
    axes[2].set(xlabel="λ", ylabel="w(λ)/max w", title=f"weighting {weighting.name} ({kind})")
    if learned:  # the trained w·e^{-u} (solid) against the base w it started from (dashed)
        axes[2].plot(grid, base / base.max().clamp_min(1e-30), linestyle="--")
        axes[2].legend(["w·e^{-u} (learned)", "w (base)"], fontsize=7)
    if isinstance(p_w, torch.Tensor):
        plot_curve(axes[3], t, p_w)
        axes[3].set(xlabel="t", ylabel="p_w(t)", title="augmentation kernel p_w(t)")
    else:
        axes[2].text(0.5, 0.04, p_w, transform=axes[2].transAxes, ha="center", va="bottom", fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_schedule_and_weighting(schedule: Schedule, weighting: Weighting, path: str | Path, title: str = "") -> Path:
    """Save :func:`schedule_figure` as a PNG at ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    schedule_figure(schedule, weighting, title).savefig(path)
    return path


def _learns(module) -> bool:
    """Whether a schedule or weighting has parameters or state that change while training."""
    return isinstance(module, torch.nn.Module) and (any(True for _ in module.parameters())
                                                    or any(True for _ in module.buffers()))


#: λ values at which a learned weighting's log w(λ)·e^{-u(λ)} is logged (``weighting/log_w@<λ>``)
LOGGED_LOGSNR = (-10.0, -5.0, 0.0, 5.0, 10.0)


@torch.no_grad()
def learned_weighting_values(schedule: Schedule, weighting: Weighting) -> dict[str, float]:
    """log of the trained w(λ) = w·e^{-u} at the λ of ``LOGGED_LOGSNR`` inside the schedule's range."""
    device = next(iter(weighting.parameters())).device
    grid = torch.tensor([v for v in LOGGED_LOGSNR if schedule.logsnr_min <= v <= schedule.logsnr_max], device=device)
    log_w = torch.log(weighting.trained_weight(grid, schedule.density(grid)))
    return {f"weighting/log_w@{float(lam):g}": float(v) for lam, v in zip(grid, log_w, strict=True)}


class SchedulePlot(L.Callback):
    """Plot the schedule and weighting at the start of training and, for schedules or weightings with parameters or
    state, after every ``every_n_epochs`` validations, so a learned or adaptive schedule, or a learned weighting, can
    be watched as it trains; a learned weighting's log w(λ)·e^{-u(λ)} at a few λ is also logged every validation."""

    def __init__(self, every_n_epochs: int = 10, dirname: str = "plots"):
        self.every_n_epochs, self.dirname = every_n_epochs, dirname

    def _plot(self, trainer: L.Trainer, pl_module: L.LightningModule, name: str) -> None:
        if not trainer.is_global_zero:
            return
        path = Path(trainer.default_root_dir) / self.dirname / f"schedule_{name}.png"
        schedule = pl_module.schedule
        plot_schedule_and_weighting(schedule, pl_module.weighting, path, title=f"{type(schedule).__name__} — {name}")
        log_image(trainer, "schedule", path)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._plot(trainer, pl_module, "start")

    @staticmethod
    def _adapts(pl_module: L.LightningModule) -> bool:
        return _learns(pl_module.schedule) or _learns(pl_module.weighting)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking and _learns(pl_module.weighting):
            pl_module.log_dict(learned_weighting_values(pl_module.schedule, pl_module.weighting))
        if trainer.sanity_checking or not self._adapts(pl_module) or (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        self._plot(trainer, pl_module, f"epoch_{trainer.current_epoch + 1:04d}")

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._adapts(pl_module):  # the schedule as trained, whatever the cadence
            self._plot(trainer, pl_module, "end")
