"""The variance of the loss estimator (eq. (4.123)) of a fixed trained denoiser under each schedule and each time
sampler, at equal sample counts (the analysis behind ``python -m vdmlab.cli.variance``).

The denoiser is the checkpoint's EMA network (rebuilt with ``build_from_checkpoint``), frozen. Schedules, all on
the checkpoint's endpoints [λ_min, λ_max]:

- ``cosine`` and ``linear``: the fixed schedules;
- ``learned``: a fresh ``LearnedSchedule`` whose shape is *fitted* to this denoiser: ``fit_steps`` Adam steps
  (lr ``fit_lr``) on the variance gradient ∇_η E[L²] (the mechanism used in training, the denoiser frozen),
  on low-discrepancy draws over the training split;
- ``adaptive``: a fresh ``AdaptiveSchedule`` whose bin statistics are accumulated over ``adaptive_passes``
  passes of the training split (each batch drawn from its current density, as in training);
- ``checkpoint``: the checkpoint's own schedule, as trained (useful when it was learned or adaptive).

Each is then measured on ``split`` (default: the training split, where the training estimator lives) with fresh
noise: ``repeats`` draws of (t, ε) for every example of ``floor(N/B)`` fixed batches of the checkpoint's batch size
B, with iid and with low-discrepancy times. Reported, in nats:

- ``mean``: the estimate of E[L] (all schedules agree up to Monte-Carlo error: the estimator is unbiased);
- ``var_example``: E_x Var_{t,ε}[L(x)], the Monte-Carlo variance of the per-example loss (the data's own spread
  Var_x E[L|x], the same for every schedule, is left out; ``var_example_total`` in the files includes it);
- ``var_batch``: Var_{t,ε} of the batch-mean loss for fixed batches, the quantity low-discrepancy sampling reduces;
- ratios of both to ``cosine`` under the same sampler.

The weighting is the checkpoint's (``weighting=NAME`` picks conf/weighting/NAME.yaml instead). Weightings defined
relative to the training density (``simple``, ``min_snr``) use the checkpoint schedule's p(λ) as a fixed target for
every schedule compared, so that all estimate the same integral. Results are printed and written to
``<out>.csv`` and ``<out>.json`` (default ``out``: ``variance_<weighting>`` next to the checkpoint).

Command line: :mod:`vdmlab.cli.variance`.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from vdmlab.diffusion.learned_schedules import AdaptiveSchedule, LearnedSchedule
from vdmlab.diffusion.losses import diffusion_loss, iid_times, low_discrepancy_times
from vdmlab.diffusion.parameterization import Parameterization
from vdmlab.diffusion.schedules import CosineSchedule, LinearSchedule, Schedule
from vdmlab.diffusion.weighting import Weighting

SAMPLERS: dict[str, Callable[..., Tensor]] = {"iid": iid_times, "low_discrepancy": low_discrepancy_times}


class FixedTargetWeighting(Weighting):
    """A weighting whose p(λ) argument is frozen to one reference schedule's density, so w is the same target
    for every importance distribution compared (matters only for ``simple``/``min_snr``)."""

    def __init__(self, weighting: Weighting, reference: Schedule):
        self.inner, self.reference = weighting, reference
        self.name, self.monotonic = weighting.name, weighting.monotonic

    def weight(self, logsnr: Tensor, p_logsnr: Tensor | None) -> Tensor:
        """w(λ; p_ref(λ)) of the wrapped weighting, eqs. (4.95), (4.123)."""
        with torch.no_grad():
            p_reference = self.reference.density(logsnr.detach())
        return self.inner(logsnr, p_reference)


def split_tensor(datamodule, split: str) -> Tensor:
    """Every example of one split as a single tensor [N, ...]."""
    datamodule.setup()
    dataset = {"train": datamodule.train_set, "val": datamodule.val_set, "test": datamodule.test_set}[split]
    return torch.stack([dataset[i] for i in range(len(dataset))])


def fixed_batches(data: Tensor, batch_size: int) -> list[Tensor]:
    """floor(N/B) consecutive batches of B examples."""
    n = data.shape[0] // batch_size
    if n == 0:
        raise ValueError(f"batch_size={batch_size} is larger than the {data.shape[0]} examples of the split")
    return list(data[: n * batch_size].split(batch_size))


def draw_loss(x: Tensor, schedule: Schedule, sampler: Callable, gen: torch.Generator, **objective) -> Tensor:
    """One Monte-Carlo draw of the per-example weighted loss (eq. (4.123)), ``[B]``."""
    t = sampler(x.shape[0], generator=gen, device=x.device).to(x.dtype)
    eps = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
    return diffusion_loss(x, t, eps, schedule=schedule, **objective).loss


def fit_learned(schedule: LearnedSchedule, data: Tensor, batch_size: int, steps: int, lr: float,
                gen: torch.Generator, **objective) -> tuple[float, float]:
    """Fit the shape η to the frozen denoiser by Adam on ∇_η E[L²] (the training mechanism); returns the mean
    of L² over the first and the last tenth of the steps."""
    params = [p for name, p in schedule.named_parameters() if name != "logsnr_ends"]
    optimizer = torch.optim.Adam(params, lr=lr)
    schedule.train()
    second_moments = []
    for _ in range(steps):
        idx = torch.randint(0, data.shape[0], (batch_size,), generator=gen, device=data.device)
        x = data[idx]
        t = low_discrepancy_times(batch_size, generator=gen, device=x.device).to(x.dtype)
        eps = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
        terms = diffusion_loss(x, t, eps, schedule=schedule, **objective)
        schedule.update(terms.logsnr.detach(), terms.loss.detach())
        optimizer.zero_grad(set_to_none=True)
        terms.loss.mean().backward()
        optimizer.step()
        second_moments.append(float(terms.loss.detach().pow(2).mean()))
    schedule.eval()
    tenth = max(1, steps // 10)
    return sum(second_moments[:tenth]) / tenth, sum(second_moments[-tenth:]) / tenth


@torch.no_grad()
def fit_adaptive(schedule: AdaptiveSchedule, data: Tensor, batch_size: int, passes: int, gen: torch.Generator,
                 **objective) -> None:
    """Accumulate the bin statistics of eq. (4.130) over ``passes`` shuffled passes of the data."""
    for _ in range(passes):
        order = torch.randperm(data.shape[0], generator=gen, device=data.device)
        for idx in order[: data.shape[0] // batch_size * batch_size].split(batch_size):
            x = data[idx]
            t = low_discrepancy_times(x.shape[0], generator=gen, device=x.device).to(x.dtype)
            eps = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
            terms = diffusion_loss(x, t, eps, schedule=schedule, **objective)
            schedule.update(terms.logsnr, terms.loss)


@torch.no_grad()
def measure(schedule: Schedule, sampler: Callable, batches: list[Tensor], repeats: int, seed: int,
            **objective) -> dict[str, float]:
    """Mean, per-example and batch-mean variances of the loss over ``repeats`` draws per fixed batch."""
    gen = torch.Generator(device=batches[0].device).manual_seed(seed)  # common random numbers across schedules
    losses = torch.stack([torch.stack([draw_loss(x, schedule, sampler, gen, **objective) for x in batches])
                          for _ in range(repeats)]).double()  # [R, nb, B]
    per_example = losses.var(dim=0)  # [nb, B]
    batch_means = losses.mean(dim=2)  # [R, nb]
    return {
        "mean": float(losses.mean()),
        "var_example": float(per_example.mean()),
        "var_example_se": float(per_example.std() / math.sqrt(per_example.numel())),
        "var_example_total": float(losses.var()),
        "var_batch": float(batch_means.var(dim=0).mean()),
        "second_moment": float(losses.pow(2).mean()),
        "samples": int(losses.numel()),
    }


def format_rows(rows: list[dict]) -> str:
    """The table printed to the terminal."""
    head = f"  {'schedule':<11} {'sampler':<16} {'mean':>9} {'var_example':>12} {'ratio':>7} {'var_batch':>11} {'ratio':>7}"
    lines = [head, "  " + "-" * (len(head) - 2)]
    for r in rows:
        lines.append(f"  {r['schedule']:<11} {r['sampler']:<16} {r['mean']:9.3f} {r['var_example']:12.4g} "
                     f"{r['ratio_example']:7.3f} {r['var_batch']:11.4g} {r['ratio_batch']:7.3f}")
    return "\n".join(lines)


def write_outputs(rows: list[dict], meta: dict, stem: Path) -> tuple[Path, Path]:
    """``<stem>.csv`` (one row per schedule x sampler) and ``<stem>.json`` (rows and settings)."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    csv_path, json_path = stem.with_suffix(".csv"), stem.with_suffix(".json")
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    json_path.write_text(json.dumps({"settings": meta, "rows": rows}, indent=2))
    return csv_path, json_path


