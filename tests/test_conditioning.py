"""Class conditioning and classifier-free guidance: the ``cond`` seam reaches the network on every path (loss,
ELBO, every sampler, every parameterization), guidance is the formula (1 + w)·ε̂(z, c) − w·ε̂(z, ∅) in ε space,
labelled data, networks, a real conditional fit on the digits, DDP, checkpoints and the bad inputs."""

import functools
import inspect
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, compose_config
from omegaconf import OmegaConf
from test_evaluation import validate_single_and_ddp
from torch import nn

from vdmlab.analysis.compare import compare, find_runs, read_metrics
from vdmlab.cli.build import build_from_checkpoint, build_run
from vdmlab.cli.evaluate import run as eval_run
from vdmlab.cli.sample import run as sample_run
from vdmlab.cli.train import run as train_run
from vdmlab.data import DiffusionDataModule, DigitsDataModule, LevelDataset
from vdmlab.data.base import split_batch
from vdmlab.diffusion import likelihood, losses, sampling
from vdmlab.diffusion import parameterization as PZ
from vdmlab.diffusion import schedules as S
from vdmlab.diffusion.weighting import ELBOWeighting
from vdmlab.models import MLP, UNet
from vdmlab.module import DiffusionModule

PARAMS = [PZ.XParameterization(), PZ.EpsParameterization(), PZ.ScoreParameterization(),
          PZ.EnergyParameterization(), PZ.VParameterization(), PZ.FlowParameterization()]
NUM_CLASSES, D, B = 3, 4, 6


def samplers():
    """Every sampler of ``vdmlab.diffusion.sampling``: its public functions with the sampler signature, with the
    options of its config (conf/sampler/<name>.yaml) bound where it has required ones."""
    found = []
    for name, fn in inspect.getmembers(sampling, inspect.isfunction):
        params = list(inspect.signature(fn).parameters)
        if fn.__module__ == sampling.__name__ and not name.startswith("_") and params[:3] == ["denoise", "z", "logsnrs"]:
            options = {k: v for k, v in OmegaConf.load(REPO / "conf" / "sampler" / f"{name}.yaml").fn.items()
                       if not k.startswith("_")}
            found.append(functools.update_wrapper(functools.partial(fn, **options), fn))
    return found


class RecordingNet(nn.Module):
    """A smooth λ- and label-dependent net that records the ``cond`` of every call (None when called with two args)."""

    def __init__(self, num_classes: int = NUM_CLASSES, dim: int = D):
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.weight = nn.Parameter(0.3 * torch.randn(dim, dim, generator=gen, dtype=torch.float64))
        self.table = nn.Parameter(torch.randn(num_classes + 1, dim, generator=gen, dtype=torch.float64))
        self.num_classes = num_classes
        self.seen: list = []

    def forward(self, z, logsnr, *cond):
        self.seen.append(cond[0] if cond else None)
        labels = cond[0] if cond else torch.full((z.shape[0],), self.num_classes)
        gate = torch.sigmoid(torch.as_tensor(logsnr, dtype=z.dtype)).reshape(-1, 1)
        return torch.tanh(z @ self.weight) * gate + self.table[labels] * (1 - gate)


def draw(dtype=torch.float64):
    gen = torch.Generator().manual_seed(1)
    z = torch.randn(B, D, generator=gen, dtype=dtype)
    logsnr = torch.linspace(-6, 8, B, dtype=dtype)
    labels = torch.arange(B) % NUM_CLASSES
    return z, logsnr, labels


def null(labels):
    return torch.full_like(labels, NUM_CLASSES)


def assert_all_cond(seen, expected):
    assert seen, "the network was never called"
    for cond in seen:
        assert cond is not None and torch.equal(cond, expected)


