"""The ELBO profile over λ, rate–distortion and per-example bits/dim of a checkpoint on a split (one pass).

:func:`evaluate_profile` loops over ``(index, x[, y])`` batches and computes, per example, the negative ELBO (the
same counter-based noise as :func:`vdmlab.metrics.bpd.evaluate_bpd` with that seed, so the same values), the binned
integrand of the diffusion term and of the trained weighted loss (:mod:`vdmlab.diffusion.profile`), the weighted
losses of further weightings (the cross-objective matrix) and the distortion of x̂(z_λ) at the bin edges. The
:class:`Profile` it returns turns these into tables, a figure, JSON/CSV files and logger rows.
"""

from __future__ import annotations

import csv
import json
import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from vdmlab.data.base import split_batch
from vdmlab.diffusion.likelihood import ELBOModel, negative_elbo
from vdmlab.diffusion.profile import (
    bin_edges,
    bin_integral,
    cumulative_rate,
    distortion_terms,
    mean_and_se,
    profile_terms,
)
from vdmlab.diffusion.weighting import Weighting

LN2 = math.log(2.0)


@dataclass
class Profile:
    """Per-example results of :func:`evaluate_profile` (nats unless named bpd), and the bins they refer to."""

    edges: Tensor  # [K + 1] λ bin edges
    index: Tensor  # [N] dataset indices
    elbo: Tensor  # [N, 4] total, diffusion, prior, reconstruction (nats)
    integrand: Tensor  # [N, K] ELBO integrand per unit λ (nats)
    weighted: Tensor  # [N, K] w(λ)·integrand with the trained weighting (nats)
    scored: dict[str, Tensor]  # name -> [N, K] w(λ)·integrand under other weightings
    mse: Tensor  # [N, K + 1] mean squared error per dim of x̂(z_λ) at the edges (data scale)
    data_dim: int
    num_levels: int
    weighting: str = "trained"
    seconds: float = 0.0
    meta: dict = field(default_factory=dict)

    def bpd(self, nats: Tensor) -> Tensor:
        """nats → bits/dim."""
        return nats / (self.data_dim * LN2)

    @property
    def centres(self) -> Tensor:
        return 0.5 * (self.edges[1:] + self.edges[:-1])

    @property
    def widths(self) -> Tensor:
        return self.edges[1:] - self.edges[:-1]

    def per_example_bpd(self) -> Tensor:
        """``[N, 4]``: bits/dim of the negative ELBO and of its diffusion, prior and reconstruction terms."""
        return self.bpd(self.elbo)

    def per_example_profile_bpd(self) -> Tensor:
        """``[N]``: the negative ELBO with the diffusion term estimated by the profile, prior + reconstruction +
        Σ width·h_k: the same bound from num_bins × draws_per_bin λ-stratified draws, a lower-variance estimate per
        example than the ELBO's importance-sampled draws (so paired differences are tighter)."""
        return self.bpd(self.elbo[:, 2] + self.elbo[:, 3] + bin_integral(self.integrand, self.edges))

    def table(self) -> list[dict[str, float]]:
        """One row per bin: λ range, ELBO integrand and weighted integrand (bits/dim per unit λ, ± s.e.), the bin's
        share of the diffusion term, the cumulative rate at its upper edge and the distortion there."""
        h, h_se = mean_and_se(self.bpd(self.integrand))
        hw, hw_se = mean_and_se(self.bpd(self.weighted))
        rate = self.bpd(cumulative_rate(self.integrand, self.edges, self.elbo[:, 2])).mean(0)
        rmse = self.mse.mean(0).sqrt()
        total = float((h * self.widths).sum())
        rows = []
        for k in range(self.edges.numel() - 1):
            rows.append({
                "logsnr_lo": float(self.edges[k]), "logsnr_hi": float(self.edges[k + 1]), "logsnr": float(self.centres[k]),
                "elbo_bpd_per_logsnr": float(h[k]), "elbo_se": float(h_se[k]),
                "weighted_bpd_per_logsnr": float(hw[k]), "weighted_se": float(hw_se[k]),
                "share": float(h[k] * self.widths[k]) / total if total else float("nan"),
                "rate_bpd": float(rate[k + 1]), "rmse": float(rmse[k + 1]),
                "rmse_levels": float(rmse[k + 1]) * (self.num_levels - 1) / 2,
            })
        return rows

    def rate_distortion(self) -> list[dict[str, float]]:
        """Rate (prior + ∫ h from λ_min, bits/dim) and distortion of x̂(z_λ) (RMSE, data scale and levels) at each edge."""
        rate = self.bpd(cumulative_rate(self.integrand, self.edges, self.elbo[:, 2])).mean(0)
        rmse = self.mse.mean(0).sqrt()
        scale = (self.num_levels - 1) / 2
        return [{"logsnr": float(lam), "rate_bpd": float(r), "rmse": float(d), "rmse_levels": float(d) * scale}
                for lam, r, d in zip(self.edges, rate, rmse)]

    def summary(self) -> dict[str, float]:
        """Headline numbers: the bits/dim and its terms, the profile's integral with its s.e., the λ where the
        integrand peaks, the λ range holding half of the diffusion term, and each scored weighted loss (bits/dim)."""
        bpd = self.per_example_bpd()
        mean, se = mean_and_se(bpd)
        integral, integral_se = mean_and_se(self.bpd(bin_integral(self.integrand, self.edges)))
        weighted, weighted_se = mean_and_se(self.bpd(bin_integral(self.weighted, self.edges)))
        h = self.bpd(self.integrand).mean(0)
        cum = (h * self.widths).cumsum(0) / (h * self.widths).sum()
        out = {"bpd": float(mean[0]), "bpd_se": float(se[0]), "bpd_diffusion": float(mean[1]),
               "bpd_prior": float(mean[2]), "bpd_reconstruction": float(mean[3]),
               "bpd_profile": float(self.per_example_profile_bpd().mean()),
               "profile_diffusion": float(integral), "profile_diffusion_se": float(integral_se),
               "profile_weighted": float(weighted), "profile_weighted_se": float(weighted_se),
               "profile_peak_logsnr": float(self.centres[int(h.argmax())]),
               "profile_median_logsnr": float(self.edges[1 + int((cum < 0.5).sum())]),
               "n": int(bpd.shape[0])}
        for name, values in self.scored.items():
            mean, se = mean_and_se(self.bpd(bin_integral(values, self.edges)))
            out[f"scored/{name}"], out[f"scored_se/{name}"] = float(mean), float(se)
        return out

    def to_json(self) -> dict:
        return {"weighting": self.weighting, "edges": self.edges.tolist(), "summary": self.summary(),
                "bins": self.table(), "rate_distortion": self.rate_distortion(), "seconds": self.seconds,
                "data_dim": self.data_dim, "num_levels": self.num_levels, **self.meta}

    def write(self, out_dir: str | Path) -> dict[str, Path]:
        """``profile.json`` (bins, rate–distortion, summary), ``profile.csv``, ``per_example_bpd.csv`` (index and
        the bits/dim terms, for paired comparisons) and ``profile.png`` into ``out_dir``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {"profile_json": out / "profile.json", "profile_csv": out / "profile.csv",
                 "per_example": out / "per_example_bpd.csv", "profile_png": out / "profile.png"}
        rows = self.table()
        with open(paths["profile_csv"], "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        write_per_example(paths["per_example"], self.index, self.per_example_bpd(), self.per_example_profile_bpd())
        plot_profile(self, paths["profile_png"])
        paths["profile_json"].write_text(json.dumps(self.to_json(), indent=2))  # last: its presence means complete
        return paths

    def format(self) -> str:
        """The profile as a terminal table."""
        lines = [f"  ELBO over λ ({self.weighting}; bits/dim per unit λ, mean ± s.e. over {self.index.numel()} examples)",
                 f"  {'λ bin':>15}  {'ELBO integrand':>18}  {'weighted':>18}  {'share':>6}  {'rate':>7}  {'RMSE (levels)':>13}"]
        for r in self.table():
            lines.append(f"  [{r['logsnr_lo']:6.2f},{r['logsnr_hi']:6.2f}]  {r['elbo_bpd_per_logsnr']:9.5f} ± {r['elbo_se']:.5f}"
                         f"  {r['weighted_bpd_per_logsnr']:9.5f} ± {r['weighted_se']:.5f}  {100 * r['share']:5.1f}%"
                         f"  {r['rate_bpd']:7.4f}  {r['rmse_levels']:13.3f}")
        s = self.summary()
        lines.append(f"  Σ width·integrand = {s['profile_diffusion']:.4f} ± {s['profile_diffusion_se']:.4f} bits/dim "
                     f"(diffusion term of the ELBO: {s['bpd_diffusion']:.4f}); peak at λ ≈ {s['profile_peak_logsnr']:.2f}, "
                     f"half of it below λ ≈ {s['profile_median_logsnr']:.2f}")
        return "\n".join(lines)


def write_per_example(path: str | Path, index: Tensor, bpd: Tensor, bpd_profile: Tensor) -> Path:
    """``index,bpd,diffusion,prior,reconstruction,bpd_profile`` per example (bits/dim), sorted by index: the ELBO and
    its terms (``bpd``, the estimate of evaluate_bpd) and the same bound with the profile's diffusion term."""
    order = torch.argsort(index)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["index", "bpd", "diffusion", "prior", "reconstruction", "bpd_profile"])
        for i in order.tolist():
            writer.writerow([int(index[i]), *(f"{float(v):.8g}" for v in bpd[i]), f"{float(bpd_profile[i]):.8g}"])
    return Path(path)


