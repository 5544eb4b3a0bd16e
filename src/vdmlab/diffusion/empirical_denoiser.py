"""The optimal denoiser of a finite training set: what a network that memorised its data would predict.

For the empirical distribution p(x) = (1/N) Σ_n δ(x − x_n), the posterior over the training images given z_λ =
α x + σ ε is p(n | z_λ) ∝ N(z_λ; α x_n, σ² I), so the minimum-MSE denoiser (the optimum of every weighted loss,
eqs. (4.123), (4.150)) is the softmax-weighted mean x̂*(z_λ) = Σ_n softmax_n(−‖z_λ − α x_n‖² / 2σ²)·x_n. As λ → ∞ it
returns the training image nearest to z_λ/α, as λ → −∞ the training mean. A model whose x̂ follows x̂* on inputs
noised from *test* images reproduces its training set at that noise level.
"""

from __future__ import annotations

import torch
from torch import Tensor

from vdmlab.diffusion.process import alpha_sigma


def empirical_x_hat(z_t: Tensor, logsnr: Tensor, data: Tensor, chunk: int = 4096) -> Tensor:
    """x̂*(z_λ) = Σ_n softmax_n(−‖z_λ − α x_n‖²/(2σ²))·x_n over the rows of ``data`` ``[N, ...]``, eq. (4.123)'s optimum."""
    flat_z = z_t.flatten(1).to(torch.float64)
    flat_x = data.flatten(1).to(device=z_t.device, dtype=torch.float64)
    alpha, sigma = alpha_sigma(logsnr.to(device=z_t.device, dtype=torch.float64).reshape(-1, 1))  # [B, 1]
    # −‖z − αx_n‖²/(2σ²) up to a term constant in n: (α z·x_n − ½α²‖x_n‖²)/σ²
    norms = flat_x.pow(2).sum(1)[None, :]
    out = []
    for part in range(0, flat_z.shape[0], chunk):
        z, a, s = flat_z[part:part + chunk], alpha[part:part + chunk], sigma[part:part + chunk]
        logits = (a * (z @ flat_x.T) - 0.5 * a.pow(2) * norms) / s.pow(2)
        out.append(torch.softmax(logits, dim=1) @ flat_x)
    return torch.cat(out).reshape(z_t.shape).to(z_t.dtype)
