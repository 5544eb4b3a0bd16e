"""The configs and the code agree: every default is stated once (a code default, where one exists, equals the
config's), and start-up validation checks every parameter of every option of every group before data is read."""

import copy
import inspect
import math
from pathlib import Path

import pytest
from conftest import REPO, compose_config
from hydra._internal.utils import _locate
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from vdmlab.cli.validate import ConfigError, validate_config
from vdmlab.data.base import DiffusionDataModule
from vdmlab.module import DiffusionModule

GROUPS = ("dataset", "model", "schedule", "weighting", "parameterization", "sampler")
OPTIONS = [(group, path.stem) for group in GROUPS for path in sorted((REPO / "conf" / group).glob("*.yaml"))]


@pytest.fixture(scope="module")
def base_config(tmp_path_factory) -> DictConfig:
    """The default train config, composed once (composition is the slow part of these tests)."""
    return compose_config(tmp_path_factory.mktemp("contract") / "run")


def option_config(base: DictConfig, group: str, option: str, tmp_path: Path) -> DictConfig:
    """``base`` with conf/<group>/<option>.yaml in place of its group node, as ``group=option`` composes it (the
    option files are flat; their interpolations resolve against the rest of the config); an existing, empty
    image folder where one is needed."""
    cfg = copy.deepcopy(base)
    node = OmegaConf.load(REPO / "conf" / group / f"{option}.yaml")
    if "defaults" in node:  # an option built on another one: let Hydra compose it
        node = compose_config(tmp_path / "composed", [f"{group}={option}"])[group]
    with open_dict(cfg):
        cfg[group] = node
        partner = {("dataset", "toy2d"): ("model", "mlp"), ("model", "mlp"): ("dataset", "toy2d"),
                   # weightings defined through p(λ) need a fixed schedule (check_weighting_schedule)
                   ("weighting", "simple"): ("schedule", "cosine"),
                   ("weighting", "min_snr"): ("schedule", "cosine"),
                   ("weighting", "p2"): ("schedule", "cosine")}.get((group, option))
        if partner:  # flat data need the MLP and the MLP needs flat data
            cfg[partner[0]] = OmegaConf.load(REPO / "conf" / partner[0] / f"{partner[1]}.yaml")
        if (group, option) == ("dataset", "image_folder"):
            (tmp_path / "images").mkdir(exist_ok=True)
            cfg.dataset.root = str(tmp_path / "images")
    return cfg


def targets(node: DictConfig, key: str) -> list[tuple[str, DictConfig]]:
    """The node and every nested node with a ``_target_`` (e.g. ``sampler.fn``), with their dotted keys."""
    found = [(key, node)] if "_target_" in node else []
    for name, child in node.items_ex(resolve=False):
        if isinstance(child, DictConfig):
            found += targets(child, f"{key}.{name}")
    return found


def code_defaults(target) -> dict:
    """Parameter defaults of a class (its __init__ and those of its bases, for ``**common``) or a function."""
    defaults: dict = {}
    for cls in (target.__mro__ if inspect.isclass(target) else (target,)):
        init = cls.__init__ if inspect.isclass(cls) else cls
        try:
            parameters = inspect.signature(init).parameters.values()
        except (TypeError, ValueError):
            continue
        for p in parameters:
            if p.default is not inspect.Parameter.empty:
                defaults.setdefault(p.name, p.default)
    return defaults


def same(code, config) -> bool:
    if isinstance(code, tuple):
        code = list(code)
    return code == config


@pytest.mark.parametrize("group,option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_code_defaults_equal_the_config(group, option, base_config, tmp_path):
    cfg = option_config(base_config, group, option, tmp_path)
    own = OmegaConf.load(REPO / "conf" / group / f"{option}.yaml")
    # an option built on another one (defaults: [unet]) is a variant: its own settings differ from the defaults
    variant = set(own) - {"defaults"} if "defaults" in own else set()
    mismatches = []
    for key, node in targets(cfg[group], group):
        values = OmegaConf.to_container(node, resolve=True)
        for name, default in code_defaults(_locate(node._target_)).items():
            if name in values and not (key == group and name in variant) and not same(default, values[name]):
                mismatches.append(f"{key}.{name}: code {default!r}, config {values[name]!r}")
    assert not mismatches, "defaults stated twice and disagreeing: " + "; ".join(mismatches)


def test_module_defaults_equal_the_config(base_config):
    cfg = base_config
    # train.yaml's own module block: a dataset's recipe (conf/dataset_defaults/digits.yaml) may override it
    values = OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "train.yaml").module, resolve=False)
    for name, default in code_defaults(DiffusionModule).items():
        if name in values and not isinstance(values[name], dict):
            assert same(default, values[name]), f"module.{name}: code {default!r}, config {values[name]!r}"
    assert code_defaults(DiffusionModule)["seed"] == cfg.seed


# ---------------------------------------------------------------------------------------------- validation
#: parameters that legitimately accept any value of their type, with the reason
EXEMPT = {
    "dataset.root": "mnist/cifar10 with download=true: any folder, created by the download (download=false is "
                    "checked: test_missing_dataset_root_is_named)",
    "fid.inception_path": "any path for the digits' own features; a file when Inception features will open it "
                          "(checked: test_fid_reference.test_missing_weights_stop_a_run_before_training)",
    "fid.stats_dir": "any folder: created when the first real statistics are written (null: no cache)",
    "dataset.cache_dir": "any folder: created when the decoded images are first written (null: no cache)",
}