def evaluate_profile(
    model: ELBOModel,
    weighting: Weighting,
    dataloader: Iterable,
    *,
    num_bins: int = 16,
    draws_per_bin: int = 2,
    seed: int = 0,
    scored_with: Mapping[str, Weighting] | None = None,
    max_examples: int | None = None,
    device: torch.device | str | None = None,
) -> Profile:
    """One pass over ``(index, x[, y])`` batches: the per-example negative ELBO of ``model`` (eq. (3.60), its
    ``num_samples`` draws, the noise of ``evaluate_bpd`` with ``seed``), the binned integrands of the ELBO and of
    ``weighting`` (``num_bins`` bins × ``draws_per_bin`` draws) and the distortion at the edges. ``model.net`` runs in
    eval mode under ``torch.no_grad``; its mode is restored."""
    net, schedule, parameterization = model.net, model.schedule, model.parameterization
    num_levels, elbo_samples = model.num_levels, model.num_samples
    if device is not None:
        net.to(device)
        schedule.to(device)
    else:
        device = next(iter(net.parameters()), torch.empty(0)).device
    x_probe = torch.zeros(1, device=device)
    logsnr_1, logsnr_0 = (float(e) for e in schedule.endpoints(x_probe))
    edges = bin_edges(logsnr_1, logsnr_0, num_bins)
    parts: dict[str, list] = {"index": [], "elbo": [], "integrand": [], "weighted": [], "mse": []}
    scored: dict[str, list] = {name: [] for name in (scored_with or {})}
    was_training, data_dim = net.training, None
    net.eval()
    start, seen = time.perf_counter(), 0
    try:
        with torch.no_grad():
            for batch in dataloader:
                index, x, y = split_batch(batch)
                if index is None:
                    raise ValueError("evaluate_profile needs (index, x) batches: wrap the dataset in UniqueIndexDataset")
                if max_examples is not None:
                    if seen >= max_examples:
                        break
                    keep = min(len(x), max_examples - seen)
                    index, x, y = index[:keep], x[:keep], None if y is None else y[:keep]
                seen += len(x)
                x = x.to(device)
                cond = None if y is None else y.to(device)
                data_dim = x[0].numel()
                elbo = negative_elbo(x, model, example_ids=index, seed=seed, cond=cond)
                terms = profile_terms(x, net=net, schedule=schedule, weighting=weighting, parameterization=parameterization,
                                      edges=edges, draws=draws_per_bin, example_ids=index, seed=seed, cond=cond,
                                      scored_with=scored_with)
                parts["index"].append(index.cpu())
                parts["elbo"].append(torch.stack([elbo.total, elbo.diffusion, elbo.prior, elbo.reconstruction], 1).double().cpu())
                parts["integrand"].append(terms.elbo.cpu())
                parts["weighted"].append(terms.weighted.cpu())
                for name, values in terms.scored.items():
                    scored[name].append(values.cpu())
                parts["mse"].append(distortion_terms(x, net=net, parameterization=parameterization, logsnr_points=edges,
                                                     example_ids=index, seed=seed, cond=cond).cpu())
    finally:
        net.train(was_training)
    if data_dim is None:
        raise ValueError("evaluate_profile got an empty dataloader")
    return Profile(edges=edges, index=torch.cat(parts["index"]), elbo=torch.cat(parts["elbo"]),
                   integrand=torch.cat(parts["integrand"]), weighted=torch.cat(parts["weighted"]),
                   scored={k: torch.cat(v) for k, v in scored.items()}, mse=torch.cat(parts["mse"]), data_dim=data_dim,
                   num_levels=num_levels, weighting=getattr(weighting, "name", type(weighting).__name__),
                   seconds=time.perf_counter() - start, meta={"seed": seed, "draws_per_bin": draws_per_bin,
                                                               "elbo_samples": elbo_samples})


