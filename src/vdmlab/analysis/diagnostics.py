"""Where the objectives of a sweep differ: the diagnostics section of ``python compare.py <sweep>``.

Every run folder may hold ``diagnostics/`` (written by train.py's test stage, or by ``compare.py --diagnose``, which
evaluates each ``checkpoints/last.ckpt`` that has none): ``profile.json`` (the ELBO over λ, rate–distortion, and the
weighted losses of every weighting of the sweep scored on the same draws), ``per_example_bpd.csv`` and, when samples
were scored, ``copying.json``. From them this module writes, into the sweep folder:

- ``compare_profiles.png``: each seed group's ELBO integrand over λ (bits/dim per unit λ) and its difference from the
  reference group's: where each objective gains and loses bits;
- ``compare_rate_distortion.png``: the rate–distortion curves;
- ``compare_frontier.png``: test bits/dim against FID (± s.e. over seeds), with the non-dominated frontier;
- ``compare_matrix.png`` and a table: every group scored under every weighted loss of the sweep, each column divided
  by its best value (1 = best), and where a group is not best on its own column;
- markdown tables: the paired bits/dim and FID differences against the reference (analysis/paired.py), the gap per λ
  range, and copying rates.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from vdmlab.analysis.paired import PairedDifference, paired_over_examples, paired_over_seeds, read_per_example
from vdmlab.analysis.report import figure, markdown_table, save_figure
from vdmlab.analysis.runs import run_dirs

DIAGNOSTICS_DIR = "diagnostics"
PAIRED_COLUMN = "bpd_profile"  # per-example bits/dim paired: the ELBO with the profile's λ-stratified diffusion term


@dataclass
class RunFiles:
    """A run's diagnostics files, loaded (None where missing)."""

    profile: dict | None = None
    per_example: dict[int, float] | None = None
    copying: dict | None = None


def load_run_files(run_dir: Path) -> RunFiles:
    """``diagnostics/profile.json``, ``per_example_bpd.csv`` and ``copying.json`` of a run, where they exist."""
    folder = Path(run_dir) / DIAGNOSTICS_DIR
    files = RunFiles()
    if (folder / "profile.json").is_file():
        files.profile = json.loads((folder / "profile.json").read_text())
    per_example = folder / "per_example_bpd.csv"
    if per_example.is_file():  # the profile's estimate where written: the same bound, far less noise per example
        header = per_example.read_text().split("\n", 1)[0].split(",")
        files.per_example = read_per_example(per_example, PAIRED_COLUMN if PAIRED_COLUMN in header else "bpd")
    if (folder / "copying.json").is_file():
        files.copying = json.loads((folder / "copying.json").read_text())
    return files


def run_dir_of(sweep_dir: Path, run) -> Path:
    """The folder of a RunSummary of compare.find_runs (its name is the path below the sweep, or the sweep's own)."""
    candidate = Path(sweep_dir) / run.run
    return candidate if (candidate / ".hydra").is_dir() else Path(sweep_dir)


def weighting_label(node: Mapping, choice: str, varying: set[str] = frozenset()) -> str:
    """A weighting's name in tables: its config choice, with the parameters in ``varying`` (those that differ within
    the sweep), e.g. ``sigmoid(bias=4.0)``."""
    params = [f"{k}={node[k]}" for k in sorted(node) if k in varying]
    return f"{choice}({','.join(params)})" if params else choice


