"""The benchmarks (benchmarks/*.py): each script's --quick mode on CPU writes JSON with the expected keys and finite
values; the Hydra-free build of the default run is the composed config's; the GPU options of the training config
(bf16/fp16 autocast, channels_last, torch.compile) train with a finite loss on CPU."""

import functools
import json
import math
import sys

import pytest
import torch
from conftest import REPO

sys.path.insert(0, str(REPO))
from benchmarks import (  # noqa: E402
    common,
    eval_cost,
    gpu_options,
    quality_baseline,
    sampling_throughput,
    train_throughput,
)


def run_quick(script, tmp_path, *extra) -> dict:
    """Run ``script.main`` in --quick mode on CPU and return the JSON it wrote."""
    out = tmp_path / f"{script.NAME}.json"
    script.main(["--quick", "--device", "cpu", "--out", str(out), *extra])
    payload = json.loads(out.read_text())
    assert payload["benchmark"] == script.NAME and payload["quick"] is True
    assert payload["machine"]["device"] == "cpu" and payload["machine"]["torch"] == torch.__version__
    return payload


def assert_finite(row: dict, *keys: str, positive: bool = True) -> None:
    for key in keys:
        assert common.finite(row[key]), (key, row)
        if positive:
            assert row[key] > 0, (key, row)


# ------------------------------------------------------------------ the default run without Hydra
@pytest.mark.parametrize("kwargs", [{}, {"parameterization": "energy", "batch_size": 16, "width": 16,
                                         "eval_num_samples": 4, "channels_last": True, "seed": 3}])
def test_python_mirror_builds_the_composed_configs_run(kwargs):
    hydra, python = common.build_hydra(**kwargs), common.build_python(**kwargs)
    assert (hydra.source, python.source) == ("hydra", "python")
    dh, dp = hydra.datamodule, python.datamodule
    assert type(dh) is type(dp)
    for attr in ("batch_size", "eval_batch_size", "num_workers", "seed", "num_levels", "data_shape", "pin_memory",
                 "on_device"):
        assert getattr(dh, attr) == getattr(dp, attr), attr
    mh, mp = hydra.module, python.module
    assert repr(mh.net) == repr(mp.net)
    sh, sp = mh.state_dict(), mp.state_dict()  # same seed, same construction order: identical initial weights
    assert sh.keys() == sp.keys() and all(torch.equal(sh[k], sp[k]) for k in sh)
    for attr in ("schedule", "weighting", "parameterization"):
        a, b = getattr(mh, attr), getattr(mp, attr)
        assert type(a) is type(b), attr
    assert (mh.schedule.logsnr_min, mh.schedule.logsnr_max) == (mp.schedule.logsnr_min, mp.schedule.logsnr_max)
    assert vars(mh.weighting) == vars(mp.weighting)
    for attr in ("num_levels", "data_shape", "timesteps", "eval_num_samples", "seed",
                 "channels_last", "fid_config"):
        assert getattr(mh, attr) == getattr(mp, attr), attr
    assert (mh.ema.decay, mh.ema.warmup) == (mp.ema.decay, mp.ema.warmup)
    assert (mh._train_net is mh.net) and (mp._train_net is mp.net)
    assert mh.time_sampler is mp.time_sampler
    assert mh.sampler.fn.func is mp.sampler.fn.func
    assert {k: v for k, v in vars(mh.sampler).items() if k != "fn"} == {k: v for k, v in vars(mp.sampler).items() if k != "fn"}
    opt_h, opt_p = (m.optimizer_factory(params=list(m.net.parameters())) for m in (mh, mp))
    assert type(opt_h) is type(opt_p)
    norm = lambda d: {k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in d.items()}
    assert norm(opt_h.defaults) == norm(opt_p.defaults)
    lr_h, lr_p = mh.lr_scheduler_factory(opt_h), mp.lr_scheduler_factory(opt_p)
    assert [lr_h.lr_lambdas[0](k) for k in (0, 99, 199, 200, 5000)] == [lr_p.lr_lambdas[0](k) for k in (0, 99, 199, 200, 5000)]


def test_trainer_defaults_are_the_configs():
    cfg = common.compose(common.overrides())
    for key, value in common.TRAINER_DEFAULTS.items():
        assert cfg.trainer[key] == value, key
    assert cfg.trainer.precision == "32-true"