def variance_study(module, datamodule, *, repeats: int, fit_steps: int, fit_lr: float, adaptive_passes: int,
                   split: str, batch_size: int | None, seed: int, device: torch.device,
                   log: Callable[[str], None] = print) -> tuple[list[dict], dict]:
    """Fit the learned and adaptive schedules to the module's frozen EMA denoiser, then measure every schedule.

    Returns the rows (one per schedule x time sampler: mean, var_example, var_batch and their ratios to cosine)
    and the settings (``log`` reports the fitting progress).
    """
    module = module.to(device)
    net: nn.Module = module.ema.net.eval().requires_grad_(False)
    parameterization: Parameterization = module.parameterization
    reference = module.schedule.eval()
    weighting = FixedTargetWeighting(module.weighting, reference)
    lo, hi = reference.logsnr_min, reference.logsnr_max
    batch_size = int(batch_size or datamodule.batch_size)
    objective = {"net": net, "weighting": weighting, "parameterization": parameterization,
                 "timesteps": module.timesteps}
    train = split_tensor(datamodule, "train").to(device)
    measured = split_tensor(datamodule, split).to(device)
    gen = torch.Generator(device=device).manual_seed(seed)

    learned = LearnedSchedule(lo, hi, lr_multiplier=1.0).to(device)
    first, last = fit_learned(learned, train, batch_size, fit_steps, fit_lr, gen, **objective)
    log(f"learned: fitted in {fit_steps} Adam steps (lr {fit_lr}): E[L²] {first:.4g} -> {last:.4g}")
    adaptive = AdaptiveSchedule(lo, hi).to(device)
    fit_adaptive(adaptive, train, batch_size, adaptive_passes, gen, **objective)
    log(f"adaptive: bin statistics from {adaptive_passes} passes of {train.shape[0]} training examples")

    schedules = {"cosine": CosineSchedule(lo, hi), "linear": LinearSchedule(lo, hi), "learned": learned,
                 "adaptive": adaptive, "checkpoint": reference}
    batches = fixed_batches(measured, batch_size)
    rows = []
    for sampler_name, sampler in SAMPLERS.items():
        stats = {name: measure(s, sampler, batches, repeats, seed + 1, **objective) for name, s in schedules.items()}
        for name, s in stats.items():
            rows.append({"schedule": name, "sampler": sampler_name, **s,
                         "ratio_example": s["var_example"] / stats["cosine"]["var_example"],
                         "ratio_batch": s["var_batch"] / stats["cosine"]["var_batch"]})
    meta = {"weighting": weighting.name, "checkpoint_schedule": type(reference).__name__, "logsnr_min": lo,
            "logsnr_max": hi, "batch_size": batch_size, "batches": len(batches), "timesteps": module.timesteps,
            "device": str(device)}
    return rows, meta
