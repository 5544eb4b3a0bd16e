"""Closed-form denoisers for Gaussian data, used to test the math against exact answers."""

from __future__ import annotations

from torch import Tensor, nn

from vdmlab.diffusion.process import alpha_sigma, expand_like


class GaussianOracle(nn.Module):
    """The optimal ε̂ for data x ~ N(μ, s²I): x̂ = E[x|z_t] = μ + αs²/(α²s² + σ²)(z_t - αμ)."""

    def __init__(self, mu: Tensor, std: float):
        super().__init__()
        self.register_buffer("mu", mu)
        self.std = float(std)

    def x_hat(self, z: Tensor, logsnr: Tensor) -> Tensor:
        alpha, sigma = alpha_sigma(expand_like(logsnr, z))
        s2 = self.std**2
        gain = alpha * s2 / (alpha**2 * s2 + sigma**2)
        return self.mu + gain * (z - alpha * self.mu)

    def forward(self, z: Tensor, logsnr: Tensor) -> Tensor:
        alpha, sigma = alpha_sigma(expand_like(logsnr, z))
        return (z - alpha * self.x_hat(z, logsnr)) / sigma

    def expected_mse(self, x: Tensor, logsnr: Tensor) -> Tensor:
        """E_ε‖ε - ε̂(z_λ)‖² for flat x [..., D] in closed form: D·(αk)² + (1 - αk)²α²‖x - μ‖²/σ², with k = αs²/(α²s² + σ²)."""
        alpha, sigma = alpha_sigma(logsnr)
        s2 = self.std**2
        k = alpha * s2 / (alpha**2 * s2 + sigma**2)
        dim = x.shape[-1]
        dist2 = (x - self.mu).pow(2).sum(-1)
        return dim * (alpha * k) ** 2 + (1 - alpha * k) ** 2 * alpha**2 * dist2 / sigma**2
