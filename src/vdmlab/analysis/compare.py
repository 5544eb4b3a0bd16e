"""Compare the runs of a sweep from their local logs, offline (the analysis behind ``python compare.py``).

Reads every run below the folder (a folder holding ``.hydra/config.yaml``): its config and overrides, and its CSV
log ``csv/metrics.csv``. The values are the last logged value of each key, which is what a W&B dashboard shows as
the run's summary. Writes into the folder ``compare.md`` and ``compare.csv`` (weighting, monotonic, final val/bpd,
test/bpd, FID with its sample count, steps, minutes) and two plots: ``compare_fid_vs_bpd.png`` (coloured by
monotonicity; says so when no run logged FID) and ``compare_val_bpd.png`` (the val/bpd curves of all runs).

Seeds are a sweep axis: runs that differ only by ``seed`` form one group (``python train.py -m weighting=a,b
seed=0,1,2``), and when any group has several seeds ``compare.md`` adds a table of each metric as mean ± standard
error over the seeds with the seed count, ``compare_seeds.csv`` holds it, and the FID-vs-bits/dim plot shows the
groups with error bars (±1 s.e.).

A hyperparameter search (``-m hparams_search=...``) adds the trials ranked by objective and each parameter's
importance (:mod:`vdmlab.analysis.search`).

A sweep of ``python sample.py -m ... sampler.guidance=0,1,2,4`` (runs with a ``metrics.json`` that holds the
guidance weight) is compared on guidance instead: the table lists FID (with its sample count) and the class
accuracy of the samples per guidance weight, and ``compare_guidance.png`` plots both against the weight.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from vdmlab.analysis.diagnostics import diagnostics_section
from vdmlab.analysis.search import is_search, search_markdown

COLUMNS = ("run", "weighting", "monotonic", "val/bpd", "test/bpd", "fid", "fid_n", "steps", "minutes", "overrides")
COLORS = {True: "tab:blue", False: "tab:orange", None: "tab:gray"}


@dataclass
class RunSummary:
    """One run of a sweep: what it was (weighting, monotonic, overrides) and its final metrics."""

    run: str
    weighting: str
    monotonic: bool | None
    metrics: dict[str, float] = field(default_factory=dict)  # last logged value of every key
    curves: dict[str, list[tuple[float, float]]] = field(default_factory=dict)  # key -> [(step, value)]
    steps: int | None = None
    minutes: float | None = None
    overrides: list[str] = field(default_factory=list)
    seed: int | None = None
    conditional: bool = False  # class-conditional: val/bpd, test/bpd are its class mixture's bound (bpd_mixture)

    @property
    def fid(self) -> tuple[float | None, int | None, str | None]:
        """(FID, its sample count, key): test/fid if logged, else val/fid."""
        for stage in ("test", "val"):
            if f"{stage}/fid" in self.metrics:
                n = self.metrics.get(f"{stage}/fid_n")
                return self.metrics[f"{stage}/fid"], (int(n) if n is not None else None), f"{stage}/fid"
        return None, None, None

    @property
    def fid_floor(self) -> float | None:
        """The real-vs-real FID floor logged beside :attr:`fid` (same stage and sample count), if any."""
        key = self.fid[2]
        return None if key is None else self.metrics.get(f"{key}_floor")

    def row(self) -> dict[str, object]:
        fid, fid_n, _ = self.fid
        return {
            "run": self.run, "weighting": self.weighting, "monotonic": self.monotonic,
            "val/bpd": self.metrics.get("val/bpd"), "test/bpd": self.metrics.get("test/bpd"),
            "fid": fid, "fid_n": fid_n, "steps": self.steps,
            "minutes": None if self.minutes is None else round(self.minutes, 2),
            "overrides": " ".join(self.overrides),
        }


def read_metrics(path: Path) -> tuple[dict[str, float], dict[str, list[tuple[float, float]]], int | None]:
    """Last value of every key of a Lightning CSV log, every key's (step, value) curve, and the last step."""
    last: dict[str, float] = {}
    curves: dict[str, list[tuple[float, float]]] = {}
    steps: int | None = None
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            step = _float(row.get("step"))
            if step is not None:
                steps = max(steps or 0, int(step))
            for key, text in row.items():
                value = _float(text)
                if key in ("step", "epoch") or value is None:
                    continue
                last[key] = value
                curves.setdefault(key, []).append((step if step is not None else len(curves.get(key, ())), value))
    return last, curves, steps