# ------------------------------------------------------------------ the seam
@pytest.mark.parametrize("param", PARAMS, ids=lambda p: p.name)
def test_every_parameterization_passes_cond_to_the_network(param):
    net, (z, logsnr, labels) = RecordingNet(), draw()
    param.predict(net, z, logsnr, cond=labels)
    assert_all_cond(net.seen, labels)
    net.seen.clear()
    param.predict(net, z, logsnr)  # unconditional: called as net(z, logsnr), exactly as before
    assert net.seen == [None]


@pytest.mark.parametrize("param", PARAMS, ids=lambda p: p.name)
def test_the_loss_and_the_elbo_pass_cond_to_the_network(param):
    net, (x, _, labels) = RecordingNet(), draw()
    schedule = S.LinearSchedule(-5.0, 10.0).double()
    gen = torch.Generator().manual_seed(2)
    t, eps = torch.rand(B, generator=gen, dtype=torch.float64), torch.randn(B, D, generator=gen, dtype=torch.float64)
    losses.diffusion_loss(x, t, eps, net=net, schedule=schedule, weighting=ELBOWeighting(), parameterization=param,
                          cond=labels)
    assert_all_cond(net.seen, labels)
    net.seen.clear()
    likelihood.negative_elbo(x.clamp(-1, 1), likelihood.ELBOModel(net, schedule, param, num_levels=17, num_samples=2),
                             generator=gen, cond=labels)
    assert_all_cond(net.seen, labels)


@pytest.mark.parametrize("per_example", [False, True], ids=["generator", "per-example"])
def test_one_evaluation_gives_the_conditional_the_null_label_and_the_mixture_bounds(per_example):
    """evaluate_bpd (eval.py) and the module's val/test share LikelihoodMetrics: in one pass it gives the bound of
    p(x|y), that of p(x) under ∅ with the same noise as an evaluation of ∅ labels on its own, and the mixture's."""
    from vdmlab.metrics.bpd import evaluate_bpd

    z, _, labels = draw()
    x = z.clamp(-1, 1)
    model = likelihood.ELBOModel(RecordingNet(), S.LinearSchedule(-5.0, 10.0).double(), PZ.EpsParameterization(),
                                 num_levels=17, num_samples=2)

    def run(batch_labels, num_classes=None):
        noise = {"seed": 3} if per_example else {"generator": torch.Generator().manual_seed(3)}
        return evaluate_bpd(model, [(torch.arange(B), x, batch_labels)], num_classes=num_classes, **noise)

    both, cond, uncond = run(labels, NUM_CLASSES), run(labels), run(null(labels))
    assert (both["bpd"], both["bpd_se"]) == (cond["bpd"], cond["bpd_se"])
    assert (both["bpd_uncond"], both["bpd_uncond_se"]) == (uncond["bpd"], uncond["bpd_se"])
    assert both["bpd_uncond"] != both["bpd"]  # the labels matter to this net
    assert both["bpd_mixture"] == pytest.approx(both["bpd"] + math.log2(NUM_CLASSES) / D)  # p(x) >= p(x|y)/C
    assert "bpd_uncond" not in cond


def test_bpd_step_and_ode_likelihood_pass_the_batch_labels_to_the_network():
    from vdmlab.diffusion import ode_likelihood as OL
    from vdmlab.metrics.bpd import BPD_TERMS, BitsPerDim, update_bpd
    from vdmlab.metrics.ode_bpd import evaluate_ode_bpd

    net, (z, _, labels) = RecordingNet(), draw()
    x = z.clamp(-1, 1)
    schedule, param = S.LinearSchedule(-5.0, 10.0), PZ.EpsParameterization()
    metrics = {term: BitsPerDim() for term in BPD_TERMS}
    update_bpd(metrics, x, likelihood.ELBOModel(net, schedule, param, num_levels=17, num_samples=1),
               generator=torch.Generator().manual_seed(0), cond=labels)
    assert_all_cond(net.seen, labels)
    net.seen.clear()
    result = evaluate_ode_bpd(net, schedule, param, [(torch.arange(B), x, labels)], 17, solver=OL.HeunSolver(2),
                              divergence=OL.ExactDivergence(), dequantization=OL.UniformDequantization())
    assert_all_cond(net.seen, labels)  # the ODE of p(x|y): the true labels on every network call
    assert math.isfinite(result["ode_bpd"])


