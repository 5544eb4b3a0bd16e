"""Paired comparisons (analysis/paired.py): zero width for identical checkpoints, nominal coverage and a sign-flip
test that agrees with the interval, and pairing over examples and seeds."""

import numpy as np
import pytest

from vdmlab.analysis.paired import (
    align,
    paired_difference,
    paired_over_examples,
    paired_over_seeds,
    read_per_example,
    sign_flip_p,
)


def test_identical_checkpoints_give_a_zero_width_interval_at_zero():
    rng = np.random.default_rng(0)
    a = rng.normal(2.0, 0.5, 300)  # per-example bits/dim spread widely over examples
    d = paired_difference(a, a.copy())
    assert d.mean == 0 and d.low == 0 and d.high == 0 and not d.excludes_zero


def test_pairing_removes_the_example_spread():
    rng = np.random.default_rng(1)
    examples = rng.normal(2.0, 0.5, 400)  # what both models find hard
    a, b = examples + rng.normal(0.02, 0.01, 400), examples + rng.normal(0.0, 0.01, 400)
    paired = paired_difference(a, b)
    unpaired_se = np.sqrt(a.var(ddof=1) / 400 + b.var(ddof=1) / 400)
    assert paired.se < unpaired_se / 10 and paired.excludes_zero and paired.low < 0.02 < paired.high


def test_interval_covers_the_true_difference_at_its_nominal_rate_and_agrees_with_sign_flips():
    rng = np.random.default_rng(2)
    covered, rejections, agree = 0, 0, 0
    trials = 400
    for _ in range(trials):
        examples = rng.normal(0.0, 1.0, 30)
        a, b = examples + rng.standard_t(5, 30) * 0.1, examples + rng.standard_t(5, 30) * 0.1  # no true difference
        d = paired_difference(a, b)
        covered += d.low <= 0 <= d.high
        p = sign_flip_p(a - b, draws=2000, seed=int(rng.integers(1 << 30)))
        rejections += p < 0.05
        agree += (p < 0.05) == d.excludes_zero
    # 95 % coverage: with 400 trials the binomial s.d. is 1.1 %, so [0.91, 0.99] is about ±3.5 s.d.
    assert 0.91 <= covered / trials <= 0.99
    assert rejections / trials <= 0.09  # the permutation test holds its level too
    assert agree / trials >= 0.95  # and it agrees with the t interval almost always


def test_pairing_over_examples_and_seeds(tmp_path):
    path = tmp_path / "per_example_bpd.csv"
    path.write_text("index,bpd,diffusion,prior,reconstruction\n2,1.5,1,0.1,0.4\n0,1.0,0.5,0.1,0.4\n")
    assert read_per_example(path) == {0: 1.0, 2: 1.5}
    ref = {s: {i: 1.0 + 0.1 * i for i in range(50)} for s in (0, 1, 2)}
    runs = {s: {i: v + 0.05 + 0.001 * s for i, v in ref[s].items()} for s in (0, 1, 2)}
    over_examples = paired_over_examples(runs, ref)
    assert over_examples.mean == pytest.approx(0.051) and over_examples.n == 50
    over_seeds = paired_over_seeds({0: 3.0, 1: 3.2, 2: 3.1}, {0: 2.0, 1: 2.1, 2: 2.2, 3: 9.0})  # seed 3 has no pair
    assert over_seeds.n == 3 and over_seeds.mean == pytest.approx(1.0) and over_seeds.excludes_zero
    with pytest.raises(ValueError, match="share no example"):
        align({0: 1.0}, {1: 1.0})
