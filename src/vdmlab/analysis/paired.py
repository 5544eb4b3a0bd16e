"""Paired comparisons of checkpoints: bits/dim differences example by example, and differences over shared seeds.

The evaluation noise of every example is a pure function of (seed, example index, draw) (diffusion/noise.py), so two
checkpoints evaluated with one seed see the same λ and ε on every example: their per-example bits/dim are paired,
and the difference of the means has the standard error of the per-example differences, sd(d)/√n, which removes the
spread of the examples themselves (most of the unpaired error). Runs trained with the same seed are paired the
same way over training seeds, and so are FIDs drawn with the same sample seeds.

The interval is Student's t interval of the mean difference, mean ± t_{n−1, (1+c)/2}·sd/√n; :func:`sign_flip_p` is the
matching permutation (sign-flip) test, which needs no normality.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class PairedDifference:
    """The mean of paired differences a − b with its standard error and a ``confidence`` interval over n pairs."""

    mean: float
    se: float
    low: float
    high: float
    n: int
    confidence: float = 0.95

    @property
    def excludes_zero(self) -> bool:
        """Whether the interval lies on one side of 0 (the difference is resolved at this confidence)."""
        return self.low > 0 or self.high < 0

    def text(self, digits: int = 4) -> str:
        if math.isnan(self.se):
            return f"{self.mean:+.{digits}f} (n={self.n})"
        return f"{self.mean:+.{digits}f} [{self.low:+.{digits}f}, {self.high:+.{digits}f}] (n={self.n})"


def paired_difference(a, b, confidence: float = 0.95) -> PairedDifference:
    """Mean of d = a − b over aligned pairs and its Student-t interval; n < 2 gives a nan interval."""
    from scipy.stats import t

    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if d.ndim != 1 or d.size == 0:
        raise ValueError(f"paired_difference needs two aligned 1-d arrays of the same length, got shapes "
                         f"{np.shape(a)} and {np.shape(b)}")
    n, mean = d.size, float(d.mean())
    if n < 2:
        return PairedDifference(mean, math.nan, math.nan, math.nan, n, confidence)
    se = float(d.std(ddof=1) / math.sqrt(n))
    half = float(t.ppf(0.5 + confidence / 2, n - 1)) * se
    return PairedDifference(mean, se, mean - half, mean + half, n, confidence)


def sign_flip_p(d, draws: int = 10_000, seed: int = 0) -> float:
    """Two-sided p-value of mean(d) = 0 under random sign flips of the paired differences (a permutation test)."""
    d = np.asarray(d, dtype=np.float64)
    rng = np.random.default_rng(seed)
    observed = abs(d.mean())
    flips = rng.choice((-1.0, 1.0), size=(draws, d.size))
    return float(((np.abs((flips * d).mean(1)) >= observed - 1e-15).sum() + 1) / (draws + 1))


def align(a: Mapping, b: Mapping) -> tuple[list, np.ndarray, np.ndarray]:
    """The keys shared by two {key: value} maps (example indices, seeds), sorted, and both values on them."""
    keys = sorted(set(a) & set(b))
    if not keys:
        raise ValueError("the two runs share no example index or seed: evaluate them on the same split (and seed)")
    return keys, np.array([a[k] for k in keys], dtype=np.float64), np.array([b[k] for k in keys], dtype=np.float64)


def read_per_example(path: str | Path, column: str = "bpd") -> dict[int, float]:
    """``{index: bits/dim}`` from a ``per_example_bpd.csv`` written by evaluation."""
    with open(path, newline="") as f:
        return {int(row["index"]): float(row[column]) for row in csv.DictReader(f)}


def paired_over_examples(runs: Mapping[int, Mapping[int, float]], reference: Mapping[int, Mapping[int, float]],
                         confidence: float = 0.95) -> PairedDifference:
    """A group against a reference group, both ``{training seed: {example index: bpd}}``: each example's difference
    averaged over the shared seeds (seed s against seed s), and the interval over examples."""
    seeds = sorted(set(runs) & set(reference))
    if not seeds:
        raise ValueError("no training seed is shared with the reference: pair runs trained with the same seeds")
    per_seed = [align(runs[s], reference[s]) for s in seeds]
    keys = sorted(set.intersection(*(set(k) for k, _, _ in per_seed)))
    diffs = np.mean([[dict(zip(k, a - b))[i] for i in keys] for k, a, b in per_seed], axis=0)
    return paired_difference(diffs, np.zeros_like(diffs), confidence)


def paired_over_seeds(runs: Mapping[int, float], reference: Mapping[int, float], confidence: float = 0.95) -> PairedDifference:
    """A metric of a group against the reference's, paired by training (and sample) seed: the interval over seeds."""
    _, a, b = align(runs, reference)
    return paired_difference(a, b, confidence)
