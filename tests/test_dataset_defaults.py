"""Defaults that follow the data (docs/datasets.md): λ_max from K, λ_min from the prior bound, the UNet from the
resolution; explicit overrides win; a K = 256 image folder without endpoint overrides has a negligible decoder term."""

import logging
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_data import write_fake_mnist

from vdmlab.cli.build import build_run
from vdmlab.cli.train import run
from vdmlab.diffusion.likelihood import bits_per_dim, decoder_nll, prior_kl
from vdmlab.diffusion.process import alpha_sigma
from vdmlab.resolvers import (
    DECODER_MARGIN,
    logsnr_max_for_levels,
    prior_kl_bound_bits,
    unet_attention,
    unet_channel_mults,
    unet_resolutions,
)


def grid_data(num_levels: int, n: int = 4000, dim: int = 16, seed: int = 0) -> torch.Tensor:
    k = torch.randint(0, num_levels, (n, dim), generator=torch.Generator().manual_seed(seed))
    return -1.0 + 2.0 * k.double() / (num_levels - 1)


def decoder_bits(x: torch.Tensor, logsnr_0: float, num_levels: int, seed: int = 1) -> float:
    """The reconstruction term in bits/dim of an ideal denoiser: z_0 ~ q(z_0|x), -log p(x|z_0) (eq. (3.54))."""
    lam = torch.tensor(logsnr_0, dtype=torch.float64)
    alpha, sigma = alpha_sigma(lam)
    z_0 = alpha * x + sigma * torch.randn(x.shape, generator=torch.Generator().manual_seed(seed), dtype=x.dtype)
    return float(bits_per_dim(decoder_nll(x, z_0, lam, num_levels), x.shape[1]).mean())


def test_logsnr_max_rule_puts_the_decoder_noise_at_a_third_of_half_a_level():
    for k in (2, 17, 256, 65536):
        lam = logsnr_max_for_levels(k)
        assert math.exp(-lam / 2) * DECODER_MARGIN == pytest.approx(1.0 / (k - 1), rel=1e-2)
    assert logsnr_max_for_levels(256) == pytest.approx(13.3, abs=0.05)  # VDM's γ_min = -13.3
    assert logsnr_max_for_levels(17) < 8.0  # the digits' searched 8 is above the rule's minimum
    with pytest.raises(ValueError, match="num_levels"):
        logsnr_max_for_levels(1)


@pytest.mark.parametrize("num_levels", [17, 256])
def test_decoder_term_is_negligible_at_the_rule_and_not_below_it(num_levels):
    x = grid_data(num_levels)
    assert decoder_bits(x, logsnr_max_for_levels(num_levels), num_levels) < 0.05
    # two units of λ lower the decoder noise is 2.7x larger and the term is no longer negligible: the rule is tight
    assert decoder_bits(x, logsnr_max_for_levels(num_levels) - 2.0, num_levels) > 0.05


def test_the_old_global_logsnr_max_fails_at_k256():
    """The trap the per-dataset defaults remove: λ_max = 10 (tuned for 17 levels) cannot resolve 256 levels."""
    assert decoder_bits(grid_data(256), 10.0, 256) > 1.0


def test_prior_term_is_bounded_at_logsnr_min():
    x = torch.tensor([[-1.0, 1.0, 0.0, 0.5]], dtype=torch.float64)
    bits = bits_per_dim(prior_kl(x, torch.tensor(-5.0, dtype=torch.float64)), 4)
    assert 0 < float(bits) <= prior_kl_bound_bits(-5.0) < 0.005
    worst = bits_per_dim(prior_kl(x[:, :2], torch.tensor(-5.0, dtype=torch.float64)), 2)
    assert float(worst) == pytest.approx(prior_kl_bound_bits(-5.0), rel=1e-9)  # x² = 1 attains it


def test_unet_rule_anchors():
    assert unet_resolutions(32) == [32, 16, 8, 4] and unet_channel_mults(32) == [1, 2, 2, 2]
    assert unet_attention(32) == [16]  # DDPM's CIFAR-10 layout
    assert unet_resolutions(28) == [28, 14, 7] and unet_attention(28) == [14]
    assert unet_resolutions(16) == [16, 8, 4] and unet_attention(16) == [16]
    assert unet_resolutions(7) == [7] and unet_attention(64) == [16] and unet_attention(40) == [10] and unet_attention(35) == []


