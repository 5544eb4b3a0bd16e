"""Per-step cost of the post-hoc EMA callback's update (two power-function profiles) against one training step of
the digits default, on one thread: ``python benchmarks/posthoc_ema_cost.py`` (prints three repeats)."""

from __future__ import annotations

import copy
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from conftest import compose_config  # noqa: E402

from vdmlab.cli.build import build_run  # noqa: E402
from vdmlab.posthoc_ema import gamma_from_sigma_rel, power_ema_beta  # noqa: E402


def main() -> None:
    torch.set_num_threads(1)
    module = build_run(compose_config(Path(tempfile.mkdtemp()), ["logger=csv"])).module
    optimizer = torch.optim.AdamW(module.net.parameters(), lr=1e-3)
    x = torch.rand(128, *module.data_shape) * 2 - 1  # the digits default's batch
    emas = [copy.deepcopy(module.net).requires_grad_(False) for _ in range(2)]
    gammas = [float(g) for g in gamma_from_sigma_rel([0.05, 0.10])]

    def train_step() -> None:
        loss = module.loss_terms(x, torch.Generator().manual_seed(0)).loss.mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        module.ema.update(module.net)

    def update(t: int) -> None:  # what PostHocEMA.on_train_batch_end does per optimizer step
        params = [p.detach() for p in module.net.parameters()]
        for gamma, ema in zip(gammas, emas):
            torch._foreach_lerp_(list(ema.parameters()), params, 1.0 - power_ema_beta(gamma, t))

    for _ in range(3):
        start = time.perf_counter()
        for _ in range(20):
            train_step()
        step = (time.perf_counter() - start) / 20
        start = time.perf_counter()
        for t in range(2, 202):
            update(t)
        ema = (time.perf_counter() - start) / 200
        print(f"train step {step * 1e3:.1f} ms, post-hoc EMA update {ema * 1e3:.3f} ms, ratio {ema / step:.4f}")
    print("parameters", sum(p.numel() for p in module.net.parameters()))


if __name__ == "__main__":
    main()
