"""The sweep report: one row per run, the seed groups' means ± standard errors, and their two plots.

Writes ``compare.md`` and ``compare.csv`` (weighting, monotonic, final val/bpd, test/bpd, FID with its sample
count, steps, minutes) and two plots: ``compare_fid_vs_bpd.png`` (coloured by monotonicity; says so when no run
logged FID) and ``compare_val_bpd.png`` (the val/bpd curves of all runs).

Seeds are a sweep axis: runs that differ only by ``seed`` form one group (``python train.py -m weighting=a,b
seed=0,1,2``), and when any group has several seeds ``compare.md`` adds a table of each metric as mean ± standard
error over the seeds with the seed count, ``compare_seeds.csv`` holds it, and the FID-vs-bits/dim plot shows the
groups with error bars (±1 s.e.).

A hyperparameter search (``-m hparams_search=...``) adds the trials ranked by objective and each parameter's
importance (:mod:`vdmlab.analysis.search`).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from matplotlib.figure import Figure

from vdmlab.analysis.report import figure, markdown_table, save_figure
from vdmlab.analysis.runs import CONDITIONAL_NOTE, RunSummary, cell, mean_se, shared_overrides
from vdmlab.analysis.search import is_search, search_markdown

COLUMNS = ("run", "weighting", "monotonic", "val/bpd", "test/bpd", "fid", "fid_n", "steps", "minutes", "overrides")
COLORS = {True: "tab:blue", False: "tab:orange", None: "tab:gray"}

SEED_METRICS = ("val/bpd", "test/bpd", "fid", "fid_floor")


def is_seed_override(override: str) -> bool:
    """Whether a command-line override sets the seed (``seed=3``, ``+seed=3``, ``++seed=3``)."""
    return override.lstrip("+").split("=", 1)[0] == "seed"


@dataclass
class SeedGroup:
    """Runs that differ only by their seed: each metric as mean ± standard error over the seeds."""

    weighting: str
    monotonic: bool | None
    overrides: tuple[str, ...]  # the group's overrides, the seed's aside
    runs: list[RunSummary]

    def values(self, key: str) -> list[float]:
        """The runs' final values of ``key`` ("fid": test/fid, else val/fid; "fid_floor": its floor), where logged."""
        special = {"fid": lambda r: r.fid[0], "fid_floor": lambda r: r.fid_floor}
        picked = [special[key](r) if key in special else r.metrics.get(key) for r in self.runs]
        return [v for v in picked if v is not None]

    def stat(self, key: str) -> tuple[float | None, float | None, int]:
        """(mean, standard error of the mean = sample std / √n, n) of ``key`` over the seeds; s.e. None for n < 2."""
        values = self.values(key)
        return (*mean_se(values), len(values)) if values else (None, None, 0)

    @property
    def fid_n(self) -> int | None:
        counts = {r.fid[1] for r in self.runs if r.fid[1] is not None}
        return counts.pop() if len(counts) == 1 else None


#: overrides that say how a run was executed or what was saved beside it, not what it learned: runs that differ only
#: in these (and the seed) are seeds of one group, and a group is never named by them
RUNTIME_OVERRIDES = ("threads=", "logger=", "hydra", "paths.", "ckpt_path=", "resume_dir=", "resume_check=", "device=",
                     "callbacks.", "+callbacks.", "~callbacks")


def group_by_seed(runs: list[RunSummary]) -> list[SeedGroup]:
    """Runs grouped by everything but the seed and :data:`RUNTIME_OVERRIDES` (their weighting and their other
    overrides), in first-run order."""
    groups: dict[tuple, SeedGroup] = {}
    for r in runs:
        rest = tuple(sorted(o for o in r.overrides if not is_seed_override(o) and not o.startswith(RUNTIME_OVERRIDES)))
        key = (r.weighting, rest)
        groups.setdefault(key, SeedGroup(r.weighting, r.monotonic, rest, [])).runs.append(r)
    return list(groups.values())


