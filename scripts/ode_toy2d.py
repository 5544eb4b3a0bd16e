"""ODE log-density of a trained toy-2D model against the analytic density (``toy2d_log_prob``): a figure and numbers.

    python train.py dataset=toy2d model=mlp trainer.max_epochs=60 fid=null logger=csv
    python scripts/ode_toy2d.py --ckpt outputs/train/runs/<time>/checkpoints/last.ckpt

Evaluates log p(x) = log p_0(α_0 x) + D log α_0 along the probability-flow ODE (exact divergence, RK4) on fresh
continuous test points and on a grid, and writes docs/figures/ode_toy2d.png and a JSON of the numbers.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from vdmlab.analysis.report import figure, save_figure
from vdmlab.cli.build import build_from_checkpoint
from vdmlab.diffusion.ode_likelihood import ExactDivergence, RK4Solver, data_log_prob

REPO = Path(__file__).resolve().parents[1]


def ode_log_density(module, points: torch.Tensor, steps: int, batch: int = 1000) -> torch.Tensor:
    """log p(x) of the model's PF-ODE at ``points`` [N, 2] (EMA weights, exact divergence, RK4)."""
    denoise = module.parameterization.denoiser(module.ema.net)
    out = []
    with torch.no_grad():
        for start in range(0, len(points), batch):
            result = data_log_prob(denoise, points[start:start + batch], module.schedule, solver=RK4Solver(steps),
                                   divergence=ExactDivergence())
            out.append(result.log_prob)
    return torch.cat(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True)
    p.add_argument("--n", type=int, default=1000, help="fresh test points from the data distribution")
    p.add_argument("--steps", type=int, default=16, help="RK4 steps (4 network calls each)")
    p.add_argument("--grid", type=int, default=60, help="grid points per axis for the density images")
    p.add_argument("--out", default=str(REPO / "docs" / "figures" / "ode_toy2d.png"))
    args = p.parse_args()
    torch.set_num_threads(1)
    built = build_from_checkpoint(args.ckpt)
    module, data = built.module, built.datamodule
    points = torch.as_tensor(data.sample_fn(args.n, np.random.default_rng(123)), dtype=torch.float32)
    start = time.perf_counter()
    model_lp = ode_log_density(module, points, args.steps)
    seconds = time.perf_counter() - start
    true_lp = data.log_prob(points).float()
    diff = model_lp - true_lp
    numbers = {
        "dataset": data.name, "n": args.n, "rk4_steps": args.steps, "nfe": 4 * args.steps, "seconds": seconds,
        "mean_abs_diff_nats": float(diff.abs().mean()), "mean_diff_nats": float(diff.mean()),
        "pearson_r": float(torch.corrcoef(torch.stack([model_lp, true_lp]))[0, 1]),
        "model_nll_nats": float(-model_lp.mean()), "true_nll_nats": float(-true_lp.mean()),
        "note": "CPU, preliminary, short checkpoint", "ckpt": str(args.ckpt),
    }
    axis = torch.linspace(-1.0, 1.0, args.grid)
    xx, yy = torch.meshgrid(axis, axis, indexing="xy")
    grid = torch.stack([xx.reshape(-1), yy.reshape(-1)], 1)
    model_grid = ode_log_density(module, grid, args.steps).reshape(args.grid, args.grid)
    true_grid = data.log_prob(grid).float().reshape(args.grid, args.grid)

    fig, axes = figure(1, 3, figsize=(13, 4), dpi=110)
    vmin = max(float(true_grid.max()) - 12.0, float(true_grid.min()))
    for ax, image, title in ((axes[0], true_grid, "analytic log q(x)"), (axes[1], model_grid, "PF-ODE log p(x)")):
        im = ax.imshow(image.clamp(min=vmin).numpy(), origin="lower", extent=(-1, 1, -1, 1), vmin=vmin,
                       vmax=float(true_grid.max()), cmap="viridis")
        ax.set_title(title)
        fig.colorbar(im, ax=ax, shrink=0.8)
    axes[2].scatter(true_lp.numpy(), model_lp.numpy(), s=3, alpha=0.5)
    lims = [float(min(true_lp.min(), model_lp.min())), float(max(true_lp.max(), model_lp.max()))]
    axes[2].plot(lims, lims, "k--", lw=1)
    axes[2].set_xlabel("analytic log q(x)")
    axes[2].set_ylabel("PF-ODE log p(x)")
    axes[2].set_title(f"{args.n} test points: mean |Δ| = {numbers['mean_abs_diff_nats']:.3f} nats, "
                      f"r = {numbers['pearson_r']:.3f}", fontsize=9)
    fig.suptitle(f"toy2d {data.name}: ODE log-density (RK4 {args.steps} steps, exact divergence) - CPU, preliminary, "
                 "short checkpoint", fontsize=10)
    out = save_figure(fig, args.out)
    out.with_suffix(".json").write_text(json.dumps(numbers, indent=2))
    print(json.dumps(numbers, indent=2), f"\nfigure: {out}", flush=True)
    assert math.isfinite(numbers["mean_abs_diff_nats"])


if __name__ == "__main__":
    main()
