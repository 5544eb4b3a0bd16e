"""``python -m vdmlab.cli.variance ckpt_path=...``: the command line of :mod:`vdmlab.analysis.variance`, the variance
of the loss estimator (eq. (4.123)) of a checkpoint's frozen EMA denoiser under each schedule (cosine, linear, a
fitted learned one, a fitted adaptive one, the checkpoint's own) and each time sampler (iid, low-discrepancy).

The weighting is the checkpoint's (``weighting=NAME`` picks conf/weighting/NAME.yaml instead). Results are printed
and written to ``<out>.csv`` and ``<out>.json`` (default ``out``: ``variance_<weighting>`` next to the checkpoint).

Usage: ``python -m vdmlab.cli.variance ckpt_path=PATH [weighting=sigmoid] [repeats=32] [fit_steps=300]
[fit_lr=0.02] [adaptive_passes=10] [split=train] [device=auto] [seed=0] [out=PATH]`` (``--key value`` works too).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from omegaconf import OmegaConf

from vdmlab.analysis.variance import format_rows, variance_study, write_outputs
from vdmlab.cli.build import build_from_checkpoint
from vdmlab.cli.common import pick_device

CONF_DIR = Path(__file__).resolve().parents[3] / "conf"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Accept ``key=value`` (Hydra style) as well as ``--key value``."""
    parser = argparse.ArgumentParser(prog="python -m vdmlab.cli.variance", description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt_path", required=True, help="a checkpoint written by python train.py")
    parser.add_argument("--weighting", default=None, help="conf/weighting/NAME.yaml; default: the checkpoint's")
    parser.add_argument("--repeats", type=int, default=32, help="(t, ε) draws per example for the variances")
    parser.add_argument("--fit_steps", type=int, default=300, help="Adam steps fitting the learned shape (E[L²])")
    parser.add_argument("--fit_lr", type=float, default=0.02, help="Adam learning rate of the learned shape")
    parser.add_argument("--adaptive_passes", type=int, default=10, help="passes over the training split for the bins")
    parser.add_argument("--split", default="train", choices=["train", "val", "test"], help="examples measured on")
    parser.add_argument("--batch_size", type=int, default=None, help="default: the checkpoint's training batch size")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="output path stem (.csv and .json are written)")
    args = list(sys.argv[1:] if argv is None else argv)
    return parser.parse_args([a if a.startswith("-") else f"--{a}" for a in args])


def load_weighting(name: str) -> dict:
    """The config of conf/weighting/NAME.yaml, with a clear error listing the options."""
    path = CONF_DIR / "weighting" / f"{name}.yaml"
    if not path.is_file():
        options = sorted(p.stem for p in (CONF_DIR / "weighting").glob("*.yaml"))
        raise SystemExit(f"weighting={name} is not one of {options}")
    return OmegaConf.to_container(OmegaConf.load(path), resolve=True)


def run(args: argparse.Namespace) -> list[dict]:
    """Rebuild the checkpoint's run, run the variance study, print the table and write the files."""
    start = time.time()
    device = pick_device(args.device)
    overrides = {"weighting": load_weighting(args.weighting)} if args.weighting else None
    built = build_from_checkpoint(args.ckpt_path, overrides)
    try:
        rows, study = variance_study(built.module, built.datamodule, repeats=args.repeats, fit_steps=args.fit_steps,
                                     fit_lr=args.fit_lr, adaptive_passes=args.adaptive_passes, split=args.split,
                                     batch_size=args.batch_size, seed=args.seed, device=device)
    except ValueError as error:
        raise SystemExit(str(error)) from error
    meta = {**vars(args), **study, "minutes": (time.time() - start) / 60}
    name, lo, hi, batch_size = study["weighting"], study["logsnr_min"], study["logsnr_max"], study["batch_size"]
    stem = Path(args.out) if args.out else Path(args.ckpt_path).parent / f"variance_{name}"
    if stem.suffix in (".csv", ".json"):
        stem = stem.with_suffix("")
    csv_path, json_path = write_outputs(rows, meta, stem)
    print(f"\nLoss-estimator variance, weighting={name}, λ ∈ [{lo:g}, {hi:g}], {study['batches']} batches of "
          f"{batch_size} ({args.split} split) x {args.repeats} draws per sampler; ratios to cosine (same sampler)")
    print(format_rows(rows))
    print(f"\nwritten: {csv_path} and {json_path} ({meta['minutes']:.1f} min)")
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    return run(parse_args(argv))


if __name__ == "__main__":
    main()
