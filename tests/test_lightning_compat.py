"""The Lightning internals that vdmlab reads (vdmlab.lightning_compat, vdmlab.loggers) exist and mean what the
adapter says, on a real trainer: a Lightning upgrade that moves one fails here, by name, not in a long run."""

import inspect

import lightning as L
import torch
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from torch.utils.data import DataLoader, TensorDataset

from vdmlab import lightning_compat as compat


class Probe(L.LightningModule):
    """A one-parameter model that records what the adapter reports at every training batch."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.seen: list[tuple] = []

    def training_step(self, batch, batch_idx):
        trainer = compat.attached_trainer(self)
        self.seen.append(("step", trainer.global_step, compat.writes_step_logs(trainer)))
        return (self.w - batch[0]).pow(2).mean()

    def on_train_batch_end(self, outputs, batch, batch_idx):
        self.seen.append(("end", compat.batches_done(self.trainer), compat.is_last_batch(self.trainer)))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_the_internals_read_by_the_adapter_are_where_it_looks(tmp_path):
    probe = Probe()
    assert compat.attached_trainer(probe) is None  # a module on its own
    trainer = L.Trainer(max_epochs=1, log_every_n_steps=2, logger=CSVLogger(tmp_path), enable_progress_bar=False,
                        enable_checkpointing=False, enable_model_summary=False, use_distributed_sampler=False)
    assert compat.uses_distributed_sampler(trainer) is False
    assert compat.uses_distributed_sampler(L.Trainer(logger=False, use_distributed_sampler=True)) is True
    trainer.fit(probe, DataLoader(TensorDataset(torch.ones(5, 1)), batch_size=1))
    steps = [s for s in probe.seen if s[0] == "step"]
    ends = [s for s in probe.seen if s[0] == "end"]
    assert [logs for _, _, logs in steps] == [(step + 1) % 2 == 0 for _, step, _ in steps]  # every 2nd step logs
    assert [done for _, done, _ in ends] == [0, 1, 2, 3, 4]  # completed: the running batch counts after its end hooks
    assert [last for _, _, last in ends] == [False, False, False, False, True]
    checkpoint = compat.dump_checkpoint(trainer)  # what the interrupt callback writes
    assert checkpoint["global_step"] == 5 and "state_dict" in checkpoint and "loops" in checkpoint
    assert type(compat.cluster_environment(trainer)).__name__ == "LightningEnvironment"  # SLURMEnvironment under SLURM
    compat.request_safe_stop(trainer)
    assert trainer.received_sigterm  # Lightning's own flag for a stop at the next safe point


def test_the_csv_writer_internals_the_appending_logger_overrides_exist(tmp_path):
    assert callable(getattr(ExperimentWriter, "_check_log_dir_exists", None))
    writer = ExperimentWriter(log_dir=str(tmp_path))
    assert hasattr(writer, "_fs") and hasattr(writer, "metrics_keys") and hasattr(writer, "metrics_file_path")
    logger = CSVLogger(tmp_path)
    assert hasattr(logger, "_experiment") and hasattr(logger, "_fs")
    assert "log_dir" in inspect.signature(ExperimentWriter).parameters