def _float(text: str | None) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def weighting_of(config: dict, hydra: dict) -> tuple[str, bool | None]:
    """The weighting's name and monotonicity, from the built weighting (its class attributes), else the choice."""
    choice = (hydra.get("runtime", {}).get("choices", {}) or {}).get("weighting")
    node = config.get("weighting") or {}
    try:
        from hydra.utils import get_class

        cls = get_class(node["_target_"])
        return choice or getattr(cls, "name", cls.__name__), bool(cls.monotonic)
    except (KeyError, TypeError, ValueError, ImportError, AttributeError):  # no class to read: the choice alone
        return choice or "?", None


def read_run(run_dir: Path, name: str) -> RunSummary:
    """Summarise one run folder (it holds ``.hydra/config.yaml``; its CSV log may be missing)."""
    meta = run_dir / ".hydra"
    config = yaml.safe_load((meta / "config.yaml").read_text()) or {}
    hydra = (yaml.safe_load((meta / "hydra.yaml").read_text()) or {}).get("hydra", {}) if (meta / "hydra.yaml").is_file() else {}
    overrides = yaml.safe_load((meta / "overrides.yaml").read_text()) if (meta / "overrides.yaml").is_file() else []
    weighting, monotonic = weighting_of(config, hydra)
    summary = RunSummary(run=name, weighting=weighting, monotonic=monotonic, overrides=list(overrides or []),
                         seed=config.get("seed"))
    metrics_csv = run_dir / "csv" / "metrics.csv"
    if metrics_csv.is_file():
        summary.metrics, summary.curves, summary.steps = read_metrics(metrics_csv)
        summary.minutes = (metrics_csv.stat().st_mtime - (meta / "config.yaml").stat().st_mtime) / 60
    metrics_json = run_dir / "metrics.json"  # written by sample.py and eval.py
    if metrics_json.is_file():
        values = json.loads(metrics_json.read_text())
        summary.metrics.update({k: float(v) for k, v in values.items()
                                if isinstance(v, (int, float)) and not isinstance(v, bool)})
    return as_bits_per_dim_of_x(summary)


def as_bits_per_dim_of_x(summary: RunSummary) -> RunSummary:
    """Make a class-conditional run's val/bpd and test/bpd (and the val/bpd curve) bits/dim of x, comparable with
    unconditional runs: its balanced class mixture's bound ``bpd_mixture`` replaces the ELBO of p(x|y), which is
    kept as ``<stage>/bpd_conditional``."""
    for stage in ("val", "test"):
        key = f"{stage}/bpd_mixture"
        if key in summary.metrics:
            summary.conditional = True
            summary.metrics[f"{stage}/bpd_conditional"] = summary.metrics.get(f"{stage}/bpd")
            summary.metrics[f"{stage}/bpd"] = summary.metrics[key]
            if key in summary.curves:
                summary.curves[f"{stage}/bpd_conditional"] = summary.curves.get(f"{stage}/bpd", [])
                summary.curves[f"{stage}/bpd"] = summary.curves[key]
    return summary


CONDITIONAL_NOTE = ("class-conditional runs (marked *): val/bpd and test/bpd are the bound on −log p(x) of their "
                    "balanced class mixture (bpd_mixture = ELBO of p(x|y) + log2 C / D), so that they compare with "
                    "unconditional runs.")


