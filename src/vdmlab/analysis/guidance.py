"""The guidance report: a sample.py sweep over the classifier-free guidance weight.

A sweep of ``python sample.py -m ... sampler.guidance=0,1,2,4`` (runs with a ``metrics.json`` that holds the
guidance weight) is compared on guidance: ``compare.md`` and ``compare.csv`` list FID (with its sample count) and
the class accuracy of the samples per guidance weight, and ``compare_guidance.png`` plots both against the weight.
"""

from __future__ import annotations

import csv
from pathlib import Path

from matplotlib.figure import Figure

from vdmlab.analysis.report import figure, markdown_table, save_figure
from vdmlab.analysis.runs import RunSummary, cell

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
    cells = []
    for row in rows:
        fid = "n/a" if row["fid"] is None else f"{row['fid']:.2f} ({cell(row['fid_n'])})"
        acc = "n/a" if row["class_acc"] is None else f"{100 * row['class_acc']:.1f} %"
        lo, hi = row["guidance_logsnr_min"], row["guidance_logsnr_max"]
        interval = "all" if lo is None and hi is None else f"[{cell(lo)}, {cell(hi)}]"
        cells.append([f"{row['guidance']:g}", fid, acc, interval, cell(row["steps"]), row["run"]])
    notes = ["", "FID: of the samples against the split's images, in the features the run names (digits classifier on "
             "8x8 digits); class accuracy: the fraction of samples that the shipped digits classifier assigns to the "
             "label they were drawn for (n/a off the digits or without labels)."]
    return "\n".join([markdown_table(header, cells), *notes]) + "\n"


def guidance_figure(rows: list[dict[str, object]]) -> Figure:
    """FID (left axis) and class accuracy (right axis) against the guidance weight."""
    fig, ax = figure(figsize=(6, 4.5))
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
    return fig


def plot_guidance(rows: list[dict[str, object]], path: Path) -> Path:
    """:func:`guidance_figure` written to ``path``."""
    return save_figure(guidance_figure(rows), path)


def applies(runs: list[RunSummary]) -> bool:
    """A sample.py sweep: some run's ``metrics.json`` holds the guidance weight."""
    return any("guidance" in r.metrics for r in runs)


def write(runs: list[RunSummary], sweep_dir: Path, out: Path) -> dict[str, Path]:
    """Table (markdown and CSV) and plot of a sample.py sweep over the guidance weight."""
    rows = guidance_rows([r for r in runs if "guidance" in r.metrics])
    (out / "compare.md").write_text(f"# Compare guidance: {sweep_dir.name}\n\n{guidance_markdown(rows)}")
    with open(out / "compare.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=GUIDANCE_COLUMNS)
        writer.writeheader()
        writer.writerows([{k: ("" if v is None else v) for k, v in row.items()} for row in rows])
    return {"markdown": out / "compare.md", "csv": out / "compare.csv",
            "guidance": plot_guidance(rows, out / "compare_guidance.png")}
