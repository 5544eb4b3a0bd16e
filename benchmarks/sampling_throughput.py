"""Sampling throughput (images/s) of the ancestral, DDIM and probability-flow ODE (Heun) samplers at 50, 250 and
1000 steps, with the default network (conf/model/unet.yaml, 1x8x8 digits) through ``DiffusionModule.sample``
(EMA weights, x̂ clipping, decoding to the 17 levels).

Throughput does not depend on the weights, so the network is the untrained default one. Each sampler is warmed
up once (a 2-step run), then each (sampler, steps) is timed ``--repeats`` times (synchronised) and the median kept.

    python benchmarks/sampling_throughput.py [--device auto|cpu|cuda] [--batch-sizes 128 1024] [--steps 50 250 1000]
"""

from __future__ import annotations

import sys
from functools import partial
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from benchmarks import common
from vdmlab.diffusion.sampling import ancestral, ddim, heun

NAME = "sampling_throughput"
SAMPLERS = {"ancestral": (ancestral, 1), "ddim": (ddim, 1), "heun": (heun, 2)}  # (function, network calls per step)
KIND = {"ancestral": "ancestral (stochastic)", "ddim": "DDIM (ODE, Euler)", "heun": "probability-flow ODE (Heun)"}


def measure(args, device, emit=lambda rows: None) -> tuple[list[dict], str]:
    built = common.build_default(args.config, width=args.width, extra=args.set)
    module = built.module.to(device).eval()
    rows = []
    for batch_size in args.batch_sizes:
        for name in args.samplers:
            fn, calls = SAMPLERS[name]
            generator = torch.Generator(device=device).manual_seed(0)
            sample = partial(module.sample, batch_size, sampler=fn, generator=generator)
            common.timed(partial(sample, steps=2), device, warmup=1, repeats=0)
            for steps in args.steps:
                times = common.timed(partial(sample, steps=steps), device, warmup=0, repeats=args.repeats)
                seconds = common.median(times)
                rows.append({"sampler": name, "kind": KIND[name], "steps": steps, "batch_size": batch_size,
                             "network_calls": steps * calls, "seconds_per_batch": seconds,
                             "images_per_s": batch_size / seconds,
                             "ms_per_network_call": 1e3 * seconds / (steps * calls), "runs": times})
                emit(rows)
    return rows, built.source


def report(payload: dict) -> str:
    """The markdown table of a result."""
    return "\n".join([f"Sampling throughput, {common.describe(payload['machine'])}", "", common.markdown_table(
        payload["results"], [("batch_size", "batch", ""), ("kind", "sampler", ""), ("steps", "steps", ""),
                             ("network_calls", "network calls", ""), ("images_per_s", "images/s", "{:,.1f}"),
                             ("seconds_per_batch", "s per batch", "{:.3f}"), ("ms_per_network_call", "ms per call", "{:.2f}")])])


def main(argv: list[str] | None = None) -> dict:
    p = common.parser(__doc__.split("\n\n")[0])
    p.add_argument("--samplers", nargs="+", default=list(SAMPLERS), choices=list(SAMPLERS))
    p.add_argument("--steps", nargs="+", type=int, default=None, help="default 50 250 1000 (quick 2 4)")
    p.add_argument("--batch-sizes", nargs="+", type=int, default=None, help="images per sampler call (default 128; quick 8)")
    p.add_argument("--repeats", type=int, default=None, help="timed calls per setting (default 3; quick 1)")
    p.add_argument("--width", type=int, default=None, help="model.width (default: the config's; quick 16)")
    args = p.parse_args(argv)
    args.steps = args.steps or ([2, 4] if args.quick else [50, 250, 1000])
    args.batch_sizes = args.batch_sizes or ([8] if args.quick else [128])
    args.repeats = args.repeats or (1 if args.quick else 3)
    args.width = args.width or (16 if args.quick else None)
    device = common.setup(args)
    info = common.machine(device)
    path = common.output_path(NAME, device, args)
    payload = {"benchmark": NAME, "command": common.command_line("sampling_throughput.py", argv), "quick": args.quick,
               "machine": info, "settings": {"batch_sizes": args.batch_sizes, "steps": args.steps,
                                             "repeats": args.repeats,
                                             **common.built_network_summary(args.config, width=args.width,
                                                                            extra=args.set)},
               "complete": False, "results": []}

    def emit(rows):  # after every setting: a run stopped early keeps what it measured
        payload["results"] = rows
        common.write_json(path, payload)

    with torch.no_grad():
        rows, source = measure(args, device, emit)
    payload["settings"]["config_source"], payload["complete"] = source, True
    emit(rows)
    print(report(payload))
    print(f"\nwritten {path}")
    return payload


if __name__ == "__main__":
    main()
