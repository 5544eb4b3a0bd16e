"""Bits/dim as a torchmetric, exact under DDP; the one evaluation step (``update_bpd``, shared by training's
val/test and ``python eval.py``) and a dataloader loop over it (``evaluate_bpd``).

The metric knows nothing about the model: the caller computes ``negative_elbo(...).total`` (nats per example,
``[B]``) and passes it to :meth:`BitsPerDim.update`; bits/dim = nats / (D · ln 2) is applied in ``compute``.

Exact distributed evaluation (docs/architecture.md, traps). Lightning's ``DistributedSampler`` pads the dataset with duplicates
of its first examples until it divides by the world size (7 examples on 2 ranks → 8, one duplicate), so
summing per-rank statistics counts the padded examples twice. To count every example once:

1. wrap the evaluation dataset in :class:`UniqueIndexDataset`, whose items are ``(index, x)``;
2. call ``metric.update(nats, index=index)``: the per-example nats and dataset indices are kept in list
   states reduced by concatenation (``dist_reduce_fx="cat"``);
3. ``compute()`` gathers them from all ranks and drops repeated indices (keeping the first occurrence in
   rank order) before averaging.

Without ``index`` the metric keeps running float64 sums only (O(1) memory), which is exact on one process
or with a sampler that does not pad. One metric instance must use one mode. In index mode every rank must
have called ``update`` at least once before ``compute`` (always true with ``DistributedSampler``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping

import torch
from torch import Tensor, nn
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from vdmlab.data.base import UniqueIndexDataset, split_batch, split_index_batch  # noqa: F401 - re-exported
from vdmlab.diffusion.likelihood import ELBOModel, ELBOTerms, balanced_mixture_bpd, negative_elbo
from vdmlab.metrics.progress import progress


def mean_and_standard_error(values: Tensor) -> tuple[Tensor, Tensor]:
    """Sample mean and its standard error sqrt(s²/n), s² the unbiased (n - 1) sample variance."""
    n = values.numel()
    var = values.var(unbiased=True) if n > 1 else torch.full_like(values.sum(), math.nan)
    return values.mean(), (var / n).sqrt()


class BitsPerDim(Metric):
    """Mean negative ELBO in bits/dim over examples, with the standard error of that mean.

    ``update(nats [B], index=None)``; ``compute()`` → mean bits/dim (float64 scalar);
    ``stats()`` → ``{"bpd", "bpd_se", "n"}`` (synchronised across ranks). See the module docstring for the
    DDP-exact ``index`` mode.

    Args:
        data_dim: D, the number of scalar dimensions per example (e.g. 64 for 1x8x8 digits); may instead be
            given on the first ``update``.
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    sum_nats: Tensor
    sum_sq: Tensor
    count: Tensor

    def __init__(self, data_dim: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.data_dim = None if data_dim is None else int(data_dim)
        self.add_state("sum_nats", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("sum_sq", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("values", [], dist_reduce_fx="cat")  # per-example nats, float64 (index mode)
        self.add_state("indices", [], dist_reduce_fx="cat")  # their dataset indices, int64 (index mode)

    def update(self, nats: Tensor, index: Tensor | None = None, data_dim: int | None = None) -> None:
        """Add per-example negative ELBOs ``nats`` ``[B]`` (in nats), optionally with their dataset indices."""
        if data_dim is not None:
            if self.data_dim not in (None, int(data_dim)):
                raise ValueError(f"data_dim={data_dim} differs from the metric's data_dim={self.data_dim}")
            self.data_dim = int(data_dim)
        nats = nats.detach().reshape(-1).to(torch.float64)
        if index is None:
            if self.values:
                raise ValueError("BitsPerDim got updates with and without `index`; use one mode per metric")
            self.sum_nats += nats.sum()
            self.sum_sq += nats.pow(2).sum()
            self.count += nats.numel()
            return
        index = torch.as_tensor(index, device=nats.device).reshape(-1).to(torch.long)
        if index.numel() != nats.numel():
            raise ValueError(f"index has {index.numel()} entries but nats has {nats.numel()}")
        if int(self.count) > 0:
            raise ValueError("BitsPerDim got updates with and without `index`; use one mode per metric")
        self.values.append(nats)
        self.indices.append(index)

    def per_example_nats(self) -> Tensor:
        """Per-example nats with repeated indices dropped (first occurrence kept), in index mode; ``[N]``."""
        values, indices = dim_zero_cat(self.values).reshape(-1), dim_zero_cat(self.indices).reshape(-1).long()
        unique, inverse = torch.unique(indices, return_inverse=True)
        position = torch.arange(indices.numel(), device=indices.device)
        first = torch.full((unique.numel(),), indices.numel(), device=indices.device, dtype=torch.long)
        first = first.scatter_reduce(0, inverse, position, reduce="amin")
        return values.to(torch.float64)[first]

    def _index_mode(self) -> bool:
        """Whether the (possibly synchronised) states hold per-example values."""
        values = self.values
        return bool(values) if isinstance(values, list) else values.numel() > 0

    def _stats(self) -> dict[str, Tensor]:
        """Mean and standard error in bits/dim, and n, from the current (possibly synchronised) states."""
        if self.data_dim is None:
            raise ValueError("BitsPerDim needs data_dim (in __init__ or on update) to convert nats to bits/dim")
        if self._index_mode():
            values = self.per_example_nats()
            n = torch.tensor(values.numel())
            mean, se = mean_and_standard_error(values)
        else:
            n = self.count
            mean = self.sum_nats / n
            var = (self.sum_sq - n * mean.pow(2)) / (n - 1)  # unbiased, float64
            se = (var.clamp(min=0.0) / n).sqrt()
        scale = self.data_dim * math.log(2.0)
        return {"bpd": mean / scale, "bpd_se": se / scale, "n": n}

    def compute(self) -> Tensor:
        """Mean bits/dim over the examples seen (each counted once in index mode), a float64 scalar."""
        return self._stats()["bpd"]

    def stats(self) -> dict[str, Tensor]:
        """``{"bpd": mean, "bpd_se": standard error of the mean, "n": examples}``, synchronised across ranks.

        Under DDP this is a collective call: every rank must call it.
        """
        with self.sync_context():
            return self._stats()

    def standard_error(self) -> Tensor:
        """Standard error of the mean bits/dim, sqrt(s²/n) from the per-example values (collective under DDP)."""
        return self.stats()["bpd_se"]


#: the logged bits/dim terms: the total negative ELBO and its three terms (eq. (3.60))
BPD_TERMS = ("bpd", "bpd_diffusion", "bpd_prior", "bpd_reconstruction")


def update_bpd(
    metrics: Mapping[str, BitsPerDim],
    x: Tensor,
    model: ELBOModel,
    *,
    generator: torch.Generator | None = None,
    index: Tensor | None = None,
    example_ids: Tensor | None = None,
    seed: int = 0,
    cond: Tensor | None = None,
    terms: tuple[str, ...] = BPD_TERMS,
) -> ELBOTerms:
    """One batch of the bits/dim evaluation of ``model``: the negative ELBO per example (``negative_elbo``,
    eq. (3.60)) is added to ``metrics[term]`` for every term of ``terms`` (default: all of ``BPD_TERMS``).

    ``index`` puts the metrics in their DDP-exact index mode, ``example_ids`` (with ``seed``) draws the noise per
    example instead of from ``generator``; ``cond`` (class labels ``[B]``, or None) makes it the bound on
    -log p(x|y) of a conditional model. Returns the terms in nats.
    """
    elbo = negative_elbo(x, model, generator=generator, example_ids=example_ids, seed=seed, cond=cond)
    data_dim = x[0].numel()
    for term, nats in zip(BPD_TERMS, (elbo.total, elbo.diffusion, elbo.prior, elbo.reconstruction)):
        if term not in terms:
            continue
        metric = metrics[term]
        metric.update(nats.to(metric.device), index=None if index is None else index.to(metric.device),
                      data_dim=data_dim)
    return elbo


class LikelihoodMetrics(nn.Module):
    """The bits/dim of one split, the one computation for training's val/test and ``python eval.py``: the negative
    ELBO and its terms (``BPD_TERMS``), of p(x|y) for a class-conditional model (``num_classes`` classes), which
    then also gets ``bpd_uncond``, the bound on p(x) of the same model with every label replaced by the null label
    ∅ (= ``num_classes``) and the same noise, and ``bpd_mixture``, the bound on p(x) of the balanced class mixture
    (1/C)·Σ_y p(x|y) (``likelihood.balanced_mixture_bpd``)."""

    def __init__(self, data_dim: int | None = None, num_classes: int | None = None):
        super().__init__()
        self.num_classes = num_classes
        self.terms = nn.ModuleDict({term: BitsPerDim(data_dim) for term in BPD_TERMS})
        self.uncond = None if num_classes is None else BitsPerDim(data_dim)

    def update(self, x: Tensor, model: ELBOModel, y: Tensor | None = None, *,
               generator: torch.Generator | None = None, **noise) -> None:
        """Add one batch (labels ``y`` for a conditional model); ``noise``: ``update_bpd``'s index,
        example_ids and seed. The null-label pass draws the same noise as the labelled one."""
        state = None if generator is None or y is None else generator.get_state()
        update_bpd(self.terms, x, model, generator=generator, cond=y, **noise)  # -log p(x|y) when conditional
        if y is not None and self.uncond is not None:
            if state is not None:
                generator.set_state(state)
            update_bpd({"bpd": self.uncond}, x, model, generator=generator, cond=torch.full_like(y, self.num_classes),
                       terms=("bpd",), **noise)

    def compute(self) -> dict[str, float]:
        """``{"bpd", "bpd_se", "bpd_diffusion", "bpd_prior", "bpd_reconstruction", "n"}`` and, for a conditional
        model, ``"bpd_uncond", "bpd_uncond_se", "bpd_mixture"``; empty before any update (collective under DDP)."""
        if not self.terms["bpd"].update_called:
            return {}
        total = self.terms["bpd"].stats()
        result = {"bpd": float(total["bpd"]), "bpd_se": float(total["bpd_se"])}
        result.update({term: float(self.terms[term].stats()["bpd"]) for term in BPD_TERMS[1:]})
        result["n"] = int(total["n"])
        if self.uncond is not None:
            uncond = self.uncond.stats()
            data_dim = self.terms["bpd"].data_dim
            result.update(bpd_uncond=float(uncond["bpd"]), bpd_uncond_se=float(uncond["bpd_se"]),
                          bpd_mixture=float(balanced_mixture_bpd(total["bpd"], self.num_classes, data_dim)))
        return result

    def reset(self) -> None:
        for metric in (*self.terms.values(), *([self.uncond] if self.uncond is not None else [])):
            metric.reset()


def evaluate_bpd(
    model: ELBOModel,
    dataloader: Iterable,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    seed: int | None = None,
    num_classes: int | None = None,
) -> dict[str, float]:
    """The negative ELBO (eq. (3.60)) of ``model`` over a dataloader, in bits/dim, with each term and the standard
    error (:class:`LikelihoodMetrics`).

    With ``seed`` and ``(index, x)`` batches the noise is drawn per example (``negative_elbo``'s
    ``example_ids``), so the result does not depend on batching; otherwise it comes from ``generator``.

    Batches are tensors ``x`` or ``(index, x)`` pairs from :class:`UniqueIndexDataset`, or ``(index, x, y)`` with
    class labels y for a conditional model of ``num_classes`` classes: the bound is then on -log p(x|y), and the
    result also holds ``bpd_uncond`` (p(x) with the null label), its ``bpd_uncond_se`` and ``bpd_mixture``. Runs
    under ``torch.no_grad`` (not ``inference_mode``: the energy parameterization differentiates internally) with
    the net in eval mode, restoring its mode afterwards. With ``device`` given, the net and schedule are moved
    there; ``generator`` (if any) must live on that device.

    Returns ``{"bpd", "bpd_se", "diffusion", "prior", "reconstruction", "n", "seconds"}`` (and the conditional
    keys); the three terms are mean bits/dim and add up to ``bpd``.
    """
    net = model.net
    if device is not None:
        net.to(device)
        model.schedule.to(device)
    else:
        device = next(iter(net.parameters()), torch.empty(0)).device
    metrics = LikelihoodMetrics(num_classes=num_classes)
    was_training = net.training
    net.eval()
    start = time.perf_counter()
    try:
        with torch.no_grad():
            for batch in progress(dataloader, total=len(dataloader) if hasattr(dataloader, "__len__") else None,
                                  desc="bits/dim"):
                index, x, y = split_batch(batch)
                per_example = seed is not None and index is not None
                metrics.update(x.to(device), model, None if y is None else y.to(device), generator=generator,
                               example_ids=index if per_example else None, seed=seed or 0)
    finally:
        net.train(was_training)
    result = {key.removeprefix("bpd_") if key in BPD_TERMS else key: value for key, value in metrics.compute().items()}
    result.update(seconds=time.perf_counter() - start)
    return result
