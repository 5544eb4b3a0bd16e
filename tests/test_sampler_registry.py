"""Every sampler declares its metadata next to its function (vdmlab.diffusion.sampling.declare_sampler), and
conf/sampler/ agrees with it: one config per declared sampler, binding exactly the declared options, and the
declared network calls per step are the calls the sampler makes."""

import inspect
import math
from functools import partial

import pytest
import torch
from conftest import REPO
from hydra.utils import instantiate
from omegaconf import OmegaConf
from oracles import GaussianOracle

from vdmlab.checks import ParameterError
from vdmlab.diffusion import parameterization as PZ
from vdmlab.diffusion import sampling
from vdmlab.diffusion import schedules as S
from vdmlab.options import SamplerOptions

CONFIGS = sorted((REPO / "conf" / "sampler").glob("*.yaml"))
SHARED = ("denoise", "z", "logsnrs", "generator")  # the one signature of every sampler


def declared() -> dict:
    return {name: fn for name, fn in vars(sampling).items() if isinstance(getattr(fn, "spec", None), sampling.SamplerSpec)}


def test_every_declared_sampler_has_a_config_and_every_config_a_declared_sampler():
    configs = {path.stem: OmegaConf.load(path).fn._target_ for path in CONFIGS}
    assert {name: f"vdmlab.diffusion.sampling.{name}" for name in declared()} == configs
    assert sampling.CALLS_PER_STEP == {name: fn.spec.calls_per_step for name, fn in declared().items()}


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_a_config_binds_exactly_the_options_its_sampler_declares(path):
    node = OmegaConf.load(path)
    fn = instantiate(node.fn)
    parameters = list(inspect.signature(fn.func).parameters)
    assert tuple(parameters[:len(SHARED)]) == SHARED
    bound = {key for key in node.fn if not key.startswith("_")}
    assert bound == set(fn.func.spec.options) == set(parameters[len(SHARED):])
    options = instantiate(node)  # conf/sampler/<name>.yaml builds checked options
    assert isinstance(options, SamplerOptions) and options.fn.func is fn.func


@pytest.mark.parametrize("name", sorted(declared()))
def test_declared_calls_per_step_are_the_network_calls_made(name):
    calls = []
    oracle = GaussianOracle(torch.zeros(2), 0.5)

    def net(z, logsnr, **kwargs):
        calls.append(1)
        return oracle(z, logsnr, **kwargs)

    fn = getattr(sampling, name)
    options = {key: value for key, value in OmegaConf.load(REPO / "conf" / "sampler" / f"{name}.yaml").fn.items()
               if not key.startswith("_")}
    steps = 5
    grid = S.logsnr_grid(S.CosineSchedule(-10.0, 10.0), steps)
    fn(PZ.EpsParameterization().denoiser(net), torch.randn(3, 2), grid, generator=torch.Generator().manual_seed(0),
       **options)
    assert len(calls) == fn.spec.calls_per_step * steps


def test_an_option_a_sampler_does_not_declare_is_an_error_naming_it():
    with pytest.raises(ParameterError, match=r"sampler.fn.eta=0.5 is invalid: ddim takes no option eta"):
        sampling.checked_sampler(partial(sampling.ddim, eta=0.5))
    with pytest.raises(ParameterError, match=r"sampler.fn.s_noise=0.0 is invalid"):
        sampling.checked_sampler(partial(sampling.edm, s_churn=1.0, s_noise=0.0, logsnr_churn_min=-1.0,
                                         logsnr_churn_max=1.0))
    with pytest.raises(ParameterError, match=r"sampler.fn=.* is invalid: it must be a sampler"):
        sampling.checked_sampler(lambda denoise, z, logsnrs, generator=None: z)
    assert math.isfinite(sampling.checked_sampler(partial(sampling.euler_ancestral, eta=0.0)).keywords["eta"])


def test_options_stored_by_checkpoints_written_before_they_were_typed_still_build(make_config):
    from vdmlab.cli.build import build_fid, build_sampler

    cfg = make_config()
    old = OmegaConf.create({"sampler": {k: v for k, v in OmegaConf.to_container(cfg.sampler).items()
                                        if k not in ("_target_", "schedule", "guidance", "guidance_logsnr_min",
                                                     "guidance_logsnr_max")},
                            "fid": {k: v for k, v in OmegaConf.to_container(cfg.fid, resolve=True).items() if k != "_target_"}})
    sampler, fid = build_sampler(old), build_fid(old)
    assert sampler.steps == cfg.sampler.steps and sampler.fn.func is sampling.ancestral
    assert (sampler.schedule, sampler.guidance, sampler.guidance_logsnr_min, sampler.guidance_logsnr_max) == (None,) * 4
    assert fid == build_fid(cfg)
    with pytest.raises(Exception, match=r"sampler.steps=0 is invalid"):  # Hydra wraps the ParameterError
        build_sampler(OmegaConf.merge(old, {"sampler": {"steps": 0}}))
