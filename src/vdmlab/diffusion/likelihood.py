"""The full variational bound: diffusion term + prior KL + discretized decoder, eq. (3.60), and bits/dim.

Data are quantized to K levels in [-1, 1] (level k at -1 + 2k/(K-1)); the decoder p(x|z_0) puts logits
-½·SNR(0)·(z_0/α_0 - x_k)² on the K values, as in VDM. Evaluation always reports this unweighted bound
(docs/architecture.md, "The one loss"), whatever weighting was trained.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from vdmlab.checks import check_int
from vdmlab.diffusion.losses import diffusion_loss, low_discrepancy_times
from vdmlab.diffusion.noise import counter_normal
from vdmlab.diffusion.parameterization import Parameterization
from vdmlab.diffusion.process import alpha_sigma, diffuse, expand_like, log_alpha2_sigma2
from vdmlab.diffusion.schedules import Schedule
from vdmlab.diffusion.weighting import ELBOWeighting


def prior_kl(x: Tensor, logsnr_1: Tensor) -> Tensor:
    """D_KL(q(z_1|x) ‖ N(0, I)) = ½Σ(α²x² + σ² - 1 - log σ²) = ½Σ(α²(x² - 1) - log σ²), eq. (3.60); ``[B]``."""
    logsnr_1 = expand_like(logsnr_1, x)
    alpha2 = torch.sigmoid(logsnr_1)
    _, log_sigma2 = log_alpha2_sigma2(logsnr_1)
    return 0.5 * (alpha2 * (x.pow(2) - 1.0) - log_sigma2).flatten(1).sum(1)


def levels_to_values(levels: Tensor, num_levels: int) -> Tensor:
    """The K-level grid: integer levels k ∈ {0, …, K-1} → float32 data values ``-1 + 2k/(K-1)``.

    The one formula for the grid (data, decoder and samples), so that values from every code path compare equal.
    """
    num_levels = check_int("num_levels", num_levels, 2)
    return torch.as_tensor(levels).to(torch.float32) * (2.0 / (num_levels - 1)) - 1.0


def values_to_levels(x: Tensor, num_levels: int) -> Tensor:
    """Index k (int64) of the grid level nearest to each value of x, which is first clamped to [-1, 1]."""
    num_levels = check_int("num_levels", num_levels, 2)
    x = torch.as_tensor(x).clamp(-1.0, 1.0)
    return torch.round((x + 1.0) * ((num_levels - 1) / 2.0)).to(torch.int64)


def levels(num_levels: int, device=None, dtype=torch.float32) -> Tensor:
    """The K data values -1 + 2k/(K-1), k = 0..K-1."""
    return levels_to_values(torch.arange(num_levels, device=device), num_levels).to(dtype)


def decoder_logits(z_0: Tensor, logsnr_0: Tensor, num_levels: int) -> Tensor:
    """Logits -½·SNR(0)·(z_0/α_0 - x_k)² of the discretized decoder p(x|z_0) over K levels (VDM), ``[..., K]``."""
    alpha_0, _ = alpha_sigma(expand_like(logsnr_0, z_0))
    snr_0 = torch.exp(expand_like(logsnr_0, z_0))
    x_vals = levels(num_levels, device=z_0.device, dtype=z_0.dtype)
    return -0.5 * snr_0.unsqueeze(-1) * ((z_0 / alpha_0).unsqueeze(-1) - x_vals) ** 2


def decoder_nll(x: Tensor, z_0: Tensor, logsnr_0: Tensor, num_levels: int) -> Tensor:
    """-log p(x|z_0) of the discretized decoder, summed over dimensions, eq. (3.54); ``[B]``."""
    log_probs = torch.log_softmax(decoder_logits(z_0, logsnr_0, num_levels), dim=-1)
    idx = values_to_levels(x, num_levels).unsqueeze(-1)
    return -log_probs.gather(-1, idx).squeeze(-1).flatten(1).sum(1)


def decode(z_0: Tensor, logsnr_0: Tensor, num_levels: int) -> Tensor:
    """The mode of p(x|z_0): the level nearest to z_0/α_0, returned as data values in [-1, 1]."""
    alpha_0, _ = alpha_sigma(expand_like(logsnr_0, z_0))
    return levels_to_values(values_to_levels(z_0 / alpha_0, num_levels), num_levels).to(z_0.dtype)


def bits_per_dim(nats: Tensor, data_dim: int) -> Tensor:
    """Convert nats per example to bits per dimension: ÷ (D · ln 2)."""
    return nats / (data_dim * math.log(2.0))


def balanced_mixture_bpd(bpd_cond: Tensor | float, num_classes: int, data_dim: int) -> Tensor | float:
    """Bound on -log₂ p(x)/D of the mixture p(x) = (1/C)·Σ_y p(x|y): p(x) ≥ p(x|y)/C for any y, so bpd(x|y) + log₂C/D."""
    return bpd_cond + math.log2(check_int("num_classes", num_classes, 1)) / check_int("data_dim", data_dim, 1)


def endpoint_terms(x: Tensor, schedule: Schedule, eps: Tensor, num_levels: int) -> tuple[Tensor, Tensor]:
    """The prior KL at λ(1) and the decoder NLL at z_0 = α_0·x + σ_0·ε, eq. (3.60), each ``[B]`` nats.

    They depend on the schedule only through its endpoints, differentiably so when it trains them
    (``schedule.trainable_endpoints``).
    """
    logsnr_1, logsnr_0 = (e.expand(x.shape[0]) for e in schedule.endpoints(x))
    z_0 = diffuse(x, logsnr_0, eps)
    return prior_kl(x, logsnr_1), decoder_nll(x, z_0, logsnr_0, num_levels)


@dataclass
class ELBOTerms:
    """The three terms of the negative ELBO, eq. (3.60), each ``[B]`` in nats, and their sum."""

    diffusion: Tensor
    prior: Tensor
    reconstruction: Tensor

    @property
    def total(self) -> Tensor:
        """-VLB(x) = reconstruction + prior + diffusion, eq. (3.60)."""
        return self.diffusion + self.prior + self.reconstruction


GOLDEN = 0.6180339887498949  # frac of the golden ratio: t_i = frac(u + i·φ) is low-discrepancy in i


def per_example_normal(seeds: Tensor, shape: tuple[int, ...], device=None, dtype=torch.float32) -> Tensor:
    """Standard normal rows ``[B, *shape]`` where row i depends only on ``seeds[i]`` (taken modulo 2^32): the same
    whatever the batch, the DDP rank or the device; made in one batched call by :func:`noise.counter_normal`."""
    seeds = torch.as_tensor(seeds).to(device)
    return counter_normal(0, seeds, 1, tuple(shape), dtype=dtype)[0]


@dataclass(frozen=True)
class ELBOModel:
    """What the bound is computed of: the denoiser ``net`` with its schedule and parameterization, the data's K
    levels, the time discretization (None: continuous time, eq. (3.134); T: the discrete-T bound, eq. (A.38)) and the
    λ draws per example for the diffusion term."""

    net: nn.Module
    schedule: Schedule
    parameterization: Parameterization
    num_levels: int
    timesteps: int | None = None
    num_samples: int = 1


def negative_elbo(
    x: Tensor,
    model: ELBOModel,
    *,
    generator: torch.Generator | None = None,
    example_ids: Tensor | None = None,
    seed: int = 0,
    cond=None,
) -> ELBOTerms:
    """-VLB(x) per example with ``model.num_samples`` low-discrepancy λ draws for the diffusion term, eq. (3.60).

    The noise comes from ``generator``, or, when ``example_ids`` (dataset indices) are given, from the
    counter-based generator of :mod:`vdmlab.diffusion.noise` (ε a pure function of (seed, id, draw), made on
    the device in one batched call) with times t = frac(u + id·φ): then every example's estimate is independent
    of how the data are batched or sharded across DDP ranks. ``cond`` (e.g. class labels) conditions the network:
    the bound is then on -log p(x | cond).
    """
    batch, num_samples = x.shape[0], model.num_samples
    if example_ids is None:
        t_0 = low_discrepancy_times(batch, generator=generator, device=x.device)
        draws = [torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype) for _ in range(num_samples + 1)]
    else:
        ids = example_ids.to(x.device)
        u = torch.rand((), generator=torch.Generator().manual_seed(seed)).item()  # host generator: no device sync
        wide = torch.float32 if x.device.type == "mps" else torch.float64
        t_0 = torch.remainder(u + ids.to(wide) * GOLDEN, 1.0).to(x.dtype)
        draws = counter_normal(seed, ids, num_samples + 1, x.shape[1:], dtype=x.dtype)  # [S + 1, B, ...], on device
    prior, reconstruction = endpoint_terms(x, model.schedule, draws[0], model.num_levels)
    diffusion = torch.zeros(batch, device=x.device, dtype=x.dtype)
    for k in range(num_samples):
        t = torch.remainder(t_0 + k / num_samples, 1.0)  # stratified per example and across the batch
        terms = diffusion_loss(
            x, t, draws[k + 1], net=model.net, schedule=model.schedule, weighting=ELBOWeighting(),
            parameterization=model.parameterization, timesteps=model.timesteps, cond=cond,
        )
        diffusion = diffusion + terms.elbo.detach() / num_samples
    return ELBOTerms(diffusion=diffusion, prior=prior, reconstruction=reconstruction)
