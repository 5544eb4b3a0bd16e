"""Worker processes for the DDP tests, importable without Lightning so that spawned ranks start quickly."""

import torch

from vdmlab.diffusion import learned_schedules as LS


def schedule_statistics(rank: int, world: int, init_file: str, queue) -> None:
    """Each rank draws its own λ and losses, updates an adaptive and a learned schedule, and reports their state."""
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    gen = torch.Generator().manual_seed(rank)
    logsnr, loss = torch.rand(50, generator=gen, dtype=torch.float64) * 15 - 5, torch.rand(50, generator=gen) + rank
    adaptive = LS.AdaptiveSchedule(-5.0, 10.0, num_bins=10)
    adaptive.update(logsnr, loss)
    learned = LS.LearnedSchedule(-5.0, 10.0, hidden=4, lr_multiplier=1.0)
    with torch.enable_grad():
        learned(torch.rand(50, generator=gen))
    holder = learned._armed[-1]
    learned.update(logsnr, loss)
    queue.put((rank, logsnr, loss, adaptive.ema_sum.clone(), adaptive.ema_weight.clone(), holder[0].clone()))
    torch.distributed.destroy_process_group()
