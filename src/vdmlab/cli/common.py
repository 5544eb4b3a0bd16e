"""Small pieces shared by the evaluation and sampling commands."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TypeVar

import torch

T = TypeVar("T")


def pick_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available; otherwise the named device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={name} was asked for but CUDA is not available; use device=cpu or device=auto")
    return torch.device(name)


def stop_cleanly_on_ctrl_c(command: str, run: Callable[[], T], outputs: str) -> T:
    """``run()``; a Ctrl-C ends the command with exit status 130 and one line saying that ``outputs`` come only
    with a finished run, instead of a traceback (what a long step kept, e.g. eval's FID samples, it says itself)."""
    try:
        return run()
    except KeyboardInterrupt:
        print(f"{command} interrupted (Ctrl-C): {outputs} only when it runs to the end.", file=sys.stderr,
              flush=True)
        raise SystemExit(130) from None


# One line per metric of the final tables, keyed by the name after "<stage>/" (train/val/test) or by the full key;
# train/* rows are the last logged training step (training weights), val/* and test/* use the EMA weights; the full
# explanations, with scales, are in docs/metrics.md.
METRIC_DESCRIPTIONS: dict[str, str] = {
    "loss": "weighted loss being trained, 1/2 w(λ)/p(λ) ||ε - ε̂||² (eq. (4.123)), nats",
    "loss_variance": "variance of the per-example loss over the batch: the gradient noise",
    "bpd": "negative ELBO in bits/dim, a bound on -log p(x); lower is better",
    "bpd_se": "standard error of bpd over the examples",
    "bpd_diffusion": "diffusion term of the ELBO (eq. (3.134)), bits/dim",
    "diffusion": "diffusion term of the ELBO (eq. (3.134)), bits/dim",
    "bpd_prior": "prior term KL(q(z_1|x) || N(0, I)) at λ_min, bits/dim",
    "prior": "prior term KL(q(z_1|x) || N(0, I)) at λ_min, bits/dim",
    "bpd_reconstruction": "decoder term -log p(x|z_0) at λ_max, bits/dim",
    "reconstruction": "decoder term -log p(x|z_0) at λ_max, bits/dim",
    "fid": "Fréchet distance of N EMA samples to the split; falls as N grows",
    "fid_seconds": "time to draw and score the FID samples",
    "fid_std": "spread (standard deviation) of FID over fid.repeats sample seeds; fid is their mean",
    "fid_repeats": "sample seeds the FID was averaged over (fid.repeats)",
    "fid_floor": "real-vs-real floor: FID of as many real train images to the split (a perfect model's FID@N)",
    "fid_floor_n": "real train images in the FID floor",
    "bpd_uncond": "negative ELBO of p(x) with the null label (a conditional model), bits/dim",
    "bpd_mixture": "bound on -log p(x) of the balanced class mixture (1/C)Σ_y p(x|y): bpd + log2(C)/D, bits/dim",
    "class_acc": "fraction of samples the digits classifier assigns to the label they were drawn for",
    "classes_missing": "digits the classifier never assigns a sample to",
    "class_max_min": "largest class count over the smallest (1: flat; inf: a digit is missing)",
    "class_chi2_p": "p-value of Pearson's χ² test of uniform classes (small: not flat)",
    "class_max_min_real": "class_max_min of the split's real images: the reference",
    "class_chi2_p_real": "class_chi2_p of the split's real images: the reference",
    "nn_classes_missing": "digits that no sample's nearest training image shows",
    "nn_class_max_min": "class_max_min with each sample labelled by its nearest training image (no classifier)",
    "nn_class_chi2_p": "class_chi2_p with each sample labelled by its nearest training image (no classifier)",
    "ode_bpd": "probability-flow ODE likelihood, dequantized: a bound on -log p(x) of the ODE model, bits/dim",
    "ode_bpd_se": "standard error of ode_bpd over the examples",
    "ode_bpd_iw": "importance-weighted dequantization bound over ode.num_draws draws, bits/dim",
    "ode_bpd_iw_se": "standard error of ode_bpd_iw over the examples",
    "ode_estimator_se": "Monte-Carlo error of ode_bpd from the Hutchinson probes and dequantization draws",
    "ode_nfe": "network calls per ODE solve",
    "ode_n": "examples of the ODE likelihood",
    "ode_seconds": "time of the ODE likelihood",
    "kid": "kernel inception distance (unbiased MMD² of the features); 0 for identical distributions",
    "kid_se": "standard error of kid over disjoint blocks",
    "precision": "improved precision (k-NN): fraction of samples inside the real data's manifold",
    "recall": "improved recall (k-NN): fraction of real images inside the samples' manifold",
    "profile_diffusion": "Σ width·(ELBO integrand) over the λ bins: the diffusion term from the profile, bits/dim",
    "profile_diffusion_se": "standard error of profile_diffusion over the examples",
    "profile_weighted": "the trained weighted loss ½∫w(λ)E||ε - ε̂||²dλ from the profile, bits/dim",
    "profile_weighted_se": "standard error of profile_weighted over the examples",
    "profile_peak_logsnr": "λ of the bin where the ELBO integrand is largest",
    "profile_median_logsnr": "λ below which half of the diffusion term lies",
    "copy_fraction": "samples whose nearest training image is closer than ratio x the second nearest (near-copies)",
    "copy_fraction_test": "the same fraction for the real test images: the reference",
    "nn_dist_median": "median distance of a sample to its nearest training image (data scale)",
    "nn_dist_median_test": "median distance of a real test image to its nearest training image",
    "nn_dist_ratio": "nn_dist_median / nn_dist_median_test (< 1: samples sit closer to the training set)",
    "nn_dist_q10": "10 % quantile of the samples' nearest-training-image distance",
    "nn_dist_q10_test": "10 % quantile of the test images' nearest-training-image distance",
    "copy_n": "samples checked for copying",
    "copy_ratio": "the near-copy criterion's ratio d1/d2 (1/3, after Carlini et al. 2023)",
    "lr": "learning rate at the last step",
    "nonfinite_steps": "steps skipped for a NaN/inf loss or gradient",
    "n": "examples evaluated",
    "seconds": "time of the bits/dim evaluation",
    "time/minutes": "wall-clock time of training and testing",
    **{f"{prefix}/{key}": f"{whose} post-hoc EMA: {what}" for prefix, whose in (("ema", "the"), ("guide_ema", "the guide's"))
       for key, what in (("sigma_rel", "relative EMA length σ_rel of the weights (EDM2)"),
                         ("gamma", "power-function exponent γ of that σ_rel"), ("step", "the training step reconstructed"),
                         ("snapshots", "snapshots combined by the least-squares solve"))},
    "train/steps": "optimizer steps taken",
}
#: the per-class count rows ``<prefix>_<k>`` of a class histogram (metrics.sample_metrics.class_counts)
CLASS_COUNT_DESCRIPTIONS = {"class": "samples the digits classifier assigns to class {}",
                            "nn_class": "samples whose nearest training image is a {}"}
#: rows shown inside another row (the row they belong to): the FID rows carry their sample counts, FID@N
FOLDED = {"fid_n": "fid", "fid_n_real": "fid", "fid_std": "fid", "fid_repeats": "fid", "fid_floor_n": "fid_floor"}


def describe(key: str) -> str:
    """The one-line description of a metric row (empty when there is none)."""
    name = key.rsplit("/", 1)[-1]
    prefix, _, digit = name.rpartition("_")
    if digit.isdigit() and prefix in CLASS_COUNT_DESCRIPTIONS:  # class_3, nn_class_3
        return CLASS_COUNT_DESCRIPTIONS[prefix].format(digit)
    return METRIC_DESCRIPTIONS.get(key) or METRIC_DESCRIPTIONS.get(name, "")


def fid_scale(rows: dict[str, float | int | str], stage: str, name: str = "fid") -> str:
    """``(FID@N)``, ``(FID@N vs M real)`` or, over several sample seeds, ``(FID@N vs M real, mean of R seeds)`` for
    the FID row of ``stage``; ``(FID@N)`` for its real-vs-real floor (``name="fid_floor"``); empty when the count was
    not logged."""
    if name == "fid_floor":
        n = rows.get(f"{stage}/fid_floor_n")
        return f"(FID@{int(n)})" if n is not None else ""
    n, n_real = rows.get(f"{stage}/fid_n"), rows.get(f"{stage}/fid_n_real")
    if n is None:
        return ""
    repeats = rows.get(f"{stage}/fid_repeats")
    seeds = f", mean of {int(repeats)} seeds" if repeats is not None and int(repeats) > 1 else ""
    return f"(FID@{int(n)} vs {int(n_real)} real{seeds})" if n_real is not None else f"(FID@{int(n)}{seeds})"


def _number(value: float | int | str) -> str:
    """4 decimals; small values (a learning rate) in scientific notation."""
    if isinstance(value, float):
        return f"{value:.4f}" if value == 0 or abs(value) >= 1e-3 else f"{value:.3e}"
    return str(value)


def format_table(rows: dict[str, float | int | str]) -> str:
    """A terminal table of metric, value and description; each FID row carries its sample count (FID@N) and, over
    several sample seeds, its spread (± fid_std), which are not printed as rows of their own; so does the floor."""
    shown: list[tuple[str, str, str]] = []
    for key, value in rows.items():
        stage, _, name = key.rpartition("/")
        if name in FOLDED and f"{stage}/{FOLDED[name]}" in rows:
            continue
        text = _number(value)
        if name == "fid" and f"{stage}/fid_std" in rows and int(rows.get(f"{stage}/fid_repeats", 1)) > 1:
            text = f"{text} ± {_number(float(rows[f'{stage}/fid_std']))}"
        if name in ("fid", "fid_floor"):
            text = f"{text}  {fid_scale(rows, stage, name)}".rstrip()
        shown.append((key, text, describe(key)))
    width = max((len(k) for k, _, _ in shown), default=6)
    value_width = max((len(v) for _, v, _ in shown), default=5)
    lines = [f"  {'metric':<{width}}  {'value':<{value_width}}  description",
             f"  {'-' * width}  {'-' * value_width}  {'-' * 11}"]
    lines += [f"  {k:<{width}}  {v:<{value_width}}  {d}".rstrip() for k, v, d in shown]
    return "\n".join(lines)
