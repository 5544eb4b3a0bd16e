"""Autoguidance (Karras et al. 2024, "Guiding a diffusion model with a bad version of itself"): the guided ε̂ is
ε̂_main + w·(ε̂_main − ε̂_guide) for every parameterization of either model, w = 0 and guide = main are the unguided
model, conditional models guide with their labels, and sample.py/eval.py take guide_ckpt=."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import compose_config
from test_conditioning import PARAMS, RecordingNet, draw, samplers

from vdmlab.cli.autoguidance import check_guide
from vdmlab.cli.build import build_run
from vdmlab.diffusion import parameterization as PZ

W = 1.5


def weak_net() -> RecordingNet:
    """Another net of the same shapes: the guide."""
    net = RecordingNet()
    with torch.no_grad():
        net.weight.mul_(0.5)
        net.table.add_(0.3)
    return net


@pytest.mark.parametrize("param", PARAMS, ids=lambda p: p.name)
@pytest.mark.parametrize("guide_param", [PZ.EpsParameterization(), PZ.VParameterization(), PZ.XParameterization()],
                         ids=lambda p: p.name)
def test_the_guided_eps_is_the_stated_combination_through_eps(param, guide_param):
    z_t, logsnr, labels = draw()
    main_net, guide_net = RecordingNet(), weak_net()
    guide = guide_param.denoiser(guide_net, cond=labels)
    guided = param.denoiser(main_net, cond=labels, guidance=W, guide=guide)(z_t, logsnr)
    main = param.predict(main_net, z_t, logsnr, cond=labels)
    weak = guide_param.predict(guide_net, z_t, logsnr, cond=labels)
    torch.testing.assert_close(guided.eps_hat, main.eps_hat + W * (main.eps_hat - weak.eps_hat))
    torch.testing.assert_close(guided.x_hat, PZ.x_from_eps(guided.eps_hat, z_t, logsnr))  # x̂ of that ε̂ (Table 4.2)
    assert all(c is labels for c in guide_net.seen) and all(c is labels for c in main_net.seen)  # both conditioned


@pytest.mark.parametrize("param", PARAMS, ids=lambda p: p.name)
@pytest.mark.parametrize("clip_x", [False, True])
def test_w_zero_and_a_guide_equal_to_the_main_model_are_the_unguided_model_bit_for_bit(param, clip_x):
    z_t, logsnr, labels = draw()
    net = RecordingNet()
    plain = param.predict(net, z_t, logsnr, clip_x=clip_x, cond=labels)
    zero = param.denoiser(net, clip_x=clip_x, cond=labels, guidance=0.0, guide=param.denoiser(weak_net(), cond=labels))
    itself = param.denoiser(net, clip_x=clip_x, cond=labels, guidance=W, guide=param.denoiser(net, cond=labels))
    for prediction in (zero(z_t, logsnr), itself(z_t, logsnr)):
        assert torch.equal(prediction.eps_hat, plain.eps_hat) and torch.equal(prediction.x_hat, plain.x_hat)


def test_clipping_applies_after_autoguidance():
    z_t, logsnr, _ = draw()
    param, net, weak = PZ.XParameterization(), RecordingNet(), weak_net()
    guide = param.denoiser(weak)
    clipped = param.denoiser(net, clip_x=True, guidance=4.0, guide=guide)(z_t, logsnr)
    unclipped = param.denoiser(net, guidance=4.0, guide=guide)(z_t, logsnr)
    torch.testing.assert_close(clipped.x_hat, unclipped.x_hat.clamp(-1, 1))
    torch.testing.assert_close(clipped.eps_hat, PZ.eps_from_x(clipped.x_hat, z_t, logsnr))


def test_the_guidance_interval_limits_autoguidance():
    z_t, _, _ = draw()
    param, net = PZ.EpsParameterization(), RecordingNet()
    guide = param.denoiser(weak_net())
    denoise = param.denoiser(net, guidance=W, guide=guide, guidance_logsnr_min=-1.0, guidance_logsnr_max=1.0)
    outside, inside = torch.tensor(3.0, dtype=z_t.dtype), torch.tensor(0.0, dtype=z_t.dtype)
    assert torch.equal(denoise(z_t, outside).eps_hat, param.predict(net, z_t, outside).eps_hat)
    assert not torch.allclose(denoise(z_t, inside).eps_hat, param.predict(net, z_t, inside).eps_hat)


@pytest.mark.parametrize("fn", samplers(), ids=lambda f: f.__name__)
def test_every_sampler_at_w_zero_or_guided_by_itself_draws_the_unguided_samples_bit_for_bit(fn):
    param, net, (z, _, labels) = PZ.VParameterization(), RecordingNet(), draw()
    logsnrs = torch.linspace(-5.0, 10.0, 4, dtype=torch.float64)
    draws = []
    for guidance, guide in ((0.0, None), (0.0, param.denoiser(weak_net(), cond=labels)),
                            (W, param.denoiser(net, cond=labels))):
        denoise = param.denoiser(net, clip_x=True, cond=labels, guidance=guidance, guide=guide)
        draws.append(fn(denoise, z, logsnrs, generator=torch.Generator().manual_seed(0)))
    assert torch.equal(draws[0], draws[1]) and torch.equal(draws[0], draws[2])


def test_a_guide_of_other_data_is_a_clear_error(make_config):
    tiny = ["model.width=8", "model.num_res_blocks=1"]
    main = build_run(make_config(tiny)).module
    for other, what in ((["dataset.conditional=true"], "num_classes"), (["dataset=mnist", "fid=null"],
                                                                       "data_shape")):
        guide = build_run(make_config([*tiny, *other])).module
        with pytest.raises(ValueError, match=f"has {what} .* same data"):
            check_guide(main, guide, "guide.ckpt")
    check_guide(main, build_run(make_config(["model.width=16", "model.num_res_blocks=1"])).module, "smaller.ckpt")


# ------------------------------------------------------------------ sample.py and eval.py on the digits
@pytest.fixture(scope="module")
def digits_checkpoints(tmp_path_factory):
    """A short digits fit and an earlier checkpoint of it (its guide)."""
    from vdmlab.cli.train import run as train_run

    out = tmp_path_factory.mktemp("autoguidance") / "run"
    train_run(compose_config(out, [
        "model.width=8", "model.num_res_blocks=1", "trainer.max_epochs=4", "logger=csv", "fid=null", "sampler.steps=4",
        "callbacks.sample_grid.every_n_epochs=1000", "callbacks.sample_grid.num_samples=4",
        "trainer.check_val_every_n_epoch=1", "callbacks.model_checkpoint.save_top_k=-1"]))
    return out / "checkpoints" / "last.ckpt", next((out / "checkpoints").glob("epoch0000-*.ckpt"))


@pytest.mark.slow
def test_sample_py_and_eval_py_autoguide_with_an_earlier_checkpoint(digits_checkpoints, tmp_path):
    from vdmlab.cli.evaluate import run as eval_run
    from vdmlab.cli.sample import run as sample_run

    main, early = digits_checkpoints
    common = [f"ckpt_path={main}", "num_samples=16", "sampler.steps=4", "metrics=false"]
    plain = np.load(sample_run(compose_config(tmp_path / "plain", common, "sample")))["x"]
    zero = np.load(sample_run(compose_config(tmp_path / "zero", [*common, f"guide_ckpt={early}",
                                                                 "sampler.guidance=0"], "sample")))["x"]
    guided_npz = sample_run(compose_config(tmp_path / "guided", [*common, f"guide_ckpt={early}",
                                                                 "sampler.guidance=2"], "sample"))
    assert np.array_equal(plain, zero) and not np.array_equal(plain, np.load(guided_npz)["x"])
    assert json.loads((guided_npz.parent / "metrics.json").read_text())["guide_ckpt"] == str(early)
    evaluate = [f"ckpt_path={main}", "likelihood=[]", "fid.num_samples=20", "fid.steps=4", "fid.floor=false",
                "logger=csv"]
    unguided = eval_run(compose_config(tmp_path / "eval0", evaluate, "eval"))
    guided = eval_run(compose_config(tmp_path / "eval2", [*evaluate, f"guide_ckpt={early}", "sampler.guidance=2"],
                                     "eval"))
    assert unguided["test/fid"] != guided["test/fid"]
    assert json.loads((tmp_path / "eval2" / "metrics.json").read_text())["guide_ckpt"] == str(early)
