"""Compare the runs of a sweep from their local logs, offline (the analysis behind ``python compare.py``).

The runs below the folder are read once (:mod:`vdmlab.analysis.runs`); the first report in :data:`REPORTS` that
applies to them writes ``compare.md``, ``compare.csv`` and its plots into the output folder:

- :mod:`vdmlab.analysis.guidance`: a sample.py sweep over the guidance weight (FID and class accuracy per weight);
- :mod:`vdmlab.analysis.sweeps`: any other sweep (one row per run, means ± standard errors over seeds, the FID
  against bits/dim and val/bpd plots, the trials of a hyperparameter search).

A report is a module with ``applies(runs) -> bool`` and ``write(runs, sweep_dir, out) -> {name: path}`` that
builds its tables and figures with :mod:`vdmlab.analysis.report`; a new one is such a module and its entry in
:data:`REPORTS`, before the sweep report, which applies to every sweep.
"""

from __future__ import annotations

from pathlib import Path

from vdmlab.analysis import guidance, sweeps
from vdmlab.analysis.diagnostics import diagnostics_section
from vdmlab.analysis.runs import RunSummary, find_runs, read_metrics, read_run  # noqa: F401 - the runs, re-exported
from vdmlab.analysis.sweeps import (  # noqa: F401 - the sweep report's tables and figures, re-exported
    COLORS,
    SeedGroup,
    group_by_seed,
    group_label,
    seeds_markdown,
)

REPORTS = (guidance, sweeps)  # the first whose applies(runs) is true writes the comparison


def compare(sweep_dir: str | Path, out_dir: str | Path | None = None, reference: str | None = None) -> dict[str, Path]:
    """Write the comparison of the runs below ``sweep_dir`` (tables and plots) into ``out_dir`` (default: the
    sweep folder), then where the runs' objectives differ when they carry diagnostics (paired against the group
    ``reference``); returns the paths written, by name (``markdown`` is ``compare.md``)."""
    sweep_dir = Path(sweep_dir).resolve()
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"{sweep_dir} is not a folder: pass a multirun folder, e.g. outputs/<task>/multiruns/<time>")
    runs = find_runs(sweep_dir)
    if not runs:
        raise FileNotFoundError(f"no runs below {sweep_dir}: no .hydra/config.yaml found (is it a train.py output folder?)")
    out = Path(out_dir) if out_dir else sweep_dir
    out.mkdir(parents=True, exist_ok=True)
    report = next(r for r in REPORTS if r.applies(runs))
    paths = report.write(runs, sweep_dir, out)
    section, figures = diagnostics_section(sweep_dir, runs, group_by_seed(runs), out, reference)  # analysis/diagnostics.py
    if section:
        with paths["markdown"].open("a") as text:
            text.write(section)
    return {**figures, **paths}
