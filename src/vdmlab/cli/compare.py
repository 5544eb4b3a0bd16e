"""``python compare.py <sweep dir>``: the command line of :mod:`vdmlab.analysis.compare`, which reads the runs of a
sweep from their local logs and writes ``compare.md``, ``compare.csv`` and two plots into the sweep folder."""

from __future__ import annotations

import argparse
import sys

from vdmlab.analysis.compare import compare
from vdmlab.analysis.diagnostics import diagnose


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="compare.py", description="Compare the runs of a sweep from their local logs, offline.")
    parser.add_argument("sweep_dir", help="a multirun folder (outputs/<task>/multiruns/<time>) or any folder of runs")
    parser.add_argument("--out", default=None, help="where to write the table and plots (default: the sweep folder)")
    parser.add_argument("--reference", default=None, help="the group paired differences are taken against (a part of "
                        "its label, e.g. elbo); default: the ELBO group, else the first")
    parser.add_argument("--diagnose", action="store_true", help="first evaluate each checkpoint without diagnostics/: "
                        "the ELBO over λ, per-example bits/dim and the cross-objective matrix (docs/diagnostics.md)")
    parser.add_argument("--copying-samples", type=int, default=0, help="with --diagnose: EMA samples checked for copying")
    parser.add_argument("--sample-steps", type=int, default=100, help="with --diagnose: sampler steps of those samples")
    parser.add_argument("--elbo-samples", type=int, default=8, help="with --diagnose: λ draws of the per-example ELBO")
    args = parser.parse_args(argv)
    try:
        if args.diagnose:
            diagnose(args.sweep_dir, copying_samples=args.copying_samples, sample_steps=args.sample_steps,
                     elbo_samples=args.elbo_samples)
        paths = compare(args.sweep_dir, args.out, reference=args.reference)
    except (FileNotFoundError, ValueError) as error:
        print(f"compare.py: {error}", file=sys.stderr)
        return 2
    print(paths["markdown"].read_text())
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())

