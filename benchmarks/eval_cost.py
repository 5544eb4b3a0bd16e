"""Evaluation cost: seconds per 1,000 examples of the full ELBO in bits/dim (``vdmlab.metrics.bpd.evaluate_bpd``,
the path of ``python eval.py``: counter-based per-example noise, eval batch size of the config, batches gathered on
the device as ``dataset.on_device=auto`` does; ``--loader dataloader`` for the host DataLoader) at 1, 8 and 32
low-discrepancy λ draws per example, with the resulting bits/dim and its standard error on the test split.

The standard error depends on the model, so the default network is first trained for ``--train-steps`` steps
with the DiffusionModule and a Lightning trainer (or a checkpoint of ``python train.py`` is loaded with
``--ckpt``); its EMA weights are evaluated.

    python benchmarks/eval_cost.py [--device auto|cpu|cuda] [--num-samples 1 8 32] [--train-steps 500] [--examples 10000]
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from torch.utils.data import DataLoader

from benchmarks import common
from vdmlab.data.base import EpochSampler, LevelDataset, UniqueIndexDataset
from vdmlab.data.device import DeviceBatches
from vdmlab.metrics.bpd import evaluate_bpd

NAME = "eval_cost"


def trained_run(args, device) -> tuple[common.Built, int]:
    """The default run trained for ``--train-steps`` (or rebuilt from ``--ckpt``), on ``device``."""
    if args.ckpt:
        from vdmlab.cli.build import build_from_checkpoint

        run = build_from_checkpoint(args.ckpt)
        return common.Built(run.datamodule, run.module.to(device), "checkpoint"), int(run.module.ema.num_updates)
    built = common.build_default(args.config, parameterization=args.parameterization, width=args.width,
                                 batch_size=args.batch_size, extra=args.set)
    if args.train_steps:
        common.make_trainer(device, max_steps=args.train_steps).fit(built.module, datamodule=built.datamodule)
    return common.Built(built.datamodule, built.module.to(device), built.source), args.train_steps


def measure(args, device) -> tuple[list[dict], dict]:
    built, steps = trained_run(args, device)
    module, datamodule = built.module, built.datamodule
    datamodule.setup()
    dataset = getattr(datamodule, f"{args.split}_set")
    if args.examples:  # the split's images repeated to N examples, each with its own index (so its own noise)
        levels = dataset.levels
        dataset = LevelDataset(levels[torch.arange(args.examples) % levels.shape[0]], dataset.num_levels)
    if args.max_examples:
        dataset = LevelDataset(dataset.levels[:args.max_examples], dataset.num_levels)
    batch_size = args.eval_batch_size or datamodule.eval_batch_size
    if args.loader == "device":  # what the datamodule's test_dataloader() gives with dataset.on_device=auto
        loader = DeviceBatches(dataset, batch_size, EpochSampler(len(dataset), shuffle=False), device, drop_last=False,
                               with_index=True)
    else:
        loader = DataLoader(UniqueIndexDataset(dataset), batch_size=batch_size, shuffle=False)
    rows = []
    for k in args.num_samples:
        results = []

        def run(k=k, results=results):
            generator = torch.Generator(device=device).manual_seed(0)
            results.append(evaluate_bpd(module.elbo_model(num_samples=k, timesteps=None), loader, generator=generator,
                                        device=device, seed=0))

        times = common.timed(run, device, warmup=1, repeats=args.repeats)
        last = results[-1]
        rows.append({"num_samples": k, "examples": last["n"], "seconds": common.median(times),
                     "seconds_per_1000": 1e3 * common.median(times) / last["n"], "bpd": last["bpd"],
                     "bpd_se": last["bpd_se"], "diffusion": last["diffusion"], "prior": last["prior"],
                     "reconstruction": last["reconstruction"], "runs": times})
    return rows, {"trained_steps": steps, "config_source": built.source, "split": args.split, "loader": args.loader,
                  "eval_batch_size": batch_size, "parameterization": module.parameterization.name}


def report(payload: dict) -> str:
    """The markdown table of a result."""
    s = payload["settings"]
    return "\n".join([
        f"Evaluation cost ({s['split']} split, {s['parameterization']}, model trained {s['trained_steps']} steps, "
        f"{s['loader']} batches of {s['eval_batch_size']}), "
        f"{common.describe(payload['machine'])}", "", common.markdown_table(payload["results"], [
            ("num_samples", "λ draws per example", ""), ("seconds_per_1000", "s per 1,000 examples", "{:.3f}"),
            ("bpd", "bits/dim", "{:.4f}"), ("bpd_se", "standard error", "{:.4f}"), ("examples", "examples", "")])])


def main(argv: list[str] | None = None) -> dict:
    p = common.parser(__doc__.split("\n\n")[0])
    p.add_argument("--num-samples", nargs="+", type=int, default=None, help="λ draws per example (default 1 8 32)")
    p.add_argument("--train-steps", type=int, default=None, help="training steps before evaluating (default 500; quick 3)")
    p.add_argument("--ckpt", default=None, help="evaluate this checkpoint of python train.py instead (needs Hydra)")
    p.add_argument("--split", default="test", choices=("train", "val", "test"))
    p.add_argument("--max-examples", type=int, default=None, help="evaluate only the first N examples (quick 16)")
    p.add_argument("--examples", type=int, default=None, help="repeat the split's images to N examples (e.g. 10000)")
    p.add_argument("--eval-batch-size", type=int, default=None, help="default: the config's (180 on digits)")
    p.add_argument("--loader", default="device", choices=("device", "dataloader"),
                   help="device: batches gathered on the device (dataset.on_device); dataloader: the host DataLoader")
    p.add_argument("--parameterization", default="eps", choices=common.PARAMETERIZATIONS)
    p.add_argument("--repeats", type=int, default=None, help="timed evaluations per setting (default 3; quick 1)")
    p.add_argument("--width", type=int, default=None, help="model.width (default: the config's; quick 16)")
    p.add_argument("--batch-size", type=int, default=None, help="training batch size (default 128; quick 8)")
    args = p.parse_args(argv)
    args.num_samples = args.num_samples or ([1, 2] if args.quick else [1, 8, 32])
    args.train_steps = args.train_steps if args.train_steps is not None else (3 if args.quick else 500)
    args.max_examples = args.max_examples or (16 if args.quick else None)
    args.repeats = args.repeats or (1 if args.quick else 3)
    args.width = args.width or (16 if args.quick else None)
    args.batch_size = args.batch_size or (8 if args.quick else None)
    device = common.setup(args)
    info = common.machine(device)
    rows, settings = measure(args, device)
    settings.update(num_samples=args.num_samples, repeats=args.repeats,
                    **common.built_network_summary(args.config, width=args.width, extra=args.set))
    payload = {"benchmark": NAME, "command": common.command_line("eval_cost.py", argv), "quick": args.quick,
               "machine": info, "settings": settings, "results": rows}
    path = common.write_json(common.output_path(NAME, device, args), payload)
    print(report(payload))
    print(f"\nwritten {path}")
    return payload


if __name__ == "__main__":
    main()