def scalar_keys(node: DictConfig, key: str) -> list[str]:
    """Dotted keys of the scalar (number, bool, string, null) parameters below ``node``, skipping ``_target_``s."""
    keys = []
    for name, child in node.items_ex(resolve=False):
        if str(name).startswith("_"):
            continue
        if isinstance(child, DictConfig):
            keys += scalar_keys(child, f"{key}.{name}")
        elif not isinstance(child, ListConfig):
            keys.append(f"{key}.{name}")
    return keys


def invalid_values(value) -> list:
    """Values no parameter of this kind accepts: a non-number string, and NaN for numbers."""
    if isinstance(value, bool) or value is None:
        return ["not-a-number"]
    if isinstance(value, (int, float)):
        return ["not-a-number", math.nan]
    return ["/no/such/folder/or-name"]  # strings: names (toy2d name, fid.feature) and folders


def all_cases() -> list[tuple[str, str | None, str]]:
    """(group, option, key) for every scalar parameter of every group option (read from conf/<group>/*.yaml), and
    of train.yaml's module, fid and diffusion nodes (group "train")."""
    cases = []
    for group, option in OPTIONS:
        node = OmegaConf.load(REPO / "conf" / group / f"{option}.yaml")
        cases += [(group, option, key) for key in scalar_keys(node, group)]
    train = OmegaConf.load(REPO / "conf" / "train.yaml")
    for node in ("module", "fid", "diffusion"):
        cases += [("train", None, key) for key in scalar_keys(train[node], node)]
    return cases


CASES = all_cases()


def expected_key(key: str) -> str:
    """The config key an error must name: the diffusion endpoints are the schedule's."""
    return {"diffusion.logsnr_min": "schedule.logsnr_min", "diffusion.logsnr_max": "schedule.logsnr_max"}.get(key, key)


@pytest.mark.parametrize("group,option,key", CASES, ids=[f"{g}={o}:{k}" for g, o, k in CASES])
def test_every_parameter_is_validated_before_data_is_read(group, option, key, base_config, tmp_path, monkeypatch):
    if key in EXEMPT and (key != "dataset.root" or option in ("mnist", "cifar10")):
        pytest.skip(EXEMPT[key])
    base = base_config if group == "train" else option_config(base_config, group, option, tmp_path)

    def no_data(self, stage=None):
        raise AssertionError(f"validation read data ({type(self).__name__}.setup)")

    monkeypatch.setattr(DiffusionDataModule, "setup", no_data)
    validate_config(base)  # the composed option itself is valid
    value = OmegaConf.select(base, key)
    for bad in invalid_values(value):
        cfg = copy.deepcopy(base)
        OmegaConf.update(cfg, key, bad, force_add=True)
        with pytest.raises(ConfigError) as error:
            validate_config(cfg)
        assert f"{expected_key(key)}=" in str(error.value), (key, bad, str(error.value))


def test_missing_dataset_root_is_named(make_config):
    for dataset in ("mnist", "cifar10", "image_folder"):  # (the datamodules' setup would name it too, later)
        overrides = [f"dataset={dataset}", "dataset.root=/no/such/folder"]
        if dataset != "image_folder":
            overrides.append("dataset.download=false")
        with pytest.raises(ConfigError, match=r"dataset.root='/no/such/folder' is invalid: it is not an existing folder"):
            validate_config(make_config(overrides))


def test_every_error_is_listed_with_its_key(make_config):
    cfg = make_config(["model.width=-8", "weighting=sigmoid", "weighting.bias=inf", "sampler.steps=0",
                       "module.timesteps=0", "fid.num_samples=1", "schedule.logsnr_min=20"])
    with pytest.raises(ConfigError) as error:
        validate_config(cfg)
    message = str(error.value)
    for text in ("model.width=-8 is invalid: it must be an integer >= 1",
                 "weighting.bias=inf is invalid: it must be a finite number",
                 "sampler.steps=0 is invalid: it must be an integer >= 1",
                 "module.timesteps=0 is invalid: null (continuous time) or an integer >= 1",
                 "fid.num_samples=1 is invalid: it must be an integer >= 2",
                 f"schedule.logsnr_min=20 and schedule.logsnr_max={cfg.schedule.logsnr_max} are invalid"):
        assert text in message


@pytest.mark.parametrize("weighting", ["simple", "min_snr"])
def test_a_density_defined_weighting_with_a_moving_schedule_is_refused_with_the_fix(make_config, weighting):
    for schedule in ("adaptive", "learned"):
        with pytest.raises(ConfigError, match=f"weighting={weighting} with schedule={schedule} is invalid.*schedule=cosine"):
            validate_config(make_config([f"weighting={weighting}", f"schedule={schedule}"]))
    validate_config(make_config([f"weighting={weighting}", "schedule=cosine"]))  # a fixed p(λ): fine
    validate_config(make_config(["weighting=sigmoid", "schedule=adaptive"]))  # w(λ) alone: fine


def test_the_lr_decay_is_set_from_the_command_line(tmp_path):
    """``module.lr_scheduler.decay_steps=N`` (the config's comment says to set it) composes without a ``+`` and
    gives the cosine decay: the peak after warm-up, then ``min_factor`` of it from step N on."""
    import torch
    from hydra.utils import instantiate

    cfg = compose_config(tmp_path / "run", ["module.lr_scheduler.warmup_steps=10",
                                            "module.lr_scheduler.decay_steps=110", "module.lr_scheduler.min_factor=0.2"])
    validate_config(cfg)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    factor = instantiate(cfg.module.lr_scheduler)(optimizer).lr_lambdas[0]
    assert factor(10) == pytest.approx(1.0) and factor(60) == pytest.approx(0.6)
    assert factor(110) == pytest.approx(0.2) == factor(500)
    assert all(factor(k) >= factor(k + 1) for k in range(10, 120))
