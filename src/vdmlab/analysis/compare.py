"""Compare the runs of a sweep from their local logs, offline (the analysis behind ``python compare.py``).

Reads every run below the folder (a folder holding ``.hydra/config.yaml``): its config and overrides, and its CSV
log ``csv/metrics.csv``. The values are the last logged value of each key, which is what a W&B dashboard shows as
the run's summary. Writes into the folder ``compare.md`` and ``compare.csv`` (weighting, monotonic, final val/bpd,
test/bpd, FID with its sample count, steps, minutes) and two plots: ``compare_fid_vs_bpd.png`` (coloured by
monotonicity; says so when no run logged FID) and ``compare_val_bpd.png`` (the val/bpd curves of all runs).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

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

    @property
    def fid(self) -> tuple[float | None, int | None, str | None]:
        """(FID, its sample count, key): test/fid if logged, else val/fid."""
        for stage in ("test", "val"):
            if f"{stage}/fid" in self.metrics:
                n = self.metrics.get(f"{stage}/fid_n")
                return self.metrics[f"{stage}/fid"], (int(n) if n is not None else None), f"{stage}/fid"
        return None, None, None

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
    summary = RunSummary(run=name, weighting=weighting, monotonic=monotonic, overrides=list(overrides or []))
    metrics_csv = run_dir / "csv" / "metrics.csv"
    if metrics_csv.is_file():
        summary.metrics, summary.curves, summary.steps = read_metrics(metrics_csv)
        summary.minutes = (metrics_csv.stat().st_mtime - (meta / "config.yaml").stat().st_mtime) / 60
    return summary


def find_runs(sweep_dir: Path) -> list[RunSummary]:
    """Every run below ``sweep_dir`` (a multirun folder, a single run, or a folder of either), in job order."""
    dirs = sorted({p.parent.parent for p in sweep_dir.rglob(".hydra/config.yaml")},
                  key=lambda d: [int(part) if part.isdigit() else part for part in d.relative_to(sweep_dir).parts])
    return [read_run(d, str(d.relative_to(sweep_dir)) if d != sweep_dir else d.name) for d in dirs]


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
    shared = set.intersection(*(set(r.overrides) for r in runs)) if len(runs) > 1 else set()
    for r in runs:
        row = r.row()
        fid = "n/a" if row["fid"] is None else f"{row['fid']:.2f} ({_cell(row['fid_n'])})"
        cells = [row["run"], row["weighting"], row["monotonic"], row["val/bpd"], row["test/bpd"], fid, row["steps"],
                 None if row["minutes"] is None else f"{row['minutes']:.1f}",
                 " ".join(o for o in r.overrides if o not in shared) or "-"]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    notes = ["", "val/bpd, test/bpd: the last logged value (the W&B run summary); bits/dim of the unweighted ELBO."]
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


def plot_fid_vs_bpd(runs: list[RunSummary], path: Path) -> Path:
    """FID against bits/dim, one point per run coloured by monotonicity; without FID, bits/dim per run and a note."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=100)
    with_fid = [r for r in runs if r.fid[0] is not None and _bpd(r) is not None]
    if with_fid:
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
    for monotonic, label in ((True, "monotonic"), (False, "non-monotonic")):
        ax.scatter([], [], color=COLORS[monotonic], label=label)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_val_bpd(runs: list[RunSummary], path: Path) -> Path:
    """The val/bpd curves of all runs against the training step; solid monotonic, dashed non-monotonic."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    for r in runs:
        curve = r.curves.get("val/bpd", [])
        if curve:
            steps, values = zip(*curve)
            ax.plot(steps, values, marker="." if len(curve) < 20 else None,
                    linestyle="-" if r.monotonic is not False else "--", label=f"{r.weighting} ({r.run})")
    if not any(r.curves.get("val/bpd") for r in runs):
        ax.text(0.5, 0.5, "no val/bpd logged", transform=ax.transAxes, ha="center")
    ax.set(xlabel="step", ylabel="val/bpd", title="validation bits/dim (solid: monotonic, dashed: non-monotonic)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def compare(sweep_dir: str | Path, out_dir: str | Path | None = None) -> dict[str, Path]:
    """Write the table (markdown and CSV) and the two plots for the runs below ``sweep_dir``; returns their paths."""
    sweep_dir = Path(sweep_dir).resolve()
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"{sweep_dir} is not a folder: pass a multirun folder, e.g. outputs/<task>/multiruns/<time>")
    runs = find_runs(sweep_dir)
    if not runs:
        raise FileNotFoundError(f"no runs below {sweep_dir}: no .hydra/config.yaml found (is it a train.py output folder?)")
    out = Path(out_dir) if out_dir else sweep_dir
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.md").write_text(f"# Compare: {sweep_dir.name}\n\n{markdown_table(runs)}")
    return {
        "markdown": out / "compare.md",
        "csv": write_csv(runs, out / "compare.csv"),
        "fid_vs_bpd": plot_fid_vs_bpd(runs, out / "compare_fid_vs_bpd.png"),
        "val_bpd": plot_val_bpd(runs, out / "compare_val_bpd.png"),
    }