def _mean_se(mean: float | None, se: float | None, digits: int = 4) -> str:
    if mean is None:
        return "n/a"
    return f"{mean:.{digits}f}" if se is None else f"{mean:.{digits}f} ± {se:.{digits}f}"


def seeds_markdown(groups: list[SeedGroup]) -> str:
    """Each group's metrics as mean ± standard error over its seeds, with the seed count."""
    header = ["weighting", "monotonic", "seeds", "val/bpd", "test/bpd", "FID (n)", "FID floor", "overrides"]
    rows = []
    shared = shared_overrides(groups)
    for g in groups:
        fid_mean, fid_se, _ = g.stat("fid")
        fid = "n/a" if fid_mean is None else f"{_mean_se(fid_mean, fid_se, 2)} ({cell(g.fid_n)})"
        seeds = sorted(r.seed for r in g.runs if r.seed is not None)
        conditional = " *" if any(r.conditional for r in g.runs) else ""
        cells = [g.weighting + conditional, cell(g.monotonic), f"{len(g.runs)} ({', '.join(map(str, seeds))})",
                 _mean_se(*g.stat("val/bpd")[:2]), _mean_se(*g.stat("test/bpd")[:2]), fid,
                 _mean_se(*g.stat("fid_floor")[:2], 2),
                 " ".join(o for o in g.overrides if o not in shared) or "-"]
        rows.append(cells)
    notes = ["", "mean ± standard error over the seeds (sample standard deviation / √seeds); a difference between two "
             "rows is meaningful only when it is large against both errors. FID floor: the real-vs-real FID of as many real "
             "training images (what a perfect model scores)."]
    if any(r.conditional for g in groups for r in g.runs):
        notes.append(CONDITIONAL_NOTE)
    return "\n".join([markdown_table(header, rows), *notes]) + "\n"


def write_seeds_csv(groups: list[SeedGroup], path: Path) -> Path:
    """One row per seed group: every metric's mean, standard error and count."""
    fields = ["weighting", "monotonic", "seeds", "overrides"]
    fields += [f"{key}_{part}" for key in SEED_METRICS for part in ("mean", "se", "count")]  # count: seeds that logged it
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for g in groups:
            row = {"weighting": g.weighting, "monotonic": g.monotonic, "seeds": len(g.runs),
                   "overrides": " ".join(g.overrides)}
            for key in SEED_METRICS:
                row.update(dict(zip((f"{key}_mean", f"{key}_se", f"{key}_count"), g.stat(key))))
            writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    return path


def runs_markdown(runs: list[RunSummary]) -> str:
    """The comparison as a markdown table, with a note when no run logged FID."""
    header = ["run", "weighting", "monotonic", "val/bpd", "test/bpd", "FID (n)", "steps", "minutes", "sweep overrides"]
    rows = []
    shared = shared_overrides(runs)
    for r in runs:
        row = r.row()
        fid = "n/a" if row["fid"] is None else f"{row['fid']:.2f} ({cell(row['fid_n'])})"
        cells = [row["run"] + (" *" if r.conditional else ""), row["weighting"], row["monotonic"], row["val/bpd"],
                 row["test/bpd"], fid, row["steps"],
                 None if row["minutes"] is None else f"{row['minutes']:.1f}",
                 " ".join(o for o in r.overrides if o not in shared) or "-"]
        rows.append([cell(c) for c in cells])
    notes = ["", "val/bpd, test/bpd: the last logged value (the W&B run summary); bits/dim of the unweighted ELBO."]
    if any(r.conditional for r in runs):
        notes.append(CONDITIONAL_NOTE)
    if not any(r.fid[0] is not None for r in runs):
        notes.append("FID: not logged by any run (no val/fid or test/fid in the CSV logs), so FID is n/a.")
    else:
        notes.append("FID (n): test/fid if logged, else val/fid, with its number of generated samples fid_n.")
    return "\n".join([markdown_table(header, rows), *notes]) + "\n"