def sweep_weightings(runs: list[Path]) -> tuple[dict[str, dict], dict[Path, str]]:
    """The distinct weighting configs of the sweep's run folders as ``{label: node}``, and each run's label."""
    nodes: dict[Path, tuple[str, dict]] = {}
    for d in runs:
        config = yaml.safe_load((d / ".hydra" / "config.yaml").read_text()) or {}
        hydra_file = d / ".hydra" / "hydra.yaml"
        hydra = (yaml.safe_load(hydra_file.read_text()) or {}).get("hydra", {}) if hydra_file.is_file() else {}
        choice = ((hydra.get("runtime") or {}).get("choices") or {}).get("weighting") or "weighting"
        nodes[d] = (choice, dict(config.get("weighting") or {}))
    varying: set[str] = set()
    for choice in {c for c, _ in nodes.values()}:
        same = [n for c, n in nodes.values() if c == choice]
        varying |= {k for k in set().union(*same) if k != "_target_" and len({str(n.get(k)) for n in same}) > 1}
    labels = {d: weighting_label(n, c, varying) for d, (c, n) in nodes.items()}
    return {labels[d]: n for d, (_, n) in nodes.items()}, labels


def diagnose(sweep_dir: str | Path, *, num_bins: int = 16, draws_per_bin: int = 2, elbo_samples: int = 8, seed: int = 0,
             copying_samples: int = 0, sample_steps: int = 100, max_examples: int | None = None, device: str = "cpu",
             force: bool = False) -> list[Path]:
    """Evaluate every run's ``checkpoints/last.ckpt`` below ``sweep_dir`` that has no ``diagnostics/profile.json`` (or,
    with ``copying_samples``, no ``copying.json``; all with ``force``) on its test split: the profile, per-example
    bits/dim with evaluation ``seed`` (shared, so the runs pair), the weighted loss of every weighting of the sweep,
    and with ``copying_samples`` > 0 the copying of that many EMA samples. Returns the folders written."""
    import torch
    from hydra.utils import instantiate

    from vdmlab.cli.build import build_from_checkpoint
    from vdmlab.cli.diagnostics import split_images
    from vdmlab.cli.evaluate import split_loader
    from vdmlab.metrics.copying import copying_metrics
    from vdmlab.metrics.profile import evaluate_profile

    sweep_dir = Path(sweep_dir)
    runs = sorted(d for d in run_dirs(sweep_dir) if (d / "checkpoints" / "last.ckpt").is_file())
    nodes, _ = sweep_weightings(runs)
    scored = {label: instantiate(node) for label, node in nodes.items()}
    written = []
    for d in runs:
        out = d / DIAGNOSTICS_DIR
        done = (out / "profile.json").is_file() and (copying_samples == 0 or (out / "copying.json").is_file())
        if done:  # scored under every weighting of the sweep as it is now (a sweep that grew since is rescored)
            summary = json.loads((out / "profile.json").read_text())["summary"]
            done = all(f"scored_se/{label}" in summary for label in scored)
        if done and not force:
            continue
        built = build_from_checkpoint(str(d / "checkpoints" / "last.ckpt"))
        module = built.module.to(device)
        loader = split_loader(built.datamodule, "test")
        profile = evaluate_profile(module.elbo_model(elbo_samples, module.timesteps), module.weighting, loader,
                                   num_bins=num_bins, draws_per_bin=draws_per_bin, seed=seed, scored_with=scored,
                                   max_examples=max_examples, device=device)
        profile.write(out)
        if copying_samples > 0:
            generator = torch.Generator(device=device).manual_seed(seed)
            labels = None if module.num_classes is None else module.labels.balanced(range(copying_samples), module.device)
            samples = module.sample(copying_samples, steps=sample_steps, generator=generator, labels=labels).cpu()
            values = copying_metrics(samples, split_images(built.datamodule, "train"), split_images(built.datamodule, "test"))
            (out / "copying.json").write_text(json.dumps({**values, "sample_steps": sample_steps, "seed": seed}, indent=2))
        written.append(out)
    return written


