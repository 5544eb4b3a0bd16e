"""vdmlab's ``ddpm_cifar10`` network against diffusers' ``UNet2DModel`` of the same architecture: one training step each.

Both networks are Ho et al. (2020)'s CIFAR-10 U-Net (35.75 M parameters): vdmlab's ``UNet`` as
conf/experiment/ddpm_cifar10.yaml builds it (benchmarks/preset_networks.py's mirror of it), and diffusers'
``UNet2DModel`` from the config of the ``google/ddpm-cifar10-32`` checkpoint (:data:`DIFFUSERS_DDPM_CIFAR10`, written
out here: nothing is downloaded). The parameter counts are checked to be equal before anything is timed.

One step = forward on the same noisy batch (vdmlab conditions on λ, diffusers on the timestep), the ε-MSE loss,
backward, an Adam step (lr 2e-4, DDPM's). Dropout 0.1 in both (DDPM's CIFAR-10 value). The two arms run in one
process, interleaved A B A B (one warm-up step each first), with the same batch, threads and configuration; the
table gives each arm's median seconds per step and the median of the paired ratios diffusers/vdmlab (> 1: vdmlab
faster). A configuration (``--options``) applies to both arms: ``32-true``, ``bf16-mixed`` (autocast), ``channels_last``,
``compile`` (``torch.compile`` of the network) and ``+`` combinations. Then vdmlab's fastest configuration is paired
against diffusers' eager 32-true step. Peak memory: CUDA, ``torch.cuda.max_memory_allocated`` of each arm's step
(window reset before it); CPU, the peak RSS of a fresh process that builds one arm and runs two steps (VmHWM, reset
after the imports), less that process's RSS after importing torch, diffusers and vdmlab (``--no-memory`` skips it).

    python benchmarks/unet_vs_diffusers.py --device cpu --threads 1 --batch 8 --pairs 5
    python benchmarks/unet_vs_diffusers.py --device cuda --batch 128 --pairs 10

Writes benchmarks/results/unet_vs_diffusers_<device>.json. Needs ``pip install diffusers`` (the dev extras).
"""

from __future__ import annotations

import multiprocessing as mp
import resource
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import torch.nn.functional as F

from benchmarks import common
from benchmarks.preset_networks import PRESETS

NAME = "unet_vs_diffusers"
# google/ddpm-cifar10-32's unet/config.json (diffusers' conversion of Ho et al.'s CIFAR-10 checkpoint).
DIFFUSERS_DDPM_CIFAR10 = {
    "sample_size": 32, "in_channels": 3, "out_channels": 3, "center_input_sample": False,
    "time_embedding_type": "positional", "freq_shift": 1, "flip_sin_to_cos": False,
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
    "block_out_channels": [128, 256, 256, 256], "layers_per_block": 2, "mid_block_scale_factor": 1,
    "downsample_padding": 0, "act_fn": "silu", "attention_head_dim": None, "norm_num_groups": 32, "norm_eps": 1e-6,
}
DROPOUT = 0.1  # DDPM's CIFAR-10 dropout, in both networks
QUICK_WIDTH = 32  # --quick: both networks at a quarter of the width (same architecture otherwise)
ARMS = ("vdmlab", "diffusers")


