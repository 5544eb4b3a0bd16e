"""Training throughput (images/s): DiffusionModule under a real ``lightning.Trainer`` against a bare PyTorch loop
that trains the same network on the same loss, in one process, interleaved, per parameterization.

Both arms: the default run (UNet of conf/model/unet.yaml on 1x8x8 digits, adaptive schedule, sigmoid weighting,
``diffusion_loss`` with low-discrepancy times, AdamW with linear warm-up, gradient clipping at 1.0, EMA with warm-up);
the module also does the default recipe's own extra work (the adaptive schedule's per-step statistic update,
train/bpd every ``log_every_n_steps``). The bare loop is a hand-written ``for`` over the training split held as one
tensor on the device; the module arm is ``trainer.fit`` with the datamodule of the config and the non-finite guard
callback (no logger, checkpoints, progress bar or validation). Only steady-state steps are timed: from the start of
step ``warmup`` to the start of step ``steps``
(synchronised), so each timed step includes data loading, forward, backward, clipping, optimizer, LR and EMA.

An ablation (``--ablation``, default on) adds the module's extra per-step work to the bare loop one piece at a
time (the datamodule's batches, on the device or through the host DataLoader, the logging-only train/bpd terms, the
non-finite checks) to show where any gap goes. Each row reports the peak GPU memory of both arms (on a CPU: the
process's peak RSS). ``--networks cifar`` adds the CIFAR-size UNet (benchmarks/common.py:CIFAR_NETWORK) on random
3x32x32 images (no ablation).

    python benchmarks/train_throughput.py [--device auto|cpu|cuda] [--batch-sizes 128 1024] [--networks default cifar]

Steps of a few tens of milliseconds on a shared machine vary by +-10 % from run to run, far beyond the gap being
measured: the ratio is the median of the paired (adjacent, alternating) runs' ratios, reported with a
distribution-free interval for that median (``common.median_interval``); read a goal against the interval, from
enough pairs (``--repeats 9 --steps 110``) for it to be a 95 % one.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from lightning.pytorch.callbacks import Callback

from benchmarks import common
from vdmlab.callbacks.nonfinite import NonFiniteGuard
from vdmlab.data.device import DeviceBatches
from vdmlab.diffusion.likelihood import bits_per_dim
from vdmlab.diffusion.losses import diffusion_loss, low_discrepancy_times
from vdmlab.optim import EMA, linear_warmup

NAME = "train_throughput"
ABLATIONS = ("dataloader", "host_dataloader", "bpd_terms", "nonfinite_checks")


def training_tensor(datamodule, device: torch.device) -> torch.Tensor:
    """The training split as one float tensor [N, C, H, W] on ``device`` (the values the datamodule yields)."""
    datamodule.setup()
    data = datamodule.train_set
    return torch.stack([data[i] for i in range(len(data))]).to(device)


def bare_loop(built: common.Built, device: torch.device, steps: int, warmup: int,
              extras: frozenset[str] = frozenset()) -> dict:
    """Train ``built.module.net`` with a hand-written loop; seconds of the steps [warmup, steps).

    ``extras`` adds the module's per-step work: ``dataloader`` (the datamodule's training batches as the module gets
    them: with ``dataset.on_device=auto`` gathered on the device), ``host_dataloader`` (the DataLoader of
    ``dataset.on_device=false``, batches moved to the device), ``bpd_terms`` (prior + decoder terms and bits/dim of
    the train/bpd log), ``nonfinite_checks`` (the loss and gradient checks of ``training_step`` and
    ``on_before_optimizer_step``).
    """
    module = built.module.to(device)
    net, schedule, weighting, param = module.net, module.schedule, module.weighting, module.parameterization
    net.train()
    optimizer = torch.optim.AdamW(net.parameters(), lr=1.0e-3, betas=(0.9, 0.99), weight_decay=0.0)
    lr_schedule = linear_warmup(optimizer, warmup_steps=200)
    ema = EMA(net, 0.999, True).to(device)
    generator = torch.Generator(device=device).manual_seed(0)
    batch_size = built.datamodule.batch_size
    loader = None
    if extras & {"dataloader", "host_dataloader"}:
        built.datamodule.on_device = "false" if "host_dataloader" in extras else built.datamodule.on_device
        loader = built.datamodule.train_dataloader()
        if isinstance(loader, DeviceBatches):  # without a trainer the datamodule cannot know the device: give it
            loader = DeviceBatches(built.datamodule.train_set, batch_size, loader.sampler, device, drop_last=True)
    data = training_tensor(built.datamodule, device) if loader is None else None
    common.reset_peak_memory(device)
    order_gen = torch.Generator().manual_seed(0)
    step, start, epoch, losses = 0, None, 0, []
    while step <= steps:
        if loader is not None:
            loader.sampler.set_epoch(epoch)
            batches = (x.to(device, non_blocking=True) for x in loader)
        else:
            order = torch.randperm(data.shape[0], generator=order_gen).to(device)
            batches = (data[order[i:i + batch_size]] for i in range(0, data.shape[0] - batch_size + 1, batch_size))
        for x in batches:
            if step == warmup:
                common.sync(device)
                start = time.perf_counter()
            if step == steps:
                common.sync(device)
                return {"seconds": time.perf_counter() - start, "steps": steps - warmup, "losses": losses,
                        "peak_mib": common.peak_memory_mib(device)}
            t = low_discrepancy_times(batch_size, generator=generator, device=device)
            eps = torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype)
            terms = diffusion_loss(x, t, eps, net=net, schedule=schedule, weighting=weighting, parameterization=param)
            loss = terms.loss.mean()
            if "nonfinite_checks" in extras and not torch.isfinite(loss):
                raise RuntimeError("non-finite loss")
            if "bpd_terms" in extras:
                with torch.no_grad():
                    prior, reconstruction = module._endpoint_terms(x, generator)
                    bits_per_dim(terms.elbo + prior + reconstruction, module.data_dim).mean()
                    terms.loss.var()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if "nonfinite_checks" in extras:
                module.on_before_optimizer_step(optimizer)
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            optimizer.step()
            lr_schedule.step()
            ema.update(net)
            if step == steps - 1:
                losses.append(float(loss.detach()))
            step += 1
        epoch += 1
    raise AssertionError("unreachable")


class StepTimer(Callback):
    """Records (synchronised) ``perf_counter`` at the start of steps ``first`` and ``last``, and every loss."""

    def __init__(self, first: int, last: int, device: torch.device):
        self.first, self.last, self.device = first, last, device
        self.times: dict[int, float] = {}
        self.losses: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step in (self.first, self.last):
            common.sync(self.device)
            self.times[trainer.global_step] = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if isinstance(outputs, dict) and "loss" in outputs:
            self.losses.append(outputs["loss"].detach())

    def seconds(self) -> float:
        return self.times[self.last] - self.times[self.first]


def lightning_run(built: common.Built, device: torch.device, steps: int, warmup: int, precision: str = "32-true") -> dict:
    """``trainer.fit`` of the DiffusionModule for ``steps + 1`` steps; seconds of the steps [warmup, steps)."""
    timer = StepTimer(warmup, steps, device)
    # the non-finite guard runs in every ``python train.py`` (its good.ckpt needs validation, which is off here)
    guard = NonFiniteGuard(dirpath=None)
    trainer = common.make_trainer(device, max_steps=steps + 1, precision=precision, callbacks=[timer, guard])
    common.reset_peak_memory(device)
    start = time.perf_counter()
    trainer.fit(built.module, datamodule=built.datamodule)
    fit_seconds = time.perf_counter() - start
    losses = [float(v) for v in timer.losses]
    return {"seconds": timer.seconds(), "steps": steps - warmup, "losses": losses, "fit_seconds": fit_seconds,
            "peak_mib": common.peak_memory_mib(device),
            "on_device": built.datamodule.on_device_reasons.get("train", "")}


def images_per_s(run: dict, batch_size: int) -> float:
    return run["steps"] * batch_size / run["seconds"]


def measure(args, device, batch_size: int, network: str = "default") -> dict:
    """Interleaved bare / Lightning runs per parameterization at one batch size; medians and paired ratios."""
    build = lambda p: common.build_default(args.config, network=network, parameterization=p, batch_size=batch_size,
                                           width=args.width, extra=args.set)
    rows, ablation, source = [], [], None
    runs = {p: {"bare": [], "lightning": [], "bare_peak": [], "lightning_peak": []} for p in args.parameterizations}
    for r in range(args.repeats):
        for p in args.parameterizations:
            arms = ("bare", "lightning") if r % 2 == 0 else ("lightning", "bare")  # alternate who goes first
            for arm in arms:
                built = build(p)
                source = built.source
                run = (bare_loop(built, device, args.steps, args.warmup) if arm == "bare"
                       else lightning_run(built, device, args.steps, args.warmup))
                runs[p][arm].append(images_per_s(run, batch_size))
                runs[p][f"{arm}_peak"].append(run["peak_mib"])
                runs[p]["on_device"] = run.get("on_device", runs[p].get("on_device"))
                runs[p][f"{arm}_loss"] = run["losses"][-1] if run["losses"] else math.nan
    for p in args.parameterizations:
        bare, lit = runs[p]["bare"], runs[p]["lightning"]
        rows.append({
            "network": network, "batch_size": batch_size, "parameterization": p,
            "bare_peak_mib": max(runs[p]["bare_peak"]), "lightning_peak_mib": max(runs[p]["lightning_peak"]),
            "on_device": runs[p]["on_device"],
            "bare_images_per_s": common.median(bare), "lightning_images_per_s": common.median(lit),
            "ratio": common.median(l / b for l, b in zip(lit, bare)),
            **dict(zip(("ratio_low", "ratio_high", "ratio_coverage"),
                       common.median_interval(l / b for l, b in zip(lit, bare)))),
            "bare_runs": bare, "lightning_runs": lit,
            "bare_final_loss": runs[p]["bare_loss"], "lightning_final_loss": runs[p]["lightning_loss"],
        })
    if args.ablation and network == "default":
        variants = [("bare", frozenset())] + [(f"bare + {e}", frozenset([e])) for e in ABLATIONS]
        variants.append(("bare + all three", frozenset(ABLATIONS) - {"host_dataloader"}))  # what the module does
        times = {name: [] for name, _ in variants}
        times["lightning"] = []
        for _ in range(args.repeats):
            for name, extras in variants:
                times[name].append(images_per_s(bare_loop(build("eps"), device, args.steps, args.warmup, extras),
                                                batch_size))
            times["lightning"].append(images_per_s(lightning_run(build("eps"), device, args.steps, args.warmup),
                                                   batch_size))
        base_ms = 1e3 * batch_size / common.median(times["bare"])
        for name in [n for n, _ in variants] + ["lightning"]:
            ips = common.median(times[name])
            ms = 1e3 * batch_size / ips
            ablation.append({"batch_size": batch_size, "variant": name, "images_per_s": ips,
                             "ms_per_step": ms, "extra_ms_per_step": ms - base_ms, "runs": times[name]})
    energy = {}
    by_p = {r["parameterization"]: r for r in rows}
    if "eps" in by_p and "energy" in by_p:
        energy[str(batch_size)] = {arm: by_p["eps"][f"{arm}_images_per_s"] / by_p["energy"][f"{arm}_images_per_s"]
                                   for arm in ("bare", "lightning")}
    return {"rows": rows, "ablation": ablation, "energy_cost": energy, "config_source": source}


def report(payload: dict) -> str:
    """The markdown tables of a result."""
    memory = "peak GPU memory (MiB)" if payload["machine"]["device"] == "cuda" else "process peak RSS (MiB)"
    out = [f"Training throughput, {common.describe(payload['machine'])}", "", common.markdown_table(payload["results"], [
        ("network", "network", ""), ("batch_size", "batch", ""), ("parameterization", "parameterization", ""),
        ("bare_images_per_s", "bare loop (img/s)", "{:,.0f}"),
        ("lightning_images_per_s", "DiffusionModule + Trainer (img/s)", "{:,.0f}"), ("ratio", "ratio", "{:.2f}"),
        ("ratio_low", "ratio interval (low)", "{:.2f}"), ("ratio_high", "ratio interval (high)", "{:.2f}"),
        ("ratio_coverage", "interval coverage", "{:.0%}"),
        ("bare_peak_mib", f"bare {memory}", "{:,.0f}"), ("lightning_peak_mib", f"module {memory}", "{:,.0f}")])]
    for b, cost in payload["energy_cost"].items():
        out.append(f"\nenergy vs eps at batch {b}: {cost['bare']:.2f}x the time per image in the bare loop, "
                   f"{cost['lightning']:.2f}x with the module")
    if payload["ablation"]:
        out += ["\nWhere the time goes (eps): the bare loop with the module's extra work added", "",
                common.markdown_table(payload["ablation"], [
                    ("batch_size", "batch", ""), ("variant", "variant", ""), ("images_per_s", "img/s", "{:,.0f}"),
                    ("ms_per_step", "ms/step", "{:.2f}"), ("extra_ms_per_step", "vs bare (ms/step)", "{:+.2f}")])]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> dict:
    p = common.parser(__doc__.split("\n\n")[0])
    p.add_argument("--parameterizations", nargs="+", default=list(common.PARAMETERIZATIONS),
                   choices=common.PARAMETERIZATIONS)
    p.add_argument("--batch-sizes", nargs="+", type=int, default=None, help="default 128 (config's batch size)")
    p.add_argument("--steps", type=int, default=None, help="steps per run, warm-up included (default 40; quick 5)")
    p.add_argument("--warmup", type=int, default=None, help="untimed first steps (default 10; quick 2)")
    p.add_argument("--repeats", type=int, default=None, help="interleaved repeats (default 3; quick 1)")
    p.add_argument("--width", type=int, default=None, help="model.width (default: the config's; quick 16)")
    p.add_argument("--networks", nargs="+", default=["default"], choices=common.NETWORKS,
                   help="default: conf/model/unet.yaml on digits; cifar: the CIFAR-size UNet on random 3x32x32 images")
    p.add_argument("--ablation", action=argparse.BooleanOptionalAction, default=True,
                   help="time the bare loop with the module's extras added one at a time (eps)")
    args = p.parse_args(argv)
    quick = args.quick
    args.batch_sizes = args.batch_sizes or ([8] if quick else [128])
    args.steps = args.steps or (5 if quick else 40)
    args.warmup = args.warmup if args.warmup is not None else (2 if quick else 10)
    args.repeats = args.repeats or (1 if quick else 3)
    args.width = args.width or (16 if quick else None)
    if not 0 < args.warmup < args.steps:
        raise SystemExit("--warmup must be in (0, --steps)")
    device = common.setup(args)
    info = common.machine(device)
    result = {"rows": [], "ablation": [], "energy_cost": {}}
    path = common.output_path(NAME, device, args)
    for network, batch_size in [(n, b) for n in args.networks for b in args.batch_sizes]:
        part = measure(args, device, batch_size, network)
        for key in result:
            result[key] = {**result[key], **part[key]} if isinstance(result[key], dict) else result[key] + part[key]
        payload = {
            "benchmark": NAME, "command": common.command_line("train_throughput.py", argv), "quick": quick,
            "machine": info, "load_average_1min_end": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
            "settings": {"batch_sizes": args.batch_sizes, "steps": args.steps, "warmup": args.warmup,
                         "timed_steps": args.steps - args.warmup, "repeats": args.repeats,
                         "networks_built": {n: common.built_network_summary(args.config, network=n, width=args.width,
                                                                            extra=args.set)
                                            for n in args.networks},
                         "config_source": part["config_source"]},
            "networks": args.networks, "complete": (network, batch_size) == (args.networks[-1], args.batch_sizes[-1]),
            "goal_ratio": 0.95,
            "min_ratio": min(r["ratio"] for r in result["rows"]),
            "results": result["rows"], "energy_cost": result["energy_cost"], "ablation": result["ablation"],
        }
        common.write_json(path, payload)  # after every batch size: a run stopped early keeps what it measured
    print(report(payload))
    print(f"\nwritten {path}")
    return payload


if __name__ == "__main__":
    main()
