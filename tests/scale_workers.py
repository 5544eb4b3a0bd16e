"""Worker processes for the evaluation-at-scale DDP test (FID samples split across ranks), spawned by the tests."""

import torch
from ddp_workers import put

from vdmlab.data import DigitsDataModule


def noise_sampler(num_levels: int = 17):
    """A stand-in for a model's sampler: images on the K-level grid drawn from ``generator`` alone."""
    def sample(n, generator):
        levels = torch.randint(0, num_levels, (n, 1, 8, 8), generator=generator, device=generator.device)
        return levels.float() * (2.0 / (num_levels - 1)) - 1.0

    return sample


def digits_fid_metric():
    """FIDMetric on the digits classifier's features with the real statistics of the digits test split."""
    from vdmlab.metrics import FIDMetric

    dm = DigitsDataModule(batch_size=128, eval_batch_size=None, num_workers=0)
    dm.setup()
    metric = FIDMetric("digits", reset_real_features=False)
    metric.update_from_dataset(dm.test_set, real=True)
    return metric


def sharded_fid(rank: int, world: int, init_file: str, queue) -> None:
    """Each rank makes its share of the batches of 230 samples in batches of 40 and reports the all-rank FID."""
    from vdmlab.metrics.fid_samples import sharded_sample_fid

    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    metric = digits_fid_metric()
    seen = []
    sample = noise_sampler()

    def recording(n, generator):
        seen.append(generator.initial_seed())
        return sample(n, generator)

    values = sharded_sample_fid(metric, recording, 230, 40, 17, seed=5)
    put(queue, (rank, values, seen))
    torch.distributed.destroy_process_group()