@dataclass
class GroupDiagnostics:
    """A seed group of the sweep (compare.SeedGroup) with its runs' diagnostics files, keyed by training seed."""

    label: str
    weighting: str  # the label of its own weighting (the matrix column it was trained with)
    runs: list  # RunSummary
    files: dict[int, RunFiles] = field(default_factory=dict)

    def profiles(self) -> list[dict]:
        return [f.profile for f in self.files.values() if f.profile is not None]

    def per_example(self) -> dict[int, dict[int, float]]:
        return {s: f.per_example for s, f in self.files.items() if f.per_example is not None}

    def fids(self) -> dict[int, float]:
        return {r.seed if r.seed is not None else i: r.fid[0] for i, r in enumerate(self.runs) if r.fid[0] is not None}

    def mean_bins(self, key: str = "elbo_bpd_per_logsnr") -> tuple[np.ndarray, np.ndarray] | None:
        """(λ centres, the mean over seeds of a bin column) where every seed's profile has the same bins."""
        profiles = self.profiles()
        if not profiles or len({len(p["bins"]) for p in profiles}) != 1:
            return None
        lam = np.array([b["logsnr"] for b in profiles[0]["bins"]])
        return lam, np.mean([[b[key] for b in p["bins"]] for p in profiles], axis=0)

    def summary(self, key: str) -> tuple[float | None, float | None]:
        """Mean and standard error over seeds of a profile summary value."""
        values = [p["summary"][key] for p in self.profiles() if key in p["summary"]]
        if not values:
            return None, None
        se = float(np.std(values, ddof=1) / math.sqrt(len(values))) if len(values) > 1 else None
        return float(np.mean(values)), se


def build_groups(sweep_dir: Path, runs: list, groups: list) -> list[GroupDiagnostics]:
    """compare's seed groups with their diagnostics files and weighting labels."""
    from vdmlab.analysis.runs import shared_overrides
    from vdmlab.analysis.sweeps import group_label

    dirs = {id(r): run_dir_of(sweep_dir, r) for r in runs}
    _, labels = sweep_weightings(sorted(set(dirs.values())))
    shared = shared_overrides(groups)
    out = []
    for g in groups:
        gd = GroupDiagnostics(label=group_label(g, shared), weighting=labels.get(dirs[id(g.runs[0])], g.weighting), runs=g.runs)
        for i, r in enumerate(g.runs):
            gd.files[r.seed if r.seed is not None else i] = load_run_files(dirs[id(r)])
        out.append(gd)
    return out


def pick_reference(groups: list[GroupDiagnostics], reference: str | None) -> GroupDiagnostics:
    """The group whose label contains ``reference``; by default the ELBO group, else the first."""
    if reference:
        matches = [g for g in groups if reference in g.label]
        if not matches:
            raise ValueError(f"reference={reference!r} names no group of this sweep: choose one of "
                             f"{[g.label for g in groups]}")
        return matches[0]
    return next((g for g in groups if g.weighting == "elbo"), groups[0])


def _interval(d: PairedDifference | None, digits: int = 4) -> str:
    return "n/a" if d is None else d.text(digits) + (" *" if not math.isnan(d.se) and d.excludes_zero else "")


def paired_markdown(groups: list[GroupDiagnostics], ref: GroupDiagnostics) -> str:
    """Each group against the reference: paired test bits/dim differences (per example, and over seeds) and FID."""
    header = ["group", "Δ bits/dim, per example (95 %)", "Δ bits/dim, over seeds (95 %)", "Δ FID, over seeds (95 %)"]
    table = []
    ref_examples = ref.per_example()
    ref_bpd = {s: float(np.mean(list(v.values()))) for s, v in ref_examples.items()}
    for g in groups:
        if g is ref:
            continue
        cells = [g.label]
        examples = g.per_example()
        try:
            cells.append(_interval(paired_over_examples(examples, ref_examples)))
        except ValueError:
            cells.append("n/a")
        try:
            means = {s: float(np.mean(list(v.values()))) for s, v in examples.items()}
            cells.append(_interval(paired_over_seeds(means, ref_bpd)))
        except ValueError:
            cells.append("n/a")
        try:
            cells.append(_interval(paired_over_seeds(g.fids(), ref.fids()), 2))
        except ValueError:
            cells.append("n/a")
        table.append(cells)
    notes = ["", f"Differences are group − reference ({ref.label}) in test bits/dim (per_example_bpd.csv's bpd_profile: the "
             "ELBO with its diffusion term from the profile's λ-stratified draws), paired: the same test examples with the same "
             "evaluation noise (per example: each example's difference averaged over the shared training seeds, Student-t "
             "interval over examples, i.e. evaluation noise only), and run against run of the same training seed (over "
             "seeds: the interval over training seeds; FID: the same sample seeds). * the interval excludes 0."]
    return "\n".join([markdown_table(header, table), *notes]) + "\n"


