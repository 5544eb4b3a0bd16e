"""Shared pieces of the benchmarks: command-line arguments, device choice, timing (warm-up, CUDA synchronisation,
median of repeats), the machine description, building the default run, a Lightning trainer, tables and JSON.

The default run is ``python train.py``'s: conf/train.yaml composed by Hydra and built by
``vdmlab.cli.build.build_run``. Where Hydra is not installed (the lent GPU machines lack hydra-core and omegaconf)
the same objects are built directly in Python by :func:`build_python`, a mirror of the config's defaults that
``tests/test_benchmarks.py`` checks against the composed config, so that both routes build identical runs.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import math
import os
import platform
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
try:
    import vdmlab  # noqa: F401
except ImportError:  # a checkout that is not pip-installed (e.g. the lent GPU machines): use its src/
    import sys

    sys.path.insert(0, str(REPO / "src"))
from vdmlab.analysis.report import markdown_table as markdown  # noqa: E402 - after the src/ fallback above
from vdmlab.cli.common import pick_device  # noqa: E402 - after the src/ fallback above

RESULTS_DIR = REPO / "benchmarks" / "results"
PARAMETERIZATIONS = ("x", "eps", "score", "energy", "v", "flow")


# ------------------------------------------------------------------ arguments and device
def parser(description: str) -> argparse.ArgumentParser:
    """An argument parser with the options every benchmark shares."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="auto: cuda when available")
    p.add_argument("--quick", action="store_true", help="tiny smoke run (seconds): tiny model, few steps")
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/<name>_<device>[_quick].json)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--config", default="auto", choices=("auto", "hydra", "python"),
                   help="how the default run is built: Hydra compose (auto when installed) or the Python mirror")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", dest="set",
                   help="further python train.py overrides for the run built (Hydra route only), e.g. "
                        "model.width=64 model.num_res_blocks=4")
    return p


def setup(args: argparse.Namespace) -> torch.device:
    """Device, threads and the float32 matmul precision that ``python train.py`` sets; quieter Lightning."""
    device = pick_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_float32_matmul_precision("high")  # as vdmlab.cli.train.run
    torch.backends.cudnn.benchmark = device.type == "cuda"  # conf/trainer/gpu.yaml: benchmark: true (both arms)
    quiet()
    return device


def quiet() -> None:
    """Silence Lightning's start-up banners and the warnings that a benchmark run triggers on purpose."""
    import lightning  # noqa: F401  (importing it sets its loggers to INFO: set them after)

    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode.*")  # the EMA copy is always in eval mode
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")


