"""Exact likelihood of the probability-flow ODE in log-SNR coordinates (Song et al. 2021; i-DODE, Zheng et al. 2023).

The probability-flow ODE. With y = z/α and η = σ/α = e^{-λ/2} the deterministic sampler of §3 (DDIM, the
``heun`` sampler) is dy/dη = ε̂(z; λ). Since dα/dλ = ½ασ² (from α² = sigmoid(λ), eq. (A.1)) and dη/dλ = -½η,

    dz/dλ = (dα/dλ) y + α (dy/dη)(dη/dλ) = ½(σ² z - σ ε̂(z; λ)) = ½σ²(z + ∇_z log q(z; λ)),

using ε̂ = -σ ∇ log q (eq. (4.19)). Its divergence is ∇·f = ½σ² D - ½σ tr(∂ε̂/∂z). Along a solution the
instantaneous change of variables (Chen et al. 2018) gives d log p(z_λ)/dλ = -∇·f, so integrating from
λ_max (the data end, t = 0) down to λ_min (t = 1):

    log p_0(z_0) = log p_1(z_1) + ∫_{λ_max}^{λ_min} ∇·f dλ,

with the model's prior p_1(z_1) = N(0, I) (q(z_1) is only approximately N(0, I), eq. (3.60)'s prior term).
Data x enter at λ_max as z_0 = α_0 y, so the continuous density is log p(y) = log p_0(α_0 y) + D log α_0.

Discrete data on K levels (spacing Δ = 2/(K - 1) in [-1, 1]): a dequantization q(y|x) supported on the bin
x + [-Δ/2, Δ/2]^D gives the variational bound -log P(x) ≤ E_q[-log p(y) + log q(y|x)] (the bins are
disjoint, so P sums to at most one), and with S draws the importance-weighted bound
-log P(x) ≤ -log (1/S) Σ_s p(y_s)/q(y_s|x). Uniform: log q = -D log Δ. Truncated normal (i-DODE):
y = x + η_0 u with u ~ N(0, I) truncated to the bin, η_0 = σ_0/α_0, so that z_0 = α_0 x + σ_0 u is the
diffusion's own noise at λ_max restricted to the bin.

Everything works with any parameterization (through ``denoise(z, λ).eps_hat``) and any schedule. Fixed-grid
solvers (Heun, RK4) make the same number of network calls for every batch, hence on every DDP rank; the
adaptive dopri5 (torchdiffeq) does not and is refused under torch.distributed.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from vdmlab.diffusion.likelihood import per_example_normal
from vdmlab.diffusion.parameterization import Denoiser
from vdmlab.diffusion.process import alpha_sigma, expand_like
from vdmlab.diffusion.schedules import Schedule, logsnr_grid
from vdmlab.seeds import ODE_DEQUANTIZATION_STRIDE, ODE_DRAW_STRIDE, ODE_PROBE_STRIDE

State = tuple[Tensor, Tensor]  # (z [B, ...], Δ log p accumulator [B, P])
Drift = Callable[[Tensor, State], State]


def standard_normal_log_prob(z: Tensor) -> Tensor:
    """log N(z; 0, I) summed over dimensions, the prior p(z_1) of eq. (3.60); ``[B]``."""
    return -0.5 * (z.pow(2) + math.log(2.0 * math.pi)).flatten(1).sum(1)


def pf_ode_drift(z: Tensor, eps_hat: Tensor, logsnr: Tensor) -> Tensor:
    """dz/dλ = ½(σ² z - σ ε̂(z; λ)), the probability-flow ODE in λ (the ``heun`` sampler's dy/dη = ε̂, §3)."""
    _, sigma = alpha_sigma(expand_like(logsnr, z))
    return 0.5 * (sigma.pow(2) * z - sigma * eps_hat)


def pf_ode_divergence(trace_jac_eps: Tensor, logsnr: Tensor, data_dim: int) -> Tensor:
    """∇·f = ½σ² D - ½σ tr(∂ε̂/∂z) of the drift ``pf_ode_drift``; ``trace_jac_eps`` ``[B, P]``."""
    sigma = torch.sigmoid(-logsnr).sqrt().unsqueeze(-1)
    return 0.5 * sigma.pow(2) * data_dim - 0.5 * sigma * trace_jac_eps


# ------------------------------------------------------------------------------------------- divergence
class ExactDivergence:
    """tr(∂ε̂/∂z) by autograd, one backward pass per dimension (fine for D = 64 digits or 2-D toys)."""

    def probes(self, z: Tensor, generator: torch.Generator | None = None, example_ids: Tensor | None = None,
               seed: int = 0) -> Tensor | None:
        """No probes: the trace is exact (one estimate, P = 1)."""
        return None

    def trace(self, eps_hat: Tensor, z: Tensor, probes: Tensor | None) -> Tensor:
        """Σ_i ∂ε̂_i/∂z_i per example, ``[B, 1]``."""
        flat = eps_hat.flatten(1)
        diag = []
        for i in range(flat.shape[1]):
            (grad,) = torch.autograd.grad(flat[:, i].sum(), z, retain_graph=True)
            diag.append(grad.flatten(1)[:, i])
        return torch.stack(diag, 1).sum(1, keepdim=True)


def rademacher(normal: Tensor) -> Tensor:
    """Rademacher ±1 probes from standard normal draws (their signs)."""
    return torch.where(normal >= 0, torch.ones_like(normal), -torch.ones_like(normal))


PROBES = {"rademacher": rademacher, "gaussian": lambda normal: normal}


class HutchinsonDivergence:
    """Hutchinson's estimator tr(J) ≈ vᵀJv with E[vvᵀ] = I, ``num_probes`` probes kept fixed along the path.

    Each probe gives its own estimate of the whole log-likelihood (the ``[B, P]`` accumulator), so the
    estimate is their mean and its standard error is their spread / √P. ``probe`` is "rademacher" (the
    lower-variance choice) or "gaussian".
    """

    def __init__(self, num_probes: int = 1, probe: str = "rademacher"):
        if probe not in PROBES:
            raise ValueError(f"ode.divergence.probe={probe!r} is invalid: choose one of {', '.join(PROBES)}")
        if int(num_probes) < 1:
            raise ValueError(f"ode.divergence.num_probes must be >= 1, got {num_probes}")
        self.num_probes, self.probe = int(num_probes), probe

    def probes(self, z: Tensor, generator: torch.Generator | None = None, example_ids: Tensor | None = None,
               seed: int = 0) -> Tensor:
        """Probes ``[P, B, ...]``; per example from ``example_ids`` (independent of batching and DDP rank)."""
        shape = (self.num_probes, *z.shape)
        if example_ids is None:
            normal = torch.randn(shape, generator=generator, device=z.device, dtype=z.dtype)
        else:
            ids = example_ids.long().cpu() * self.num_probes
            normal = torch.stack([per_example_normal(ids + p + ODE_PROBE_STRIDE * (seed + 1), z.shape[1:], z.device, z.dtype)
                                  for p in range(self.num_probes)])
        return PROBES[self.probe](normal)

    def trace(self, eps_hat: Tensor, z: Tensor, probes: Tensor) -> Tensor:
        """vᵀ(∂ε̂/∂z)v per example and probe, ``[B, P]`` (the P vector-Jacobian products batched by vmap)."""
        (vjp,) = torch.autograd.grad(eps_hat, z, grad_outputs=probes, retain_graph=True, is_grads_batched=True)
        return (vjp * probes).flatten(2).sum(2).transpose(0, 1)


# ------------------------------------------------------------------------------------------------ solvers
def _add(state: State, scale: Tensor, *derivs: State, weights: tuple[float, ...] = (1.0,)) -> State:
    """state + scale · Σ_k w_k · deriv_k, componentwise over the (z, Δ) pair."""
    return tuple(s + scale * sum(w * d[i] for w, d in zip(weights, derivs)) for i, s in enumerate(state))


class FixedGridSolver(abc.ABC):
    """Base of Heun and RK4 on the schedule's grid λ(0) > … > λ(1) at t_i = i/steps (equal calls on every rank)."""

    evals_per_step = 1

    def __init__(self, steps: int = 32):
        if int(steps) < 1:
            raise ValueError(f"ode.solver.steps must be >= 1, got {steps}")
        self.steps = int(steps)

    @property
    def num_evaluations(self) -> int:
        """Network calls (drift evaluations) per solve: the same for every batch."""
        return self.steps * self.evals_per_step

    def __call__(self, drift: Drift, state: State, schedule: Schedule) -> State:
        grid = logsnr_grid(schedule, self.steps, device=state[0].device).to(state[0].dtype).flip(0)
        for lam_a, lam_b in zip(grid[:-1], grid[1:]):
            state = self.step(drift, state, lam_a, lam_b - lam_a)
        return state

    @abc.abstractmethod
    def step(self, drift: Drift, state: State, lam: Tensor, h: Tensor) -> State:
        """One step of the method from λ to λ + h."""


class HeunSolver(FixedGridSolver):
    """Heun's (explicit trapezoidal) method, global error O(N⁻²), 2 network calls per step."""

    evals_per_step = 2

    def step(self, drift: Drift, state: State, lam: Tensor, h: Tensor) -> State:
        """One Heun step from λ to λ + h."""
        k1 = drift(lam, state)
        k2 = drift(lam + h, _add(state, h, k1))
        return _add(state, h, k1, k2, weights=(0.5, 0.5))


class RK4Solver(FixedGridSolver):
    """The classical 4th-order Runge-Kutta method, global error O(N⁻⁴), 4 network calls per step."""

    evals_per_step = 4

    def step(self, drift: Drift, state: State, lam: Tensor, h: Tensor) -> State:
        """One RK4 step from λ to λ + h."""
        k1 = drift(lam, state)
        k2 = drift(lam + h / 2, _add(state, h / 2, k1))
        k3 = drift(lam + h / 2, _add(state, h / 2, k2))
        k4 = drift(lam + h, _add(state, h, k3))
        return _add(state, h, k1, k2, k3, k4, weights=(1 / 6, 1 / 3, 1 / 3, 1 / 6))


class Dopri5Solver:
    """Adaptive Dormand-Prince 5(4) from torchdiffeq with tolerances; single process only.

    The number of network calls depends on the data, so DDP ranks would make different numbers of calls and
    hang in the collectives of a DDP-wrapped network: refused when torch.distributed is initialised.
    """

    def __init__(self, rtol: float = 1e-5, atol: float = 1e-5):
        self.rtol, self.atol = float(rtol), float(atol)
        self.num_evaluations = 0

    def __call__(self, drift: Drift, state: State, schedule: Schedule) -> State:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            raise RuntimeError(
                "ode.solver=dopri5 is adaptive: DDP ranks would make different numbers of network calls and hang; "
                "use a fixed-grid solver under DDP (ode.solver=heun or ode.solver=rk4 with ode.solver.steps=N)"
            )
        from torchdiffeq import odeint

        self.num_evaluations = 0

        def counted(lam: Tensor, s: State) -> State:
            self.num_evaluations += 1
            return drift(lam, s)

        ends = torch.tensor([schedule.logsnr_max, schedule.logsnr_min], device=state[0].device, dtype=state[0].dtype)
        solution = odeint(counted, state, ends, rtol=self.rtol, atol=self.atol, method="dopri5")
        return tuple(s[-1] for s in solution)


# ----------------------------------------------------------------------------------------- log-likelihood
@dataclass
class ODELogProb:
    """log p_0(z_0) per example and probe ``[B, P]``, the prior term at z_1 ``[B]`` and z_1 itself."""

    log_prob_probes: Tensor
    prior: Tensor
    z_1: Tensor

    @property
    def log_prob(self) -> Tensor:
        """log p_0(z_0) averaged over the divergence probes, ``[B]``."""
        return self.log_prob_probes.mean(1)

    @property
    def log_prob_se(self) -> Tensor:
        """Standard error of ``log_prob`` over the probes (0 for the exact divergence), ``[B]``."""
        p = self.log_prob_probes.shape[1]
        if p == 1:
            return torch.zeros_like(self.log_prob)
        return (self.log_prob_probes.var(1, unbiased=True) / p).sqrt()


def ode_log_prob(
    denoise: Denoiser,
    z_0: Tensor,
    schedule: Schedule,
    solver: Callable | None = None,
    divergence: ExactDivergence | HutchinsonDivergence | None = None,
    prior_log_prob: Callable[[Tensor], Tensor] = standard_normal_log_prob,
    generator: torch.Generator | None = None,
    example_ids: Tensor | None = None,
    seed: int = 0,
) -> ODELogProb:
    """log p_0(z_0) = log p_1(z_1) + ∫_{λ_max}^{λ_min} ∇·f dλ along the probability-flow ODE (module docstring).

    ``solver`` defaults to ``HeunSolver()``, ``divergence`` to ``ExactDivergence()``.
    """
    solver = solver if solver is not None else HeunSolver()
    divergence = divergence if divergence is not None else ExactDivergence()
    batch, data_dim = z_0.shape[0], z_0[0].numel()
    probes = divergence.probes(z_0, generator=generator, example_ids=example_ids, seed=seed)

    def drift(logsnr: Tensor, state: State) -> State:
        lam = logsnr.to(z_0.dtype).expand(batch)
        with torch.enable_grad():
            z = state[0].detach().requires_grad_(True)
            eps_hat = denoise(z, lam).eps_hat
            trace = divergence.trace(eps_hat, z, probes)
        return pf_ode_drift(z, eps_hat, lam).detach(), pf_ode_divergence(trace, lam, data_dim).detach()

    num_estimates = 1 if probes is None else probes.shape[0]
    start = (z_0.detach(), torch.zeros(batch, num_estimates, device=z_0.device, dtype=z_0.dtype))
    z_1, delta = solver(drift, start, schedule)
    prior = prior_log_prob(z_1)
    return ODELogProb(log_prob_probes=prior.unsqueeze(1) + delta, prior=prior, z_1=z_1)


def data_log_prob(denoise: Denoiser, y: Tensor, schedule: Schedule, **kwargs) -> ODELogProb:
    """Continuous density of data y: log p(y) = log p_0(α_0 y) + D log α_0, z_0 = α_0 y at λ_max."""
    logsnr_0 = torch.full((y.shape[0],), float(schedule.logsnr_max), device=y.device, dtype=y.dtype)
    alpha_0, _ = alpha_sigma(logsnr_0)
    result = ode_log_prob(denoise, expand_like(alpha_0, y) * y, schedule, **kwargs)
    jacobian = (y[0].numel() * torch.log(alpha_0)).unsqueeze(1)
    return ODELogProb(log_prob_probes=result.log_prob_probes + jacobian, prior=result.prior, z_1=result.z_1)


# -------------------------------------------------------------------------------------- dequantization
def bin_width(num_levels: int) -> float:
    """Δ = 2/(K - 1), the spacing of the K data levels in [-1, 1]."""
    return 2.0 / (num_levels - 1)


class UniformDequantization:
    """y = x + Δ(u - ½), u ~ U(0, 1)^D: uniform on the level's bin, log q(y|x) = -D log Δ."""

    def __call__(self, x: Tensor, normal: Tensor, num_levels: int, logsnr_max: float) -> tuple[Tensor, Tensor]:
        """(y, log q(y|x) ``[B]``) from standard normal draws ``normal`` (u = Φ(normal))."""
        width = bin_width(num_levels)
        u = torch.special.ndtr(normal.double()).to(x.dtype)
        log_q = torch.full((x.shape[0],), -x[0].numel() * math.log(width), device=x.device, dtype=x.dtype)
        return x + width * (u - 0.5), log_q


class TruncatedNormalDequantization:
    """i-DODE's y = x + η u, u ~ N(0, I) truncated to the bin |η u| ≤ Δ/2, η = σ_0/α_0 = e^{-λ_max/2} by default.

    Then z_0 = α_0 y = α_0 x + σ_0 u is the forward process's own noise at λ_max (truncated to the bin), where
    the model density is closest to the blurred data (Zheng et al. 2023, §4).
    """

    def __init__(self, scale: float | None = None):
        self.scale = scale

    def __call__(self, x: Tensor, normal: Tensor, num_levels: int, logsnr_max: float) -> tuple[Tensor, Tensor]:
        """(y, log q(y|x) ``[B]``) by the inverse CDF of the truncated normal, in float64."""
        eta = math.exp(-0.5 * logsnr_max) if self.scale is None else float(self.scale)
        tau = bin_width(num_levels) / (2.0 * eta)  # the truncation in units of the std
        lo = torch.special.ndtr(torch.tensor(-tau, dtype=torch.float64))
        mass = torch.special.erf(torch.tensor(tau / math.sqrt(2.0), dtype=torch.float64))  # Φ(τ) - Φ(-τ)
        v = torch.special.ndtr(normal.double())
        u = torch.special.ndtri((lo + v * mass).clamp(1e-300, 1.0 - 1e-16)).clamp(-tau, tau)
        log_density = -0.5 * u.pow(2) - 0.5 * math.log(2.0 * math.pi) - torch.log(mass) - math.log(eta)
        return x + (eta * u).to(x.dtype), log_density.flatten(1).sum(1).to(x.dtype)


@dataclass
class DequantizedNLL:
    """Upper bounds on -log P(x) of discrete data, in nats ``[B]``: the mean over draws and the IW bound."""

    nats: Tensor  # mean over draws of -log p(y_s) + log q(y_s|x) (the variational bound)
    nats_iw: Tensor  # -log (1/S) Σ_s p(y_s)/q(y_s|x) (the importance-weighted bound, tighter)
    nats_se: Tensor  # standard error of ``nats`` over draws and probes
    draws: Tensor  # [B, S] the per-draw bounds

    def bits_per_dim(self, data_dim: int, iw: bool = False) -> Tensor:
        """nats / (D ln 2) per example."""
        return (self.nats_iw if iw else self.nats) / (data_dim * math.log(2.0))


def dequantized_nll(
    x: Tensor,
    denoise: Denoiser,
    schedule: Schedule,
    num_levels: int,
    dequantization: Callable | None = None,
    num_draws: int = 1,
    generator: torch.Generator | None = None,
    example_ids: Tensor | None = None,
    seed: int = 0,
    **ode_kwargs,
) -> DequantizedNLL:
    """-log P(x) ≤ E_q[-log p(y) + log q(y|x)] with ``num_draws`` dequantizations (module docstring).

    ``dequantization`` defaults to ``UniformDequantization()``. With ``example_ids`` the dequantization noise
    and probes are drawn per example, so the result does not depend on batching or on the DDP rank.
    """
    if int(num_draws) < 1:
        raise ValueError(f"ode.num_draws must be >= 1, got {num_draws}")
    dequantization = dequantization if dequantization is not None else UniformDequantization()
    bounds = []
    for s in range(int(num_draws)):
        if example_ids is None:
            normal = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        else:
            ids = example_ids.long().cpu() * int(num_draws) + s + ODE_DEQUANTIZATION_STRIDE * (seed + 1)
            normal = per_example_normal(ids, x.shape[1:], x.device, x.dtype)
        y, log_q = dequantization(x, normal, num_levels, float(schedule.logsnr_max))
        result = data_log_prob(denoise, y, schedule, generator=generator, example_ids=example_ids,
                               seed=seed + ODE_DRAW_STRIDE * s, **ode_kwargs)
        bounds.append(-result.log_prob_probes + log_q.unsqueeze(1))  # [B, P]
    per_draw = torch.stack([b.mean(1) for b in bounds], 1)  # [B, S]
    everything = torch.cat(bounds, 1)  # [B, S·P]
    n = everything.shape[1]
    se = (everything.var(1, unbiased=True) / n).sqrt() if n > 1 else torch.zeros_like(per_draw[:, 0])
    nats_iw = -(torch.logsumexp(-per_draw, 1) - math.log(per_draw.shape[1]))
    return DequantizedNLL(nats=per_draw.mean(1), nats_iw=nats_iw, nats_se=se, draws=per_draw)
