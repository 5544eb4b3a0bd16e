"""The learned weighting (edm2_uncertainty) end to end: a real Lightning fit trains its log-variance head through the
module's optimizer, plots and logs its w(λ)·e^{-u(λ)}, and its checkpoint rebuilds with the learned u."""

from pathlib import Path

import torch

from vdmlab.cli.build import build_from_checkpoint
from vdmlab.cli.train import run

SHORT = ["weighting=edm2_uncertainty", "schedule=cosine", "logger=csv", "fid=null", "test=false", "model.width=16",
         "model.num_res_blocks=1", "trainer.max_epochs=2", "+trainer.limit_train_batches=4",
         "+trainer.limit_val_batches=1", "trainer.check_val_every_n_epoch=1", "callbacks.schedule_plot.every_n_epochs=1",
         "callbacks.sample_grid.every_n_epochs=1000", "callbacks.sample_grid.num_samples=4", "sampler.steps=4"]


def test_edm2_uncertainty_trains_u_plots_and_logs_it_and_reloads(make_config):
    cfg = make_config(SHORT)
    run(cfg)
    out = Path(cfg.paths.output_dir)
    assert (out / "plots" / "schedule_start.png").is_file() and (out / "plots" / "schedule_end.png").is_file()
    header = (out / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"weighting/log_w@0", "weighting/log_w@-5", "weighting/log_w@5"} <= set(header)
    built = build_from_checkpoint(str(out / "checkpoints" / "last.ckpt"))
    head = built.module.weighting.linear
    assert head.weight.abs().sum() > 0  # zero at initialisation: the optimizer stepped it
    state = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    torch.testing.assert_close(head.weight, state["weighting.linear.weight"])