def plot_profile(profile: Profile, path: str | Path) -> Path:
    """Two panels: the ELBO integrand and the trained weighted integrand over λ (± 2 s.e. bands), and the
    rate–distortion curve (rate in bits/dim against RMSE in levels)."""
    from matplotlib.figure import Figure

    h, h_se = (v.numpy() for v in mean_and_se(profile.bpd(profile.integrand)))
    hw, hw_se = (v.numpy() for v in mean_and_se(profile.bpd(profile.weighted)))
    lam = profile.centres.numpy()
    fig = Figure(figsize=(10, 3.8), dpi=100)
    ax, ax_rd = fig.subplots(1, 2)
    for values, se, label in ((h, h_se, "ELBO integrand ½E‖ε−ε̂‖²"), (hw, hw_se, f"w(λ)·integrand ({profile.weighting})")):
        ax.plot(lam, values, marker=".", label=label)
        ax.fill_between(lam, values - 2 * se, values + 2 * se, alpha=0.25, linewidth=0)
    ax.set(xlabel="λ = log SNR", ylabel="bits/dim per unit λ", title="ELBO over λ (±2 s.e.)")
    ax.legend(fontsize=8)
    rd = profile.rate_distortion()
    ax_rd.plot([r["rate_bpd"] for r in rd], [r["rmse_levels"] for r in rd], marker=".")
    ax_rd.set(xlabel="rate: prior + ∫ from λ_min (bits/dim)", ylabel="distortion: RMSE of x̂(z_λ) (levels)",
              title="rate–distortion", yscale="log")
    fig.tight_layout()
    fig.savefig(path)
    return Path(path)


