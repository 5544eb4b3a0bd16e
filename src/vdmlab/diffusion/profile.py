"""The ELBO over noise levels: the integrand of the diffusion term per unit λ, in bins, and rate–distortion.

The diffusion term of the ELBO is an integral over λ (eq. (3.134) with dλ = -dλ/dt·dt, as in eq. (4.113)):

    L_∞(x) = ½ ∫_{λ_min}^{λ_max} E_ε ‖ε − ε̂(z_λ; λ)‖² dλ,

and every weighted loss is the same integral with w(λ) inside, L_w = ½ ∫ w(λ)·E‖ε − ε̂‖² dλ (eqs. (4.123), (4.150)).
So objectives differ only in where in λ they spend the network. The *profile* is the integrand h(λ) =
½ E‖ε − ε̂(z_λ)‖² averaged over equal-width bins of [λ_min, λ_max]: every bin gets the same number of stratified
draws λ = lo + width·(j + u_x)/S (j = 0..S-1, u_x a per-example offset), so each bin mean is unbiased, and
Σ_k width_k·h_k is an unbiased estimate of L_∞(x). The noise is counter-based (:mod:`vdmlab.diffusion.noise`): a
pure function of (seed, example index, draw), so two checkpoints evaluated with one seed see the same λ and ε.

Rate–distortion (progressive coding, Ho et al. 2020 §4.3): sending z from λ_min upward, the bits spent by λ are the
prior KL plus ∫_{λ_min}^{λ} h(λ') dλ'; the receiver's best guess of x at that point is x̂(z_λ), whose error is the
distortion. Everything here is per example, in nats; :func:`vdmlab.diffusion.likelihood.bits_per_dim` converts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from vdmlab.checks import check_int
from vdmlab.diffusion.likelihood import GOLDEN
from vdmlab.diffusion.noise import counter_normal
from vdmlab.diffusion.parameterization import Parameterization
from vdmlab.diffusion.process import diffuse
from vdmlab.diffusion.schedules import Schedule
from vdmlab.diffusion.weighting import Weighting

PROFILE_DRAW = 1_000_003  # first counter-noise draw number of the profile (the ELBO's own draws are 0..S)
DISTORTION_DRAW = 2_000_003  # first draw number of the distortion points


def bin_edges(logsnr_min: float, logsnr_max: float, num_bins: int) -> Tensor:
    """K + 1 equal-width bin edges over [λ_min, λ_max], float64."""
    num_bins = check_int("num_bins", num_bins, 1)
    if not logsnr_min < logsnr_max:
        raise ValueError(f"the profile needs logsnr_min < logsnr_max, got {logsnr_min} and {logsnr_max}")
    return torch.linspace(float(logsnr_min), float(logsnr_max), num_bins + 1, dtype=torch.float64)


def example_offsets(example_ids: Tensor, seed: int) -> Tensor:
    """Per-example offsets u_x = frac(u + id·φ) ∈ [0, 1), a pure function of (seed, id), float64 ``[B]``."""
    u = torch.rand((), generator=torch.Generator().manual_seed(int(seed))).item()
    return torch.remainder(u + example_ids.to(torch.float64) * GOLDEN, 1.0)


def stratified_logsnr(edges: Tensor, offsets: Tensor, draws: int) -> Tensor:
    """λ = lo_k + width_k·(j + u_x)/S: S stratified draws in every bin, ``[B, K, S]`` float64 (one per stratum)."""
    draws = check_int("draws", draws, 1)
    lo, width = edges[:-1], edges[1:] - edges[:-1]
    frac = (torch.arange(draws, dtype=torch.float64, device=offsets.device)[None, None, :] + offsets[:, None, None]) / draws
    return lo.to(offsets.device)[None, :, None] + width.to(offsets.device)[None, :, None] * frac


def half_squared_error(x: Tensor, logsnr: Tensor, eps: Tensor, *, net: nn.Module, parameterization: Parameterization,
                       cond=None) -> tuple[Tensor, Tensor]:
    """(½‖ε − ε̂(z_λ; λ)‖² per example, the integrand of eq. (3.134) per unit λ; and x̂(z_λ)), ``[B]`` and like x."""
    z_t = diffuse(x, logsnr, eps)
    prediction = parameterization.predict(net, z_t, logsnr, cond=cond)
    return 0.5 * (eps - prediction.eps_hat.to(eps.dtype)).pow(2).flatten(1).sum(1), prediction.x_hat.to(x.dtype)


@dataclass
class ProfileTerms:
    """Per-example bin means of one batch, each ``[B, K]`` in nats per unit λ (``scored``: one per weighting)."""

    elbo: Tensor  # h_k = mean over the bin's draws of ½‖ε − ε̂‖²: the unweighted ELBO integrand
    weighted: Tensor  # mean of w(λ)·½‖ε − ε̂‖² with the trained weighting: the integrand of L_w, eq. (4.123)
    scored: dict[str, Tensor]  # the same under other weightings (the cross-objective matrix)


def profile_terms(
    x: Tensor,
    *,
    net: nn.Module,
    schedule: Schedule,
    weighting: Weighting,
    parameterization: Parameterization,
    edges: Tensor,
    draws: int,
    example_ids: Tensor,
    seed: int = 0,
    cond=None,
    scored_with: Mapping[str, Weighting] | None = None,
) -> ProfileTerms:
    """Bin means of the ELBO integrand ½‖ε − ε̂(z_λ)‖² (eq. (3.134)) and of w(λ) times it (eqs. (4.123), (4.150)).

    ``draws`` stratified λ per bin and example (:func:`stratified_logsnr`), ε counter-based from (seed, id, draw).
    ``scored_with`` names further weightings whose weighted integrands are averaged from the same draws; a weighting
    that reads p(λ) gets the density of ``schedule``.
    """
    batch, num_bins = x.shape[0], edges.numel() - 1
    ids = example_ids.to(x.device)
    logsnr_all = stratified_logsnr(edges.to(x.device), example_offsets(ids, seed), draws)  # [B, K, S] float64
    weightings = {"__trained__": weighting, **dict(scored_with or {})}
    sums = {name: torch.zeros(batch, num_bins, dtype=torch.float64, device=x.device) for name in weightings}
    elbo = torch.zeros(batch, num_bins, dtype=torch.float64, device=x.device)
    for k in range(num_bins):
        noise = counter_normal(seed, ids, range(PROFILE_DRAW + k * draws, PROFILE_DRAW + (k + 1) * draws),
                               tuple(x.shape[1:]), dtype=x.dtype)  # [S, B, ...]
        for j in range(draws):
            logsnr = logsnr_all[:, k, j]
            h, _ = half_squared_error(x, logsnr.to(x.dtype), noise[j], net=net, parameterization=parameterization, cond=cond)
            h = h.detach().to(torch.float64)
            elbo[:, k] += h / draws
            density = schedule.density(logsnr.to(x.dtype)).detach().to(torch.float64)
            for name, w in weightings.items():
                sums[name][:, k] += w(logsnr, density).to(torch.float64) * h / draws
    trained = sums.pop("__trained__")
    return ProfileTerms(elbo=elbo, weighted=trained, scored=sums)


def distortion_terms(x: Tensor, *, net: nn.Module, parameterization: Parameterization, logsnr_points: Tensor,
                     example_ids: Tensor, seed: int = 0, cond=None) -> Tensor:
    """Mean squared error per dimension of x̂(z_λ) against x at each λ of ``logsnr_points``, ``[B, P]`` float64."""
    ids = example_ids.to(x.device)
    points = logsnr_points.to(x.device)
    noise = counter_normal(seed, ids, range(DISTORTION_DRAW, DISTORTION_DRAW + points.numel()), tuple(x.shape[1:]),
                           dtype=x.dtype)
    out = []
    for p in range(points.numel()):
        logsnr = points[p].expand(x.shape[0]).to(x.dtype)
        _, x_hat = half_squared_error(x, logsnr, noise[p], net=net, parameterization=parameterization, cond=cond)
        out.append((x_hat - x).pow(2).flatten(1).mean(1).detach().to(torch.float64))
    return torch.stack(out, 1)


def mean_and_se(values: Tensor) -> tuple[Tensor, Tensor]:
    """Mean over examples (dim 0) and its standard error sqrt(s²/n), float64."""
    values = values.to(torch.float64)
    n = values.shape[0]
    se = values.std(0, unbiased=True) / n**0.5 if n > 1 else torch.full_like(values[0], float("nan"))
    return values.mean(0), se


def bin_integral(values: Tensor, edges: Tensor) -> Tensor:
    """Σ_k width_k·h_k per example, ``[N]``: the integral over [λ_min, λ_max] of the binned integrand ``[N, K]``."""
    return values.to(torch.float64) @ (edges[1:] - edges[:-1]).to(values.device, torch.float64)


def cumulative_rate(values: Tensor, edges: Tensor, prior: Tensor) -> Tensor:
    """Rate from λ_min up to each edge, prior + ∫_{λ_min}^{λ} h (Ho et al. 2020 §4.3), per example ``[N, K + 1]``."""
    steps = values.to(torch.float64) * (edges[1:] - edges[:-1]).to(values.device, torch.float64)
    return torch.cat([prior.to(torch.float64)[:, None], prior.to(torch.float64)[:, None] + steps.cumsum(1)], 1)
