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


def fake_run(folder, weighting, seed, scored, per_example, fid):
    """A run folder as train.py leaves it, with the diagnostics files the test stage writes (values chosen here)."""
    import json

    import yaml

    (folder / ".hydra").mkdir(parents=True)
    node = {"_target_": f"vdmlab.diffusion.weighting.{'ELBO' if weighting == 'elbo' else 'EDM'}Weighting"}
    (folder / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"weighting": node, "seed": seed}))
    (folder / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"runtime": {"choices": {"weighting": weighting}}}}))
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"weighting={weighting}", f"seed={seed}"]))
    (folder / "csv").mkdir()
    (folder / "csv" / "metrics.csv").write_text(f"step,test/bpd,test/fid,test/fid_n\n10,{np.mean(per_example)},{fid},100\n")
    diag = folder / "diagnostics"
    diag.mkdir()
    bins = [{"logsnr": lam, "elbo_bpd_per_logsnr": 0.1 * (lam + 2), "rate_bpd": 0.0, "rmse_levels": 1.0} for lam in (-1.0, 1.0)]
    summary = {"bpd": float(np.mean(per_example)), "bpd_profile": float(np.mean(per_example)), "bpd_prior": 0.0,
               "bpd_reconstruction": 0.0, **{f"scored/{k}": v for k, v in scored.items()}}
    (diag / "profile.json").write_text(json.dumps({"edges": [-2.0, 0.0, 2.0], "bins": bins, "summary": summary,
                                                   "rate_distortion": [{"rate_bpd": 0.0, "rmse_levels": 1.0}]}))
    rows = "".join(f"{i},{v},0,0,0,{v}\n" for i, v in enumerate(per_example))
    (diag / "per_example_bpd.csv").write_text("index,bpd,diffusion,prior,reconstruction,bpd_profile\n" + rows)


def test_compare_pairs_runs_by_seed_and_names_a_run_not_best_on_its_own_loss(tmp_path):
    from vdmlab.analysis.compare import compare

    rng = np.random.default_rng(3)
    examples = rng.normal(2.0, 0.3, 60)
    for job, (weighting, seed) in enumerate([("elbo", 0), ("edm", 0), ("elbo", 1), ("edm", 1)]):
        shift = 0.1 if weighting == "edm" else 0.0
        # edm's network is worse than elbo's on both losses: it is not best on its own column
        scored = {"elbo": 2.0 + shift, "edm": 1.0 + shift}
        fake_run(tmp_path / str(job), weighting, seed, scored, examples + shift + 0.001 * seed, 10.0 - 2 * (weighting == "edm"))
    text = compare(tmp_path)["markdown"].read_text()
    edm_row = next(line for line in text.splitlines() if line.startswith("| edm (n=2) | +0.1"))
    assert "(n=60) *" in edm_row and "(n=2) *" in edm_row and "-2.00" in edm_row  # bpd per example, over seeds, FID
    assert "edm (n=2) is not best on its own loss edm" in text
    assert "elbo (n=2) is not best" not in text