@pytest.mark.parametrize("fn", samplers(), ids=lambda f: f.__name__)
@pytest.mark.parametrize("param", PARAMS, ids=lambda p: p.name)
def test_every_sampler_passes_cond_to_the_network(fn, param):
    net, (z, _, labels) = RecordingNet(), draw()
    logsnrs = torch.linspace(-5.0, 10.0, 4, dtype=torch.float64)
    out = fn(param.denoiser(net, clip_x=True, cond=labels), z, logsnrs, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(out).all()
    assert_all_cond(net.seen, labels)
    net.seen.clear()  # guided: one batched call on [c, ∅]
    fn(param.denoiser(net, cond=labels, guidance=2.0, null_cond=null(labels)), z, logsnrs,
       generator=torch.Generator().manual_seed(0))
    assert_all_cond(net.seen, torch.cat([labels, null(labels)]))


def test_samplers_are_found():
    assert {"ancestral", "ddim", "heun"} <= {f.__name__ for f in samplers()}


# ------------------------------------------------------------------ guidance
@pytest.mark.parametrize("w", [0.5, 2.0])
@pytest.mark.parametrize("param", PARAMS, ids=lambda p: p.name)
def test_guidance_is_the_formula_in_eps_space(param, w):
    net, (z, logsnr, labels) = RecordingNet(), draw()
    pred = param.denoiser(net, cond=labels, guidance=w, null_cond=null(labels))(z, logsnr)
    eps_c = param.predict(net, z, logsnr, cond=labels).eps_hat
    eps_u = param.predict(net, z, logsnr, cond=null(labels)).eps_hat
    expected = (1 + w) * eps_c - w * eps_u
    torch.testing.assert_close(pred.eps_hat, expected, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(pred.x_hat, PZ.x_from_eps(expected, z, logsnr), rtol=1e-9, atol=1e-9)
    assert not torch.allclose(eps_c, eps_u)  # the labels matter, so the test can fail


@pytest.mark.parametrize("param", PARAMS, ids=lambda p: p.name)
def test_guidance_zero_is_the_conditional_model_and_clipping_applies_after_guidance(param):
    net, (z, logsnr, labels) = RecordingNet(), draw()
    plain = param.predict(net, z, logsnr, cond=labels)
    zero = param.denoiser(net, cond=labels, guidance=0.0, null_cond=null(labels))(z, logsnr)
    torch.testing.assert_close(zero.eps_hat, plain.eps_hat)
    clipped = param.denoiser(net, clip_x=True, cond=labels, guidance=4.0, null_cond=null(labels))(z, logsnr)
    assert clipped.x_hat.abs().max() <= 1.0
    torch.testing.assert_close(clipped.eps_hat, PZ.eps_from_x(clipped.x_hat, z, logsnr))


def test_guidance_interval_guides_only_inside_the_logsnr_range():
    param, net, (z, logsnr, labels) = PZ.EpsParameterization(), RecordingNet(), draw()
    denoise = param.denoiser(net, cond=labels, guidance=3.0, null_cond=null(labels),
                             guidance_logsnr_min=-1.0, guidance_logsnr_max=4.0)
    pred = denoise(z, logsnr)
    eps_c = param.predict(net, z, logsnr, cond=labels).eps_hat
    eps_u = param.predict(net, z, logsnr, cond=null(labels)).eps_hat
    inside = (logsnr >= -1.0) & (logsnr <= 4.0)
    assert inside.any() and (~inside).any()
    torch.testing.assert_close(pred.eps_hat[inside], (4 * eps_c - 3 * eps_u)[inside])
    torch.testing.assert_close(pred.eps_hat[~inside], eps_c[~inside])
    net.seen.clear()
    denoise(z, torch.full_like(logsnr, 9.0))  # entirely outside: one unguided call
    assert len(net.seen) == 1 and torch.equal(net.seen[0], labels)


def test_guidance_without_labels_is_a_clear_error():
    with pytest.raises(ValueError, match="dataset.conditional=true"):
        PZ.EpsParameterization().denoiser(RecordingNet(), guidance=2.0)


# ------------------------------------------------------------------ labelled data
def test_split_batch_takes_every_batch_form():
    index, x, y = torch.arange(3), torch.zeros(3, 2), torch.tensor([1, 0, 2])
    for batch, expected in ((x, (None, x, None)), ((x, y), (None, x, y)), ((index, x), (index, x, None)),
                            ((index, x, y), (index, x, y))):
        assert all(a is b for a, b in zip(split_batch(batch), expected))


def test_digits_yield_labels_only_when_asked():
    plain = DigitsDataModule(batch_size=16, eval_batch_size=50, num_workers=0)
    assert plain.num_classes is None
    assert isinstance(next(iter(plain.train_dataloader())), torch.Tensor)  # unchanged forms: x and (index, x)
    plain_index, plain_x = next(iter(plain.val_dataloader()))
    cond = DigitsDataModule(batch_size=16, eval_batch_size=50, num_workers=0, conditional=True)
    assert cond.num_classes == 10  # known before setup, so the model is built first
    x, y = next(iter(cond.train_dataloader()))
    assert x.shape == (16, 1, 8, 8) and y.dtype == torch.int64
    images = cond.train_set.__getitems__(list(range(len(cond.train_set))))
    for image, label in zip(x, y):  # each label belongs to its image
        rows = (images == image).flatten(1).all(1)
        assert label in cond.train_labels[rows]
    index, xv, yv = next(iter(cond.val_dataloader()))
    assert torch.equal(index, plain_index) and torch.equal(xv, plain_x) and torch.equal(yv, cond.val_labels[index])


class TwoClassFolder(DiffusionDataModule):
    """A datamodule whose split datasets carry a ``labels`` tensor and which names its ``classes`` (the generic path)."""

    classes = ["cat", "dog"]

    def __init__(self, labels, **kwargs):
        super().__init__(num_levels=17, data_shape=(1, 8, 8), batch_size=4, eval_batch_size=None, num_workers=0, **kwargs)
        self.fixed_labels = torch.as_tensor(labels)

    def build_splits(self):
        sets = []
        for _ in range(3):
            dataset = LevelDataset(torch.randint(0, 17, (len(self.fixed_labels), 1, 8, 8)), 17)
            dataset.labels = self.fixed_labels
            sets.append(dataset)
        return tuple(sets)


def test_generic_labels_from_the_dataset_and_labels_out_of_range():
    dm = TwoClassFolder([0, 1, 1, 0, 1, 0, 0, 1], conditional=True)
    assert dm.num_classes == 2
    _, y = next(iter(dm.train_dataloader()))
    assert set(y.tolist()) <= {0, 1}
    with pytest.raises(ValueError, match=r"outside \[0, 2\)"):
        TwoClassFolder([0, 1, 5, 0], conditional=True).train_dataloader()


def test_a_dataset_without_labels_asked_to_be_conditional_is_a_clear_error(make_config):
    cfg = make_config(["dataset=toy2d", "model=mlp", "dataset.conditional=true"])
    with pytest.raises(ValueError, match="dataset.conditional=false"):
        build_run(cfg)


# ------------------------------------------------------------------ networks
@pytest.mark.parametrize("make", [lambda n: UNet(width=16, num_res_blocks=1, data_shape=(1, 8, 8), num_classes=n),
                                  lambda n: MLP(hidden=16, depth=1, emb_dim=16, data_shape=(1, 8, 8), num_classes=n)],
                         ids=["unet", "mlp"])
def test_networks_add_a_class_embedding_with_a_null_class(make):
    torch.manual_seed(0)
    plain, cond = make(None), make(10)
    assert not [k for k in plain.state_dict() if "class" in k]  # unconditional state dict unchanged
    assert set(cond.state_dict()) - set(plain.state_dict()) == {"class_embed.embed.weight"}
    assert cond.class_embed.embed.weight.shape[0] == 11  # 10 classes and ∅
    with torch.no_grad():
        for p in cond.parameters():
            p.normal_(0, 0.3)
    z, logsnr, labels = torch.randn(4, 1, 8, 8), torch.linspace(-3, 5, 4), torch.tensor([0, 1, 2, 3])
    out = cond(z, logsnr, labels)
    assert (out - cond(z, logsnr, torch.tensor([4, 5, 6, 7]))).abs().amax(dim=(1, 2, 3)).min() > 1e-3
    torch.testing.assert_close(cond(z, logsnr), cond(z, logsnr, torch.full((4,), 10)))  # None is ∅
    with pytest.raises(ValueError, match="unconditional"):
        plain(z, logsnr, labels)


# ------------------------------------------------------------------ training, checkpoints, sampling, bad input
# the ELBO weighting: the test compares likelihoods, which a 132-step fit of another weighting barely orders
FIT = ["dataset.conditional=true", "weighting=elbo", "module.p_uncond=0.2", "model.width=16", "model.num_res_blocks=1",
       "model.dropout=0.0",
       "trainer.max_epochs=12", "module.lr_scheduler.warmup_steps=20", "module.optimizer.lr=3e-3", "logger=csv",
       "fid.every_n_epochs=0", "fid.num_samples=50", "fid.steps=8", "sampler.steps=8", "module.ema_decay=0.9",
       "callbacks.sample_grid.num_samples=20", "callbacks.sample_grid.every_n_epochs=1000"]


@pytest.fixture(scope="module")
def conditional_run(tmp_path_factory):
    """A real short conditional fit on the digits through train.py's run (132 steps), and its metrics."""
    out = tmp_path_factory.mktemp("conditional") / "run"
    cfg = compose_config(out, FIT)
    train_run(cfg)
    return out, {k: float(v) for k, v in cfg_metrics(out).items()}


def cfg_metrics(out: Path) -> dict[str, float]:
    """The last logged value of every key of the run's CSV log."""
    from vdmlab.analysis.compare import read_metrics

    return read_metrics(next(out.rglob("metrics.csv")))[0]


@pytest.mark.slow
def test_a_short_conditional_fit_on_the_digits(conditional_run):
    out, metrics = conditional_run
    # p(x|y) is a better model of the digits than p(x) from the same net with ∅ (same noise for both)
    assert metrics["test/bpd"] < metrics["test/bpd_uncond"] and metrics["val/bpd"] < metrics["val/bpd_uncond"]
    for stage in ("val", "test"):  # the balanced mixture's bound: p(x) >= p(x|y)/C, C = 10 digits, D = 64
        assert metrics[f"{stage}/bpd_mixture"] == pytest.approx(metrics[f"{stage}/bpd"] + math.log2(10) / 64, abs=1e-5)
    assert 0.0 <= metrics["test/class_acc"] <= 1.0 and metrics["test/fid_n"] == 50
    assert (out / "samples" / "final.png").is_file()  # a row per class


@pytest.mark.slow
def test_checkpoints_round_trip_the_conditional_model_and_sample_py_takes_labels(conditional_run, tmp_path):
    out, _ = conditional_run
    ckpt = out / "checkpoints" / "last.ckpt"
    built = build_from_checkpoint(str(ckpt))
    assert built.module.num_classes == 10 and built.module.net.class_embed is not None
    stored = torch.load(ckpt, map_location="cpu", weights_only=True)
    for key, value in built.module.state_dict().items():
        torch.testing.assert_close(value, stored["state_dict"][key])
    for overrides in (["label=3"], ["labels=all"]):
        cfg = compose_config(tmp_path / overrides[0].split("=")[0], [f"ckpt_path={ckpt}", "num_samples=20",
                             "sampler.steps=6", "sampler.guidance=2", *overrides], "sample")
        npz = sample_run(cfg)
        data = np.load(npz)
        metrics = json.loads((npz.parent / "metrics.json").read_text())
        assert metrics["guidance"] == 2.0 and 0.0 <= metrics["class_acc"] <= 1.0 and metrics["fid_n"] == 20
        counts = np.bincount(data["y"], minlength=10)  # the histogram of what was drawn, beside what was asked
        assert sum(metrics[f"class_{k}"] for k in range(10)) == 20 == sum(metrics[f"nn_class_{k}"] for k in range(10))
        # a sample drawn as k and classified k is counted in both: hits <= Σ_k min(asked_k, classified_k)
        assert round(metrics["class_acc"] * 20) <= sum(min(counts[k], metrics[f"class_{k}"]) for k in range(10))
    assert data["y"].tolist() == [k for k in range(10) for _ in range(2)]  # labels=all: every class, a row each
    metrics = eval_run(compose_config(tmp_path / "eval", [f"ckpt_path={ckpt}", "bpd.num_samples=1", "fid.num_samples=20",
                                                          "fid.steps=4"], "eval"))
    assert {"test/bpd", "test/bpd_uncond", "test/bpd_mixture", "test/fid"} <= set(metrics)
    assert 0.0 <= metrics["test/class_acc"] <= 1.0
    for bad, match in (([], "give the labels"), (["label=10"], r"outside \[0, 10\)"), (["label=-1"], "outside"),
                       (["label=3", "labels=all"], "both given")):
        cfg = compose_config(tmp_path / "bad", [f"ckpt_path={ckpt}", "num_samples=4", "sampler.steps=2", *bad], "sample")
        with pytest.raises(ValueError, match=match):
            sample_run(cfg)


def test_an_unconditional_model_given_labels_is_a_clear_error(make_config):
    module = build_run(make_config(["model.width=8", "model.num_res_blocks=1"])).module
    assert module.num_classes is None and not [k for k in module.state_dict() if "class_embed" in k]
    with pytest.raises(ValueError, match="unconditional model: it takes no labels"):
        module.sample(2, steps=2, labels=torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="dataset.conditional=true"):  # guidance needs a conditional model
        module.sample(2, steps=2, guidance=2.0)
    with pytest.raises(ValueError, match="batches carry class labels but the model is unconditional"):
        module.training_step((torch.zeros(2, 1, 8, 8), torch.tensor([1, 2])), 0)


def test_label_dropout_uses_the_training_noise_and_replaces_labels_by_the_null_class(make_config):
    seen = []
    module = build_run(make_config(["dataset.conditional=true", "module.p_uncond=0.3", "model.width=8",
                                    "model.num_res_blocks=1"])).module
    module.net.register_forward_pre_hook(lambda net, args: seen.append(args[2].clone()))
    x, y = torch.zeros(400, 1, 8, 8), torch.arange(400) % 10
    module.training_step((x, y), 0)
    dropped = seen[-1] == 10
    assert 0.2 < dropped.float().mean() < 0.4 and torch.equal(seen[-1][~dropped], y[~dropped])
    again = build_run(make_config(["dataset.conditional=true", "module.p_uncond=0.3", "model.width=8",
                                   "model.num_res_blocks=1"])).module
    again.net.register_forward_pre_hook(lambda net, args: seen.append(args[2].clone()))
    again.training_step((x, y), 0)
    assert torch.equal(seen[-1], seen[-2])  # drawn from the seeded training-noise generator
    with pytest.raises(ValueError, match="batches carry no labels"):
        module.training_step(x, 0)


class SevenValConditionalDigits(DigitsDataModule):
    """Conditional digits with 7 validation examples: 2 DDP ranks pad to 8, duplicating one (labelled) example."""

    def build_splits(self):
        train, val, test = super().build_splits()
        self.val_labels = self.val_labels[:7]
        return train, torch.utils.data.Subset(val, range(7)), test


def conditional_module():
    torch.manual_seed(0)
    net = UNet(width=16, num_res_blocks=1, data_shape=(1, 8, 8), num_classes=10)  # 2 channels per GroupNorm group
    with torch.no_grad():  # the zero-initialised output layers made random, so that the labels matter
        for p in net.parameters():
            if not p.any():
                p.normal_(0, 0.05)
    return DiffusionModule(net, S.LinearSchedule(-5.0, 10.0), ELBOWeighting(), PZ.EpsParameterization(), 17, (1, 8, 8),
                           eval_num_samples=2, num_classes=10)


@pytest.mark.slow
def test_conditional_bits_per_dim_under_ddp_equal_single_process():
    results = validate_single_and_ddp(conditional_module,
                                      lambda: SevenValConditionalDigits(batch_size=128, eval_batch_size=3,
                                                                        num_workers=0, conditional=True))
    for key in ("val/bpd", "val/bpd_uncond"):
        assert results[2][key] == pytest.approx(results[1][key], rel=1e-6)
    assert results[1]["val/bpd"] != pytest.approx(results[1]["val/bpd_uncond"], rel=1e-4)


@pytest.mark.slow
def test_compare_reads_a_conditional_run_in_bits_per_dim_of_x(conditional_run, tmp_path):
    """compare.py puts a conditional run beside unconditional ones in the same units: its class mixture's bound."""
    import shutil

    out, metrics = conditional_run
    run = tmp_path / "sweep" / "0"
    (run / "csv").mkdir(parents=True)
    shutil.copy(next(out.rglob("metrics.csv")), run / "csv" / "metrics.csv")
    (run / ".hydra").mkdir()
    OmegaConf.save(compose_config(run, FIT), run / ".hydra" / "config.yaml")
    summary = find_runs(tmp_path / "sweep")[0]
    assert summary.conditional
    for stage in ("val", "test"):
        assert summary.metrics[f"{stage}/bpd"] == metrics[f"{stage}/bpd_mixture"] > metrics[f"{stage}/bpd"]
        assert summary.metrics[f"{stage}/bpd_conditional"] == metrics[f"{stage}/bpd"]
    assert summary.curves["val/bpd"] == read_metrics(run / "csv" / "metrics.csv")[1]["val/bpd_mixture"]
    table = compare(tmp_path / "sweep")["markdown"].read_text()
    assert "| 0 * |" in table and "bpd_mixture" in table


@pytest.mark.slow
def test_compare_shows_fid_and_class_accuracy_against_guidance(conditional_run, tmp_path):
    out, _ = conditional_run
    sweep = tmp_path / "multirun"
    for job, w in enumerate((0.0, 1.0, 4.0)):
        cfg = compose_config(sweep / str(job), [f"ckpt_path={out / 'checkpoints' / 'last.ckpt'}", "labels=all",
                                                "num_samples=20", "sampler.steps=4", f"sampler.guidance={w}"], "sample")
        sample_run(cfg)
        (sweep / str(job) / ".hydra").mkdir()
        OmegaConf.save(cfg, sweep / str(job) / ".hydra" / "config.yaml")  # what hydra.main writes for each job
    paths = compare(sweep)
    table = paths["markdown"].read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert [row.split(" | ")[0] for row in rows] == ["| 0", "| 1", "| 4"] and all("%" in row for row in rows)
    assert paths["guidance"].is_file() and "class_acc" in paths["csv"].read_text()