# ------------------------------------------------------------------ timing
def sync(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device, warmup: int = 1, repeats: int = 3) -> list[float]:
    """Seconds of each of ``repeats`` calls of ``fn`` after ``warmup`` untimed calls, synchronised on CUDA."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return times


def median(values: Iterable[float]) -> float:
    values = [float(v) for v in values]
    return statistics.median(values) if values else math.nan


def median_interval(values: Iterable[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """A distribution-free interval for the median of ``values``: the order statistics (x_(k), x_(n+1-k)) with the
    largest k whose exact binomial coverage 1 - 2·P(Bin(n, ½) < k) is still >= ``confidence``, and that coverage.

    With too few values for ``confidence`` (n < 6 at 95 %) it is (min, max) with the smaller coverage it has; a
    timing on a shared machine is noisy far beyond its per-step spread, so a ratio of runs is read with this."""
    xs = sorted(float(v) for v in values)
    n = len(xs)
    if n == 0:
        return math.nan, math.nan, math.nan
    tail = [math.comb(n, i) / 2.0 ** n for i in range(n + 1)]  # P(Bin(n, 1/2) = i)
    coverage = lambda k: 1.0 - 2.0 * sum(tail[:k])  # noqa: E731  P(x_(k) <= median <= x_(n+1-k))
    k = 1
    while k + 1 <= (n + 1) // 2 and coverage(k + 1) >= confidence:
        k += 1
    return xs[k - 1], xs[n - k], coverage(k)


def finite(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


# ------------------------------------------------------------------ machine
def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: torch.device) -> dict[str, Any]:
    """What the numbers were measured on: CPU, cores, threads, load, GPU, library versions."""
    import lightning

    info: dict[str, Any] = {
        "device": device.type,
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "platform": platform.platform(),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1), cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version())
    return info


def describe(info: dict[str, Any]) -> str:
    """One line naming the machine, for the printed tables."""
    where = info.get("gpu") or f"{info['cpu']} ({info['cpus_usable']} cores, {info['torch_threads']} threads)"
    return (f"{where}; torch {info['torch']}, lightning {info['lightning']}, python {info['python']}; "
            f"1-min load {info['load_average_1min']:.2f} at start" if info.get("load_average_1min") is not None
            else f"{where}; torch {info['torch']}, lightning {info['lightning']}")


# ------------------------------------------------------------------ output
def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str, str]]) -> str:
    """A markdown table; ``columns`` are ``(key, header, format)`` with format e.g. ``{:.1f}``."""
    def cell(row, key, fmt):
        value = row.get(key)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "–"
        return fmt.format(value) if fmt else str(value)

    return markdown([h for _, h, _ in columns], [[cell(r, k, f) for k, _, f in columns] for r in rows])


def finish(path: Path, payload: dict[str, Any], columns: Sequence[tuple[str, str, str]]) -> dict[str, Any]:
    """A benchmark's last step: its rows as a markdown table in ``payload["table"]``, written to ``path`` and printed
    after the machine's description; returns ``payload``."""
    payload["table"] = markdown_table(payload["rows"], columns)
    write_json(path, payload)
    print(describe(payload["machine"]))
    print(payload["table"])
    return payload


def output_path(name: str, device: torch.device, args: argparse.Namespace) -> Path:
    if args.out:
        return Path(args.out)
    return RESULTS_DIR / f"{name}_{device.type}{'_quick' if args.quick else ''}.json"


