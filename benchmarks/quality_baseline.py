"""Quality baseline on the digits: test bits/dim of the best scikit-learn GaussianMixture (dequantized) against the
default diffusion model after a fixed wall-clock training budget.

GaussianMixture: fitted to the training split (1,437 images) after uniform dequantization within each level's bin
(the data lie on K = 17 levels in [-1, 1], bin width Δ = 2/16); n_components and the covariance type are chosen
from a small grid by validation log-likelihood. With a density p over the dequantized data, the discrete
probability of the levels is P(x) = ∫_bin p ≥ Δ^D · exp E_u[log p(x + u)] (Jensen), so

    bits/dim ≤ -(E_u[log p(x + u)] + D·log Δ) / (D·ln 2),

the same kind of bound (in bits per dimension of the discrete data) as the diffusion model's ELBO; a uniform
density over the bins gives log2(17) = 4.09. E_u is estimated with ``--dequant-draws`` draws per test image.

Diffusion model: the default run (``python train.py``'s model, loss and optimizer) trained for ``--budget`` seconds
of wall-clock (``trainer.max_time``; no validation, FID, sample grids or checkpoints, so the budget goes to
training), then ``trainer.test`` with ``module.eval_num_samples = --eval-samples`` λ draws per example.

    python benchmarks/quality_baseline.py [--budget 180] [--eval-samples 32] [--skip-diffusion] [--skip-gmm]
"""

from __future__ import annotations

import math
import sys
import time
import warnings
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from benchmarks import common

NAME = "quality_baseline"
NUM_LEVELS = 17
BIN = 2.0 / (NUM_LEVELS - 1)  # Δ, the width of one level's bin in data units


def digits_values() -> dict[str, np.ndarray]:
    """The fixed splits (vdmlab.data.digits) as data values in [-1, 1], ``[N, 64]`` float64."""
    from vdmlab.data.digits import digits_splits

    return {name: -1.0 + BIN * levels.reshape(len(levels), -1).astype(np.float64)
            for name, (levels, _) in digits_splits().items()}


