"""Copying and novelty of samples: nearest training images, a near-copy criterion, and the empirical-denoiser gap.

- Distances are Euclidean on the data scale ([-1, 1]) between flattened images. Each sample's distance to its
  nearest training image is compared with the same distance for the real test images (which the model never saw):
  a model that generalises draws samples about as far from the training set as new real images are.
- Near-copy criterion (after Carlini et al. 2023, "Extracting training data from diffusion models"): a sample is a
  near-copy when its nearest training image is closer than ``ratio`` (⅓) of the distance to the second nearest,
  d₁ < ⅓·d₂: it sits on one training image rather than between several. The test split's own rate under the same
  criterion is the reference for what chance closeness looks like.
- The empirical-denoiser gap per λ: the RMS difference between the model's x̂(z_λ) and the optimal denoiser of the
  training set x̂*(z_λ) (:mod:`vdmlab.diffusion.empirical_denoiser`), on inputs noised from test images and from
  training images. Where the gap on test inputs is small, the model maps new images onto training images.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from vdmlab.diffusion.empirical_denoiser import empirical_x_hat
from vdmlab.diffusion.noise import counter_normal
from vdmlab.diffusion.parameterization import Parameterization
from vdmlab.diffusion.process import diffuse

COPY_RATIO = 1 / 3
GAP_DRAW = 3_000_017  # counter-noise draw numbers of the denoiser gap


def nearest_two(queries: Tensor, reference: Tensor, chunk: int = 1024,
                exclude_self: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """(d₁, d₂, index of the nearest): each query's distances to its nearest and second-nearest reference rows; with
    ``exclude_self`` (queries are the reference) a row's distance to itself is skipped."""
    ref = reference.flatten(1).to(torch.float64)
    d1, d2, idx = [], [], []
    for start in range(0, queries.shape[0], chunk):
        part = queries[start:start + chunk].flatten(1).to(device=ref.device, dtype=torch.float64)
        dist = torch.cdist(part, ref)
        if exclude_self:
            rows = torch.arange(part.shape[0], device=ref.device)
            dist[rows, rows + start] = float("inf")
        values, indices = dist.topk(2, dim=1, largest=False)
        d1.append(values[:, 0])
        d2.append(values[:, 1])
        idx.append(indices[:, 0])
    return torch.cat(d1), torch.cat(d2), torch.cat(idx)


def copy_flags(d1: Tensor, d2: Tensor, ratio: float = COPY_RATIO) -> Tensor:
    """Near-copies: d₁ < ratio·d₂ (after Carlini et al. 2023), boolean ``[N]``."""
    return d1 < ratio * d2


def copying_metrics(samples: Tensor, train: Tensor, test: Tensor, ratio: float = COPY_RATIO) -> dict[str, float]:
    """Nearest-training-image distances of ``samples`` and of the real ``test`` images, and near-copy fractions.

    Returns ``copy_fraction`` (samples flagged), ``copy_fraction_test`` (test images flagged: the reference),
    ``nn_dist_median``/``nn_dist_median_test`` (median d₁), ``nn_dist_ratio`` (their ratio: < 1 means samples sit
    closer to the training set than new real images do), the 10 % quantiles of d₁ and ``copy_n`` (samples).
    """
    d1, d2, _ = nearest_two(samples, train)
    t1, t2, _ = nearest_two(test, train)
    med, med_test = d1.median(), t1.median()
    return {"copy_fraction": float(copy_flags(d1, d2, ratio).double().mean()),
            "copy_fraction_test": float(copy_flags(t1, t2, ratio).double().mean()),
            "nn_dist_median": float(med), "nn_dist_median_test": float(med_test),
            "nn_dist_ratio": float(med / med_test),
            "nn_dist_q10": float(d1.quantile(0.1)), "nn_dist_q10_test": float(t1.quantile(0.1)),
            "copy_n": int(samples.shape[0]), "copy_ratio": float(ratio)}


@torch.no_grad()
def denoiser_gap(net: nn.Module, parameterization: Parameterization, train: Tensor, inputs: Tensor, logsnr_points: Tensor,
                 seed: int = 0, cond=None) -> tuple[Tensor, Tensor]:
    """(RMS of x̂(z_λ) − x̂*(z_λ), RMS of x̂(z_λ) − x) per dimension at each λ of ``logsnr_points``, each ``[P]``, over
    ``inputs`` noised with counter-based ε (a function of (seed, row, point)); x̂* is the training set's optimum."""
    ids = torch.arange(inputs.shape[0], device=inputs.device)
    noise = counter_normal(seed, ids, range(GAP_DRAW, GAP_DRAW + logsnr_points.numel()), tuple(inputs.shape[1:]),
                           dtype=inputs.dtype)
    gap, err = [], []
    for p, lam in enumerate(logsnr_points.tolist()):
        logsnr = torch.full((inputs.shape[0],), lam, dtype=inputs.dtype, device=inputs.device)
        z_t = diffuse(inputs, logsnr, noise[p])
        x_hat = parameterization.predict(net, z_t, logsnr, cond=cond).x_hat.to(inputs.dtype)
        x_star = empirical_x_hat(z_t, logsnr, train)
        gap.append((x_hat - x_star).pow(2).mean().sqrt())
        err.append((x_hat - inputs).pow(2).mean().sqrt())
    return torch.stack(gap).double().cpu(), torch.stack(err).double().cpu()