def build(arm: str, width: int = 128):
    """The network of one arm at base width ``width`` (128: the real size)."""
    if arm == "vdmlab":
        from vdmlab.models import UNet

        spec = PRESETS["ddpm_cifar10"]
        return UNet(data_shape=spec["data_shape"], **{**spec["unet"], "width": width, "dropout": DROPOUT})
    try:
        from diffusers import UNet2DModel
    except ImportError as err:
        raise SystemExit("benchmarks/unet_vs_diffusers.py needs diffusers: pip install diffusers "
                         "(or pip install -e '.[dev]')") from err
    scale = [c * width // 128 for c in DIFFUSERS_DDPM_CIFAR10["block_out_channels"]]
    return UNet2DModel(**{**DIFFUSERS_DDPM_CIFAR10, "block_out_channels": scale, "dropout": DROPOUT})


def parameters(net) -> int:
    return sum(p.numel() for p in net.parameters())


def parse_option(option: str) -> dict:
    parts = {p.strip() for p in option.split("+")}
    known = {"32-true", "bf16-mixed", "channels_last", "compile"}
    if parts - known:
        raise SystemExit(f"--options {option!r}: unknown part(s) {sorted(parts - known)}; choose from {sorted(known)}")
    return {"bf16": "bf16-mixed" in parts, "channels_last": "channels_last" in parts, "compile": "compile" in parts}


def make_step(arm: str, net, batch: int, device: torch.device, option: str, seed: int = 0):
    """A closure running one training step of ``net`` in configuration ``option`` on a fixed random batch."""
    opts = parse_option(option)
    fmt = torch.channels_last if opts["channels_last"] else torch.contiguous_format
    net = net.to(device, memory_format=fmt).train()
    optimizer = torch.optim.Adam(net.parameters(), lr=2e-4)
    forward = torch.compile(net) if opts["compile"] else net
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randint(0, 256, (batch, 3, 32, 32), generator=gen).float() / 127.5 - 1.0)
    eps = torch.randn(x.shape, generator=gen)
    timesteps = torch.randint(0, 1000, (batch,), generator=gen)
    alpha_bar = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0)[timesteps]
    logsnr = torch.log(alpha_bar / (1 - alpha_bar)).float()  # λ of DDPM's linear β at those steps
    z = (alpha_bar.sqrt().float()[:, None, None, None] * x + (1 - alpha_bar).sqrt().float()[:, None, None, None] * eps)
    z, eps = z.to(device, memory_format=fmt), eps.to(device, memory_format=fmt)
    cond = (logsnr if arm == "vdmlab" else timesteps).to(device)

    def step():
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=opts["bf16"]):
            out = forward(z, cond)
            out = out if arm == "vdmlab" else out.sample
        loss = F.mse_loss(out.float(), eps)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss

    return step


def timed_step(step, device: torch.device) -> float:
    common.sync(device)
    start = time.perf_counter()
    step()
    common.sync(device)
    return time.perf_counter() - start