def dequantize(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """x + u with u ~ U(-Δ/2, Δ/2) per dimension: uniform within each level's bin."""
    return x + rng.uniform(-BIN / 2, BIN / 2, size=x.shape)


def bits_per_dim(model, x: np.ndarray, draws: int, seed: int) -> tuple[float, float]:
    """Mean and standard error over examples of -(E_u log p(x+u) + D log Δ)/(D ln 2), E_u over ``draws`` draws."""
    rng = np.random.default_rng(seed)
    dim = x.shape[1]
    log_p = np.mean([model.score_samples(dequantize(x, rng)) for _ in range(draws)], axis=0)  # [N] nats
    bpd = -(log_p + dim * math.log(BIN)) / (dim * math.log(2.0))
    return float(bpd.mean()), float(bpd.std(ddof=1) / math.sqrt(len(bpd)))


def gmm_baseline(args) -> dict:
    """Fit the grid on the dequantized training split; select by validation bits/dim; report test bits/dim."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import GaussianMixture

    warnings.filterwarnings("ignore", category=ConvergenceWarning)  # reported in the grid's "converged" column

    data = digits_values()
    train = dequantize(data["train"], np.random.default_rng(0))
    grid = []
    for covariance in args.covariance:
        for n in args.components:
            start = time.perf_counter()
            model = GaussianMixture(n, covariance_type=covariance, random_state=0, max_iter=args.max_iter,
                                    reg_covar=1e-6).fit(train)
            fit_seconds = time.perf_counter() - start
            val, val_se = bits_per_dim(model, data["val"], args.dequant_draws, seed=1)
            test, test_se = bits_per_dim(model, data["test"], args.dequant_draws, seed=2)
            grid.append({"n_components": n, "covariance": covariance, "val_bpd": val, "val_bpd_se": val_se,
                         "test_bpd": test, "test_bpd_se": test_se, "converged": bool(model.converged_),
                         "fit_seconds": fit_seconds, "model": model})
    best = min(grid, key=lambda r: r["val_bpd"])
    for row in grid:
        row.pop("model")
        row["selected"] = row is best
    return {"grid": grid, "best": {k: best[k] for k in ("n_components", "covariance", "val_bpd", "test_bpd",
                                                        "test_bpd_se")}}


def diffusion_baseline(args, device) -> dict:
    """Train the default run for ``--budget`` seconds, then its test bits/dim with ``--eval-samples`` draws."""
    built = common.build_default(args.config, width=args.width, batch_size=args.batch_size,
                                 eval_num_samples=args.eval_samples, extra=args.set)
    trainer = common.make_trainer(device, max_time=args.budget)
    start = time.perf_counter()
    trainer.fit(built.module, datamodule=built.datamodule)
    train_seconds = time.perf_counter() - start
    start = time.perf_counter()
    trainer.test(built.module, datamodule=built.datamodule, verbose=False)
    test_seconds = time.perf_counter() - start
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")}
    return {"budget_seconds": args.budget, "train_seconds": train_seconds, "steps": int(trainer.global_step),
            "steps_per_s": trainer.global_step / train_seconds, "eval_num_samples": args.eval_samples,
            "test_seconds": test_seconds, "test_bpd": metrics.get("test/bpd"), "test_bpd_se": metrics.get("test/bpd_se"),
            "test_terms": {k.split("/", 1)[1]: v for k, v in metrics.items()}, "config_source": built.source,
            **common.network_summary(built.module.net)}


def report(payload: dict) -> str:
    """The markdown tables of a result."""
    gmm, diffusion = payload["gmm"], payload["diffusion"]
    rows = [{"model": "uniform over the 17 levels", "test_bpd": payload["uniform_bpd"], "test_bpd_se": 0.0}]
    if gmm:
        b = gmm["best"]
        rows.append({"model": f"GaussianMixture, {b['n_components']} {b['covariance']} (best val of the grid)",
                     "test_bpd": b["test_bpd"], "test_bpd_se": b["test_bpd_se"]})
    if diffusion:
        rows.append({"model": f"diffusion, default run, {diffusion['budget_seconds']:.0f} s of training "
                              f"({diffusion['steps']} steps), {diffusion['eval_num_samples']} λ draws",
                     "test_bpd": diffusion["test_bpd"], "test_bpd_se": diffusion["test_bpd_se"]})
    out = [f"Quality baseline on the digits test split, {common.describe(payload['machine'])}", "",
           common.markdown_table(rows, [("model", "model", ""), ("test_bpd", "test bits/dim", "{:.3f}"),
                                        ("test_bpd_se", "± s.e.", "{:.3f}")])]
    if gmm:
        out += ["\nGaussianMixture grid (dequantized; selected by val bits/dim)", "", common.markdown_table(gmm["grid"], [
            ("covariance", "covariance", ""), ("n_components", "components", ""), ("val_bpd", "val bits/dim", "{:.3f}"),
            ("test_bpd", "test bits/dim", "{:.3f}"), ("converged", "converged", ""), ("selected", "selected", "")])]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> dict:
    p = common.parser(__doc__.split("\n\n")[0])
    p.add_argument("--components", nargs="+", type=int, default=None, help="GMM grid (default 10 20 40 80; quick 2 4)")
    p.add_argument("--covariance", nargs="+", default=None, choices=("diag", "full", "tied", "spherical"),
                   help="GMM covariance types (default diag full; quick diag)")
    p.add_argument("--max-iter", type=int, default=None, help="GMM EM iterations (default 500; quick 20)")
    p.add_argument("--dequant-draws", type=int, default=None, help="dequantization draws per val/test image (default 16)")
    p.add_argument("--budget", type=float, default=None, help="diffusion training seconds (default 180; quick 2)")
    p.add_argument("--eval-samples", type=int, default=None, help="λ draws per test example (default 32; quick 2)")
    p.add_argument("--width", type=int, default=None, help="model.width (default: the config's; quick 16)")
    p.add_argument("--batch-size", type=int, default=None, help="training batch size (default: the config's 128)")
    p.add_argument("--skip-gmm", action="store_true")
    p.add_argument("--skip-diffusion", action="store_true")
    args = p.parse_args(argv)
    q = args.quick
    args.components = args.components or ([2, 4] if q else [10, 20, 40, 80])
    args.covariance = args.covariance or (["diag"] if q else ["diag", "full"])
    args.max_iter = args.max_iter or (20 if q else 500)
    args.dequant_draws = args.dequant_draws or (2 if q else 16)
    args.budget = args.budget or (2.0 if q else 180.0)
    args.eval_samples = args.eval_samples or (2 if q else 32)
    args.width = args.width or (16 if q else None)
    device = common.setup(args)
    info = common.machine(device)
    gmm = None if args.skip_gmm else gmm_baseline(args)
    diffusion = None if args.skip_diffusion else diffusion_baseline(args, device)
    uniform = math.log2(NUM_LEVELS)
    payload = {"benchmark": NAME, "command": common.command_line("quality_baseline.py", argv), "quick": q,
               "machine": info, "uniform_bpd": uniform, "gmm": gmm, "diffusion": diffusion,
               "settings": {"components": args.components, "covariance": args.covariance, "max_iter": args.max_iter,
                            "dequant_draws": args.dequant_draws, "budget_seconds": args.budget,
                            "eval_samples": args.eval_samples}}
    path = common.write_json(common.output_path(NAME, device, args), payload)
    print(report(payload))
    print(f"\nwritten {path}")
    return payload


if __name__ == "__main__":
    main()
