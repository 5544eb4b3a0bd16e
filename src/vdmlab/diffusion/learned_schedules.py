"""The schedules that change during training: VDM's learned schedule and VDM++'s adaptive one.

Both share the :class:`~vdmlab.diffusion.schedules.Schedule` interface of the fixed schedules (λ(t), dλ/dt, t(λ),
p(λ)) and use its ``update(logsnr, loss)`` hook, which the module calls each training step before backward:

- ``LearnedSchedule`` (App. A.2) has parameters η. ``update`` arms a custom autograd node
  (``_VarianceGradient``) on the forwards of that step so that η receives the gradient of the estimator's
  variance, not of the loss, while the denoiser keeps the plain loss gradient;
- ``AdaptiveSchedule`` (eq. (4.130)) has state: per-bin EMAs of w(λ)‖ε - ε̂‖², kept as checkpointed buffers.

Under DDP every rank must hold the same schedule, so both all-reduce what ``update`` sees over the ranks
(``vdmlab.distributed.all_reduce_sum``): the learned schedule its batch-mean loss L̄ (the scale of the
variance gradient), the adaptive one its per-bin sums and counts (so the EMAs move identically everywhere).
Without a process group the reduction is a no-op.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from vdmlab.checks import check_bool, check_float, check_int, check_positive
from vdmlab.diffusion.schedules import Schedule
from vdmlab.distributed import all_reduce_sum


class _VarianceGradient(torch.autograd.Function):
    """Identity on the normalised shape whose backward multiplies the incoming cotangent by a per-example factor.

    With the factor L_i/L̄ filled in by ``LearnedSchedule.update`` the shape parameters η receive
    Σ_i (L_i/L̄)·∂L_i/∂η / B = ∇_η E[L²]/(2L̄) instead of ∇_η E[L]: the variance-minimising gradient of VDM
    (App. A.2, VDM §5.2). Only the shape's own outputs are scaled, so the denoiser and the endpoints keep the
    plain gradient of the loss.
    """

    @staticmethod
    def forward(ctx, holder: list, *outputs: Tensor) -> tuple[Tensor, ...]:
        ctx.holder = holder
        return tuple(o.clone() for o in outputs)

    @staticmethod
    def backward(ctx, *grads: Tensor) -> tuple:
        factor = ctx.holder[0]
        if factor is None:  # no training step armed this forward: the plain gradient (factor 1), see LearnedSchedule
            return (None, *grads)
        return (None, *(g * factor.to(g.dtype) if g is not None else None for g in grads))


class LearnedSchedule(Schedule):
    """VDM's learned schedule: γ_η(t) = -λ(t) is a monotone network (App. A.2) rescaled to exact endpoints.

    γ̃(t) = a·t + (1/F)·Σ_j c_j·(2·sigmoid(b_j(2t - 1) + d_j) - 1) with a, b_j, c_j > 0 (a linear part plus an
    F-unit sigmoid branch, as in VDM's ``NoiseSchedule_NNet``), and λ(t) = λ_max - (λ_max - λ_min)·s(t) with the
    normalised shape s(t) = (γ̃(t) - γ̃(0))/(γ̃(1) - γ̃(0)) (VDM eq. (59)), so λ(0) = λ_max and λ(1) = λ_min exactly
    whatever η is.

    Positive weights are exp of unconstrained parameters, each stored divided by ``lr_multiplier``: with Adam-type
    optimizers (scale-invariant) the schedule then moves ``lr_multiplier`` times faster than the denoiser, which a
    run of a few thousand steps needs. The sigmoid units start with centres spread over [0, 1] and slopes
    b_j log-uniform in [2, 40], weighted so that the initial schedule is close to linear.

    Training: the shape η minimises the variance of the loss estimator through ``update(logsnr, loss)``, which
    arms a per-example gradient factor L_i/L̄ for the backward of the current forward (``_VarianceGradient``):
    ∇_η gets ∇_η E[L²]/(2L̄), the gradient of Var[L]/(2L̄) since E[L] does not depend on the shape (§4.3;
    exactly so in continuous time with a weighting that does not read p(λ)). L̄ is the batch mean, all-reduced
    over DDP ranks, so the scale matches the plain loss gradient and gradient clipping is not dominated by η.
    A backward through a forward that ``update`` did not arm (plots, d/dt, evaluation) uses factor 1, the plain
    gradient. With ``learn_endpoints`` the endpoints are parameters with the plain gradient of the loss; the
    module adds the ELBO's prior and decoder terms (eq. (3.60)) for them (``trainable_endpoints``).
    """

    adapts = True

    def __init__(self, logsnr_min: float, logsnr_max: float, hidden: int = 1024, learn_endpoints: bool = False, *,
                 lr_multiplier: float):
        self.learn_endpoints = check_bool("learn_endpoints", learn_endpoints)
        super().__init__(logsnr_min, logsnr_max)
        self.hidden, self.lr_multiplier = check_int("hidden", hidden, 1), check_positive("lr_multiplier", lr_multiplier)
        gen = torch.Generator().manual_seed(0)
        centre = torch.rand(self.hidden, generator=gen, dtype=torch.float64)
        slope = torch.exp(math.log(2.0) + math.log(20.0) * torch.rand(self.hidden, generator=gen, dtype=torch.float64))
        bias = -slope * (2.0 * centre - 1.0)
        inside = torch.sigmoid(slope + bias) - torch.sigmoid(bias - slope)  # the share of each unit's rise in [0, 1]
        weight = 1.0 / inside  # so that every unit adds the same rise inside [0, 1]: a near-linear start
        k = self.lr_multiplier
        self.log_a = nn.Parameter(torch.tensor(math.log(2.0) / k))
        self.log_b = nn.Parameter((slope.log() / k).float())
        self.d = nn.Parameter((bias / k).float())
        self.log_c = nn.Parameter(((weight / weight.mean()).log() / k).float())
        self._armed: list[list] = []
        self._step_stats: Tensor | None = None  # [ΣL, count] of the current optimizer step (``accumulate``)

    # ---- endpoints: Python floats, or a trained parameter [λ_min, λ_max] read as floats
    def _set_endpoints(self, logsnr_min: float, logsnr_max: float) -> None:
        if self.learn_endpoints:
            self.logsnr_ends = nn.Parameter(torch.tensor([logsnr_min, logsnr_max]))
        else:
            self._ends = (logsnr_min, logsnr_max)

    @property
    def trainable_endpoints(self) -> bool:  # type: ignore[override]
        """True with ``learn_endpoints``: the module then adds the ELBO's prior and decoder terms (eq. (3.60))."""
        return self.learn_endpoints

    @property
    def logsnr_min(self) -> float:  # type: ignore[override]
        """λ(1) = λ_min as a Python float (the current value when it is trained)."""
        return float(self.logsnr_ends[0]) if self.learn_endpoints else self._ends[0]

    @property
    def logsnr_max(self) -> float:  # type: ignore[override]
        """λ(0) = λ_max as a Python float (the current value when it is trained)."""
        return float(self.logsnr_ends[1]) if self.learn_endpoints else self._ends[1]

    def endpoints(self, like: Tensor) -> tuple[Tensor, Tensor]:
        """(λ_min, λ_max): the trained parameter (with gradient) or the fixed values."""
        if self.learn_endpoints:
            ends = self.logsnr_ends.to(like.dtype)
            return ends[0], ends[1]
        return super().endpoints(like)

    # ---- the monotone network
    def _unit_params(self, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(a, b, c, d): the positive weights exp(k·θ) and the free biases k·θ of γ̃ (App. A.2)."""
        k = self.lr_multiplier
        return (torch.exp(k * self.log_a).to(dtype), torch.exp(k * self.log_b).to(dtype),
                torch.exp(k * self.log_c).to(dtype), (k * self.d).to(dtype))

    def _gamma_tilde(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """Unnormalised γ̃(t) and dγ̃/dt of VDM's monotone network, App. A.2 (flat t)."""
        a, b, c, d = self._unit_params(t.dtype)
        u = b * (2.0 * t.unsqueeze(-1) - 1.0) + d  # [N, F]
        sig = torch.sigmoid(u)
        gamma = a * t + (c * (2.0 * sig - 1.0)).mean(-1)
        dgamma = a + (c * b * 4.0 * sig * (1.0 - sig)).mean(-1)
        return gamma, dgamma

    def shape(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """Normalised shape s(t) = (γ̃(t) - γ̃(0))/(γ̃(1) - γ̃(0)) ∈ [0, 1] and ds/dt, VDM eq. (59)."""
        flat = t.reshape(-1)
        ends = torch.tensor([0.0, 1.0], dtype=flat.dtype, device=flat.device)
        gamma, dgamma = self._gamma_tilde(torch.cat([flat, ends]))
        scale = gamma[-1] - gamma[-2]
        s = ((gamma[:-2] - gamma[-2]) / scale).clamp(0.0, 1.0)
        ds = dgamma[:-2] / scale
        if torch.is_grad_enabled() and self.log_a.requires_grad:
            holder: list = [None, s.numel()]  # [factor, number of examples], filled by ``update``
            self._armed.append(holder)
            del self._armed[:-8]  # forwards never followed by ``update`` (plots, evaluation) are forgotten
            s, ds = _VarianceGradient.apply(holder, s, ds)
        return s.reshape(t.shape), ds.reshape(t.shape)

    def forward(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """(λ(t), dλ/dt) with λ = λ_max·(1 - s) + λ_min·s, exact at s = 0 and s = 1, VDM eq. (59)."""
        s, ds = self.shape(t)
        logsnr_min, logsnr_max = self.endpoints(s)
        return logsnr_max * (1.0 - s) + logsnr_min * s, -(logsnr_max - logsnr_min) * ds

    def logsnr(self, t: Tensor) -> Tensor:
        """λ(t) = λ_max - (λ_max - λ_min)·s(t), VDM eq. (59)."""
        return self.forward(t)[0]

    def dlogsnr_dt(self, t: Tensor) -> Tensor:
        """dλ/dt = -(λ_max - λ_min)·ds/dt < 0."""
        return self.forward(t)[1]

    @torch.no_grad()
    def t_of(self, logsnr: Tensor, table: int = 256, iterations: int = 12) -> Tensor:
        """t(λ) for the monotone s(t): a vectorised bisection bracket from a table of s, then safeguarded Newton.

        Each step takes the Newton point t - (s(t) - s*)/s'(t) when it falls inside the current bracket and the
        bisection midpoint otherwise, after shrinking the bracket: it converges whatever η is, quadratically once
        close (12 steps reach float64 precision from a bracket of width 1/256). No gradient flows through it.
        """
        target = ((self.logsnr_max - logsnr) / (self.logsnr_max - self.logsnr_min)).clamp(0.0, 1.0)
        grid = torch.linspace(0.0, 1.0, table + 1, dtype=target.dtype, device=target.device)
        k = torch.searchsorted(self.shape(grid)[0].contiguous(), target.reshape(-1).contiguous()).clamp(1, table)
        lo, hi = grid[k - 1].reshape(target.shape), grid[k].reshape(target.shape)
        t = 0.5 * (lo + hi)
        for _ in range(iterations):
            s, ds = self.shape(t)
            below = s < target
            lo, hi = torch.where(below, t, lo), torch.where(below, hi, t)
            newton = t - (s - target) / ds
            slack = 1e-3 * (hi - lo)  # a Newton point rounded just past the bracket is clamped, not bisected
            inside = (newton >= lo - slack) & (newton <= hi + slack)
            t = torch.where(inside, torch.minimum(torch.maximum(newton, lo), hi), 0.5 * (lo + hi))
        return t

    def _arm(self, factor: Tensor) -> None:
        """Give the pending forwards of this batch's size the per-example gradient factor (others keep factor 1)."""
        armed, self._armed = self._armed, []
        for holder in armed:
            if holder[1] == factor.numel():  # forwards of another size (plots, d/dt) keep factor 1
                holder[0] = factor

    @staticmethod
    def _loss_total(loss: Tensor) -> Tensor:
        """[ΣL, number of examples] over all DDP ranks (a fill, not a host-to-device copy, for the count)."""
        total = loss.sum()
        return all_reduce_sum(torch.stack([total, torch.full_like(total, loss.numel())]))

    @torch.no_grad()
    def update(self, logsnr: Tensor, loss: Tensor) -> None:
        """Arm the variance gradient: the backward of the pending forwards scales by L_i/L̄ (∇E[L²] = 2E[L∇L])."""
        loss = loss.detach()
        total = self._loss_total(loss)
        mean = total[0] / total[1]
        # a skipped (non-finite) step keeps factor 1; decided on the device, so no host sync per step
        self._arm(torch.where(torch.isfinite(mean) & (mean > 0), loss / mean, torch.ones_like(loss)).reshape(-1))

    @torch.no_grad()
    def accumulate(self, logsnr: Tensor, loss: Tensor) -> None:
        """Gradient accumulation: arm the pending forwards with the raw L_i and add to the step's ΣL and count;
        :meth:`apply_accumulated` divides the shape gradients by L̄ of the whole step, so that the k micro-batches
        give exactly the gradient Σ_i (L_i/L̄)·∂L_i/∂η of one batch k times larger."""
        loss = loss.detach()
        total = self._loss_total(loss)
        self._step_stats = total if self._step_stats is None else self._step_stats + total
        self._arm(loss.reshape(-1))

    @torch.no_grad()
    def apply_accumulated(self) -> None:
        """Divide the shape parameters' accumulated gradients by the step's mean loss L̄ (1 when L̄ is not > 0)."""
        stats, self._step_stats = self._step_stats, None
        if stats is None:
            return
        mean = stats[0] / stats[1]
        scale = torch.where(torch.isfinite(mean) & (mean > 0), 1.0 / mean, torch.ones_like(mean))
        for p in (self.log_a, self.log_b, self.d, self.log_c):
            if p.grad is not None:
                p.grad.mul_(scale.to(p.grad.dtype))

    def extra_repr(self) -> str:
        return (f"logsnr_min={self.logsnr_min}, logsnr_max={self.logsnr_max}, hidden={self.hidden}, "
                f"learn_endpoints={self.learn_endpoints}, lr_multiplier={self.lr_multiplier}")


# ---------------------------------------------------------------------------------------------- adaptive (VDM++)
class AdaptiveSchedule(Schedule):
    """VDM++'s adaptive schedule: p(λ) ∝ E[w(λ)‖ε - ε̂‖²], eq. (4.130), piecewise constant over bins.

    [λ_min, λ_max] is cut into ``num_bins`` equal bins; bin k keeps a bias-corrected EMA m_k/n_k of
    w(λ)‖ε - ε̂‖² over the λ drawn in it, with decay ``ema_decay`` per observation (all-reduced over DDP ranks,
    so every rank holds the same schedule; saved in checkpoints as buffers). The bin masses are
    q_k = (1 - ``uniform_mix``)·m̂_k/Σm̂ + ``uniform_mix``/K, so p(λ) = q_k/Δ > 0 everywhere; bins never observed
    take the mean of the observed ones (uniform before any update). λ(t) inverts the CDF: t = 1 - F(λ), so
    t ~ U(0, 1) gives λ ~ p and the loss weight is w(λ)/p(λ) = -w·dλ/dt as for every schedule.

    ``update(logsnr, loss)`` recovers w‖ε - ε̂‖² = 2·L·p(λ) from the per-example loss L = ½·w/p·‖ε - ε̂‖² of
    the continuous-time objective (eq. (4.123)) under the density that drew λ (the current one).
    """

    adapts = True

    def __init__(self, logsnr_min: float, logsnr_max: float, num_bins: int = 100, ema_decay: float = 0.99,
                 uniform_mix: float = 0.05):
        super().__init__(logsnr_min, logsnr_max)
        self.num_bins = check_int("num_bins", num_bins, 1)
        self.ema_decay = check_float("ema_decay", ema_decay, minimum=0.0, maximum=1.0, open_max=True)
        self.uniform_mix = check_float("uniform_mix", uniform_mix, minimum=0.0, maximum=1.0, open_min=True)
        self.register_buffer("ema_sum", torch.zeros(self.num_bins, dtype=torch.float64))
        self.register_buffer("ema_weight", torch.zeros(self.num_bins, dtype=torch.float64))

    def _dtype(self) -> torch.dtype:
        """float64 for the CDF tables (exact endpoints), except on MPS, which has none."""
        return torch.float32 if self.ema_sum.device.type == "mps" else torch.float64

    def bin_masses(self) -> Tensor:
        """q_k ∝ (1 - u)·EMA of w‖ε - ε̂‖² in bin k + u/K, eq. (4.130) mixed with uniform; sums to one."""
        seen = self.ema_weight > 0
        est = torch.where(seen, self.ema_sum / self.ema_weight.clamp_min(1e-300), 0.0).clamp_min(0.0).to(self._dtype())
        est = torch.where(seen, est, est.sum() / seen.sum().clamp_min(1))  # unseen bins: the mean of the seen ones
        est = torch.where(est.sum() > 0, est, torch.ones_like(est))  # nothing seen yet: uniform
        q = (1.0 - self.uniform_mix) * est / est.sum() + self.uniform_mix / self.num_bins
        return q / q.sum()

    def _tables(self) -> tuple[Tensor, Tensor, float]:
        """(q [K], cumulative masses C [K+1] with C_0 = 0 and C_K = 1, bin width Δ)."""
        q = self.bin_masses()
        cdf = torch.cat([q.new_zeros(1), torch.cumsum(q, 0)])
        return q, cdf / cdf[-1], (self.logsnr_max - self.logsnr_min) / self.num_bins

    def _bin(self, logsnr: Tensor, width: float) -> Tensor:
        """Index of the bin that holds each λ (clamped to the range)."""
        return ((logsnr - self.logsnr_min) / width).floor().long().clamp(0, self.num_bins - 1)

    def forward(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """(λ(t), dλ/dt): λ = F⁻¹(1 - t) by inverting the piecewise-linear CDF, dλ/dt = -1/p(λ), eq. (4.130)."""
        q, cdf, width = self._tables()
        v = (1.0 - t.to(q.dtype)).clamp(0.0, 1.0)  # differentiable in t: dλ/dt = -Δ/q_k (plots use it)
        k = (torch.searchsorted(cdf, v, right=True) - 1).clamp(0, self.num_bins - 1)
        logsnr = self.logsnr_min + width * (k + (v - cdf[k]) / q[k])
        logsnr = logsnr.clamp(self.logsnr_min, self.logsnr_max)
        return logsnr.to(t.dtype), (-width / q[k]).to(t.dtype)

    def logsnr(self, t: Tensor) -> Tensor:
        """λ(t) = F⁻¹(1 - t) for the piecewise-constant p(λ) of eq. (4.130)."""
        return self.forward(t)[0]

    def dlogsnr_dt(self, t: Tensor) -> Tensor:
        """dλ/dt = -1/p(λ(t)) = -Δ/q_k, eq. (4.102)."""
        return self.forward(t)[1]

    def t_of(self, logsnr: Tensor) -> Tensor:
        """t(λ) = 1 - F(λ) with F the piecewise-linear CDF of p(λ), eqs. (4.100), (4.130)."""
        q, cdf, width = self._tables()
        lam = logsnr.to(q.dtype).clamp(self.logsnr_min, self.logsnr_max)
        k = self._bin(lam, width)
        frac = (lam - self.logsnr_min) / width - k
        return (1.0 - (cdf[k] + q[k] * frac)).clamp(0.0, 1.0).to(logsnr.dtype)

    def density(self, logsnr: Tensor) -> Tensor:
        """p(λ) = q_k/Δ in bin k, zero outside [λ_min, λ_max], eqs. (4.102), (4.130)."""
        q, _, width = self._tables()
        inside = (logsnr >= self.logsnr_min) & (logsnr <= self.logsnr_max)
        p = (q[self._bin(logsnr.to(q.dtype), width)] / width).to(logsnr.dtype)
        return torch.where(inside, p, torch.zeros_like(p))

    @torch.no_grad()
    def update(self, logsnr: Tensor, loss: Tensor) -> None:
        """EMA per bin of w‖ε - ε̂‖² = 2·L·p(λ), pooled over DDP ranks: the statistic of eq. (4.130)."""
        dtype = self.ema_sum.dtype
        lam, loss = logsnr.detach().reshape(-1).to(dtype), loss.detach().reshape(-1).to(dtype)
        value = 2.0 * loss * self.density(lam)
        ok = torch.isfinite(value) & (lam >= self.logsnr_min) & (lam <= self.logsnr_max)
        k = self._bin(lam[ok], (self.logsnr_max - self.logsnr_min) / self.num_bins)
        stats = torch.stack([
            torch.zeros_like(self.ema_sum).index_add_(0, k, value[ok]),
            torch.zeros_like(self.ema_sum).index_add_(0, k, torch.ones_like(value[ok])),
        ])
        sums, counts = all_reduce_sum(stats)
        keep = torch.pow(torch.full_like(counts, self.ema_decay), counts)  # decay once per observation
        mean = sums / counts.clamp_min(1.0)
        self.ema_sum.mul_(keep).add_((1.0 - keep) * mean)
        self.ema_weight.mul_(keep).add_(1.0 - keep)

    def extra_repr(self) -> str:
        return (f"logsnr_min={self.logsnr_min}, logsnr_max={self.logsnr_max}, num_bins={self.num_bins}, "
                f"ema_decay={self.ema_decay}, uniform_mix={self.uniform_mix}")
