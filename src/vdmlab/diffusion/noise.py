"""Counter-based noise: standard normals that are a pure function of (seed, example index, draw, element).

The evaluation noise of every example must not depend on the batch it sits in, on the DDP rank that holds it or
on the device, and it must be generated in one batched call on the device (no per-example generator). A
counter-based generator gives that: the 32-bit random words are Philox-2x32-10 (Salmon et al., "Parallel random
numbers: as easy as 1, 2, 3", SC 2011) of the counter (element pair, example index) under a key that hashes
(seed, draw); pairs of words become two normals by the Box–Muller transform.

Everything is done with int64 torch ops on values below 2^34 (the 32x32-bit products are split into 16-bit
halves), so the integer words are exact and identical on every device and for every batch layout. The uniforms
and the Box–Muller transform are computed in float64 (float32 on MPS) and rounded to the requested dtype: the
result is identical unless a float64 transcendental differs between two code paths by an ulp right at a
float32 rounding boundary (probability about 2^-29 per element).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

MASK32 = 0xFFFFFFFF
PHILOX_M = 0xD256D193  # Philox-2x32 round multiplier
PHILOX_W = 0x9E3779B9  # Philox key increment (the golden ratio's 32 bits)
PHILOX_ROUNDS = 10


def mix32(x: int) -> int:
    """A 32-bit integer hash of a Python int (lowbias32 finalizer, Wellons), for deriving keys on the host."""
    x &= MASK32
    x ^= x >> 16
    x = (x * 0x7FEB352D) & MASK32
    x ^= x >> 15
    x = (x * 0x846CA68B) & MASK32
    return x ^ (x >> 16)


def stream_key(seed: int, draw: int) -> int:
    """The 32-bit Philox key of one (seed, draw) stream; every bit of an arbitrary Python int seed counts."""
    seed = int(seed)
    key = mix32(seed & MASK32) ^ mix32(((seed >> 32) & MASK32) + 0x632BE59B)
    return mix32(key ^ mix32(int(draw) * 0x85EBCA6B + 0x27D4EB2F))


def _mulhilo(x: Tensor) -> tuple[Tensor, Tensor]:
    """(high, low) 32-bit halves of PHILOX_M·x for int64 ``x`` in [0, 2^32), without int64 overflow."""
    m_hi, m_lo = PHILOX_M >> 16, PHILOX_M & 0xFFFF
    x_hi, x_lo = x >> 16, x & 0xFFFF
    low = x_lo * m_lo  # < 2^32
    mid = x_hi * m_lo + x_lo * m_hi  # < 2^33
    low_sum = low + ((mid & 0xFFFF) << 16)  # < 2^33
    high = x_hi * m_hi + (mid >> 16) + (low_sum >> 32)
    return high & MASK32, low_sum & MASK32


def philox2x32(counter_0: Tensor, counter_1: Tensor, key: Tensor) -> tuple[Tensor, Tensor]:
    """Philox-2x32-10 of the counters (int64 in [0, 2^32)) under ``key`` (broadcastable): two 32-bit words."""
    x0, x1, k = counter_0, counter_1, key
    for _ in range(PHILOX_ROUNDS):
        high, low = _mulhilo(x0)
        x0, x1 = high ^ k ^ x1, low
        k = (k + PHILOX_W) & MASK32
    return x0, x1


def _float_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64


def counter_normal(seed: int, index: Tensor, draws: int | range, shape: tuple[int, ...],
                   dtype: torch.dtype = torch.float32) -> Tensor:
    """Standard normals ``[len(draws), B, *shape]``: entry (d, i, e) depends only on (seed, index[i], d, e).

    ``index`` are the examples' dataset indices (any integer tensor [B] below 2^32, on the device the noise is
    wanted on); ``draws`` is a count or a range of draw numbers.
    """
    draws = range(draws) if isinstance(draws, int) else draws
    device = index.device
    numel = math.prod(shape)
    pairs = (numel + 1) // 2
    keys = torch.tensor([stream_key(seed, d) for d in draws], dtype=torch.int64, device=device)
    element = torch.arange(pairs, dtype=torch.int64, device=device)
    example = index.to(torch.int64).reshape(-1) & MASK32
    word_0, word_1 = philox2x32(element.view(1, 1, -1), example.view(1, -1, 1), keys.view(-1, 1, 1))
    wide = _float_dtype(device)
    scale = 2.0**-32
    u_1 = (word_0.to(wide) + 0.5) * scale  # in (0, 1): log is finite, |z| <= 6.8
    u_2 = (word_1.to(wide) + 0.5) * scale
    radius = torch.sqrt(-2.0 * torch.log(u_1))
    angle = (2.0 * math.pi) * u_2
    z = torch.cat([radius * torch.cos(angle), radius * torch.sin(angle)], dim=-1)[..., :numel]
    return z.to(dtype).reshape(len(draws), example.numel(), *shape)