def gap_markdown(groups: list[GroupDiagnostics], ref: GroupDiagnostics, parts: int = 4) -> str:
    """Where in λ each group's diffusion term differs from the reference's: Σ width·Δh over ``parts`` equal λ ranges,
    with the prior and reconstruction differences (bits/dim; means over seeds)."""
    ref_bins = ref.mean_bins()
    if ref_bins is None:
        return ""
    profiles = ref.profiles()
    edges = np.array(profiles[0]["edges"])
    widths = np.diff(edges)
    splits = np.array_split(np.arange(len(widths)), min(parts, len(widths)))
    ranges = [f"λ ∈ [{edges[s[0]]:.1f}, {edges[s[-1] + 1]:.1f}]" for s in splits]
    header = ["group", *ranges, "prior", "reconstruction", "total Δ bits/dim"]
    table = []
    for g in groups:
        bins = g.mean_bins()
        if g is ref or bins is None or len(bins[1]) != len(ref_bins[1]):
            continue
        delta = (bins[1] - ref_bins[1]) * widths
        ends = [(g.summary(k)[0] or 0.0) - (ref.summary(k)[0] or 0.0) for k in ("bpd_prior", "bpd_reconstruction")]
        key = "bpd_profile" if g.summary("bpd_profile")[0] is not None else "bpd"
        total = (g.summary(key)[0] or 0.0) - (ref.summary(key)[0] or 0.0)
        table.append([g.label, *(f"{delta[s].sum():+.4f}" for s in splits), *(f"{e:+.4f}" for e in ends), f"{total:+.4f}"])
    notes = ["", f"Δ bits/dim against {ref.label}: the profile's integral over each λ range (Σ width·Δh), and the endpoint "
             "terms; they add up to the total (the ELBO with the profile's diffusion term, bpd_profile)."]
    return "\n".join([markdown_table(header, table), *notes]) + "\n"


def matrix_values(groups: list[GroupDiagnostics]) -> tuple[list[str], list[str], np.ndarray]:
    """Rows (groups), columns (scored weightings) and the mean over seeds of each weighted loss (bits/dim)."""
    columns = sorted({k[len("scored/"):] for g in groups for p in g.profiles() for k in p["summary"] if k.startswith("scored/")})
    rows = [g.label for g in groups]
    values = np.full((len(rows), len(columns)), np.nan)
    for i, g in enumerate(groups):
        for j, c in enumerate(columns):
            mean, _ = g.summary(f"scored/{c}")
            values[i, j] = np.nan if mean is None else mean
    return rows, columns, values


def matrix_markdown(groups: list[GroupDiagnostics]) -> str:
    """The cross-objective matrix, normalised per column (1 = the best run on that loss), with the misfits named."""
    rows, columns, values = matrix_values(groups)
    if not columns:
        return ""
    norm = values / np.nanmin(values, axis=0, keepdims=True)
    header = ["trained with \\ scored with", *columns]
    table = []
    misfits = []
    for i, g in enumerate(groups):
        cells = []
        for j, c in enumerate(columns):
            text = "n/a" if np.isnan(norm[i, j]) else f"{norm[i, j]:.3f}"
            if c == g.weighting:
                text = f"**{text}**"
                best = int(np.nanargmin(values[:, j]))
                if best != i:
                    se = math.hypot(*(groups[k].summary(f"scored_se/{c}")[0] or 0.0 for k in (i, best)))
                    resolved = "beyond" if values[i, j] - values[best, j] > 2 * se else "within"
                    misfits.append(f"{g.label} is not best on its own loss {c}: {rows[best]} scores "
                                   f"{values[best, j]:.4f} against its {values[i, j]:.4f} bits/dim ({resolved} 2 standard "
                                   f"errors of the difference, {se:.4f}, evaluation noise)")
            cells.append(text)
        table.append([g.label, *cells])
    notes = ["", "Each cell: the weighted loss L_w = ½∫w(λ)E‖ε−ε̂‖²dλ (eq. (4.123)) of the row's EMA network on the test "
             "split, scored from the profile's draws, mean over seeds, divided by the column's best (1 = best). Bold: the "
             "loss the row was trained with."]
    notes += [f"- {m}" for m in misfits] or ["- every group is best on the loss it was trained with."]
    return "\n".join([markdown_table(header, table), *notes]) + "\n"


