"""A short DDP training job for the two-"node" test: ``python two_node_worker.py MODE OUT_DIR``.

MODE ``nodes``: one process of a ``num_nodes=2`` job, started by the test as a cluster launcher starts one process
per node (NODE_RANK, LOCAL_RANK, MASTER_ADDR, MASTER_PORT, WORLD_SIZE in the environment); ``local``: the same job as
2 processes on one node (Lightning's ddp_spawn); ``single``: one process with the same global batch. Each writes the
validation bits/dim after training and (global rank 0) the trained weights to OUT_DIR/<mode>.pt."""

import sys
from functools import partial
from pathlib import Path

import lightning as L
import torch

from vdmlab.data import DigitsDataModule
from vdmlab.diffusion.parameterization import EpsParameterization
from vdmlab.diffusion.schedules import LinearSchedule
from vdmlab.diffusion.weighting import ELBOWeighting
from vdmlab.models import UNet
from vdmlab.module import DiffusionModule

PER_RANK_BATCH, STEPS = 16, 4


def module() -> DiffusionModule:
    torch.manual_seed(0)
    net = UNet(width=16, num_res_blocks=1, data_shape=(1, 8, 8))
    return DiffusionModule(net, LinearSchedule(-5.0, 10.0), ELBOWeighting(), EpsParameterization(), 17, (1, 8, 8),
                           optimizer=partial(torch.optim.AdamW, lr=1e-3), eval_num_samples=2)


def main(mode: str, out: Path) -> None:
    torch.set_num_threads(1)
    nodes, devices, strategy, batch = {"nodes": (2, 1, "ddp", PER_RANK_BATCH), "local": (1, 2, "ddp_spawn", PER_RANK_BATCH),
                                       "single": (1, 1, "auto", 2 * PER_RANK_BATCH)}[mode]
    trainer = L.Trainer(accelerator="cpu", devices=devices, num_nodes=nodes, strategy=strategy, max_steps=STEPS,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        inference_mode=False, use_distributed_sampler=False, limit_val_batches=0, num_sanity_val_steps=0)
    model = module()
    datamodule = DigitsDataModule(batch_size=batch, eval_batch_size=60, num_workers=0, seed=0)
    trainer.fit(model, datamodule=datamodule)
    validator = L.Trainer(accelerator="cpu", devices=devices, num_nodes=nodes, strategy=strategy, logger=False,
                          enable_progress_bar=False, enable_model_summary=False, inference_mode=False,
                          use_distributed_sampler=False)
    metrics = validator.validate(model, datamodule=datamodule, verbose=False)[0]
    if trainer.global_rank == 0:
        torch.save({"state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                    "world_size": trainer.world_size, "num_nodes": trainer.num_nodes,
                    "bpd": float(metrics["val/bpd"]), "bpd_se": float(metrics["val/bpd_se"])}, out / f"{mode}.pt")


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