def write_json(path: Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` (NaN/inf become null) and return the path."""
    def clean(obj):
        if isinstance(obj, float) and not math.isfinite(obj):
            return None
        if isinstance(obj, dict):
            return {str(k): clean(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return [clean(v) for v in obj]
        return obj

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(clean(payload), indent=2) + "\n")
    return path


def command_line(script: str, argv: Sequence[str] | None) -> str:
    import sys

    args = list(sys.argv[1:] if argv is None else argv)
    return " ".join(["python", f"benchmarks/{script}", *args])


# ------------------------------------------------------------------ building the default run
@dataclass
class Built:
    """The default run's datamodule and DiffusionModule, and how they were built (``hydra`` or ``python``)."""

    datamodule: Any
    module: Any
    source: str


def hydra_available() -> bool:
    try:
        import hydra  # noqa: F401
        import omegaconf  # noqa: F401
    except ImportError:
        return False
    return True


def overrides(parameterization: str = "eps", batch_size: int | None = None, width: int | None = None,
              compile: bool = False, channels_last: bool = False, eval_num_samples: int | None = None,
              seed: int = 0, extra: Sequence[str] = ()) -> list[str]:
    """The ``python train.py`` overrides that describe a benchmark run (FID off: benchmarks never compute it),
    then ``extra`` (``--set``), which win."""
    out = [f"parameterization={parameterization}", f"seed={seed}", "fid=null",
           f"module.compile={str(compile).lower()}", f"module.channels_last={str(channels_last).lower()}"]
    if batch_size is not None:
        out.append(f"dataset.batch_size={batch_size}")
    if width is not None:
        out.append(f"model.width={width}")
    if eval_num_samples is not None:
        out.append(f"module.eval_num_samples={eval_num_samples}")
    return out + list(extra)


def compose(overrides_: Sequence[str]):
    """conf/train.yaml composed as ``python train.py`` composes it (Hydra's runtime node filled in)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = hydra_compose("train", overrides=list(overrides_), return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(Path(tempfile.gettempdir()) / "vdmlab-benchmarks")
        cfg.hydra.runtime.cwd = str(REPO)
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    return cfg


def build_hydra(**kwargs) -> Built:
    """The default run through Hydra: compose, validate, ``build_run``."""
    from vdmlab.cli.build import build_run
    from vdmlab.cli.validate import validate_config

    cfg = compose(overrides(**kwargs))
    validate_config(cfg)
    torch.manual_seed(int(cfg.seed))
    run = build_run(cfg)
    return Built(run.datamodule, run.module, "hydra")


NETWORKS = ("default", "cifar")
# the CIFAR-size network (DDPM's CIFAR-10 UNet shape: 35.5 M parameters in vdmlab's UNet)
CIFAR_NETWORK = {"width": 128, "channel_mults": [1, 2, 2, 2], "num_res_blocks": 2, "attention_resolutions": [16]}


def synthetic_images(batch_size: int, seed: int = 0, shape: tuple[int, ...] = (3, 32, 32)):
    """A datamodule of random 8-bit images of CIFAR-10's shape (a throughput benchmark needs no real pixels):
    LevelDataset splits, so ``dataset.on_device`` holds them on the device like CIFAR-10's."""
    from vdmlab.data.base import DiffusionDataModule, LevelDataset

    class SyntheticImages(DiffusionDataModule):
        def build_splits(self):
            gen = torch.Generator().manual_seed(self.seed)
            n = max(4096, 4 * self.batch_size)
            levels = torch.randint(0, 256, (n + 2 * 500, *self.data_shape), generator=gen, dtype=torch.uint8)
            return tuple(LevelDataset(part, 256) for part in (levels[:n], levels[n:n + 500], levels[n + 500:]))

    return SyntheticImages(256, shape, batch_size=batch_size, eval_batch_size=500, num_workers=0, seed=seed)


def build_python(parameterization: str = "eps", batch_size: int | None = None, width: int | None = None,
                 compile: bool = False, channels_last: bool = False, eval_num_samples: int | None = None,
                 seed: int = 0, network: str = "default", extra: Sequence[str] = ()) -> Built:
    """The default run without Hydra: a mirror of conf/train.yaml and its default groups (dataset=digits,
    model=unet, schedule=adaptive, weighting=sigmoid, sampler=ancestral, fid=null, and the digits' dataset_defaults and
    dataset_model), checked against them by the tests.
    ``network="cifar"``: the same run with the CIFAR-size UNet (:data:`CIFAR_NETWORK`) on random 3x32x32 images."""
    if extra:
        raise SystemExit(f"--set {' '.join(extra)}: config overrides need the Hydra route (hydra-core installed, "
                         f"--config auto|hydra, the default network); the Python mirror builds the defaults only")
    from vdmlab.data import DigitsDataModule
    from vdmlab.diffusion import parameterization as P
    from vdmlab.diffusion.learned_schedules import AdaptiveSchedule
    from vdmlab.diffusion.losses import low_discrepancy_times
    from vdmlab.diffusion.sampling import ancestral
    from vdmlab.diffusion.weighting import SigmoidWeighting
    from vdmlab.models import UNet
    from vdmlab.module import DiffusionModule
    from vdmlab.optim import linear_warmup

    classes = {"x": P.XParameterization, "eps": P.EpsParameterization, "score": P.ScoreParameterization,
               "energy": P.EnergyParameterization, "v": P.VParameterization, "flow": P.FlowParameterization}
    torch.manual_seed(seed)
    if network == "cifar":
        datamodule = synthetic_images(batch_size or 128, seed)
        shape = {**CIFAR_NETWORK, "width": width or CIFAR_NETWORK["width"], "dropout": 0.0,
                 "fourier_min_exp": None, "fourier_max_exp": None}
    else:  # conf/dataset_model/digits_unet.yaml
        datamodule = DigitsDataModule(batch_size=batch_size or 128, eval_batch_size=180, num_workers=0, seed=seed)
        shape = {"width": width or 32, "channel_mults": [1], "num_res_blocks": 6, "attention_resolutions": [],
                 "dropout": 0.0, "fourier_min_exp": 2, "fourier_max_exp": 3}
    net = UNet(**shape, groups=8, emb_dim=None, num_heads=1, data_shape=datamodule.data_shape)
    module = DiffusionModule(
        net=net, schedule=AdaptiveSchedule(logsnr_min=-7.0, logsnr_max=8.0, num_bins=100, ema_decay=0.99,
                                           uniform_mix=0.05), weighting=SigmoidWeighting(bias=2.0),
        parameterization=classes[parameterization](), num_levels=datamodule.num_levels,
        data_shape=datamodule.data_shape,
        optimizer=partial(torch.optim.AdamW, lr=3.0e-3, betas=[0.9, 0.99], weight_decay=0.0),  # dataset_defaults/digits
        lr_scheduler=partial(linear_warmup, warmup_steps=0), time_sampler=low_discrepancy_times,
        timesteps=None, ema_decay=0.9995, ema_warmup=True,
        eval_num_samples=4 if eval_num_samples is None else eval_num_samples,
        sampler={"fn": partial(ancestral), "steps": 250, "clip_x": True, "schedule": None,
                 "guidance": 0.0, "guidance_logsnr_min": None, "guidance_logsnr_max": None}, fid=None, seed=seed,
        compile=compile, channels_last=channels_last,
    )
    return Built(datamodule, module, "python")


def build_default(config: str = "auto", network: str = "default", **kwargs) -> Built:
    """The default run (``python train.py`` with ``overrides(**kwargs)``), through Hydra when available; the
    CIFAR-size network (``network="cifar"``, synthetic images) is always built in Python."""
    if network != "default":
        return build_python(network=network, **kwargs)
    if config == "hydra" or (config == "auto" and hydra_available()):
        return build_hydra(**kwargs)
    return build_python(**kwargs)


def network_summary(net: torch.nn.Module) -> dict:
    """The benchmarked network as built: its width (output channels of its first convolution, else of its first
    linear layer) and parameter count."""
    convs = [m.out_channels for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    width = convs[0] if convs else next((m.out_features for m in net.modules() if isinstance(m, torch.nn.Linear)), None)
    return {"model_width": width, "model_params": sum(p.numel() for p in net.parameters())}


def built_network_summary(config: str = "auto", network: str = "default", width: int | None = None,
                          extra: Sequence[str] = ()) -> dict:
    """:func:`network_summary` of the network a benchmark builds (the config's default unless ``width`` or
    ``extra`` overrides say otherwise)."""
    return network_summary(build_default(config, network=network, width=width, extra=extra).module.net)


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak-memory window (CUDA; on the CPU the peak RSS of the process cannot be reset)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mib(device: torch.device) -> float:
    """Peak GPU memory allocated by tensors since :func:`reset_peak_memory` (CUDA), else the process's peak RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # KiB on Linux


# conf/trainer/default.yaml's values that matter for a training step (checked against the config by the tests)
TRAINER_DEFAULTS = {"gradient_clip_val": 1.0, "log_every_n_steps": 10, "num_sanity_val_steps": 0,
                    "inference_mode": False, "use_distributed_sampler": False, "deterministic": False}


def make_trainer(device: torch.device, *, max_steps: int = -1, max_time: float | None = None,
                 precision: str = "32-true", callbacks: Sequence[Any] = (), **kwargs):
    """A real ``lightning.Trainer`` with the default trainer config; no logger, checkpoints, progress bar,
    model summary or validation, so that only training (and an explicit ``trainer.test``) is measured."""
    import lightning as L

    options = dict(TRAINER_DEFAULTS)
    options.update(
        accelerator="gpu" if device.type == "cuda" else "cpu", devices=1, max_steps=max_steps, max_epochs=-1,
        max_time=None if max_time is None else datetime.timedelta(seconds=max_time), precision=precision,
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        limit_val_batches=0, benchmark=device.type == "cuda",  # conf/trainer/gpu.yaml sets benchmark: true
        callbacks=list(callbacks),
    )
    options.update(kwargs)
    return L.Trainer(**options)
