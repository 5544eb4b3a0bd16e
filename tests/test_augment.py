"""Non-leaky augmentation (EDM App. B.2): pixel-exact transforms that stay on the K-level grid, labels that name them,
no label ever non-zero at p = 0, and evaluation (the ELBO) on unaugmented data only, with real Lightning runs."""

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from vdmlab.cli.build import build_run
from vdmlab.cli.train import run
from vdmlab.data import levels_to_values
from vdmlab.data.augment import GeometricAugment
from vdmlab.models import UNet


def _levels(n=64, k=17, side=8, channels=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return levels_to_values(torch.randint(k, (n, channels, side, side), generator=g), k)


def test_augmented_batch_stays_on_the_level_grid_as_a_permutation_of_each_image():
    x = _levels()
    y, labels = GeometricAugment(p=1.0)(x, generator=torch.Generator().manual_seed(1))
    grid = levels_to_values(torch.arange(17), 17)
    assert torch.isin(y, grid).all()
    # every transform permutes pixels within a channel (reflection padding may repeat border pixels in a shift)
    unshifted = (labels[:, 4:] == 0).all(1)
    assert unshifted.any()
    for i in torch.nonzero(unshifted).flatten():
        torch.testing.assert_close(y[i].flatten(1).sort(1).values, x[i].flatten(1).sort(1).values)
    assert (labels.abs() > 0).any(0).all()  # with p = 1 every label entry is used somewhere


def test_labels_name_the_transform_and_zero_labels_mean_untouched():
    x = _levels()
    g = torch.Generator().manual_seed(2)
    y, labels = GeometricAugment(p=1.0, yflip=0.0, rotate_int=0.0, translate_int=0.0)(x, generator=g)
    flipped = labels[:, 0] == 1
    torch.testing.assert_close(y[flipped], x[flipped].flip(3))
    torch.testing.assert_close(y[~flipped], x[~flipped])
    assert (labels[:, 1:] == 0).all()
    y, labels = GeometricAugment(p=1.0, xflip=0.0, yflip=0.0, translate_int=0.0)(x, generator=g)
    k = (labels[:, 2] == 1).long() * torch.where(labels[:, 3] == 1, 2, 1) + ((labels[:, 2] == 0) & (labels[:, 3] == 1)) * 3
    for i in range(x.shape[0]):  # rotating back by the labelled multiple of 90° recovers the image
        torch.testing.assert_close(torch.rot90(y[i], -int(k[i]), dims=(1, 2)), x[i])
    y, labels = GeometricAugment(p=0.0)(x, generator=g)
    assert (labels == 0).all() and torch.equal(y, x)


def test_integer_translation_moves_pixels_by_the_labelled_shift():
    x = _levels(side=16)
    augment = GeometricAugment(p=1.0, xflip=0.0, yflip=0.0, rotate_int=0.0, translate_int_max=0.25)
    y, labels = augment(x, generator=torch.Generator().manual_seed(3))
    tx = (labels[:, 4] * 16 * 0.25).round().long()
    ty = (labels[:, 5] * 16 * 0.25).round().long()
    assert (tx.abs() <= 4).all() and (ty.abs() <= 4).all() and (tx != 0).any()
    for i in range(x.shape[0]):  # away from the reflected border the image is shifted exactly
        a, b = int(tx[i]), int(ty[i])
        inner = y[i][:, max(b, 0):16 + min(b, 0), max(a, 0):16 + min(a, 0)]
        torch.testing.assert_close(inner, x[i][:, max(-b, 0):16 + min(-b, 0), max(-a, 0):16 + min(-a, 0)])


def test_unet_zero_label_is_no_label_and_wrong_sizes_are_refused():
    net = UNet(in_channels=1, width=16, num_res_blocks=1, augment_dim=6)
    z, logsnr = torch.randn(4, 1, 8, 8), torch.zeros(4)
    with torch.no_grad():
        for param in net.parameters():  # zero-initialised blocks would hide the embedding: the comparison must be able to fail
            param.normal_(0.0, 0.2)
        torch.testing.assert_close(net(z, logsnr, augment_labels=torch.zeros(4, 6)), net(z, logsnr))
        assert not torch.allclose(net(z, logsnr, augment_labels=torch.ones(4, 6)), net(z, logsnr))
    with pytest.raises(ValueError, match="augment_dim"):
        UNet(in_channels=1, width=16, num_res_blocks=1)(z, logsnr, augment_labels=torch.zeros(4, 6))


def test_augmentation_with_a_net_without_labels_names_the_key(make_config):
    with pytest.raises(Exception, match="model.augment_dim=0 is invalid.*set model.augment_dim=6"):
        build_run(make_config(["augment=edm", "model.augment_dim=0"]))


SHORT = ["augment=edm", "logger=csv", "fid=null", "test=false", "model.width=16", "model.num_res_blocks=1",
         "trainer.max_epochs=1", "+trainer.limit_train_batches=3", "+trainer.limit_val_batches=2",
         "callbacks.sample_grid.every_n_epochs=1000", "callbacks.sample_grid.num_samples=4", "sampler.steps=4"]


class _Recorder:
    """Forward pre-hook on a network's augmentation embedding: the labels it was given, and where from."""

    def __init__(self):
        self.seen: list[torch.Tensor] = []

    def __call__(self, _module, args):
        self.seen.append(args[0].detach().clone())


class _CountingAugment(GeometricAugment):
    calls = 0

    def __call__(self, x, generator=None):
        type(self).calls += 1
        return super().__call__(x, generator)


@pytest.mark.parametrize("p", [0.0, 1.0])
def test_network_sees_labels_only_in_training_and_never_non_zero_at_p0(p, make_config):
    """A real fit: at p = 0 every label the network sees is zero; at p = 1 some are not (the test can fail). The
    validation ELBO and test runs never call the augmentation, and the EMA network evaluating them gets no label."""
    cfg = make_config([*SHORT, f"module.augment.p={p}"])
    built = build_run(cfg)
    module = built.module
    module.augment = _CountingAugment(**{k: v for k, v in cfg.module.augment.items() if k != "_target_"})
    train_seen, eval_seen = _Recorder(), _Recorder()
    module.net.augment_embed.register_forward_pre_hook(train_seen)
    module.ema.net.augment_embed.register_forward_pre_hook(eval_seen)
    trainer = instantiate(cfg.trainer, logger=False, callbacks=[], enable_checkpointing=False)
    _CountingAugment.calls = 0
    trainer.fit(module, datamodule=built.datamodule)
    assert _CountingAugment.calls == 3 == len(train_seen.seen)  # once per training batch, never in validation
    labels = torch.cat(train_seen.seen)
    assert labels.shape[1] == 6
    assert (labels == 0).all() if p == 0.0 else (labels != 0).any()
    trainer.validate(module, datamodule=built.datamodule)
    trainer.test(module, datamodule=built.datamodule)
    assert _CountingAugment.calls == 3 and eval_seen.seen == []


def test_fit_with_augmentation_end_to_end(make_config):
    cfg = make_config(SHORT)
    run(cfg)
    assert (Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt").is_file()
