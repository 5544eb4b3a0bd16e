"""The runs of a sweep folder, read from their local logs: what each run was and its final metrics.

Every run below the folder (a folder holding ``.hydra/config.yaml``) gives its config and overrides, its CSV log
``csv/metrics.csv`` (the last logged value of each key, which is what a W&B dashboard shows as the run's summary,
and every key's curve) and the ``metrics.json`` that sample.py and eval.py write. The reports of
:mod:`vdmlab.analysis.compare` read runs through this module, and format their cells with :func:`cell`.
"""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml


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


def run_dirs(root: Path) -> set[Path]:
    """The folders below ``root`` that hold ``.hydra/config.yaml``, following links (a comparison folder may be links
    to runs of several sweeps), each real folder visited once, so that a link cycle ends."""
    found, seen = set(), set()
    for folder, subfolders, _ in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            subfolders.clear()
            continue
        seen.add(real)
        if os.path.isfile(os.path.join(folder, ".hydra", "config.yaml")):
            found.add(Path(folder))
    return found


def find_runs(sweep_dir: Path) -> list[RunSummary]:
    """Every run below ``sweep_dir`` (a multirun folder, a single run, or a folder of either or of links to runs),
    in job order."""
    dirs = sorted(run_dirs(sweep_dir),
                  key=lambda d: [int(part) if part.isdigit() else part for part in d.relative_to(sweep_dir).parts])
    return [read_run(d, str(d.relative_to(sweep_dir)) if d != sweep_dir else d.name) for d in dirs]


def mean_se(values: list[float]) -> tuple[float, float | None]:
    """Mean and standard error of the mean (sample standard deviation / √n) of ``values``; s.e. None for n < 2."""
    n = len(values)
    mean = sum(values) / n
    return mean, (math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n) if n > 1 else None)


def shared_overrides(items: list) -> set[str]:
    """The overrides every run or seed group has (so a table or plot shows only what sets each apart)."""
    return set.intersection(*(set(i.overrides) for i in items)) if len(items) > 1 else set()


def cell(value: object) -> str:
    """A table cell: n/a for a missing value, yes/no for a flag, 4 decimals for a float."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)
