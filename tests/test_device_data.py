"""Device-resident data (dataset.on_device): the same batches as the DataLoader path bit for bit, across epochs, a
mid-epoch resume and DDP ranks, for unconditional and class-conditional splits, the same training under a real
Trainer, and the auto choice with its reason."""

from functools import partial

import lightning as L
import pytest
import torch

import vdmlab.data.base as base
import vdmlab.data.samplers as samplers
from vdmlab.data import DigitsDataModule, Toy2DDataModule
from vdmlab.data.device import DeviceBatches, choose_on_device
from vdmlab.diffusion.parameterization import EpsParameterization
from vdmlab.diffusion.schedules import LinearSchedule
from vdmlab.diffusion.weighting import ELBOWeighting
from vdmlab.models import UNet
from vdmlab.module import DiffusionModule


def epoch_batches(datamodule, epoch, split="train"):
    loader = getattr(datamodule, f"{split}_dataloader")()
    loader.sampler.set_epoch(epoch)  # what Lightning's fit loop does at the start of every epoch
    return loader, list(loader)


def assert_same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        if isinstance(x, (tuple, list)):
            assert all(torch.equal(u, v) for u, v in zip(x, y))
        else:
            assert x.dtype == y.dtype == torch.float32 and torch.equal(x, y)


@pytest.mark.parametrize("make", [partial(DigitsDataModule, batch_size=64, eval_batch_size=50, num_workers=0),
                                  partial(DigitsDataModule, batch_size=64, eval_batch_size=50, num_workers=0,
                                          conditional=True),
                                  partial(Toy2DDataModule, n_train=1000, n_val=70, n_test=70, batch_size=96,
                                          eval_batch_size=32, num_workers=0)], ids=["digits", "digits-conditional", "toy2d"])
def test_device_batches_equal_the_dataloaders_over_two_epochs_and_a_mid_epoch_resume(make):
    device, loader = make(on_device="true"), make(on_device="false")
    for epoch in (0, 1):
        held, batches = epoch_batches(device, epoch)
        plain, expected = epoch_batches(loader, epoch)
        assert isinstance(held, DeviceBatches) and isinstance(plain, torch.utils.data.DataLoader)
        assert len(held) == len(plain)
        assert_same_batches(batches, expected)
    for datamodule in (device, loader):  # a resumed run: 5 batches of epoch 1 were consumed before the stop
        datamodule.load_state_dict({"epoch": 1, "batches_done": 5})
    assert_same_batches(epoch_batches(device, 1)[1], epoch_batches(loader, 1)[1])
    assert len(epoch_batches(device, 1)[1]) == len(epoch_batches(loader, 0)[1])  # the resume skipped only once
    for split in ("val", "test"):  # (index, x) in a fixed order, the last batch kept
        assert_same_batches(epoch_batches(device, 0, split)[1], epoch_batches(loader, 0, split)[1])
    assert device.train_set.levels.dtype == torch.uint8  # the stored levels, not floats


