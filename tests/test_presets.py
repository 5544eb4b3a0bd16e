"""Paper-recipe presets (experiment=vdm_cifar10 | ddpm_cifar10 | vdmpp_cifar10 | mnist; docs/presets.md): each composes,
instantiates at its real size with the parameter count of its source, runs a fast dev run on small dataset files the
test writes (with the network shrunk for CPU time), and refuses data it was not made for with the fix."""

from pathlib import Path

import pytest
from conftest import REPO
from test_data import write_fake_cifar, write_fake_mnist

from vdmlab.cli.build import build_run
from vdmlab.cli.train import run
from vdmlab.cli.validate import ConfigError, validate_config

PRESETS = ["vdm_cifar10", "ddpm_cifar10", "vdmpp_cifar10", "mnist"]
# parameter counts stated by the sources (None: the source states none; the table in docs/presets.md says so)
SOURCE_PARAMS = {"ddpm_cifar10": 35.7e6, "vdm_cifar10": None, "vdmpp_cifar10": 35.7e6, "mnist": None}


def write_data(root: Path, preset: str) -> list[str]:
    if preset == "mnist":
        write_fake_mnist(root)
    else:
        write_fake_cifar(root)
    return [f"dataset.root={root}", "dataset.download=false", "dataset.val_size=5", "dataset.num_workers=0"]


def num_params(module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_composes_and_has_its_source_size(preset, make_config, tmp_path):
    cfg = make_config([f"experiment={preset}", "fid=null", *write_data(tmp_path / "data", preset)])
    assert cfg.preset.name == preset and cfg.task_name == preset
    built = build_run(cfg)  # the real network, no forward pass
    count = num_params(built.module.net)
    print(f"{preset}: {count / 1e6:.2f}M parameters")
    if SOURCE_PARAMS[preset] is not None:
        assert count == pytest.approx(SOURCE_PARAMS[preset], rel=0.05)
    assert tuple(built.datamodule.data_shape) == tuple(cfg.preset.data_shape)


def test_preset_values_follow_their_sources(make_config):
    vdm = make_config(["experiment=vdm_cifar10"])
    assert (vdm.schedule.logsnr_min, vdm.schedule.logsnr_max) == (-5.0, 13.3)  # γ ∈ [-13.3, 5]
    assert (vdm.model.width, vdm.model.num_res_blocks, list(vdm.model.channel_mults)) == (128, 32, [1])
    assert vdm.schedule.learn_endpoints and vdm.module.ema_decay == 0.9999 and vdm.dataset.batch_size == 128
    ddpm = make_config(["experiment=ddpm_cifar10"])
    assert ddpm.module.timesteps == 1000 and ddpm.weighting._target_.endswith("SimpleWeighting")
    assert ddpm.trainer.max_steps == 800_000 and list(ddpm.model.attention_resolutions) == [16]
    vdmpp = make_config(["experiment=vdmpp_cifar10"])
    assert vdmpp.weighting.bias == 2.0 and vdmpp.schedule._target_.endswith("AdaptiveSchedule")


def test_every_preset_has_a_table_in_the_docs():
    text = (REPO / "docs" / "presets.md").read_text()
    for preset in PRESETS:
        assert f"experiment={preset}" in text


SHRINK = ["model.width=32", "model.num_res_blocks=1", "dataset.batch_size=4", "dataset.eval_batch_size=5"]


@pytest.mark.slow
@pytest.mark.parametrize("preset", PRESETS)
def test_preset_fast_dev_run(preset, make_config, tmp_path):
    cfg = make_config(["debug=fdr", "logger=csv", f"experiment={preset}", *write_data(tmp_path / "data", preset),
                       *SHRINK])  # narrower and shallower than the recipe, for CPU time only
    run(cfg)


@pytest.mark.parametrize("dataset,extra", [("toy2d", []), ("digits", [])])
def test_preset_with_incompatible_dataset_names_the_fix(dataset, extra, make_config):
    cfg = make_config(["experiment=vdm_cifar10", f"dataset={dataset}", "fid=null", *extra])
    with pytest.raises(ConfigError, match=r"experiment=vdm_cifar10 is the recipe for data of shape \[3, 32, 32\].*"
                                          r"drop the dataset override"):
        validate_config(cfg)
