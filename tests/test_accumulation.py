"""Gradient accumulation: trainer.accumulate_grad_batches=k at batch B/k trains like k=1 at batch B (the weights,
the EMA, the LR warm-up, learned and adaptive schedules and the stratified times all count optimizer steps)."""

from functools import partial

import lightning as L
import pytest
import torch

from vdmlab.data import DigitsDataModule
from vdmlab.diffusion.learned_schedules import AdaptiveSchedule, LearnedSchedule
from vdmlab.diffusion.parameterization import EpsParameterization
from vdmlab.diffusion.weighting import ELBOWeighting
from vdmlab.models import UNet
from vdmlab.module import DiffusionModule
from vdmlab.optim import linear_warmup

STEPS = 6


class Record(L.Callback):
    """The times t of every optimizer step (pieced together from its micro-batches) and the learning rates."""

    def __init__(self):
        self.lrs = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.lrs.append(optimizer.param_groups[0]["lr"])


def train(schedule, batch_size, k):
    torch.manual_seed(0)
    net = UNet(width=16, num_res_blocks=1, data_shape=(1, 8, 8))
    module = DiffusionModule(net, schedule, ELBOWeighting(), EpsParameterization(), 17, (1, 8, 8),
                             optimizer=partial(torch.optim.AdamW, lr=1e-3),
                             lr_scheduler=partial(linear_warmup, warmup_steps=4), ema_decay=0.9)
    record = Record()
    trainer = L.Trainer(max_steps=STEPS, accumulate_grad_batches=k, gradient_clip_val=1.0, logger=False,
                        enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False,
                        deterministic=True, limit_val_batches=0, use_distributed_sampler=False, callbacks=[record])
    trainer.fit(module, datamodule=DigitsDataModule(batch_size=batch_size, eval_batch_size=None, num_workers=0))
    assert trainer.global_step == STEPS and int(module.ema.num_updates) == STEPS  # the EMA per optimizer step
    return module, record


@pytest.mark.parametrize("make_schedule", [partial(LearnedSchedule, -5.0, 10.0, hidden=8, lr_multiplier=10.0),
                                           partial(AdaptiveSchedule, -5.0, 10.0, num_bins=10)],
                         ids=["learned", "adaptive"])
def test_two_micro_batches_of_half_the_batch_train_like_the_whole_batch(make_schedule):
    whole, whole_record = train(make_schedule(), batch_size=64, k=1)
    halves, halves_record = train(make_schedule(), batch_size=32, k=2)
    assert halves_record.lrs == whole_record.lrs  # the warm-up counts optimizer steps
    a, b = whole.state_dict(), halves.state_dict()
    assert a.keys() == b.keys()
    # float32 on the CPU: a batch of 64 and two of 32 sum the gradient in a different order (and Lightning scales
    # each half by 1/2), so the weights agree to rounding after STEPS Adam steps, not bitwise
    for key in a:
        if a[key].is_floating_point():
            torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5, msg=key)
    fresh = make_schedule().state_dict()
    changed = [k for k in fresh if not torch.equal(a[f"schedule.{k}"], fresh[k])]
    assert changed  # the schedule did train (its parameters or statistics moved), so the comparison means something


def test_micro_batches_take_consecutive_strata_of_one_stratified_set():
    module = DiffusionModule(UNet(width=16, num_res_blocks=1, data_shape=(1, 8, 8)),
                             LearnedSchedule(-5.0, 10.0, hidden=4, lr_multiplier=1.0),
                             ELBOWeighting(), EpsParameterization(), 17, (1, 8, 8))
    module._accumulation = lambda: 4
    times = torch.cat([module._train_times(8, j, torch.device("cpu")) for j in range(4)])
    gaps = torch.diff(torch.sort(times).values)
    torch.testing.assert_close(gaps, torch.full_like(gaps, 1 / 32))  # one stratified set of 32 times