@pytest.mark.parametrize("split", ["train", "val"])
def test_ddp_ranks_get_the_dataloaders_shards_and_together_every_example(split, monkeypatch):
    seen = []
    for rank in (0, 1):
        for module in (base, samplers):  # the sampler shards; the datamodule logs on rank 0 only
            monkeypatch.setattr(module, "rank_and_world", lambda rank=rank: (rank, 2))
        device, loader = (DigitsDataModule(batch_size=32, eval_batch_size=7, num_workers=0, on_device=m)
                          for m in ("true", "false"))
        batches = epoch_batches(device, 3, split)[1]
        assert_same_batches(batches, epoch_batches(loader, 3, split)[1])
        if split == "val":
            seen += torch.cat([index for index, _ in batches]).tolist()
        else:
            order = samplers.EpochSampler(1437, seed=0)
            order.set_epoch(3)
            seen += list(order)[: len(batches) * 32]
    if split == "val":  # 180 examples on 2 ranks: no padding needed, each exactly once
        assert sorted(seen) == list(range(180))
    else:  # each rank's epoch is a disjoint share of one permutation
        assert len(seen) == len(set(seen)) == 2 * (719 // 32) * 32


def small_module():
    torch.manual_seed(0)
    net = UNet(width=16, num_res_blocks=1, data_shape=(1, 8, 8))
    return DiffusionModule(net, LinearSchedule(-5.0, 10.0), ELBOWeighting(), EpsParameterization(), 17, (1, 8, 8),
                           optimizer=partial(torch.optim.AdamW, lr=1e-3))


class RecordBatches(L.Callback):
    def __init__(self):
        self.batches = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.batches.append(batch.clone())


def test_a_real_fit_trains_identically_on_both_paths_across_an_epoch_boundary():
    results = {}
    for mode in ("true", "false"):
        module, record = small_module(), RecordBatches()
        trainer = L.Trainer(max_steps=23, logger=False, enable_progress_bar=False, enable_checkpointing=False,
                            enable_model_summary=False, deterministic=True, callbacks=[record],
                            use_distributed_sampler=False, limit_val_batches=0)
        datamodule = DigitsDataModule(batch_size=64, eval_batch_size=None, num_workers=0, on_device=mode)
        trainer.fit(module, datamodule=datamodule)
        assert trainer.global_step == len(record.batches) == 23  # 22 steps per epoch: one step into epoch 1
        results[mode] = (record.batches, module.state_dict(), datamodule.on_device_reasons["train"])
    assert_same_batches(results["true"][0], results["false"][0])
    for key, value in results["true"][1].items():
        assert torch.equal(value, results["false"][1][key]), key
    assert results["true"][2].startswith("dataset.on_device=true: holding the 1437x1x8x8 uint8 train split")


def test_a_conditional_run_gets_device_resident_batches_of_x_and_y_bit_for_bit():
    device, loader = (DigitsDataModule(batch_size=64, eval_batch_size=50, num_workers=0, conditional=True, on_device=m)
                      for m in ("auto", "false"))
    for split, width in (("train", 2), ("val", 3), ("test", 3)):  # (x, y) and (index, x, y)
        held, batches = epoch_batches(device, 2, split)
        plain, expected = epoch_batches(loader, 2, split)
        assert isinstance(held, DeviceBatches) and isinstance(plain, torch.utils.data.DataLoader)
        assert len(batches) == len(expected) > 0
        for got, want in zip(batches, expected):
            assert len(got) == len(want) == width
            for u, v in zip(got, want):
                assert u.dtype == v.dtype and torch.equal(u, v)
        x, y = batches[0][-2:]
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert device.on_device_reasons[split].startswith("dataset.on_device=auto: holding the ")


class Files(torch.utils.data.Dataset):
    def __len__(self):
        return 3


def test_auto_holds_level_splits_and_names_why_other_datasets_are_not():
    digits = DigitsDataModule(batch_size=128, eval_batch_size=None, num_workers=0)
    digits.setup()
    held, reason = choose_on_device("auto", digits.train_set, torch.device("cpu"), "train")
    assert held and reason == ("dataset.on_device=auto: holding the 1437x1x8x8 uint8 train split (92 KB) on cpu "
                               "(host memory: the levels stay where they are)")
    held, reason = choose_on_device("auto", Files(), torch.device("cpu"), "train")
    assert not held and "Files, not a LevelDataset" in reason and "DataLoader" in reason
    with pytest.raises(ValueError, match="dataset.on_device=true needs in-memory integer levels.*Files"):
        choose_on_device("true", Files(), torch.device("cpu"), "train")
    with pytest.raises(ValueError, match="on_device='yes' is invalid: it must be one of auto, true, false"):
        DigitsDataModule(batch_size=128, eval_batch_size=None, num_workers=0, on_device="yes")