def find_runs(sweep_dir: Path) -> list[RunSummary]:
    """Every run below ``sweep_dir`` (a multirun folder, a single run, or a folder of either), in job order."""
    dirs = sorted({p.parent.parent for p in sweep_dir.rglob(".hydra/config.yaml")},
                  key=lambda d: [int(part) if part.isdigit() else part for part in d.relative_to(sweep_dir).parts])
    return [read_run(d, str(d.relative_to(sweep_dir)) if d != sweep_dir else d.name) for d in dirs]


SEED_METRICS = ("val/bpd", "test/bpd", "fid", "fid_floor")


def is_seed_override(override: str) -> bool:
    """Whether a command-line override sets the seed (``seed=3``, ``+seed=3``, ``++seed=3``)."""
    return override.lstrip("+").split("=", 1)[0] == "seed"


def mean_se(values: list[float]) -> tuple[float, float | None]:
    """Mean and standard error of the mean (sample standard deviation / √n) of ``values``; s.e. None for n < 2."""
    n = len(values)
    mean = sum(values) / n
    return mean, (math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n) if n > 1 else None)


def shared_overrides(items: list) -> set[str]:
    """The overrides every run or seed group has (so a table or plot shows only what sets each apart)."""
    return set.intersection(*(set(i.overrides) for i in items)) if len(items) > 1 else set()


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


def group_by_seed(runs: list[RunSummary]) -> list[SeedGroup]:
    """Runs grouped by everything but the seed (their weighting and their other overrides), in first-run order."""
    groups: dict[tuple, SeedGroup] = {}
    for r in runs:
        rest = tuple(sorted(o for o in r.overrides if not is_seed_override(o)))
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
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    shared = shared_overrides(groups)
    for g in groups:
        fid_mean, fid_se, _ = g.stat("fid")
        fid = "n/a" if fid_mean is None else f"{_mean_se(fid_mean, fid_se, 2)} ({_cell(g.fid_n)})"
        seeds = sorted(r.seed for r in g.runs if r.seed is not None)
        conditional = " *" if any(r.conditional for r in g.runs) else ""
        cells = [g.weighting + conditional, _cell(g.monotonic), f"{len(g.runs)} ({', '.join(map(str, seeds))})",
                 _mean_se(*g.stat("val/bpd")[:2]), _mean_se(*g.stat("test/bpd")[:2]), fid,
                 _mean_se(*g.stat("fid_floor")[:2], 2),
                 " ".join(o for o in g.overrides if o not in shared) or "-"]
        lines.append("| " + " | ".join(cells) + " |")
    notes = ["", "mean ± standard error over the seeds (sample standard deviation / √seeds); a difference between two "
             "rows is meaningful only when it is large against both errors. FID floor: the real-vs-real FID of as many real "
             "training images (what a perfect model scores)."]
    if any(r.conditional for g in groups for r in g.runs):
        notes.append(CONDITIONAL_NOTE)
    return "\n".join(lines + notes) + "\n"


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


