"""Bits/dim of the probability-flow ODE model over a dataloader, exact under DDP (each example counted once).

The per-example dequantized bounds of :func:`vdmlab.diffusion.ode_likelihood.dequantized_nll` go into the
index-mode :class:`~vdmlab.metrics.bpd.BitsPerDim` (``(index, x)`` batches from ``UniqueIndexDataset``), which
drops DDP padding duplicates; with dataset indices the noise (dequantization, probes) is drawn per example, so
the result is the same on any number of ranks. Fixed-grid solvers make the same number of network calls on
every rank; dopri5 refuses to run under torch.distributed.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable

import torch
from torch import nn

from vdmlab.data.base import split_index_batch
from vdmlab.diffusion.ode_likelihood import dequantized_nll
from vdmlab.diffusion.parameterization import Parameterization
from vdmlab.diffusion.schedules import Schedule
from vdmlab.metrics.bpd import BitsPerDim


def evaluate_ode_bpd(
    net: nn.Module,
    schedule: Schedule,
    parameterization: Parameterization,
    dataloader: Iterable,
    num_levels: int,
    *,
    solver: Callable,
    divergence,
    dequantization: Callable,
    num_draws: int = 1,
    device: torch.device | str | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """ODE bits/dim bounds: ``{"ode_bpd", "ode_bpd_se", "ode_bpd_iw", "ode_bpd_iw_se", "ode_estimator_se",
    "ode_nfe", "n", "seconds"}``.

    ``ode_bpd`` is the mean over dequantization draws of the variational bound, ``ode_bpd_iw`` the
    importance-weighted bound over the draws; ``*_se`` are standard errors of the mean over examples (they
    include the probe and dequantization noise), ``ode_estimator_se`` the part of it due to that noise alone.
    ``ode_nfe`` is the number of network calls per ODE solve (per draw; a dopri5 solve reports its last).
    """
    if device is not None:
        net.to(device)
        schedule.to(device)
    else:
        device = next(iter(net.parameters()), torch.empty(0)).device
    denoise = parameterization.denoiser(net)
    metrics = {"ode_bpd": BitsPerDim(), "ode_bpd_iw": BitsPerDim(), "estimator": BitsPerDim()}
    was_training = net.training
    net.eval()
    start = time.perf_counter()
    try:
        with torch.no_grad():
            for position, batch in enumerate(dataloader):
                index, x = split_index_batch(batch)
                x = x.to(device)
                if index is None:  # plain tensors: positions stand in for dataset indices (single process)
                    index = torch.arange(x.shape[0]) + position * x.shape[0]
                result = dequantized_nll(x, denoise, schedule, num_levels, dequantization=dequantization,
                                         num_draws=num_draws, example_ids=index, seed=seed, solver=solver,
                                         divergence=divergence)
                data_dim = x[0].numel()
                metrics["ode_bpd"].update(result.nats.cpu(), index=index, data_dim=data_dim)
                metrics["ode_bpd_iw"].update(result.nats_iw.cpu(), index=index, data_dim=data_dim)
                metrics["estimator"].update(result.nats_se.pow(2).cpu(), index=index, data_dim=data_dim)
    finally:
        net.train(was_training)
    bound, iw = metrics["ode_bpd"].stats(), metrics["ode_bpd_iw"].stats()
    n = int(bound["n"])
    scale = data_dim * math.log(2.0)  # the metric divides what it averages by D ln 2
    mean_var_nats = float(metrics["estimator"].compute()) * scale  # mean per-example estimator variance, nats²
    estimator_se = math.sqrt(max(mean_var_nats, 0.0) / n) / scale
    return {"ode_bpd": float(bound["bpd"]), "ode_bpd_se": float(bound["bpd_se"]), "ode_bpd_iw": float(iw["bpd"]),
            "ode_bpd_iw_se": float(iw["bpd_se"]), "ode_estimator_se": estimator_se,
            "ode_nfe": int(getattr(solver, "num_evaluations", 0)), "n": n, "seconds": time.perf_counter() - start}
