"""Checks of the GPU-speed path that need a CUDA device (the CPU tests cover the rest), printed and saved as JSON:

- the counter-based evaluation noise is the same on the GPU as on the CPU, bit for bit;
- device-resident batches (``dataset.on_device``) on the GPU equal the CPU DataLoader's, bit for bit;
- per-example bits/dim on the GPU does not depend on the evaluation batch size (7 vs 180);
- bf16-mixed training gives float32, finite losses.

    python benchmarks/gpu_checks.py [--out benchmarks/results/gpu_checks_cuda.json]
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from benchmarks import common
from vdmlab.data.base import EpochSampler
from vdmlab.data.device import DeviceBatches
from vdmlab.diffusion.likelihood import negative_elbo
from vdmlab.diffusion.noise import counter_normal

NAME = "gpu_checks"


def noise_matches_cpu(device: torch.device) -> bool:
    index = torch.randperm(500, generator=torch.Generator().manual_seed(0))
    cpu = counter_normal(3, index, 3, (3, 32, 32))  # 4.6 M values
    return bool(torch.equal(counter_normal(3, index.to(device), 3, (3, 32, 32)).cpu(), cpu))


def batches_match_cpu(device: torch.device) -> bool:
    built = common.build_python(batch_size=128)
    datamodule = built.datamodule
    datamodule.on_device = "false"
    datamodule.setup()
    loader = datamodule.train_dataloader()
    loader.sampler.set_epoch(2)
    held = DeviceBatches(datamodule.train_set, 128, EpochSampler(len(datamodule.train_set), seed=0), device, True)
    held.sampler.set_epoch(2)
    return all(torch.equal(a.cpu(), b) for a, b in zip(held, loader, strict=True))


def bpd_batch_independent(device: torch.device) -> dict:
    built = common.build_python()
    module, datamodule = built.module.to(device), built.datamodule
    datamodule.setup()
    x = torch.stack([datamodule.val_set[i] for i in range(180)]).to(device)
    index = torch.arange(180, device=device)

    def nats(batch):
        with torch.no_grad():
            return torch.cat([negative_elbo(x[i:i + batch], module.elbo_model(num_samples=8, timesteps=None),
                                            example_ids=index[i:i + batch], seed=0).total
                              for i in range(0, 180, batch)])

    a, b = nats(7), nats(180)
    return {"max_abs_difference_nats": float((a - b).abs().max()), "close": bool(torch.allclose(a, b, rtol=1e-4))}


def bf16_losses(device: torch.device) -> dict:
    from benchmarks.train_throughput import lightning_run

    run = lightning_run(common.build_python(network="cifar", batch_size=32), device, steps=3, warmup=1,
                        precision="bf16-mixed")
    return {"losses": run["losses"], "finite": all(common.finite(v) for v in run["losses"])}


def main(argv: list[str] | None = None) -> dict:
    p = common.parser(__doc__.split("\n\n")[0])
    args = p.parse_args(argv)
    device = common.setup(args)
    if device.type != "cuda":
        raise SystemExit("gpu_checks.py needs a CUDA device")
    results = {"noise_matches_cpu": noise_matches_cpu(device), "batches_match_cpu": batches_match_cpu(device),
               "bpd_batch_7_vs_180": bpd_batch_independent(device), "bf16_cifar_size": bf16_losses(device)}
    payload = {"benchmark": NAME, "command": common.command_line("gpu_checks.py", argv),
               "machine": common.machine(device), "results": results}
    path = common.write_json(common.output_path(NAME, device, args), payload)
    print(results)
    print(f"\nwritten {path}")
    return payload


if __name__ == "__main__":
    main()