def copying_markdown(groups: list[GroupDiagnostics]) -> str:
    """Copying rates and nearest-training-image distances of each group's samples, with the test split's reference."""
    rows = [(g, [f.copying for f in g.files.values() if f.copying]) for g in groups]
    rows = [(g, c) for g, c in rows if c]
    if not rows:
        return ""
    header = ["group", "near-copies of samples", "near-copies of test images", "median d₁ samples / test", "samples"]
    table = []
    for g, cs in rows:
        table.append([g.label, f"{100 * np.mean([c['copy_fraction'] for c in cs]):.1f} %",
                      f"{100 * np.mean([c['copy_fraction_test'] for c in cs]):.1f} %",
                      f"{np.mean([c['nn_dist_ratio'] for c in cs]):.2f}", f"{sum(c['copy_n'] for c in cs)} ({len(cs)} runs)"])
    notes = ["", "Near-copy: the nearest training image is closer than ⅓ of the second nearest (after Carlini et al. "
             "2023); d₁: distance to the nearest training image (data scale), samples' median over the real test images'."]
    return "\n".join([markdown_table(header, table), *notes]) + "\n"


def _finish(fig, ax, path: Path, **labels) -> Path:
    """Label the axes, add the legend, save the figure."""
    ax.set(**labels)
    ax.legend(fontsize=7)
    return save_figure(fig, path)


def plot_profiles(groups: list[GroupDiagnostics], ref: GroupDiagnostics, path: Path) -> Path | None:
    """The ELBO integrand of each group over λ, and its difference from the reference's."""
    ref_bins = ref.mean_bins()
    if ref_bins is None:
        return None
    fig, (ax, ax_d) = figure(1, 2, figsize=(10, 4))
    for i, g in enumerate(groups):
        bins = g.mean_bins()
        if bins is None:
            continue
        style = {"color": f"C{i % 10}", "marker": ".", "label": g.label}
        ax.plot(*bins, **style)
        if len(bins[1]) == len(ref_bins[1]):
            ax_d.plot(bins[0], bins[1] - ref_bins[1], **style)
    ax.set(xlabel="λ = log SNR", ylabel="bits/dim per unit λ", title="ELBO integrand over λ (mean over seeds)")
    ax_d.axhline(0, color="gray", linewidth=1)
    ax_d.set(xlabel="λ = log SNR", ylabel="Δ bits/dim per unit λ", title=f"difference from {ref.label}")
    ax.legend(fontsize=7)
    return save_figure(fig, path)


def plot_rate_distortion(groups: list[GroupDiagnostics], path: Path) -> Path | None:
    """Rate (bits/dim) against distortion (RMSE of x̂ in levels), one curve per group (its first seed's)."""
    fig, ax = figure(figsize=(6, 4.5))
    drawn = False
    for i, g in enumerate(groups):
        profiles = g.profiles()
        if not profiles:
            continue
        rd = profiles[0]["rate_distortion"]
        ax.plot([r["rate_bpd"] for r in rd], [r["rmse_levels"] for r in rd], marker=".", color=f"C{i % 10}", label=g.label)
        drawn = True
    if not drawn:
        return None
    return _finish(fig, ax, path, xlabel="rate: prior + ∫ from λ_min (bits/dim)", yscale="log",
                   ylabel="distortion: RMSE of x̂(z_λ) (levels)", title="rate–distortion (progressive coding)")


