"""The training step's hot path: no host synchronisation in vdmlab's code on steps that do not log beyond the one
non-finite check, and bf16-mixed training and evaluation with the likelihood terms in float32."""

import math
import sys
from functools import partial

import lightning as L
import pytest
import torch

from vdmlab.callbacks.nonfinite import NonFiniteGuard
from vdmlab.data import DigitsDataModule
from vdmlab.diffusion.learned_schedules import AdaptiveSchedule, LearnedSchedule
from vdmlab.diffusion.parameterization import EpsParameterization
from vdmlab.diffusion.schedules import LinearSchedule
from vdmlab.diffusion.weighting import ELBOWeighting
from vdmlab.models import UNet
from vdmlab.module import DiffusionModule
from vdmlab.optim import linear_warmup

SYNCING = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__")  # what makes the host wait for a GPU


def small_module(schedule=None, **kwargs):
    torch.manual_seed(0)
    net = UNet(width=16, num_res_blocks=1, data_shape=(1, 8, 8))
    return DiffusionModule(net, schedule or LinearSchedule(-5.0, 10.0), ELBOWeighting(), EpsParameterization(), 17,
                           (1, 8, 8), optimizer=partial(torch.optim.AdamW, lr=1e-3),
                           lr_scheduler=partial(linear_warmup, warmup_steps=5), **kwargs)


class SyncsPerStep(L.Callback):
    """Per training step: the tensor-to-host reads made by vdmlab's own code, and whether the step logged."""

    def __init__(self, calls):
        self.calls, self.steps = calls, []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.calls.clear()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.steps.append((pl_module._logged_step, list(self.calls)))


@pytest.mark.parametrize("schedule", [None, partial(LearnedSchedule, -5.0, 10.0, hidden=8, lr_multiplier=1.0),
                                      partial(AdaptiveSchedule, -5.0, 10.0, num_bins=10)],
                         ids=["linear", "learned", "adaptive"])
def test_steps_that_do_not_log_make_one_host_sync_the_nonfinite_check(schedule, monkeypatch):
    calls = []
    for name in SYNCING:
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, _name=name, **kwargs):
            frame = sys._getframe(1)
            if "/src/vdmlab/" in frame.f_code.co_filename.replace("\\", "/"):
                calls.append(f"{_name} at {frame.f_code.co_filename.rsplit('/', 1)[-1]}:{frame.f_lineno}")
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    module = small_module(schedule() if schedule else None)
    original_step = module.training_step

    def training_step(batch, batch_idx):
        module._logged_step = module._logging_step()
        return original_step(batch, batch_idx)

    module.training_step = training_step
    record = SyncsPerStep(calls)
    trainer = L.Trainer(max_steps=12, log_every_n_steps=5, logger=False, enable_progress_bar=False,
                        enable_checkpointing=False, enable_model_summary=False, limit_val_batches=0,
                        gradient_clip_val=1.0, use_distributed_sampler=False, callbacks=[NonFiniteGuard(), record])
    trainer.fit(module, datamodule=DigitsDataModule(batch_size=64, eval_batch_size=None, num_workers=0))
    quiet = [c for logged, c in record.steps[1:] if not logged]  # the first step may read the EMA counter once
    assert len(quiet) >= 8
    for step_calls in quiet:
        assert len(step_calls) == 1 and step_calls[0].startswith("__bool__ at nonfinite.py"), step_calls


def test_bf16_mixed_trains_and_evaluates_with_float32_losses():
    module = small_module(eval_num_samples=2)
    dtypes = []

    class LossDtype(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            dtypes.append(outputs["loss"].dtype)
            assert math.isfinite(float(outputs["loss"]))

    trainer = L.Trainer(max_steps=3, precision="bf16-mixed", logger=False, enable_progress_bar=False,
                        enable_checkpointing=False, enable_model_summary=False, limit_val_batches=1,
                        val_check_interval=3, inference_mode=False, use_distributed_sampler=False,
                        callbacks=[LossDtype()])
    datamodule = DigitsDataModule(batch_size=64, eval_batch_size=None, num_workers=0)
    trainer.fit(module, datamodule=datamodule)
    assert dtypes == [torch.float32] * 3
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the net runs in bf16; the ELBO terms come out in float32
        x = datamodule.val_set.levels[:8].float() / 8 - 1
        terms = module.loss_terms(x, torch.Generator().manual_seed(0))
        assert terms.loss.dtype == terms.mse.dtype == torch.float32
    metrics = trainer.validate(module, datamodule=datamodule, verbose=False)[0]
    assert math.isfinite(metrics["val/bpd"]) and 0 < metrics["val/bpd"] < 20


@pytest.mark.parametrize("path", ["vdmlab.diffusion.losses.low_discrepancy_times", "vdmlab.diffusion.losses.iid_times"])
def test_the_configured_time_sampler_is_the_function_itself(make_config, path):
    """It is called every training step: a Hydra ``_partial_`` would re-run Hydra's target checks on each call
    (a measurable share of a GPU step), so the config hands the module the function itself."""
    from hydra.utils import instantiate

    from vdmlab.diffusion import losses

    cfg = make_config([f"module.time_sampler.path={path}"])
    sampler = instantiate(cfg.module.time_sampler)
    assert sampler is getattr(losses, path.rsplit(".", 1)[1])
    t = sampler(64, generator=torch.Generator().manual_seed(0), device=torch.device("cpu"))
    assert t.shape == (64,) and bool(((t >= 0) & (t <= 1)).all())


@pytest.mark.parametrize("path,reason", [
    ("vdmlab.diffusion.losses.no_such_sampler", "not an importable function"),
    ("vdmlab.diffusion.likelihood.bits_per_dim", "sampler(batch, generator=..., device=...)"),
])
def test_a_time_sampler_that_is_not_one_is_named_before_training(make_config, path, reason):
    from vdmlab.cli.validate import ConfigError, validate_config

    with pytest.raises(ConfigError) as error:
        validate_config(make_config([f"module.time_sampler.path={path}"]))
    assert f"module.time_sampler.path='{path}' is invalid: " in str(error.value) and reason in str(error.value)
