"""The preset networks (conf/experiment/*.yaml; docs/presets.md): parameter count, training steps/s and peak memory.

One training step = ``diffusion_loss`` (ε-parameterization, linear schedule, ELBO weighting: the network dominates
the cost, the presets' schedule and weighting add little), backward, AdamW step, on random data of the preset's shape.
Each preset runs in a fresh process so that its peak memory is its own (CPU: peak resident set size of that process;
CUDA: ``torch.cuda.max_memory_allocated``). CPU: one thread, a reduced batch (``--cpu-batch``, stated in every row)
because the full batch of 128 takes minutes per step; CUDA: the preset's batch in 32-true and bf16-mixed (images/s).

    python benchmarks/preset_networks.py [--device cpu|cuda] [--presets vdm_cifar10 ...] [--cpu-batch 8] [--quick]

Writes benchmarks/results/preset_networks_<device>.json and a markdown table beside it (.md).
"""

from __future__ import annotations

import multiprocessing as mp
import resource
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from benchmarks import common

NAME = "preset_networks"
# A Hydra-free mirror of the presets' networks (the lent GPU machines lack Hydra); tests/test_preset_benchmark.py
# checks it against the composed configs.
PRESETS: dict[str, dict] = {
    "vdm_cifar10": {"data_shape": (3, 32, 32), "batch": 128, "unet": dict(
        width=128, channel_mults=(1,), num_res_blocks=32, attention_resolutions=(), dropout=0.1, groups=32,
        fourier_min_exp=6, fourier_max_exp=7, mid_attention=True, decoder=True)},
    "ddpm_cifar10": {"data_shape": (3, 32, 32), "batch": 128, "unet": dict(
        width=128, channel_mults=(1, 2, 2, 2), num_res_blocks=2, attention_resolutions=(16,), dropout=0.1, groups=32,
        fourier_min_exp=None, fourier_max_exp=None, mid_attention=True, decoder=None)},
    "vdmpp_cifar10": {"data_shape": (3, 32, 32), "batch": 128, "unet": dict(
        width=128, channel_mults=(1, 2, 2, 2), num_res_blocks=2, attention_resolutions=(16,), dropout=0.1, groups=32,
        fourier_min_exp=None, fourier_max_exp=None, mid_attention=True, decoder=None)},
    "mnist": {"data_shape": (1, 28, 28), "batch": 128, "unet": dict(
        width=64, channel_mults=(1, 2, 2), num_res_blocks=2, attention_resolutions=(14,), dropout=0.1, groups=8,
        fourier_min_exp=6, fourier_max_exp=7, mid_attention=True, decoder=None)},
}
PRECISIONS = ("32-true", "bf16-mixed")


def build_net(name: str):
    from vdmlab.models import UNet

    spec = PRESETS[name]
    return UNet(data_shape=spec["data_shape"], **spec["unet"])


def train_step_fn(net, batch: int, data_shape, device: torch.device, precision: str):
    """A closure running one full training step (loss, backward, AdamW) at ``batch``."""
    from vdmlab.diffusion.losses import diffusion_loss, low_discrepancy_times
    from vdmlab.diffusion.parameterization import EpsParameterization
    from vdmlab.diffusion.schedules import LinearSchedule
    from vdmlab.diffusion.weighting import ELBOWeighting

    net = net.to(device).train()
    optimizer = torch.optim.AdamW(net.parameters(), lr=2e-4)
    schedule, weighting, param = LinearSchedule(-5.0, 13.28), ELBOWeighting(), EpsParameterization()
    generator = torch.Generator(device=device).manual_seed(0)
    x = (torch.randint(0, 256, (batch, *data_shape), device=device, generator=generator).float() / 127.5 - 1.0)
    autocast = precision == "bf16-mixed"

    def step():
        t = low_discrepancy_times(batch, generator=generator, device=device)
        eps = torch.randn(x.shape, device=device, generator=generator)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=autocast):
            terms = diffusion_loss(x, t, eps, net=net, schedule=schedule, weighting=weighting, parameterization=param)
        optimizer.zero_grad(set_to_none=True)
        terms.loss.float().mean().backward()
        optimizer.step()

    return step


