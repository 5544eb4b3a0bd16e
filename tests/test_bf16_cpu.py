"""bf16-mixed on the CPU: under autocast the network runs in bfloat16 but every ELBO term (diffusion, prior,
reconstruction) and the training loss come out in float32, finite over the whole λ range, and the bound equals the
float32 bound up to the network's bf16 rounding."""

import torch

from vdmlab.diffusion.likelihood import ELBOModel, negative_elbo
from vdmlab.diffusion.losses import diffusion_loss
from vdmlab.diffusion.parameterization import EpsParameterization
from vdmlab.diffusion.schedules import LinearSchedule
from vdmlab.diffusion.weighting import ELBOWeighting
from vdmlab.models import UNet


def setup():
    torch.manual_seed(0)
    net = UNet(width=16, num_res_blocks=1, data_shape=(1, 8, 8))
    for p in net.parameters():  # non-zero output layers, so that the network's precision matters
        torch.nn.init.normal_(p, std=0.05)
    levels = torch.randint(0, 17, (32, 1, 8, 8), generator=torch.Generator().manual_seed(1))
    return net, levels.float() / 8 - 1


def test_elbo_terms_are_float32_under_bf16_autocast_and_match_the_float32_bound():
    net, x = setup()
    schedule, param = LinearSchedule(-30.0, 30.0), EpsParameterization()
    kwargs = dict(model=ELBOModel(net, schedule, param, num_levels=17, num_samples=4), example_ids=torch.arange(32), seed=3)
    with torch.no_grad():
        full = negative_elbo(x, **kwargs)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = negative_elbo(x, **kwargs)
    for name in ("diffusion", "prior", "reconstruction"):
        b = getattr(mixed, name)
        assert b.dtype == torch.float32 and torch.isfinite(b).all(), name
    torch.testing.assert_close(mixed.prior, full.prior)  # no network in the prior and decoder terms: identical
    torch.testing.assert_close(mixed.reconstruction, full.reconstruction)
    # the diffusion term sees the network's bf16 output (8 bits of mantissa): equal to ~1 %
    assert ((mixed.diffusion - full.diffusion).abs().mean() / full.diffusion.abs().mean()) < 0.02


def test_training_loss_is_float32_with_a_float32_gradient_under_bf16_autocast():
    net, x = setup()
    t = torch.rand(32, generator=torch.Generator().manual_seed(2))
    eps = torch.randn(x.shape, generator=torch.Generator().manual_seed(4))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        terms = diffusion_loss(x, t, eps, net=net, schedule=LinearSchedule(-5.0, 13.0), weighting=ELBOWeighting(),
                               parameterization=EpsParameterization())
    assert terms.loss.dtype == terms.elbo.dtype == terms.mse.dtype == torch.float32
    terms.loss.mean().backward()
    grads = [p.grad for p in net.parameters()]
    assert all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)