def log_profile(loggers: Iterable, profile: Profile, prefix: str = "profile") -> None:
    """Send the profile to every logger: one row per bin keyed ``<prefix>/...`` with ``<prefix>/logsnr`` as its x
    (CSV rows; on W&B line series over λ, so a sweep group's runs overlay), the rate–distortion rows, the headline
    numbers as ``<prefix>/summary/...`` (the W&B run summary) and, on W&B, the bins as a table."""
    rows = profile.table()
    summary = {f"{prefix}/summary/{k}": v for k, v in profile.summary().items()}
    for logger in loggers:
        run = getattr(logger, "experiment", None) if type(logger).__name__.endswith("WandbLogger") else None
        if run is not None and hasattr(run, "define_metric"):
            run.define_metric(f"{prefix}/logsnr")
            run.define_metric(f"{prefix}/bin/*", step_metric=f"{prefix}/logsnr")
            for row in rows:
                run.log({f"{prefix}/logsnr": row["logsnr"], **{f"{prefix}/bin/{k}": v for k, v in row.items()
                                                                if k != "logsnr"}})
            import wandb

            run.log({f"{prefix}/table": wandb.Table(columns=list(rows[0]), data=[list(r.values()) for r in rows]),
                     f"{prefix}/rate_distortion": wandb.Table(columns=list(profile.rate_distortion()[0]),
                                                              data=[list(r.values()) for r in profile.rate_distortion()])})
            run.log(summary)  # the last value of a key is its run summary: sortable in the W&B runs table
            continue
        for k, row in enumerate(rows):
            logger.log_metrics({f"{prefix}/logsnr": row["logsnr"], **{f"{prefix}/bin/{key}": v for key, v in row.items()
                                                                        if key != "logsnr"}}, step=k)
        logger.log_metrics(summary, step=len(rows))
