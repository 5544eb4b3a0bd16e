"""Worker processes for the DDP tests, importable without Lightning so that spawned ranks start quickly."""

import pickle

import torch

from vdmlab.diffusion import learned_schedules as LS


def run_ranks(target, world: int, init_file: str) -> list:
    """Start ``world`` spawned processes ``target(rank, world, init_file, queue)`` and return what each put."""
    ctx = torch.multiprocessing.get_context("spawn")
    queue = ctx.SimpleQueue()
    procs = [ctx.Process(target=target, args=(r, world, init_file, queue)) for r in range(world)]
    for p in procs:
        p.start()
    results = [pickle.loads(queue.get()) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    return results


def put(queue, result) -> None:
    """Send a rank's result by value. Through the queue's own pickler torch shares tensor storage by file descriptor,
    which the parent must fetch from the still-running child: a rank that exits first (a loaded machine) resets the
    connection. Plain pickle copies the data, so the result survives its sender."""
    queue.put(pickle.dumps(result))


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
    put(queue, (rank, logsnr, loss, adaptive.ema_sum.clone(), adaptive.ema_weight.clone(), holder[0].clone()))
    torch.distributed.destroy_process_group()


def ode_bpd_shard(rank: int, world: int, init_file: str, queue) -> None:
    """Each rank evaluates the ODE bits/dim of its unpadded shard of 7 examples; the metric gathers all ranks."""
    from vdmlab.diffusion import ode_likelihood as OL
    from vdmlab.diffusion import parameterization as PZ
    from vdmlab.diffusion import schedules as S
    from vdmlab.metrics.fid import shard_indices
    from vdmlab.metrics.ode_bpd import evaluate_ode_bpd

    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    net, x = ode_test_problem()
    indices = list(shard_indices(len(x)))
    loader = [(torch.tensor(indices[i:i + 2]), x[indices[i:i + 2]]) for i in range(0, len(indices), 2)]
    result = evaluate_ode_bpd(net, S.CosineSchedule(-8.0, 8.0), PZ.EpsParameterization(), loader, 17,
                              solver=OL.HeunSolver(6), divergence=OL.HutchinsonDivergence(2),
                              dequantization=OL.UniformDequantization(), num_draws=2, seed=3)
    try:  # an adaptive solver would make different numbers of calls on the ranks: refused
        OL.Dopri5Solver()(None, (x, x), S.CosineSchedule(-8.0, 8.0))
        refusal = ""
    except RuntimeError as err:
        refusal = str(err)
    put(queue, (rank, result, refusal))
    torch.distributed.destroy_process_group()


def ode_test_problem() -> tuple[torch.nn.Module, torch.Tensor]:
    """A small random MLP ε̂-network on 2-D data and 7 examples on the 17 levels (the DDP ODE test)."""
    from vdmlab.models import MLP

    torch.manual_seed(0)
    net = MLP(data_shape=(2,), hidden=16, depth=1, emb_dim=8).double()
    torch.nn.init.normal_(net.out.weight, std=0.3)  # the zero-initialised output layer would make ε̂ = 0
    levels = torch.linspace(-1, 1, 17, dtype=torch.float64)
    x = levels[torch.randint(0, 17, (7, 2), generator=torch.Generator().manual_seed(1))]
    return net, x