def measure(name: str, device_type: str, batch: int, precision: str, repeats: int, threads: int | None) -> dict:
    """Parameter count, median seconds per step and peak memory of one preset (run in its own process)."""
    if threads:
        torch.set_num_threads(threads)
    device = torch.device(device_type)
    net = build_net(name)
    params = sum(p.numel() for p in net.parameters())
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    step = train_step_fn(net, batch, PRESETS[name]["data_shape"], device, precision)
    times = common.timed(step, device, warmup=1, repeats=repeats)
    seconds = common.median(times)
    peak = (torch.cuda.max_memory_allocated(device) if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)  # Linux: KiB
    return {"preset": name, "params": params, "params_m": params / 1e6, "batch": batch, "precision": precision,
            "seconds_per_step": seconds, "steps_per_s": 1.0 / seconds, "images_per_s": batch / seconds,
            "peak_memory_mib": peak / 2**20, "repeats": repeats}


def _child(queue, *args) -> None:
    try:
        queue.put(measure(*args))
    except Exception as err:  # reported in the row, the other presets still run
        queue.put({"preset": args[0], "error": f"{type(err).__name__}: {err}"})


def in_fresh_process(*args) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(queue, *args))
    proc.start()
    row = queue.get()
    proc.join()
    return row


COLUMNS = [("preset", "preset", ""), ("params_m", "params (M)", "{:.2f}"), ("batch", "batch", ""),
           ("precision", "precision", ""), ("steps_per_s", "steps/s", "{:.3f}"), ("images_per_s", "images/s", "{:.1f}"),
           ("peak_memory_mib", "peak memory (MiB)", "{:.0f}"), ("note", "note", "")]


def main(argv=None) -> dict:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--presets", nargs="+", default=list(PRESETS), choices=list(PRESETS))
    p.add_argument("--cpu-batch", type=int, default=8, help="reduced batch on CPU (the presets train at 128)")
    p.add_argument("--repeats", type=int, default=3, help="timed steps per row (after one warm-up step)")
    args = p.parse_args(argv)
    if args.threads is None and args.device == "cpu":
        args.threads = 1
    device = common.setup(args)
    repeats = 1 if args.quick else args.repeats
    rows = []
    for name in args.presets:
        full = PRESETS[name]["batch"]
        if device.type == "cuda":
            for precision in PRECISIONS:
                rows.append({**in_fresh_process(name, "cuda", full, precision, repeats, args.threads), "note": ""})
        else:
            batch = 2 if args.quick else args.cpu_batch
            row = in_fresh_process(name, "cpu", batch, "32-true", repeats, args.threads)
            rows.append({**row, "note": f"CPU, {args.threads} thread(s), batch {batch} of {full}"})
            for precision in PRECISIONS:
                rows.append({"preset": name, "params_m": row.get("params_m"), "batch": full, "precision": precision,
                             "note": "GPU: not measured (no GPU in this run; python benchmarks/preset_networks.py "
                                     "--device cuda)"})
        print(rows[-1] if device.type == "cuda" else rows[-3], flush=True)
    table = common.markdown_table(rows, COLUMNS)
    payload = {"benchmark": NAME, "quick": bool(args.quick), "command": common.command_line("preset_networks.py", argv),
               "machine": common.machine(device), "rows": rows, "table": table}
    out = common.output_path(NAME, device, args)
    common.write_json(out, payload)
    out.with_suffix(".md").write_text(f"{common.describe(payload['machine'])}\n\n`{payload['command']}`\n\n{table}\n")
    print(table)
    return payload


if __name__ == "__main__":
    main()