@pytest.mark.parametrize("dataset,k", [("cifar10", 256), ("mnist", 256), ("image_folder", 256), ("toy2d", 256)])
def test_choosing_a_dataset_sets_its_endpoints_and_network(dataset, k, make_config, tmp_path):
    extra = {"image_folder": [f"dataset.root={tmp_path}", "dataset.image_size=16"], "toy2d": ["model=mlp"]}
    cfg = make_config([f"dataset={dataset}", *extra.get(dataset, [])])
    assert cfg.schedule.logsnr_max == logsnr_max_for_levels(k)
    assert cfg.schedule.logsnr_min == -5.0
    if dataset != "toy2d":
        size = {"cifar10": 32, "mnist": 28, "image_folder": 16}[dataset]
        assert list(cfg.model.channel_mults) == unet_channel_mults(size)
        assert list(cfg.model.attention_resolutions) == unet_attention(size)


def test_digits_get_their_searched_recipe_and_explicit_overrides_still_win(make_config):
    cfg = make_config([])
    assert cfg.schedule.logsnr_max >= logsnr_max_for_levels(17) and list(cfg.model.channel_mults) == [1]
    assert (cfg.model.fourier_min_exp, cfg.model.fourier_max_exp) == (2, 3)  # periods of about two bins of 17 levels
    assert cfg.trainer.max_epochs % cfg.trainer.check_val_every_n_epoch == 0  # the last epoch is validated
    cfg = make_config(["diffusion.logsnr_max=10", "module.optimizer.lr=1e-3", "trainer.max_epochs=7",
                       "model.fourier_min_exp=null", "model.fourier_max_exp=null"])
    assert (cfg.schedule.logsnr_max, cfg.module.optimizer.lr, cfg.trainer.max_epochs) == (10.0, 1e-3, 7)
    assert cfg.model.fourier_min_exp is None


def test_explicit_overrides_win(make_config):
    cfg = make_config(["dataset=cifar10", "diffusion.logsnr_max=12", "model.width=32", "model.channel_mults=[1,2]",
                       "model.attention_resolutions=[]"])
    assert (cfg.schedule.logsnr_max, cfg.model.width, list(cfg.model.channel_mults)) == (12, 32, [1, 2])
    assert list(cfg.model.attention_resolutions) == []


def test_mnist_default_is_28x28_and_counts_real_pixels(make_config, tmp_path):
    write_fake_mnist(tmp_path / "data")
    cfg = make_config(["dataset=mnist", f"dataset.root={tmp_path / 'data'}", "dataset.download=false", "fid=null",
                       "model.width=16", "dataset.val_size=5"])
    built = build_run(cfg)
    assert built.datamodule.data_shape == (1, 28, 28)
    assert built.module.data_dim == 28 * 28  # bits/dim per real pixel: no padding
    z = torch.zeros(2, 1, 28, 28)
    assert built.module.net(z, torch.zeros(2)).shape == z.shape  # 28 → 14 → 7 and back


def write_smooth_images(root: Path, n: int, size: int, seed: int = 0) -> None:
    """Random smooth RGB images: 4x4 random colours upsampled bicubically to size x size (8-bit, K = 256)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        small = Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8))
        small.resize((size, size), Image.BICUBIC).save(root / f"img_{i:03d}.png")


@pytest.mark.slow
def test_k256_image_folder_run_has_negligible_reconstruction_term(make_config, tmp_path, capsys, caplog):
    write_smooth_images(tmp_path / "images", 40, 16)
    cfg = make_config(["debug=fdr", "logger=csv", "dataset=image_folder", f"dataset.root={tmp_path / 'images'}",
                       "dataset.image_size=16", "dataset.batch_size=8", "dataset.num_workers=0",
                       "dataset.val_fraction=0.2", "dataset.test_fraction=0.2", "model.width=16",
                       "model.num_res_blocks=1"])  # no endpoint overrides; a narrow net for CPU time only
    assert cfg.schedule.logsnr_max == logsnr_max_for_levels(256)
    caplog.set_level(logging.INFO)
    run(cfg)
    table = capsys.readouterr().out + caplog.text  # the final metrics table (logged, or printed)
    match = re.search(r"test/bpd_reconstruction\s*\|?\s*([0-9.eE+-]+)", table)
    assert match, table
    assert float(match.group(1)) < 0.05