# ------------------------------------------------------------------ each script in --quick mode
def test_train_throughput_quick(tmp_path):
    payload = run_quick(train_throughput, tmp_path)
    rows = payload["results"]
    assert sorted(r["parameterization"] for r in rows) == sorted(common.PARAMETERIZATIONS)
    for row in rows:
        assert_finite(row, "bare_images_per_s", "lightning_images_per_s", "ratio")
        assert_finite(row, "bare_final_loss", "lightning_final_loss")
        assert row["ratio"] == pytest.approx(row["lightning_runs"][0] / row["bare_runs"][0])
        assert_finite(row, "bare_peak_mib", "lightning_peak_mib")  # peak RSS on the CPU, peak GPU memory on CUDA
        assert row["on_device"].startswith("dataset.on_device=auto: holding the 1437x1x8x8 uint8 train split")
    assert payload["min_ratio"] == min(r["ratio"] for r in rows) and payload["goal_ratio"] == 0.95
    for arm in ("bare", "lightning"):
        assert_finite(payload["energy_cost"]["8"], arm)
    variants = [r["variant"] for r in payload["ablation"]]
    assert variants == ["bare", *(f"bare + {e}" for e in train_throughput.ABLATIONS), "bare + all three", "lightning"]
    for row in payload["ablation"]:
        assert_finite(row, "images_per_s", "ms_per_step")
        assert common.finite(row["extra_ms_per_step"])


def test_train_throughput_quick_on_the_cifar_size_network(tmp_path):
    payload = run_quick(train_throughput, tmp_path, "--networks", "cifar", "--parameterizations", "eps")
    (row,) = payload["results"]
    assert row["network"] == "cifar" and payload["ablation"] == []
    assert_finite(row, "bare_images_per_s", "lightning_images_per_s", "ratio", "bare_final_loss", "lightning_peak_mib")
    assert "3x3x32x32" not in row["on_device"] and "x3x32x32 uint8 train split" in row["on_device"]


def test_sampling_throughput_quick(tmp_path):
    payload = run_quick(sampling_throughput, tmp_path)
    rows = payload["results"]
    assert {(r["sampler"], r["steps"]) for r in rows} == {(s, n) for s in ("ancestral", "ddim", "heun") for n in (2, 4)}
    for row in rows:
        assert_finite(row, "images_per_s", "seconds_per_batch", "ms_per_network_call")
        assert row["network_calls"] == row["steps"] * (2 if row["sampler"] == "heun" else 1)
        assert row["images_per_s"] == pytest.approx(row["batch_size"] / row["seconds_per_batch"])


def test_eval_cost_quick(tmp_path):
    payload = run_quick(eval_cost, tmp_path)
    rows = payload["results"]
    assert [r["num_samples"] for r in rows] == [1, 2]
    for row in rows:
        assert_finite(row, "seconds", "seconds_per_1000", "bpd", "bpd_se")
        assert row["examples"] == 16
        assert row["bpd"] == pytest.approx(row["diffusion"] + row["prior"] + row["reconstruction"])
    assert payload["settings"]["trained_steps"] == 3


def test_set_overrides_reach_the_benchmarked_network(tmp_path):
    """``--set`` overrides of python train.py's config build a different network (here fewer residual blocks and
    no Fourier features), recorded in the JSON; the Python mirror, which builds only the defaults, refuses them."""
    extra = ("model.num_res_blocks=1", "model.fourier_min_exp=null", "model.fourier_max_exp=null")
    payload = run_quick(eval_cost, tmp_path, "--set", *extra)
    default = common.built_network_summary(width=16)
    smaller = common.built_network_summary(width=16, extra=extra)
    assert smaller["model_params"] < default["model_params"]
    assert payload["settings"]["model_params"] == smaller["model_params"]
    assert "--set model.num_res_blocks=1" in payload["command"]
    with pytest.raises(SystemExit, match="--set model.num_res_blocks=1.*Hydra route"):
        common.build_default("python", extra=extra[:1])


