"""The counter-based evaluation noise: a standard normal, independent across examples, draws and elements, and a
pure function of (seed, example index, draw) whatever the batch, the device or the number of DDP ranks."""

import math

import pytest
import torch
from scipy import stats

from vdmlab.data import DigitsDataModule
from vdmlab.diffusion import noise
from vdmlab.diffusion.likelihood import ELBOModel, negative_elbo, per_example_normal
from vdmlab.diffusion.parameterization import EpsParameterization
from vdmlab.diffusion.schedules import LinearSchedule
from vdmlab.models import UNet


def test_philox_matches_the_reference_known_answer():
    # Random123's kat_vectors for philox2x32_10: counter (0, 0), key 0 and counter/key all ones
    for counter, key, expected in (((0, 0), 0, (0xFF1DAE59, 0x6CD10DF2)),
                                   ((0xFFFFFFFF, 0xFFFFFFFF), 0xFFFFFFFF, (0x2C3F628B, 0xAB4FD7AD))):
        words = noise.philox2x32(torch.tensor([counter[0]]), torch.tensor([counter[1]]), torch.tensor(key))
        assert tuple(int(w) for w in words) == expected


def test_counter_normals_are_standard_normal_and_independent():
    z = noise.counter_normal(seed=3, index=torch.arange(2000), draws=3, shape=(1, 8, 8))  # [3, 2000, 1, 8, 8]
    flat = z.double().reshape(-1)
    n = flat.numel()
    assert abs(float(flat.mean())) < 4 / math.sqrt(n)  # mean 0 within 4 standard errors
    assert abs(float(flat.var()) - 1.0) < 4 * math.sqrt(2.0 / n)  # variance 1 (var of s² is 2/n for a normal)
    assert stats.kstest(flat.numpy(), "norm").pvalue > 1e-3
    rows = z.double().reshape(3, 2000, 64)
    bound = 4 / math.sqrt(2000 * 64)
    for a, b in ((rows[0, :-1], rows[0, 1:]), (rows[0], rows[1]), (rows[0, :, :-1], rows[0, :, 1:])):
        corr = torch.corrcoef(torch.stack([a.reshape(-1), b.reshape(-1)]))[0, 1]
        assert abs(float(corr)) < bound  # neighbouring examples, consecutive draws, neighbouring elements


def test_an_examples_noise_does_not_depend_on_its_batch_or_the_seed_it_does_not_have():
    index = torch.randperm(120, generator=torch.Generator().manual_seed(0))
    full = noise.counter_normal(7, index, 4, (3, 5, 5))
    for chunk in (1, 7, 64):
        parts = [noise.counter_normal(7, index[i:i + chunk], 4, (3, 5, 5)) for i in range(0, 120, chunk)]
        assert torch.equal(torch.cat(parts, dim=1), full)
    assert torch.equal(noise.counter_normal(7, index, range(2, 4), (3, 5, 5)), full[2:])  # draws are addressable
    assert not torch.equal(noise.counter_normal(8, index, 4, (3, 5, 5)), full)
    assert not torch.equal(noise.counter_normal(7 + 2**32, index, 4, (3, 5, 5)), full)  # every bit of the seed
    seeds = index * 5 + 1_000_003
    rows = per_example_normal(seeds, (3, 5, 5))  # the per-seed rows other estimators use (e.g. the ODE likelihood)
    assert torch.equal(torch.cat([per_example_normal(seeds[i:i + 7], (3, 5, 5)) for i in range(0, 120, 7)]), rows)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_noise_is_the_same_on_the_gpu():
    index = torch.arange(300)
    cpu = noise.counter_normal(5, index, 3, (3, 32, 32))
    gpu = noise.counter_normal(5, index.cuda(), 3, (3, 32, 32)).cpu()
    assert torch.equal(cpu, gpu)


def test_bits_per_dim_of_an_example_does_not_depend_on_the_batch_it_sits_in():
    torch.manual_seed(0)
    net = UNet(width=16, num_res_blocks=1, data_shape=(1, 8, 8)).eval()
    datamodule = DigitsDataModule(batch_size=128, eval_batch_size=None, num_workers=0)
    datamodule.setup()
    x = torch.stack([datamodule.val_set[i] for i in range(180)])
    index = torch.arange(180)

    def nats(batch):
        with torch.no_grad():
            model = ELBOModel(net, LinearSchedule(-5.0, 10.0), EpsParameterization(), num_levels=17, num_samples=3)
            return torch.cat([negative_elbo(x[i:i + batch], model, example_ids=index[i:i + batch], seed=11).total
                              for i in range(0, 180, batch)])

    # the noise is identical; the network's batched convolutions may round differently at different batch sizes
    torch.testing.assert_close(nats(7), nats(180), rtol=1e-5, atol=1e-4)