def peak_in_fresh_process(arm: str, width: int, batch: int, option: str, threads: int | None) -> float:
    """Peak RSS (MiB) of a fresh CPU process that builds ``arm`` and runs two steps, less its RSS after the imports."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_memory_child, args=(queue, arm, width, batch, option, threads))
    proc.start()
    value = queue.get()
    proc.join()
    return value


def _current_rss_mib() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize() / 2**20


def _peak_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**10  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10


def _memory_child(queue, arm, width, batch, option, threads) -> None:
    try:
        if threads:
            torch.set_num_threads(threads)
        import diffusers  # noqa: F401 - imported before the baseline in both arms

        import vdmlab.models  # noqa: F401

        baseline = _current_rss_mib()
        Path("/proc/self/clear_refs").write_text("5")  # Linux: reset the peak RSS (VmHWM) to the current RSS
        step = make_step(arm, build(arm, width), batch, torch.device("cpu"), option)
        step()
        step()
        queue.put(_peak_rss_mib() - baseline)
    except Exception as err:  # the timing rows still stand
        print(f"peak memory of {arm} {option}: {type(err).__name__}: {err}", file=sys.stderr)
        queue.put(float("nan"))


def pair(arms: dict, pairs: int, device: torch.device) -> dict:
    """Interleave the steps of the two arms ``{name: step}``: one warm-up each, then ``pairs`` rounds A B."""
    names = list(arms)
    warmup = {}
    for name in names:  # the warm-up includes torch.compile's compilation
        warmup[name] = timed_step(arms[name], device)
    times = {name: [] for name in names}
    for _ in range(pairs):
        for name in names:
            times[name].append(timed_step(arms[name], device))
    a, b = names
    ratios = [tb / ta for ta, tb in zip(times[a], times[b])]
    return {"times": times, "warmup_s": warmup, "median_s": {n: common.median(times[n]) for n in names},
            "ratio": common.median(ratios), "ratios": ratios}


def cuda_peak(step, device: torch.device) -> float:
    common.reset_peak_memory(device)
    step()
    return common.peak_memory_mib(device)


COLUMNS = [("option", "configuration", ""), ("vdmlab_arm", "vdmlab", ""), ("diffusers_arm", "diffusers", ""),
           ("batch", "batch", ""), ("vdmlab_s", "vdmlab s/step", "{:.3f}"), ("diffusers_s", "diffusers s/step", "{:.3f}"),
           ("ratio", "ratio diffusers/vdmlab", "{:.3f}"), ("vdmlab_peak_mib", "vdmlab peak MiB", "{:.0f}"),
           ("diffusers_peak_mib", "diffusers peak MiB", "{:.0f}"), ("pairs", "pairs", "")]


def main(argv=None) -> dict:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=None, help="batch (default: 8 on CPU, 128 on CUDA)")
    p.add_argument("--pairs", type=int, default=5, help="timed A B rounds per configuration")
    p.add_argument("--options", nargs="+", default=None,
                   help="configurations (default CPU: 32-true channels_last bf16-mixed compile; CUDA: also "
                        "'bf16-mixed + channels_last' and 'bf16-mixed + compile')")
    p.add_argument("--no-memory", action="store_true", help="CPU: skip the fresh-process peak RSS")
    args = p.parse_args(argv)
    device = common.setup(args)
    width = QUICK_WIDTH if args.quick else 128
    batch = args.batch or (2 if args.quick else 8 if device.type == "cpu" else 128)
    pairs = 1 if args.quick else args.pairs
    options = args.options or (["32-true"] if args.quick else ["32-true", "channels_last", "bf16-mixed", "compile"]
                               if device.type == "cpu" else
                               ["32-true", "bf16-mixed", "channels_last", "bf16-mixed + channels_last", "compile",
                                "bf16-mixed + compile"])
    for option in options:
        parse_option(option)
    counts = {arm: parameters(build(arm, width)) for arm in ARMS}
    if counts["vdmlab"] != counts["diffusers"]:
        raise SystemExit(f"parameter counts differ: {counts}: the two networks are not the same architecture")
    print(f"parameters: vdmlab {counts['vdmlab']:,}, diffusers {counts['diffusers']:,}; batch {batch}, "
          f"{torch.get_num_threads()} thread(s), {device}", flush=True)
    payload = {"benchmark": NAME, "quick": bool(args.quick), "command": common.command_line("unet_vs_diffusers.py", argv),
               "machine": common.machine(device), "params": counts, "batch": batch, "width": width, "rows": []}
    out = common.output_path(NAME, device, args)

    def memory(arm: str, option: str, step) -> float | None:
        if device.type == "cuda":
            return cuda_peak(step, device)
        if args.no_memory:
            return None
        return peak_in_fresh_process(arm, width, batch, option, args.threads)

    def run(option_a: str, option_b: str) -> dict:
        torch.manual_seed(0)
        steps = {"vdmlab": make_step("vdmlab", build("vdmlab", width), batch, device, option_a),
                 "diffusers": make_step("diffusers", build("diffusers", width), batch, device, option_b)}
        result = pair(steps, pairs, device)
        row = {"option": option_a if option_a == option_b else f"vdmlab {option_a} / diffusers {option_b}",
               "vdmlab_arm": option_a, "diffusers_arm": option_b, "batch": batch, "pairs": pairs,
               "vdmlab_s": result["median_s"]["vdmlab"], "diffusers_s": result["median_s"]["diffusers"],
               "ratio": result["ratio"], "ratio_interval": list(common.median_interval(result["ratios"])),
               "ratios": result["ratios"], "times": result["times"],
               "warmup_s": result["warmup_s"]}
        row["vdmlab_peak_mib"] = memory("vdmlab", option_a, steps["vdmlab"])
        row["diffusers_peak_mib"] = memory("diffusers", option_b, steps["diffusers"])
        payload["rows"].append(row)
        common.write_json(out, payload)  # saved as it goes
        print({k: row[k] for k in ("option", "vdmlab_s", "diffusers_s", "ratio")}, flush=True)
        return row

    for option in options:
        try:
            run(option, option)
        except Exception as err:  # e.g. compile without a C++ compiler: reported, the other rows still run
            payload["rows"].append({"option": option, "vdmlab_arm": option, "diffusers_arm": option,
                                    "error": f"{type(err).__name__}: {err}"})
            print(f"{option}: {type(err).__name__}: {err}", flush=True)
    timed_rows = [r for r in payload["rows"] if "error" not in r]
    if timed_rows and len(options) > 1:
        best = min(timed_rows, key=lambda r: r["vdmlab_s"])["vdmlab_arm"]
        payload["vdmlab_fastest"] = best
        if best != "32-true":  # else the 32-true row is already that pairing
            run(best, "32-true")
    return common.finish(out, payload, COLUMNS)


if __name__ == "__main__":
    main()
