"""Samplers with the closed-form Gaussian denoiser reproduce the data distribution (eqs. (3.103)–(3.104))."""

import math

import pytest
import torch
from oracles import GaussianOracle

from vdmlab.diffusion import parameterization as PZ
from vdmlab.diffusion import sampling
from vdmlab.diffusion import schedules as S
from vdmlab.diffusion.process import alpha_sigma

MU = torch.tensor([0.5, -0.3], dtype=torch.float64)
STD = 0.4
N = 4000


@pytest.mark.parametrize("sampler,steps", [(sampling.ancestral, 200), (sampling.ddim, 200), (sampling.heun, 50)])
@pytest.mark.parametrize("schedule", [S.CosineSchedule(-12.0, 12.0), S.LinearSchedule(-12.0, 12.0)],
                         ids=["cosine", "linear"])
def test_sampler_with_oracle_reproduces_data_mean_and_variance(sampler, steps, schedule):
    g = torch.Generator().manual_seed(0)
    denoise = PZ.EpsParameterization().denoiser(GaussianOracle(MU, STD))
    logsnrs = S.logsnr_grid(schedule, steps).double()
    z = torch.randn(N, 2, generator=g, dtype=torch.float64)
    z_0 = sampler(denoise, z, logsnrs, generator=g)
    x = z_0 / alpha_sigma(logsnrs[-1])[0]
    se_mean = STD / math.sqrt(N)
    se_var = STD**2 * math.sqrt(2.0 / N)
    assert (x.mean(0) - MU).abs().max() < 4 * se_mean + 0.01
    assert (x.var(0) - STD**2).abs().max() < 4 * se_var + 0.01


def test_deterministic_samplers_are_deterministic_and_ancestral_is_not():
    denoise = PZ.EpsParameterization().denoiser(GaussianOracle(MU, STD))
    logsnrs = S.logsnr_grid(S.CosineSchedule(-10.0, 10.0), 20).double()
    z = torch.randn(8, 2, dtype=torch.float64)
    for fn in (sampling.ddim, sampling.heun):
        torch.testing.assert_close(fn(denoise, z, logsnrs), fn(denoise, z, logsnrs))
    assert not torch.allclose(sampling.ancestral(denoise, z, logsnrs), sampling.ancestral(denoise, z, logsnrs))


@pytest.mark.parametrize("param", [PZ.XParameterization(), PZ.VParameterization(), PZ.FlowParameterization(),
                                   PZ.ScoreParameterization(), PZ.EnergyParameterization()], ids=lambda p: p.name)
def test_every_parameterization_samples_like_eps(param):
    """An oracle re-expressed in any parameterization gives the same DDIM trajectory (Table 4.2)."""
    oracle = GaussianOracle(MU, STD)
    eps_param = PZ.EpsParameterization()

    class Reexpressed(torch.nn.Module):
        def forward(self, z, logsnr):
            return param.from_eps(oracle(z, logsnr), z, logsnr)

    class GaussianEnergy(torch.nn.Module):
        """f with ‖z - f‖²/(2σ) = ‖z - αμ‖²/(2v) + const·…: f = αμ + (1 - √(σ/v))(z - αμ), v = α²s² + σ²."""

        def forward(self, z, logsnr):
            alpha, sigma = (a[:, None] for a in alpha_sigma(logsnr))
            v = alpha**2 * STD**2 + sigma**2
            return alpha * MU + (1 - (sigma / v).sqrt()) * (z - alpha * MU)

    net = GaussianEnergy() if param.name == "energy" else Reexpressed()
    logsnrs = S.logsnr_grid(S.CosineSchedule(-10.0, 10.0), 30).double()
    z = torch.randn(16, 2, dtype=torch.float64)
    expected = sampling.ddim(eps_param.denoiser(oracle), z, logsnrs)
    torch.testing.assert_close(sampling.ddim(param.denoiser(net), z, logsnrs), expected)


def test_generate_decodes_to_the_data_levels_and_clipping_bounds_x_hat():
    K = 17
    denoise = PZ.EpsParameterization().denoiser(GaussianOracle(torch.zeros(1, 4, 4, dtype=torch.float32), 0.5),
                                                clip_x=True)
    logsnrs = S.logsnr_grid(S.CosineSchedule(-5.0, 10.0), 20)
    x = sampling.generate(denoise, sampling.ancestral, logsnrs, (6, 1, 4, 4), K, generator=torch.Generator().manual_seed(1))
    levels = torch.linspace(-1, 1, K)
    assert x.shape == (6, 1, 4, 4)
    assert torch.isclose(x[..., None], levels).any(-1).all()