def write_csv(runs: list[RunSummary], path: Path) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        for r in runs:
            writer.writerow({k: ("" if v is None else v) for k, v in r.row().items()})
    return path


def _bpd(run: RunSummary) -> float | None:
    return run.metrics.get("test/bpd", run.metrics.get("val/bpd"))


def fid_vs_bpd_figure(runs: list[RunSummary], groups: list[SeedGroup] | None = None, dpi: int = 100) -> Figure:
    """FID against bits/dim coloured by monotonicity: one point per run, or with ``groups`` (several seeds) one
    point per group at its means with ±1 standard-error bars; without FID, bits/dim per run and a note."""
    fig, ax = figure(figsize=(6, 4.5), dpi=dpi)
    with_fid = [r for r in runs if r.fid[0] is not None and _bpd(r) is not None]
    if with_fid and groups:
        shared = shared_overrides(groups)
        for g in groups:
            key = "test/bpd" if g.values("test/bpd") else "val/bpd"
            (x, xerr, _), (y, yerr, _) = g.stat(key), g.stat("fid")
            if x is None or y is None:
                continue
            ax.errorbar(x, y, xerr=xerr, yerr=yerr, fmt="o", color=COLORS[g.monotonic], capsize=3, ms=6)
            ax.annotate(group_label(g, shared), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        n = sorted({r.fid[1] for r in with_fid if r.fid[1] is not None})
        ax.set(xlabel="bits/dim (test, else val): mean ± s.e. over seeds",
               ylabel=f"FID@{'/'.join(map(str, n)) or '?'}", title="FID vs NLL over seeds")
    elif with_fid:
        labels: dict[tuple[float, float], list[str]] = {}  # runs at the same point share one label
        for r in with_fid:
            ax.scatter(_bpd(r), r.fid[0], color=COLORS[r.monotonic], s=40)
            labels.setdefault((round(_bpd(r), 4), round(r.fid[0], 2)), []).append(r.weighting)
        for (x, y), names in labels.items():
            ax.annotate(", ".join(names), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        n = sorted({r.fid[1] for r in with_fid if r.fid[1] is not None})
        ax.set(xlabel="bits/dim (test, else val)", ylabel=f"FID@{'/'.join(map(str, n)) or '?'}", title="FID vs NLL")
    else:
        scored = [r for r in runs if _bpd(r) is not None]
        ax.bar(range(len(scored)), [_bpd(r) for r in scored], color=[COLORS[r.monotonic] for r in scored])
        ax.set_xticks(range(len(scored)), [r.weighting for r in scored], rotation=45, ha="right")
        ax.set(ylabel="bits/dim (test, else val)", title="no FID logged: bits/dim only")
        ax.text(0.5, 0.95, "FID not logged by any run (no val/fid or test/fid)", transform=ax.transAxes,
                ha="center", va="top", fontsize=9, bbox={"facecolor": "white", "alpha": 0.8})
    floors = [r.fid_floor for r in runs if r.fid_floor is not None]
    if floors and (with_fid or groups):  # what a perfect model scores: the scale on which FID is read
        ax.axhline(sum(floors) / len(floors), color="gray", linestyle="--", linewidth=1,
                   label=f"real-vs-real floor ({sum(floors) / len(floors):.2f})")
    for monotonic, label in ((True, "monotonic"), (False, "non-monotonic")):
        ax.scatter([], [], color=COLORS[monotonic], label=label)
    ax.legend(loc="best", fontsize=8)
    return fig


def group_label(group: SeedGroup, shared: set[str]) -> str:
    """A seed group's name in plots: its weighting and the overrides that set it apart from the other groups (never
    how it was run: its overrides leave out :data:`RUNTIME_OVERRIDES`)."""
    rest = [o for o in group.overrides if o not in shared and not o.startswith("weighting=")]
    return " ".join([group.weighting, *rest]) + f" (n={len(group.runs)})"


def val_bpd_figure(runs: list[RunSummary], groups: list[SeedGroup] | None = None, dpi: int = 100) -> Figure:
    """The val/bpd curves against the training step; solid monotonic, dashed non-monotonic. With ``groups`` (several
    seeds) one curve per group, the mean over its seeds at the steps they share, with a ±1 standard-error band."""
    fig, ax = figure(figsize=(7, 4.5), dpi=dpi)
    if groups:
        shared = shared_overrides(groups)
        for i, g in enumerate(groups):
            curves = [dict(r.curves["val/bpd"]) for r in g.runs if r.curves.get("val/bpd")]
            steps = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
            if not steps:
                continue
            mean, se = zip(*(mean_se([c[t] for c in curves]) for t in steps))
            se = [e or 0.0 for e in se]
            ax.plot(steps, mean, color=f"C{i % 10}", marker="." if len(steps) < 20 else None,
                    linestyle="-" if g.monotonic is not False else "--", label=group_label(g, shared))
            ax.fill_between(steps, [m - e for m, e in zip(mean, se)], [m + e for m, e in zip(mean, se)],
                            color=f"C{i % 10}", alpha=0.2, linewidth=0)
    else:
        for r in runs:
            curve = r.curves.get("val/bpd", [])
            if curve:
                steps, values = zip(*curve)
                ax.plot(steps, values, marker="." if len(curve) < 20 else None,
                        linestyle="-" if r.monotonic is not False else "--", label=f"{r.weighting} ({r.run})")
    if not any(r.curves.get("val/bpd") for r in runs):
        ax.text(0.5, 0.5, "no val/bpd logged", transform=ax.transAxes, ha="center")
    title = "validation bits/dim (solid: monotonic, dashed: non-monotonic)"
    ax.set(xlabel="step", ylabel="val/bpd", title=title + ("\nmean over seeds ± s.e." if groups else ""))
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, ncol=2)
    return fig


def plot_fid_vs_bpd(runs: list[RunSummary], path: Path, groups: list[SeedGroup] | None = None) -> Path:
    """:func:`fid_vs_bpd_figure` written to ``path``."""
    return save_figure(fid_vs_bpd_figure(runs, groups), path)


def plot_val_bpd(runs: list[RunSummary], path: Path, groups: list[SeedGroup] | None = None) -> Path:
    """:func:`val_bpd_figure` written to ``path``."""
    return save_figure(val_bpd_figure(runs, groups), path)


def applies(runs: list[RunSummary]) -> bool:
    """Every set of runs can be compared as a sweep (the report of last resort)."""
    return bool(runs)


def write(runs: list[RunSummary], sweep_dir: Path, out: Path) -> dict[str, Path]:
    """The table (markdown and CSV), the seed groups' table when a group has several seeds, the search's trials
    when the sweep is a search, and the two plots; returns their paths."""
    groups = group_by_seed(runs)
    seeded = any(len(g.runs) > 1 for g in groups)
    text = f"# Compare: {sweep_dir.name}\n\n{runs_markdown(runs)}"
    if seeded:
        text += f"\n## Over seeds\n\n{seeds_markdown(groups)}"
    if is_search(sweep_dir):
        text += f"\n## Search\n\n{search_markdown(sweep_dir)}"
    (out / "compare.md").write_text(text)
    paths = {
        "markdown": out / "compare.md",
        "csv": write_csv(runs, out / "compare.csv"),
        "fid_vs_bpd": plot_fid_vs_bpd(runs, out / "compare_fid_vs_bpd.png", groups if seeded else None),
        "val_bpd": plot_val_bpd(runs, out / "compare_val_bpd.png", groups if seeded else None),
    }
    if seeded:
        paths["seeds_csv"] = write_seeds_csv(groups, out / "compare_seeds.csv")
    return paths