def _cell(value: object) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def markdown_table(runs: list[RunSummary]) -> str:
    """The comparison as a markdown table, with a note when no run logged FID."""
    header = ["run", "weighting", "monotonic", "val/bpd", "test/bpd", "FID (n)", "steps", "minutes", "sweep overrides"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    shared = shared_overrides(runs)
    for r in runs:
        row = r.row()
        fid = "n/a" if row["fid"] is None else f"{row['fid']:.2f} ({_cell(row['fid_n'])})"
        cells = [row["run"] + (" *" if r.conditional else ""), row["weighting"], row["monotonic"], row["val/bpd"],
                 row["test/bpd"], fid, row["steps"],
                 None if row["minutes"] is None else f"{row['minutes']:.1f}",
                 " ".join(o for o in r.overrides if o not in shared) or "-"]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    notes = ["", "val/bpd, test/bpd: the last logged value (the W&B run summary); bits/dim of the unweighted ELBO."]
    if any(r.conditional for r in runs):
        notes.append(CONDITIONAL_NOTE)
    if not any(r.fid[0] is not None for r in runs):
        notes.append("FID: not logged by any run (no val/fid or test/fid in the CSV logs), so FID is n/a.")
    else:
        notes.append("FID (n): test/fid if logged, else val/fid, with its number of generated samples fid_n.")
    return "\n".join(lines + notes) + "\n"


def write_csv(runs: list[RunSummary], path: Path) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        for r in runs:
            writer.writerow({k: ("" if v is None else v) for k, v in r.row().items()})
    return path


def _bpd(run: RunSummary) -> float | None:
    return run.metrics.get("test/bpd", run.metrics.get("val/bpd"))


def plot_fid_vs_bpd(runs: list[RunSummary], path: Path, groups: list[SeedGroup] | None = None) -> Path:
    """FID against bits/dim coloured by monotonicity: one point per run, or with ``groups`` (several seeds) one
    point per group at its means with ±1 standard-error bars; without FID, bits/dim per run and a note."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=100)
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
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def group_label(group: SeedGroup, shared: set[str]) -> str:
    """A seed group's name in plots: its weighting and the overrides that set it apart from the other groups."""
    rest = [o for o in group.overrides if o not in shared and not o.startswith("weighting=")]
    return " ".join([group.weighting, *rest]) + f" (n={len(group.runs)})"


def plot_val_bpd(runs: list[RunSummary], path: Path, groups: list[SeedGroup] | None = None) -> Path:
    """The val/bpd curves against the training step; solid monotonic, dashed non-monotonic. With ``groups`` (several
    seeds) one curve per group, the mean over its seeds at the steps they share, with a ±1 standard-error band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
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
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


GUIDANCE_COLUMNS = ("run", "guidance", "fid", "fid_n", "class_acc", "guidance_logsnr_min", "guidance_logsnr_max",
                    "steps", "num_samples", "overrides")


def guidance_rows(runs: list[RunSummary]) -> list[dict[str, object]]:
    """One row per sample run, sorted by guidance weight."""
    rows = []
    for r in sorted(runs, key=lambda r: r.metrics["guidance"]):
        m = r.metrics
        rows.append({"run": r.run, **{k: m.get(k) for k in GUIDANCE_COLUMNS[1:-1]}, "overrides": " ".join(r.overrides)})
        for key in ("fid_n", "steps", "num_samples"):
            rows[-1][key] = None if rows[-1][key] is None else int(rows[-1][key])
    return rows


def guidance_markdown(rows: list[dict[str, object]]) -> str:
    """The guidance comparison as a markdown table."""
    header = ["guidance w", "FID (n)", "class accuracy", "guidance λ interval", "steps", "run"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in rows:
        fid = "n/a" if row["fid"] is None else f"{row['fid']:.2f} ({_cell(row['fid_n'])})"
        acc = "n/a" if row["class_acc"] is None else f"{100 * row['class_acc']:.1f} %"
        lo, hi = row["guidance_logsnr_min"], row["guidance_logsnr_max"]
        interval = "all" if lo is None and hi is None else f"[{_cell(lo)}, {_cell(hi)}]"
        lines.append("| " + " | ".join([f"{row['guidance']:g}", fid, acc, interval, _cell(row["steps"]), row["run"]]) + " |")
    notes = ["", "FID: of the samples against the split's images, in the features the run names (digits classifier on "
             "8x8 digits); class accuracy: the fraction of samples that the shipped digits classifier assigns to the "
             "label they were drawn for (n/a off the digits or without labels)."]
    return "\n".join(lines + notes) + "\n"


def plot_guidance(rows: list[dict[str, object]], path: Path) -> Path:
    """FID (left axis) and class accuracy (right axis) against the guidance weight."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=100)
    w = [row["guidance"] for row in rows]
    fid = [(g, row["fid"]) for g, row in zip(w, rows) if row["fid"] is not None]
    if fid:
        ax.plot(*zip(*fid), marker="o", color="tab:blue", label="FID")
    n = sorted({row["fid_n"] for row in rows if row["fid_n"] is not None})
    ax.set(xlabel="guidance weight w", ylabel=f"FID@{'/'.join(map(str, n)) or '?'}", title="classifier-free guidance")
    ax.tick_params(axis="y", colors="tab:blue")
    acc = [(g, 100 * row["class_acc"]) for g, row in zip(w, rows) if row["class_acc"] is not None]
    if acc:
        ax2 = ax.twinx()
        ax2.plot(*zip(*acc), marker="s", color="tab:orange", label="class accuracy")
        ax2.set_ylabel("class accuracy of samples (%)")
        ax2.tick_params(axis="y", colors="tab:orange")
    if not fid and not acc:
        ax.text(0.5, 0.5, "no FID or class accuracy in the runs' metrics.json", transform=ax.transAxes, ha="center")
    fig.legend(loc="upper center", fontsize=8, ncol=2, bbox_to_anchor=(0.5, 0.9))
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def compare_guidance(runs: list[RunSummary], sweep_dir: Path, out: Path) -> dict[str, Path]:
    """Table (markdown and CSV) and plot of a sample.py sweep over the guidance weight."""
    rows = guidance_rows(runs)
    (out / "compare.md").write_text(f"# Compare guidance: {sweep_dir.name}\n\n{guidance_markdown(rows)}")
    with open(out / "compare.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=GUIDANCE_COLUMNS)
        writer.writeheader()
        writer.writerows([{k: ("" if v is None else v) for k, v in row.items()} for row in rows])
    return {"markdown": out / "compare.md", "csv": out / "compare.csv",
            "guidance": plot_guidance(rows, out / "compare_guidance.png")}


def compare(sweep_dir: str | Path, out_dir: str | Path | None = None, reference: str | None = None) -> dict[str, Path]:
    """Write the table (markdown and CSV) and the two plots for the runs below ``sweep_dir``; returns their paths."""
    sweep_dir = Path(sweep_dir).resolve()
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"{sweep_dir} is not a folder: pass a multirun folder, e.g. outputs/<task>/multiruns/<time>")
    runs = find_runs(sweep_dir)
    if not runs:
        raise FileNotFoundError(f"no runs below {sweep_dir}: no .hydra/config.yaml found (is it a train.py output folder?)")
    out = Path(out_dir) if out_dir else sweep_dir
    out.mkdir(parents=True, exist_ok=True)
    sampled = [r for r in runs if "guidance" in r.metrics]  # a sample.py sweep
    if sampled:
        return compare_guidance(sampled, sweep_dir, out)
    groups = group_by_seed(runs)
    seeded = any(len(g.runs) > 1 for g in groups)
    text = f"# Compare: {sweep_dir.name}\n\n{markdown_table(runs)}"
    if seeded:
        text += f"\n## Over seeds\n\n{seeds_markdown(groups)}"
    if is_search(sweep_dir):
        text += f"\n## Search\n\n{search_markdown(sweep_dir)}"
    section, figures = diagnostics_section(sweep_dir, runs, groups, out, reference)  # analysis/diagnostics.py
    text += section
    (out / "compare.md").write_text(text)
    paths = {**figures,
        "markdown": out / "compare.md",
        "csv": write_csv(runs, out / "compare.csv"),
        "fid_vs_bpd": plot_fid_vs_bpd(runs, out / "compare_fid_vs_bpd.png", groups if seeded else None),
        "val_bpd": plot_val_bpd(runs, out / "compare_val_bpd.png", groups if seeded else None),
    }
    if seeded:
        paths["seeds_csv"] = write_seeds_csv(groups, out / "compare_seeds.csv")
    return paths
