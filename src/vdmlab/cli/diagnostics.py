"""What ``eval.py`` and ``sample.py`` add for the diagnostics of docs/diagnostics.md: the ELBO profile over λ with
rate–distortion and per-example bits/dim (``profile``), and copying/novelty of samples with the empirical-denoiser
gap per λ (``copying``). Each command calls one function of this module."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import Tensor
from torch.utils.data import DataLoader

from vdmlab.data.base import UniqueIndexDataset, split_batch
from vdmlab.metrics.copying import copying_metrics, denoiser_gap
from vdmlab.metrics.profile import Profile, evaluate_profile, log_profile

PROFILE_METRICS = ("profile_diffusion", "profile_diffusion_se", "profile_weighted", "profile_weighted_se",
                   "profile_peak_logsnr", "profile_median_logsnr")


def split_images(datamodule, split: str, limit: int | None = None) -> Tensor:
    """The images x of a split (data scale), ``[N, ...]`` float32, the first ``limit`` of them when given."""
    datamodule.setup()
    dataset = datamodule.split_dataset(split)
    if limit is not None:
        dataset = torch.utils.data.Subset(dataset, range(min(int(limit), len(dataset))))
    loader = DataLoader(UniqueIndexDataset(dataset), batch_size=max(1, datamodule.eval_batch_size), shuffle=False)
    return torch.cat([split_batch(batch)[1] for batch in loader]).float()


@dataclass
class Diagnostics:
    """The diagnostics of one evaluation: flat metrics for metrics.json, the profile, and the text to print."""

    metrics: dict[str, float] = field(default_factory=dict)
    profile: Profile | None = None
    text: str = ""

    def log(self, loggers, split: str) -> None:
        """Send the profile (rows over λ, W&B tables and summary) to every logger."""
        if self.profile is not None:
            log_profile(loggers, self.profile, prefix=f"{split}/profile")


def copying_of(samples: Tensor, datamodule, cfg: DictConfig, split: str) -> dict[str, float]:
    """Nearest-training-image distances and near-copy fractions of ``samples`` against the train split, with the
    real ``split`` images as the reference (metrics.copying)."""
    train, real = split_images(datamodule, "train"), split_images(datamodule, split)
    return copying_metrics(samples.float().cpu(), train, real, ratio=float(cfg.ratio))


def run_diagnostics(module, datamodule, loader, cfg: DictConfig, device: torch.device, out: Path) -> Diagnostics:
    """``cfg.profile``: the ELBO profile, rate–distortion and per-example bits/dim of the split (files in ``out``);
    ``cfg.copying``: copying of ``num_samples`` EMA samples and the empirical-denoiser gap per λ (``copying.json``)."""
    result = Diagnostics()
    split = cfg.split
    if cfg.get("profile"):
        p = cfg.profile
        scored = {name: instantiate(node) for name, node in (p.get("scored_with") or {}).items()}
        if p.num_examples is not None:
            subset = torch.utils.data.Subset(loader.dataset, range(min(int(p.num_examples), len(loader.dataset))))
            loader = DataLoader(subset, batch_size=loader.batch_size, shuffle=False)
        profile = evaluate_profile(module.elbo_model(int(cfg.bpd.num_samples), cfg.bpd.timesteps), module.weighting, loader,
                                   num_bins=int(p.num_bins), draws_per_bin=int(p.draws_per_bin), seed=int(cfg.seed),
                                   scored_with=scored, device=device)
        profile.write(out)
        summary = profile.summary()
        result.profile = profile
        result.metrics.update({f"{split}/{k}": summary[k] for k in PROFILE_METRICS})
        result.metrics.update({f"{split}/{k}": v for k, v in summary.items() if k.startswith("scored/")})
        result.text += (profile.format() + f"\n  profile, rate–distortion, per-example bits/dim: {out}/profile.*, "
                        "per_example_bpd.csv\n")
    if cfg.get("copying"):
        c = cfg.copying
        generator = torch.Generator(device=device).manual_seed(int(cfg.seed))
        labels = None if module.num_classes is None else module.labels.balanced(range(int(c.num_samples)), module.device)
        samples = torch.cat([
            module.sample(min(int(c.batch_size), int(c.num_samples) - start), steps=int(c.steps), generator=generator,
                          labels=None if labels is None else labels[start:start + int(c.batch_size)]).cpu()
            for start in range(0, int(c.num_samples), int(c.batch_size))])
        values = copying_of(samples, datamodule, c, split)
        train = split_images(datamodule, "train").to(device)
        points = torch.linspace(float(module.schedule.logsnr_min), float(module.schedule.logsnr_max), int(c.gap_points))
        gaps = {}
        for name, images in (("test", split_images(datamodule, split, c.gap_examples)), ("train", train[:int(c.gap_examples)])):
            gap, err = denoiser_gap(module.ema.net, module.parameterization, train, images.to(device), points, seed=int(cfg.seed))
            gaps[name] = {"gap": gap.tolist(), "error": err.tolist()}
        (out / "copying.json").write_text(json.dumps({**values, "logsnr": points.tolist(), "denoiser_gap": gaps}, indent=2))
        result.metrics.update({f"{split}/{k}": v for k, v in values.items()})
        lines = [f"  copying: {100 * values['copy_fraction']:.1f} % of {values['copy_n']} samples are near-copies "
                 f"(d1 < {values['copy_ratio']:.3f}·d2) against {100 * values['copy_fraction_test']:.1f} % of the real "
                 f"{split} images; median nearest-train distance {values['nn_dist_median']:.3f} vs "
                 f"{values['nn_dist_median_test']:.3f} "
                 f"(ratio {values['nn_dist_ratio']:.2f})",
                 f"  {'λ':>7}  {'|x̂ − x̂*| test':>14}  {'|x̂ − x̂*| train':>15}  {'|x̂ − x| test':>12}  {'|x̂ − x| train':>13}"]
        for p, lam in enumerate(points.tolist()):
            lines.append(f"  {lam:7.2f}  {gaps['test']['gap'][p]:14.4f}  {gaps['train']['gap'][p]:15.4f}  "
                         f"{gaps['test']['error'][p]:12.4f}  {gaps['train']['error'][p]:13.4f}")
        result.text += "\n".join(lines) + f"\n  written to {out}/copying.json\n"
    return result
