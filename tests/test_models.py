"""Tests of the denoiser networks: shapes, size, zero init, λ/z dependence, finiteness, double backward."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vdmlab.models import MLP, LogSNREmbedding, UNet, fourier_features


def small_unet_attn() -> UNet:
    return UNet(in_channels=3, width=16, channel_mults=(1, 2), num_res_blocks=1,
                attention_resolutions=(16,), image_size=32, num_heads=2)


CASES = {
    "unet_default": (lambda: UNet(), (4, 1, 8, 8)),
    "unet_2level_attn": (small_unet_attn, (2, 3, 32, 32)),
    "unet_fourier": (
        lambda: UNet(width=16, num_res_blocks=1, fourier_min_exp=2, fourier_max_exp=3),
        (3, 1, 8, 8),
    ),
    "mlp": (lambda: MLP(), (5, 2)),
    "mlp_fourier_nd": (
        lambda: MLP(data_dim=6, hidden=32, depth=2, fourier_min_exp=0, fourier_max_exp=2),
        (5, 2, 3),
    ),
}


def make(name: str, seed: int = 0) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    factory, shape = CASES[name]
    net = factory()
    z = torch.randn(shape)
    logsnr = torch.linspace(-10.0, 10.0, shape[0])
    return net, z, logsnr


def train_steps(net: nn.Module, z: torch.Tensor, logsnr: torch.Tensor, steps: int = 2) -> None:
    """A few Adam steps towards a random target.

    Two steps, not one, for the UNet: its residual branches *and* its output conv start at zero, so the
    first step can only move the output conv (the gradient reaching the blocks passes through the zero
    output conv); the second step moves the blocks, and with them the λ dependence.
    """
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    target = torch.randn_like(z)
    for _ in range(steps):
        opt.zero_grad()
        (net(z, logsnr) - target).pow(2).mean().backward()
        opt.step()


@pytest.mark.parametrize("name", list(CASES))
def test_output_shape_and_zero_init(name):
    net, z, logsnr = make(name)
    out = net(z, logsnr)
    assert out.shape == z.shape
    assert torch.equal(out, torch.zeros_like(out))


def test_default_unet_parameter_count():
    n = sum(p.numel() for p in UNet().parameters())
    assert 200_000 <= n <= 500_000, n


@pytest.mark.parametrize("name", ["unet_default", "unet_2level_attn", "mlp"])
def test_output_depends_on_logsnr_and_z(name):
    net, z, logsnr = make(name)
    train_steps(net, z, logsnr, steps=1 if name == "mlp" else 2)
    with torch.no_grad():
        z1 = z[:1].expand(2, *z.shape[1:])
        out_l = net(z1, torch.tensor([-5.0, 5.0]))
        assert (out_l[0] - out_l[1]).abs().max() > 1e-6  # same z, different λ
        out_z = net(z[:2], torch.tensor([0.0, 0.0]))
        assert (out_z[0] - out_z[1]).abs().max() > 1e-6  # same λ, different z
        assert out_z.abs().max() > 0


@pytest.mark.parametrize("name", ["unet_default", "unet_2level_attn", "mlp"])
def test_finite_over_logsnr_range(name):
    net, z, _ = make(name)
    train_steps(net, z, torch.zeros(z.shape[0]))
    lams = torch.tensor([-30.0, -10.0, 0.0, 10.0, 30.0])
    with torch.no_grad():
        for lam in lams:
            out = net(z, lam.expand(z.shape[0]))
            assert out.dtype == torch.float32 and torch.isfinite(out).all()
    emb = LogSNREmbedding(64)(lams)
    assert emb.shape == (5, 64) and torch.isfinite(emb).all()


@pytest.mark.parametrize("name", ["unet_default", "unet_2level_attn", "mlp"])
def test_double_backward(name):
    net, z, logsnr = make(name)
    # Perturb the zero-initialised layers so that every parameter receives signal.
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)) and m.weight.abs().max() == 0:
                m.weight.normal_(0.0, 0.05)
    z = z.clone().requires_grad_(True)
    energy = 0.5 * (z - net(z, logsnr)).pow(2).sum()
    (g,) = torch.autograd.grad(energy, z, create_graph=True)
    g.pow(2).sum().backward()
    grads = [p.grad for p in net.parameters()]
    assert all(gr is not None and torch.isfinite(gr).all() for gr in grads)
    assert sum(int(gr.abs().max() > 0) for gr in grads) > len(grads) // 2
    assert net.embed.mlp[0].weight.grad.abs().max() > 0  # the λ path is trained through ∇_z too


def test_bad_resolution_message():
    with pytest.raises(ValueError, match=r"image_size=28.*channel_mults=\(1, 2, 2, 2\).*pad_to_32"):
        UNet(image_size=28, channel_mults=(1, 2, 2, 2))
    UNet(image_size=28, channel_mults=(1, 2, 2), width=8, num_res_blocks=1)  # 28 / 4 = 7 is fine
    with pytest.raises(ValueError, match="attention_resolutions"):
        UNet(image_size=32, channel_mults=(1, 2), attention_resolutions=(8,))


def test_fourier_features_values():
    z = torch.tensor([[0.25, -0.5]])
    ff = fourier_features(z, 0, 1)  # [sin(πz), sin(2πz) per channel..., then cos]
    assert ff.shape == (1, 8)
    expected_sin = torch.sin(torch.pi * torch.tensor([0.25, 0.5, -0.5, -1.0]))
    torch.testing.assert_close(ff[0, :4], expected_sin)
    with pytest.raises(ValueError):
        fourier_features(z, 3, 2)
