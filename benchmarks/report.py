"""Print the markdown tables of saved benchmark results (the tables of the README's Performance section).

    python benchmarks/report.py                      # every benchmarks/results/*.json except the --quick ones
    python benchmarks/report.py path/to/result.json ...
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import (
    common,
    diagnostics_study,
    eval_cost,
    gpu_options,
    quality_baseline,
    sampling_throughput,
    train_throughput,
)

SCRIPTS = {m.NAME: m for m in (train_throughput, sampling_throughput, eval_cost, quality_baseline, gpu_options,
                                diagnostics_study)}


def main(argv: list[str] | None = None) -> None:
    paths = [Path(p) for p in (sys.argv[1:] if argv is None else argv)]
    paths = paths or sorted(p for p in common.RESULTS_DIR.glob("*.json") if not p.stem.endswith("_quick"))
    for path in paths:
        payload = json.loads(path.read_text())
        print(f"### {path.name}\n\n{SCRIPTS[payload['benchmark']].report(payload)}\n\n`{payload['command']}`\n")


if __name__ == "__main__":
    main()