def test_quality_baseline_quick(tmp_path):
    payload = run_quick(quality_baseline, tmp_path)
    assert payload["uniform_bpd"] == pytest.approx(math.log2(17))
    grid = payload["gmm"]["grid"]
    assert [(r["covariance"], r["n_components"]) for r in grid] == [("diag", 2), ("diag", 4)]
    assert sum(r["selected"] for r in grid) == 1
    best = payload["gmm"]["best"]
    assert best["val_bpd"] == min(r["val_bpd"] for r in grid)
    assert_finite(best, "test_bpd", "test_bpd_se")
    assert best["test_bpd"] < payload["uniform_bpd"]  # even 2-4 components beat the uniform density
    diffusion = payload["diffusion"]
    assert_finite(diffusion, "test_bpd", "test_bpd_se", "steps", "train_seconds")
    assert diffusion["eval_num_samples"] == 2


def test_dequantized_bits_per_dim_of_the_uniform_density_is_log2_of_the_levels():
    """The Jacobian of the bin width: a uniform density over the 17 bins of every dimension scores log2(17)."""
    data = quality_baseline.digits_values()["test"]
    dim, width = data.shape[1], quality_baseline.NUM_LEVELS * quality_baseline.BIN

    class Uniform:
        def score_samples(self, x):
            assert ((x >= -1 - quality_baseline.BIN / 2) & (x <= 1 + quality_baseline.BIN / 2)).all()
            return torch.full((x.shape[0],), -dim * math.log(width), dtype=torch.float64).numpy()

    bpd, se = quality_baseline.bits_per_dim(Uniform(), data, draws=2, seed=0)
    assert bpd == pytest.approx(math.log2(17), abs=1e-12) and se == pytest.approx(0.0, abs=1e-12)


# ------------------------------------------------------------------ the GPU options, for a finite loss on CPU
def test_gpu_options_train_with_a_finite_loss_on_cpu(tmp_path):
    options = ["32-true", "bf16-mixed", "16-mixed", "channels_last", "bf16-mixed + channels_last"]
    payload = run_quick(gpu_options, tmp_path, "--options", *options)
    rows = payload["results"]
    assert [r["option"] for r in rows] == options
    for row in rows:
        assert "error" not in row, row
        assert row["losses_finite"] is True, row
        assert_finite(row, "images_per_s", "speedup_vs_32", "final_loss")


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_compile_trains_with_a_finite_loss_on_cpu(precision, monkeypatch):
    """module.compile=true through the real module and trainer; the aot_eager backend keeps it fast on CPU
    (dynamo tracing and AOT autograd run; only Inductor's code generation is skipped: see the slow test)."""
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    common.quiet()
    built = common.build_python(batch_size=8, width=16, compile=True)
    assert built.module._train_net is not built.module.net
    run = train_throughput.lightning_run(built, torch.device("cpu"), steps=3, warmup=1, precision=precision)
    assert len(run["losses"]) == 4 and all(math.isfinite(v) for v in run["losses"])


@pytest.mark.slow
def test_compile_with_inductor_trains_with_a_finite_loss_on_cpu():
    """The default torch.compile backend (Inductor, C++ code generation with gcc): slow to compile on CPU."""
    common.quiet()
    built = common.build_python(batch_size=8, width=16, compile=True)
    run = train_throughput.lightning_run(built, torch.device("cpu"), steps=2, warmup=1)
    assert all(math.isfinite(v) for v in run["losses"])


@pytest.mark.parametrize("n", [1, 5, 9, 15, 40])
def test_median_interval_is_the_binomial_order_statistic_interval(n):
    """(x_(k), x_(n+1-k)) covers the median with probability 1 - 2·P(Bin(n, ½) < k); k is the largest with >= 95 %."""
    values = torch.randn(n, generator=torch.Generator().manual_seed(n)).tolist()
    low, high, coverage = common.median_interval(values)
    xs = sorted(values)
    k = xs.index(low) + 1
    assert high == xs[n - k]
    assert low <= common.median(values) <= high
    below = lambda j: sum(math.comb(n, i) for i in range(j)) / 2 ** n  # noqa: E731
    assert coverage == pytest.approx(1 - 2 * below(k))
    if coverage >= 0.95 and k + 1 <= (n + 1) // 2:
        assert 1 - 2 * below(k + 1) < 0.95  # k is the largest that keeps 95 %
    if n >= 6:
        assert coverage >= 0.95
    else:  # too few values for 95 %: the whole range and the coverage it has
        assert (low, high) == (xs[0], xs[-1]) and coverage < 0.95
