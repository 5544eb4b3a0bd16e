"""The diagnostics of a trained sweep as a results file: ``benchmarks/results/diagnostics_<name>_cpu.{md,json}``.

    python compare.py <sweep> --diagnose --copying-samples 100 --sample-steps 50 --elbo-samples 2   # evaluates
    python benchmarks/diagnostics_study.py <sweep> --name weighting_study [--reference elbo]          # writes

The JSON holds, per seed group: test bits/dim (the ELBO with the profile's diffusion term, and the run's own logged
test/bpd), FID with its spread over seeds, the mean profile over λ, the gap to the reference per λ range, the paired
intervals, the cross-objective matrix row and the copying rates; the markdown is compare.py's diagnostics section
with a summary table, the machine and the commands.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from benchmarks import common
from vdmlab.analysis.compare import find_runs, group_by_seed
from vdmlab.analysis.diagnostics import (
    build_groups,
    diagnostics_section,
    matrix_values,
    paired_over_examples,
    paired_over_seeds,
    pick_reference,
)

NAME = "diagnostics_study"


def _mean_se(values: list[float]) -> list[float | None]:
    if not values:
        return [None, None]
    return [float(np.mean(values)), float(np.std(values, ddof=1) / np.sqrt(len(values))) if len(values) > 1 else None]


def _interval(fn, *args) -> dict | None:
    try:
        d = fn(*args)
    except ValueError:
        return None
    return {"mean": d.mean, "low": d.low, "high": d.high, "n": d.n}


def collect(sweep_dir: Path, reference: str | None) -> tuple[dict, str]:
    """The per-group numbers and the markdown section of the sweep's diagnostics."""
    runs = find_runs(sweep_dir)
    groups = group_by_seed(runs)
    gds = build_groups(sweep_dir, runs, groups)
    ref = pick_reference(gds, reference)
    rows, columns, values = matrix_values(gds)
    norm = values / np.nanmin(values, axis=0, keepdims=True) if columns else values
    ref_bins = ref.mean_bins()
    out = {"reference": ref.label, "matrix_columns": columns, "groups": []}
    for i, g in enumerate(gds):
        bins = g.mean_bins()
        examples = g.per_example()
        entry = {
            "label": g.label, "weighting": g.weighting, "seeds": sorted(g.files),
            "bpd_profile": _mean_se([p["summary"]["bpd_profile"] for p in g.profiles() if "bpd_profile" in p["summary"]]),
            "test_bpd_logged": _mean_se([r.metrics["test/bpd"] for r in g.runs if "test/bpd" in r.metrics]),
            "fid": _mean_se(list(g.fids().values())),
            "fid_n": sorted({r.fid[1] for r in g.runs if r.fid[1] is not None}),
            "profile": None if bins is None else {"logsnr": bins[0].tolist(), "elbo_bpd_per_logsnr": bins[1].tolist()},
            "gap_per_bin": (None if bins is None or ref_bins is None or g is ref
                            else ((bins[1] - ref_bins[1]) * np.diff(ref.profiles()[0]["edges"])).tolist()),
            "paired_per_example": None if g is ref else _interval(paired_over_examples, examples, ref.per_example()),
            "paired_over_seeds": None if g is ref else _interval(
                paired_over_seeds, {s: float(np.mean(list(v.values()))) for s, v in examples.items()},
                {s: float(np.mean(list(v.values()))) for s, v in ref.per_example().items()}),
            "fid_paired_over_seeds": None if g is ref else _interval(paired_over_seeds, g.fids(), ref.fids()),
            "matrix_row": None if not columns else dict(zip(columns, norm[i].tolist())),
            "matrix_raw_bpd": None if not columns else dict(zip(columns, values[i].tolist())),
            "copying": [f.copying for f in g.files.values() if f.copying],
        }
        out["groups"].append(entry)
    section, _ = diagnostics_section(sweep_dir, runs, groups, sweep_dir, reference)
    return out, section


def summary_markdown(data: dict) -> str:
    """One row per group: bits/dim (profile estimate and logged), FID and copying."""
    header = ["group", "seeds", "test bits/dim (profile)", "test/bpd (logged)", "FID (n)", "near-copies", "test reference"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]

    def cell(ms, digits=4):
        m, s = ms
        return "n/a" if m is None else (f"{m:.{digits}f}" if s is None else f"{m:.{digits}f} ± {s:.{digits}f}")

    for g in data["groups"]:
        cs = g["copying"]
        copies = f"{100 * np.mean([c['copy_fraction'] for c in cs]):.1f} %" if cs else "n/a"
        ref = f"{100 * np.mean([c['copy_fraction_test'] for c in cs]):.1f} %" if cs else "n/a"
        lines.append("| " + " | ".join([g["label"], str(len(g["seeds"])), cell(g["bpd_profile"]), cell(g["test_bpd_logged"]),
                                         f"{cell(g['fid'], 2)} ({'/'.join(map(str, g['fid_n']))})", copies, ref]) + " |")
    return "\n".join(lines) + "\n\nmean ± standard error over the training seeds.\n"


def report(payload: dict) -> str:
    return payload["markdown"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir")
    parser.add_argument("--name", required=True, help="results file name: diagnostics_<name>_cpu.{md,json}")
    parser.add_argument("--reference", default=None)
    parser.add_argument("--commands", nargs="*", default=[], help="the commands that trained and evaluated the sweep")
    args = parser.parse_args(argv)
    sweep = Path(args.sweep_dir).resolve()
    data, section = collect(sweep, args.reference)
    machine = common.machine(torch.device("cpu"))
    command = " ".join(["python benchmarks/diagnostics_study.py", *sys.argv[1:]]) if argv is None else " ".join(argv)
    commands = [*args.commands, command]
    markdown = (f"# Diagnostics: {args.name}\n\nMachine: {machine['cpu']}, {machine['cpu_count']} cores, "
                f"{machine['date'][:10]}; sweep folder {sweep}.\n\nCommands:\n\n" + "\n".join(f"    {c}" for c in commands)
                + f"\n\n## Summary\n\n{summary_markdown(data)}{section}")
    payload = {"benchmark": NAME, "command": command, "commands": commands, "machine": machine, **data, "markdown": markdown}
    stem = common.RESULTS_DIR / f"diagnostics_{args.name}_cpu"
    stem.with_suffix(".json").write_text(json.dumps(payload, indent=2, default=str))
    stem.with_suffix(".md").write_text(markdown)
    print(markdown)
    print(f"wrote {stem}.md and .json")


if __name__ == "__main__":
    main()
