"""λ-conditioned residual MLP denoiser for low-dimensional (e.g. 2-D toy) data.

``forward(z [B, D] or [B, *shape] with prod(shape) = D, logsnr [B]) -> same shape as z``. Only smooth ops
(Linear, LayerNorm, SiLU), so it supports double backward like the UNet.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vdmlab.checks import check_float, check_int, check_positive
from vdmlab.models.embeddings import (
    LogSNREmbedding,
    broadcast_logsnr,
    fourier_features,
    num_fourier_channels,
)


class MLPBlock(nn.Module):
    """Pre-LayerNorm residual block: h + fc2(dropout(SiLU(fc1(SiLU(LN(h))) + Linear(SiLU(emb)))))."""

    def __init__(self, hidden: int, emb_dim: int, dropout: float = 0.0):
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        self.fc1 = nn.Linear(hidden, hidden)
        self.emb_proj = nn.Linear(emb_dim, hidden)
        self.dropout = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, hidden)

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        x = self.fc1(F.silu(self.norm(h))) + self.emb_proj(F.silu(emb))
        return h + self.fc2(self.dropout(F.silu(x)))


class MLP(nn.Module):
    """Residual MLP denoiser conditioned on λ (added to every block), zero-initialised output layer.

    Only the output layer is zero-initialised (the blocks are not), so the initial output is exactly 0 yet
    the very first gradient step already makes the output depend on both z and λ.

    Args:
        data_dim: D, the number of data coordinates (2 for 2-D toys); z may be ``[B, D]`` or any
            ``[B, *shape]`` with ``prod(shape) = D`` (flattened and reshaped back).
        hidden: width of the residual stream.
        depth: number of residual blocks.
        emb_dim: λ-embedding size.
        fourier_min_exp, fourier_max_exp: Fourier-feature input exponents (both None disables).
        dropout: dropout rate inside the blocks.
        max_logsnr: λ range that the embedding's lowest frequency resolves monotonically.
    """

    def __init__(
        self,
        data_dim: int = 2,
        hidden: int = 256,
        depth: int = 4,
        emb_dim: int = 128,
        fourier_min_exp: int | None = None,
        fourier_max_exp: int | None = None,
        dropout: float = 0.0,
        max_logsnr: float = 30.0,
        data_shape: tuple[int, ...] | None = None,
    ):
        super().__init__()
        if data_shape is not None:  # the datamodule's per-example shape; examples are flattened
            data_dim = math.prod(int(d) for d in data_shape)
        hidden, depth, emb_dim = check_int("hidden", hidden, 1), check_int("depth", depth, 0), check_int("emb_dim", emb_dim, 1)
        fourier_min_exp = check_int("fourier_min_exp", fourier_min_exp, optional=True)
        fourier_max_exp = check_int("fourier_max_exp", fourier_max_exp, optional=True)
        dropout = check_float("dropout", dropout, minimum=0.0, maximum=1.0, open_max=True)
        max_logsnr = check_positive("max_logsnr", max_logsnr)
        self.data_dim = data_dim
        self.fourier_min_exp, self.fourier_max_exp = fourier_min_exp, fourier_max_exp
        in_dim = data_dim + num_fourier_channels(data_dim, fourier_min_exp, fourier_max_exp)
        self.embed = LogSNREmbedding(emb_dim, max_logsnr=max_logsnr)
        self.inp = nn.Linear(in_dim, hidden)
        self.blocks = nn.ModuleList(MLPBlock(hidden, emb_dim, dropout) for _ in range(depth))
        self.norm_out = nn.LayerNorm(hidden)
        self.out = nn.Linear(hidden, data_dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, z: Tensor, logsnr: Tensor) -> Tensor:
        if z.ndim < 2 or math.prod(z.shape[1:]) != self.data_dim:
            raise ValueError(
                f"MLP expects z of shape [B, *shape] with {self.data_dim} features, got {tuple(z.shape)}"
            )
        x = z.reshape(z.shape[0], self.data_dim)
        if self.fourier_min_exp is not None:
            x = torch.cat([x, fourier_features(x, self.fourier_min_exp, self.fourier_max_exp)], dim=1)
        emb = self.embed(broadcast_logsnr(logsnr, z.shape[0]))
        h = self.inp(x)
        for block in self.blocks:
            h = block(h, emb)
        return self.out(F.silu(self.norm_out(h))).reshape(z.shape)
