"""Small pieces shared by the evaluation and sampling commands."""

from __future__ import annotations

import torch


def pick_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available; otherwise the named device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={name} was asked for but CUDA is not available; use device=cpu or device=auto")
    return torch.device(name)


# One line per metric of the final tables, keyed by the name after "<stage>/" (train/val/test) or by the full key;
# train/* rows are the last logged training step (training weights), val/* and test/* use the EMA weights; the full
# explanations, with scales, are in docs/metrics.md.
METRIC_DESCRIPTIONS: dict[str, str] = {
    "loss": "weighted loss being trained, 1/2 w(λ)/p(λ) ||ε - ε̂||² (eq. 4.123), nats",
    "loss_variance": "variance of the per-example loss over the batch: the gradient noise",
    "bpd": "negative ELBO in bits/dim, a bound on -log p(x); lower is better",
    "bpd_se": "standard error of bpd over the examples",
    "bpd_diffusion": "diffusion term of the ELBO (eq. 3.134), bits/dim",
    "diffusion": "diffusion term of the ELBO (eq. 3.134), bits/dim",
    "bpd_prior": "prior term KL(q(z_1|x) || N(0, I)) at λ_min, bits/dim",
    "prior": "prior term KL(q(z_1|x) || N(0, I)) at λ_min, bits/dim",
    "bpd_reconstruction": "decoder term -log p(x|z_0) at λ_max, bits/dim",
    "reconstruction": "decoder term -log p(x|z_0) at λ_max, bits/dim",
    "fid": "Fréchet distance of N EMA samples to the split; falls as N grows",
    "fid_seconds": "time to draw and score the FID samples",
    "lr": "learning rate at the last step",
    "nonfinite_steps": "steps skipped for a NaN/inf loss or gradient",
    "n": "examples evaluated",
    "seconds": "time of the bits/dim evaluation",
    "time/minutes": "wall-clock time of training and testing",
    "train/steps": "optimizer steps taken",
}
FOLDED = ("fid_n", "fid_n_real")  # shown inside the FID row: (FID@N, against M real images)


def describe(key: str) -> str:
    """The one-line description of a metric row (empty when there is none)."""
    return METRIC_DESCRIPTIONS.get(key) or METRIC_DESCRIPTIONS.get(key.rsplit("/", 1)[-1], "")


def fid_scale(rows: dict[str, float | int | str], stage: str) -> str:
    """``(FID@N)`` or ``(FID@N vs M real)`` for the FID row of ``stage``; empty when the count was not logged."""
    n, n_real = rows.get(f"{stage}/fid_n"), rows.get(f"{stage}/fid_n_real")
    if n is None:
        return ""
    return f"(FID@{int(n)} vs {int(n_real)} real)" if n_real is not None else f"(FID@{int(n)})"


def format_table(rows: dict[str, float | int | str]) -> str:
    """A terminal table of metric, value and description; each FID row carries its sample count (FID@N), which
    is not printed as a row of its own."""
    shown: list[tuple[str, str, str]] = []
    for key, value in rows.items():
        stage, _, name = key.rpartition("/")
        if name in FOLDED and f"{stage}/fid" in rows:
            continue
        text = str(value)
        if isinstance(value, float):  # 4 decimals; small values (a learning rate) in scientific notation
            text = f"{value:.4f}" if value == 0 or abs(value) >= 1e-3 else f"{value:.3e}"
        if name == "fid":
            text = f"{text}  {fid_scale(rows, stage)}".rstrip()
        shown.append((key, text, describe(key)))
    width = max((len(k) for k, _, _ in shown), default=6)
    value_width = max((len(v) for _, v, _ in shown), default=5)
    lines = [f"  {'metric':<{width}}  {'value':<{value_width}}  description",
             f"  {'-' * width}  {'-' * value_width}  {'-' * 11}"]
    lines += [f"  {k:<{width}}  {v:<{value_width}}  {d}".rstrip() for k, v, d in shown]
    return "\n".join(lines)
