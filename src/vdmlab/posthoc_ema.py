"""Post-hoc EMA (Karras et al. 2024, "Analyzing and Improving the Training Dynamics of Diffusion Models", EDM2 §3
and App. C): the power-function EMA profiles tracked during training and the least-squares solve that reconstructs,
after training, the weights of any other profile from snapshots of the tracked ones.

A power-function EMA with exponent γ averages the training weights θ(τ), 0 < τ ≤ t, with the density
p_{t,γ}(τ) = (γ + 1)·τ^γ / t^(γ+1); its relative standard deviation σ_rel (the EMA length as a fraction of the
training time t) depends on γ alone. Time is counted in optimizer steps (EDM2 counts images: the same profiles at a
constant batch size). Pure functions in float64; no Lightning, no network.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

#: σ_rel of γ = 0, the uniform average of all the weights so far (1/√12): the longest profile
SIGMA_REL_MAX = float(np.sqrt(1 / 12))


def sigma_rel_from_gamma(gamma: np.ndarray | float) -> np.ndarray:
    """σ_rel = √(γ+1) / ((γ+2)·√(γ+3)), the relative standard deviation of p_{t,γ}, EDM2 eq. (123)."""
    gamma = np.asarray(gamma, dtype=np.float64)
    return np.sqrt((gamma + 1) / (gamma + 2) ** 2 / (gamma + 3))


def gamma_from_sigma_rel(sigma_rel: np.ndarray | float) -> np.ndarray:
    """γ of a given σ_rel: the largest real root of γ³ + 7γ² + (16 − σ_rel⁻²)γ + (12 − σ_rel⁻²), EDM2 eq. (126)."""
    sigma_rel = np.asarray(sigma_rel, dtype=np.float64)
    if np.any(sigma_rel <= 0) or np.any(sigma_rel >= SIGMA_REL_MAX):
        raise ValueError(f"sigma_rel={sigma_rel.tolist()} is out of range: a power-function EMA with γ > 0 has "
                         f"0 < σ_rel < 1/√12 = {SIGMA_REL_MAX:.4f} (the uniform average); EDM2 uses 0.01 ... 0.25")
    inv = sigma_rel.reshape(-1) ** -2
    roots = [np.roots([1.0, 7.0, 16.0 - s, 12.0 - s]) for s in inv]
    return np.array([r[np.abs(r.imag) < 1e-9].real.max() for r in roots]).reshape(sigma_rel.shape)


def power_ema_beta(gamma: float, t: int | float) -> float:
    """β_γ(t) = (1 − 1/t)^(γ+1): θ̂(t) = β·θ̂(t−1) + (1 − β)·θ(t) tracks p_{t,γ} (EDM2 eq. (127), one step per unit)."""
    return float((1.0 - 1.0 / t) ** (gamma + 1.0))


def power_profile(tau: np.ndarray, t: float, gamma: float) -> np.ndarray:
    """p_{t,γ}(τ) = (γ+1)·τ^γ / t^(γ+1) on 0 < τ ≤ t and 0 after t, EDM2 eqs. (108, 121)."""
    tau = np.asarray(tau, dtype=np.float64)
    return np.where(tau <= t, (gamma + 1) * tau ** gamma / t ** (gamma + 1), 0.0)


def profile_inner_product(t_a: np.ndarray, gamma_a: np.ndarray, t_b: np.ndarray, gamma_b: np.ndarray) -> np.ndarray:
    """⟨p_{t_a,γ_a}, p_{t_b,γ_b}⟩ = ∫ p_a p_b dτ = (γ_a+1)(γ_b+1)·(t_a/t_b)^e / ((γ_a+γ_b+1)·max(t_a, t_b)),
    e = γ_b if t_a < t_b else −γ_a; EDM2 eq. (151) (broadcasts)."""
    t_a, gamma_a, t_b, gamma_b = (np.asarray(v, dtype=np.float64) for v in (t_a, gamma_a, t_b, gamma_b))
    exponent = np.where(t_a < t_b, gamma_b, -gamma_a)
    return (gamma_a + 1) * (gamma_b + 1) * (t_a / t_b) ** exponent / ((gamma_a + gamma_b + 1) * np.maximum(t_a, t_b))


def solve_coefficients(t_in: np.ndarray, gamma_in: np.ndarray, t_out: float, gamma_out: float) -> np.ndarray:
    """Coefficients x_i with Σ_i x_i·p_{t_i,γ_i} closest in L² to p_{t_out,γ_out}: the normal equations A x = b,
    A_ij = ⟨p_i, p_j⟩, b_i = ⟨p_i, p_out⟩, then normalised to Σ x_i = 1 (EDM2 App. C.3, Algorithm 3)."""
    t_in, gamma_in = np.broadcast_arrays(np.asarray(t_in, dtype=np.float64), np.asarray(gamma_in, dtype=np.float64))
    gram = profile_inner_product(t_in[:, None], gamma_in[:, None], t_in[None, :], gamma_in[None, :])
    target = profile_inner_product(t_in, gamma_in, np.float64(t_out), np.float64(gamma_out))
    x = np.linalg.lstsq(gram, target, rcond=None)[0]  # the Gram matrix of close snapshots is near-singular
    return x / x.sum()


def combine_state_dicts(state_dicts: list[dict[str, Tensor]], coefficients: np.ndarray) -> dict[str, Tensor]:
    """Σ_i x_i·θ̂_i for every floating-point entry (accumulated in float64); other entries from the last state."""
    combined = {}
    for key, last in state_dicts[-1].items():
        if not torch.is_floating_point(last):
            combined[key] = last.clone()
            continue
        total = torch.zeros_like(last, dtype=torch.float64)
        for x, state in zip(coefficients, state_dicts):
            total += float(x) * state[key].to(torch.float64)
        combined[key] = total.to(last.dtype)
    return combined
