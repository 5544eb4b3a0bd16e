"""Copying and novelty (metrics/copying.py, diffusion/empirical_denoiser.py): the near-copy criterion flags planted
copies of training images and not the real test split; the empirical optimal denoiser is the exact posterior mean
of a finite set, with its limits (λ → ∞: the nearest image, λ → −∞: the mean)."""

import torch

from vdmlab.data import DigitsDataModule
from vdmlab.diffusion.empirical_denoiser import empirical_x_hat
from vdmlab.diffusion.parameterization import EpsParameterization
from vdmlab.diffusion.process import alpha_sigma
from vdmlab.metrics.copying import copy_flags, copying_metrics, denoiser_gap, nearest_two


def digits(split):
    dm = DigitsDataModule(batch_size=64, eval_batch_size=64, num_workers=0)
    dm.setup()
    dataset = dm.split_dataset(split)
    return torch.stack([dataset[i] if torch.is_tensor(dataset[i]) else dataset[i][0] for i in range(len(dataset))]).float()


def test_planted_copies_are_flagged_and_the_test_split_is_not():
    train, test = digits("train"), digits("test")
    g = torch.Generator().manual_seed(0)
    planted = train[torch.randperm(len(train), generator=g)[:50]] + 0.01 * torch.randn(50, *train.shape[1:], generator=g)
    d1, d2, _ = nearest_two(planted, train)
    assert copy_flags(d1, d2).all()  # every planted copy
    metrics = copying_metrics(torch.cat([planted, test[:50]]), train, test)
    assert metrics["copy_fraction_test"] < 0.05  # new real digits are (almost) never near-copies
    assert abs(metrics["copy_fraction"] - (0.5 + 0.5 * metrics["copy_fraction_test"])) <= 0.03
    assert metrics["nn_dist_ratio"] < 1.0  # half of the "samples" sit on training images
    fresh = copying_metrics(test, train, test)
    assert fresh["nn_dist_ratio"] == 1.0 and fresh["copy_fraction"] == fresh["copy_fraction_test"]


def test_nearest_two_excludes_self_when_asked():
    x = torch.tensor([[0.0], [1.0], [3.0]])
    d1, d2, idx = nearest_two(x, x, exclude_self=True)
    assert torch.equal(idx, torch.tensor([1, 0, 1])) and torch.allclose(d1, torch.tensor([1.0, 1.0, 2.0], dtype=d1.dtype))


def test_empirical_denoiser_is_the_exact_posterior_mean_of_a_tiny_set():
    data = torch.tensor([[1.0, 0.0], [-1.0, 0.5], [0.2, -0.7]], dtype=torch.float64)
    g = torch.Generator().manual_seed(1)
    z = torch.randn(5, 2, generator=g, dtype=torch.float64)
    for lam in (-2.0, 0.0, 3.0):
        logsnr = torch.full((5,), lam, dtype=torch.float64)
        alpha, sigma = alpha_sigma(logsnr[:, None, None])
        log_lik = torch.distributions.Normal(alpha * data[None], sigma).log_prob(z[:, None]).sum(-1)  # [5, 3]
        exact = torch.softmax(log_lik, 1) @ data  # Bayes' rule with the uniform prior over the 3 images
        torch.testing.assert_close(empirical_x_hat(z, logsnr, data), exact)
    # the limits: the nearest image for λ → ∞ (z/α close to it), the mean for λ → −∞; finite over [−30, 30] in float32
    near = data + 0.05
    assert torch.allclose(empirical_x_hat(near.float(), torch.full((3,), 30.0), data.float()), data.float())
    far = empirical_x_hat(z.float(), torch.full((5,), -30.0), data.float())
    assert torch.allclose(far, data.float().mean(0).expand(5, 2), atol=1e-5)


def test_denoiser_gap_vanishes_for_a_net_that_is_the_empirical_denoiser():
    data = torch.randn(20, 1, 2, 2, generator=torch.Generator().manual_seed(2))

    class Memoriser(torch.nn.Module):  # ε̂ of the empirical denoiser: a perfect copier of `data`
        def forward(self, z, logsnr, cond=None):
            alpha, sigma = alpha_sigma(logsnr[:, None, None, None])
            return (z - alpha * empirical_x_hat(z, logsnr, data)) / sigma

    points = torch.linspace(-5.0, 8.0, 5)
    gap, err = denoiser_gap(Memoriser(), EpsParameterization(), data, data[:8], points)
    assert gap.max() < 1e-4
    assert err[-1] < err[0]  # at high λ a copier returns the (training) input itself