def plot_frontier(groups: list[GroupDiagnostics], path: Path) -> Path | None:
    """Test bits/dim against FID, ± s.e. over seeds, with the non-dominated points joined (the frontier)."""
    points = []
    for g in groups:
        bpd, bpd_se = g.summary("bpd_profile") if g.summary("bpd_profile")[0] is not None else g.summary("bpd")
        fids = list(g.fids().values())
        if bpd is None or not fids:
            continue
        fid_se = float(np.std(fids, ddof=1) / math.sqrt(len(fids))) if len(fids) > 1 else None
        points.append((bpd, float(np.mean(fids)), bpd_se, fid_se, g.label))
    if not points:
        return None
    fig, ax = figure(figsize=(6.5, 4.5))
    for i, (x, y, xe, ye, label) in enumerate(points):
        ax.errorbar(x, y, xerr=xe, yerr=ye, fmt="o", color=f"C{i % 10}", capsize=3)
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    frontier = [p for p in points if not any(q[0] <= p[0] and q[1] <= p[1] and q != p for q in points)]
    frontier.sort()
    ax.plot([p[0] for p in frontier], [p[1] for p in frontier], color="gray", linestyle="--", linewidth=1,
            label="non-dominated")
    return _finish(fig, ax, path, xlabel="test bits/dim (mean ± s.e. over seeds)", ylabel="FID (mean ± s.e. over seeds)",
                   title="likelihood–FID frontier")


def plot_matrix(groups: list[GroupDiagnostics], path: Path) -> Path | None:
    """The normalised cross-objective matrix as a heat map."""
    rows, columns, values = matrix_values(groups)
    if not columns:
        return None
    norm = values / np.nanmin(values, axis=0, keepdims=True)
    fig, ax = figure(figsize=(1.2 * len(columns) + 3, 0.5 * len(rows) + 2))
    image = ax.imshow(norm, cmap="Blues", aspect="auto")
    ax.set_xticks(range(len(columns)), columns, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    for i in range(len(rows)):
        for j in range(len(columns)):
            if not np.isnan(norm[i, j]):
                ax.text(j, i, f"{norm[i, j]:.2f}", ha="center", va="center", fontsize=7, color="black")
    ax.set(xlabel="scored with", ylabel="trained with", title="weighted test loss / column best")
    fig.colorbar(image, ax=ax)
    return save_figure(fig, path)


def diagnostics_section(sweep_dir: Path, runs: list, groups: list, out: Path,
                        reference: str | None = None) -> tuple[str, dict[str, Path]]:
    """The markdown section and the figures of the sweep's diagnostics; empty when no run has any."""
    gds = build_groups(Path(sweep_dir), runs, groups)
    if not any(f.profile or f.copying for g in gds for f in g.files.values()):
        return "", {}
    ref = pick_reference(gds, reference)
    text = f"\n## Where the objectives differ (reference: {ref.label})\n\n### Paired differences\n\n{paired_markdown(gds, ref)}"
    for title, section in (("Gap over λ", gap_markdown(gds, ref)), ("Cross-objective matrix", matrix_markdown(gds)),
                           ("Copying", copying_markdown(gds))):
        if section:
            text += f"\n### {title}\n\n{section}"
    paths = {"profiles": plot_profiles(gds, ref, out / "compare_profiles.png"),
             "rate_distortion": plot_rate_distortion(gds, out / "compare_rate_distortion.png"),
             "frontier": plot_frontier(gds, out / "compare_frontier.png"),
             "matrix": plot_matrix(gds, out / "compare_matrix.png")}
    return text, {k: v for k, v in paths.items() if v is not None}
