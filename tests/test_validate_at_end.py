"""The last training step is validated whatever trainer.check_val_every_n_epoch says (real Lightning fits)."""

import lightning as L
import pytest
from hydra.utils import instantiate

from vdmlab.cli.build import build_run
from vdmlab.cli.train import instantiate_all

TINY = ["model.width=16", "model.num_res_blocks=1", "fid=null", "logger=csv", "test=false", "module.eval_num_samples=1",
        "+trainer.limit_val_batches=1", "trainer.check_val_every_n_epoch=10", "~callbacks.sample_grid",
        "~callbacks.schedule_plot", "~callbacks.model_checkpoint", "~callbacks.checkpoint_on_interrupt",
        "~callbacks.progress_bar"]


class ValSteps(L.Callback):
    """The global step of every validation run during fit."""

    def __init__(self):
        self.steps = []

    def on_validation_end(self, trainer, pl_module):
        self.steps.append(trainer.global_step)


def fit(make_config, overrides):
    cfg = make_config([*TINY, *overrides])
    built = build_run(cfg)
    seen = ValSteps()
    trainer = instantiate(cfg.trainer, callbacks=[*instantiate_all(cfg.callbacks), seen], logger=False,
                          enable_progress_bar=False)
    trainer.fit(built.module, datamodule=built.datamodule)
    return trainer, seen.steps


@pytest.mark.parametrize("epochs", [3, 12])
def test_the_last_epoch_is_validated_when_it_is_not_a_multiple_of_the_period(make_config, epochs):
    trainer, steps = fit(make_config, [f"trainer.max_epochs={epochs}", "+trainer.limit_train_batches=2"])
    assert trainer.global_step == 2 * epochs
    assert steps == ([20, 24] if epochs == 12 else [6])  # epoch 10 by the period, then the last one
    assert trainer.check_val_every_n_epoch == 10  # the period is restored


def test_a_fit_stopped_by_max_steps_mid_epoch_is_validated_at_that_step(make_config):
    trainer, steps = fit(make_config, ["trainer.max_epochs=100", "trainer.max_steps=5"])
    assert trainer.global_step == 5 and steps == [5]
