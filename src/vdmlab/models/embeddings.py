"""Conditioning and input features shared by the denoisers.

- :class:`LogSNREmbedding` embeds λ = log SNR (never t, so every network works with every noise schedule);
- :class:`ClassEmbedding` embeds class labels (and the learned null class ∅ of classifier-free guidance), added
  to the λ embedding by the networks of class-conditional models;
- :func:`fourier_features` is VDM's Fourier-feature input (Kingma et al. 2021, App. B.4), which lets the
  network resolve the fine (per-quantisation-bin) structure of the data at high SNR.

Everything here is smooth (sin, cos, linear, SiLU), so the networks stay twice differentiable.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def broadcast_logsnr(logsnr: Tensor, batch: int) -> Tensor:
    """Return λ as a ``[batch]`` tensor; a scalar or one-element λ is shared by the whole batch."""
    logsnr = torch.as_tensor(logsnr)
    if logsnr.numel() == 1:
        return logsnr.reshape(1).expand(batch)
    if logsnr.shape != (batch,):
        raise ValueError(f"logsnr must have shape [B]=[{batch}] (or be a scalar), got {tuple(logsnr.shape)}")
    return logsnr


class LogSNREmbedding(nn.Module):
    """Sinusoidal embedding of λ followed by a 2-layer SiLU MLP: ``[B] -> [B, dim]``.

    The sinusoids are ``sin(ω_k λ), cos(ω_k λ)`` for ``freq_dim // 2`` frequencies spaced geometrically from
    ``ω_min = π / (2 max_logsnr)`` to ``ω_max = 2π``:

    - at ``ω_min`` the phase spans [-π/2, π/2] over λ ∈ [-max_logsnr, max_logsnr], so ``sin(ω_min λ)`` is a
      monotone (almost linear) code of λ and the embedding is injective over the whole range;
    - at ``ω_max`` the period is one unit of λ, enough to separate noise levels that the denoiser should
      treat differently (the optimal denoiser changes on a scale of about one unit of log SNR).

    λ is used directly (no arctan squashing): sin/cos are bounded, so the output is finite for every finite
    λ, in particular for λ ∈ [-30, 30] in float32; beyond ``±max_logsnr`` the lowest frequency merely
    stops being monotone.
    """

    def __init__(self, dim: int, max_logsnr: float = 30.0, freq_dim: int | None = None):
        super().__init__()
        freq_dim = freq_dim if freq_dim is not None else max(2, dim // 4)
        if freq_dim % 2 or freq_dim < 2:
            raise ValueError(f"freq_dim must be a positive even number, got {freq_dim}")
        if max_logsnr <= 0:
            raise ValueError(f"max_logsnr must be positive, got {max_logsnr}")
        self.dim, self.max_logsnr, self.freq_dim = dim, float(max_logsnr), freq_dim
        half = freq_dim // 2
        log_w = torch.linspace(math.log(math.pi / (2 * max_logsnr)), math.log(2 * math.pi), half)
        self.register_buffer("freqs", torch.exp(log_w), persistent=False)
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def sinusoids(self, logsnr: Tensor) -> Tensor:
        """The raw ``[B, freq_dim]`` features ``[sin(ω λ), cos(ω λ)]`` (before the MLP)."""
        arg = logsnr.to(self.freqs.dtype)[:, None] * self.freqs[None, :]
        return torch.cat([torch.sin(arg), torch.cos(arg)], dim=1)

    def forward(self, logsnr: Tensor) -> Tensor:
        return self.mlp(self.sinusoids(logsnr))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, max_logsnr={self.max_logsnr}, freq_dim={self.freq_dim}"


class ClassEmbedding(nn.Module):
    """Class labels 0..C-1 and the null class ∅ = C → ``[B, dim]``, an ``nn.Embedding(C + 1, dim)``.

    Initialised N(0, 1) like ADM's class embedding (Dhariwal & Nichol 2021), of the scale of the λ embedding, so the
    labels shape the output from the first step (from a zero start the digits model reached 17 % instead of 63 %
    unguided class accuracy in ~700 steps);
    ``labels=None`` means ∅ for the whole batch (the unconditional model p(x) that guidance pushes away from).
    """

    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        if int(num_classes) != num_classes or num_classes < 1:
            raise ValueError(f"model.num_classes must be null (unconditional) or an integer >= 1, got {num_classes!r}")
        self.num_classes = int(num_classes)
        self.embed = nn.Embedding(self.num_classes + 1, dim)  # default init N(0, 1)

    @property
    def null_class(self) -> int:
        """The index of ∅."""
        return self.num_classes

    def forward(self, labels: Tensor | None, batch: int) -> Tensor:
        if labels is None:
            labels = torch.full((batch,), self.null_class, dtype=torch.long, device=self.embed.weight.device)
        return self.embed(labels.long())


def add_class_embedding(emb: Tensor, class_embed: ClassEmbedding | None, cond: Tensor | None) -> Tensor:
    """The λ embedding plus the class embedding of ``cond``; unconditional networks (no class embedding) take no labels."""
    if class_embed is None:
        if cond is not None:
            raise ValueError(
                "this network is unconditional (model.num_classes is null) but was given class labels; train a "
                "class-conditional model with dataset.conditional=true, or sample without labels"
            )
        return emb
    return emb + class_embed(cond, emb.shape[0])


def num_fourier_channels(channels: int, min_exp: int | None, max_exp: int | None) -> int:
    """How many channels :func:`fourier_features` adds to ``channels`` input channels (0 when disabled)."""
    if min_exp is None and max_exp is None:
        return 0
    if min_exp is None or max_exp is None or min_exp > max_exp:
        raise ValueError(
            f"fourier_min_exp and fourier_max_exp must both be None (disabled) or integers with "
            f"min <= max, got fourier_min_exp={min_exp}, fourier_max_exp={max_exp}"
        )
    return 2 * channels * (max_exp - min_exp + 1)


def fourier_features(z: Tensor, min_exp: int, max_exp: int) -> Tensor:
    """VDM's Fourier features: ``sin(2^k π z)`` and ``cos(2^k π z)`` for k = min_exp..max_exp.

    ``z`` is ``[B, C, ...]``; the result is ``[B, 2 C n, ...]`` with n = max_exp - min_exp + 1, ordered
    ``[sin (channel-major, then k), cos (same)]``, to be concatenated to z along dim 1. The period of the
    k-th pair is 2^(1-k), so for data in [-1, 1] with bin width 2 / (levels - 1) the top exponent should be
    about k_max = log2(levels - 1) - 1 (a period of two bins): VDM used k ∈ {6, 7} for 8-bit data; 17 grey
    levels (bin width 1/8) want k ∈ {2, 3}.
    """
    num_fourier_channels(z.shape[1], min_exp, max_exp)  # validates the exponents
    exps = torch.arange(min_exp, max_exp + 1, device=z.device, dtype=z.dtype)
    freqs = (2.0**exps) * math.pi  # [n]
    arg = z.unsqueeze(2) * freqs.reshape((1, 1, -1) + (1,) * (z.ndim - 2))  # [B, C, n, ...]
    arg = arg.flatten(1, 2)  # [B, C n, ...]
    return torch.cat([torch.sin(arg), torch.cos(arg)], dim=1)
