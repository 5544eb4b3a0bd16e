"""Optimisation helpers: learning-rate warm-up and the exponential moving average of the weights."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from vdmlab.checks import check_float, check_int


def linear_warmup(optimizer: Optimizer, warmup_steps: int = 200, decay_steps: int | None = None,
                  min_factor: float = 0.1) -> LambdaLR:
    """Linear warm-up over ``warmup_steps``, then constant, or cosine decay to ``min_factor`` over ``decay_steps``."""
    warmup_steps = check_int("warmup_steps", warmup_steps, 0)
    decay_steps = check_int("decay_steps", decay_steps, 1, optional=True)
    min_factor = check_float("min_factor", min_factor, minimum=0.0, maximum=1.0)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if not decay_steps:
            return 1.0
        progress = min(1.0, (step - warmup_steps) / max(1, decay_steps - warmup_steps))
        return min_factor + (1.0 - min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)


class EMA(nn.Module):
    """Exponential moving average of a network's weights with warm-up: decay_n = min(decay, (1+n)/(10+n)).

    The averaged copy lives in the LightningModule, so it is saved in and restored from checkpoints.
    """

    def __init__(self, net: nn.Module, decay: float = 0.999, warmup: bool = True):
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {decay}")
        self.decay, self.warmup = float(decay), bool(warmup)
        self.net = copy.deepcopy(net).requires_grad_(False).eval()
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))
        self._host_updates: int | None = 0  # host copy of num_updates: no device sync per step (None: re-read)

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._host_updates = None  # num_updates was replaced: read it once at the next update

    def current_decay(self) -> float:
        """The decay used at the next update."""
        if self._host_updates is None:
            self._host_updates = int(self.num_updates)
        n = self._host_updates
        return min(self.decay, (1 + n) / (10 + n)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, net: nn.Module) -> None:
        """ema ← decay·ema + (1 - decay)·θ for parameters; buffers are copied."""
        decay = self.current_decay()
        ema_params = list(self.net.parameters())
        params = [p.detach() for p in net.parameters()]
        torch._foreach_lerp_(ema_params, params, 1.0 - decay)
        for ema_buffer, buffer in zip(self.net.buffers(), net.buffers()):
            ema_buffer.copy_(buffer)
        self.num_updates += 1
        self._host_updates += 1  # set by current_decay() above

    def train(self, mode: bool = True) -> EMA:
        """The averaged network always stays in eval mode."""
        super().train(mode)
        self.net.eval()
        return self
