"""Build the objects of a run from its composed config: datamodule, denoiser, schedule, weighting,
parameterization, sampler and the DiffusionModule. Shared by train, eval and sample."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from vdmlab.cli.checkpoints import CheckpointError, load_checkpoint
from vdmlab.data.base import DiffusionDataModule
from vdmlab.module import DiffusionModule


@dataclass
class Run:
    """The built pieces of one run."""

    datamodule: DiffusionDataModule
    module: DiffusionModule


def build_sampler(cfg: DictConfig) -> dict[str, Any]:
    """The sampler group: the sampler function, its number of steps, x̂ clipping, an optional sampling schedule and
    the classifier-free guidance weight and λ interval (conditional models; absent in configs older than them: 0)."""
    schedule = cfg.sampler.get("schedule")
    return {
        "fn": instantiate(cfg.sampler.fn),
        "steps": cfg.sampler.steps,  # checked by the module (vdmlab.module.check_module_arguments)
        "clip_x": cfg.sampler.clip_x,
        "schedule": instantiate(schedule) if schedule else None,
        "guidance": cfg.sampler.get("guidance"),  # checked by the module too; None (an older config): no guidance
        "guidance_logsnr_min": cfg.sampler.get("guidance_logsnr_min"),
        "guidance_logsnr_max": cfg.sampler.get("guidance_logsnr_max"),
    }


def fill_num_classes(cfg: DictConfig, num_classes: int | None) -> None:
    """Set ``model.num_classes`` from the datamodule (None: unconditional); a different explicit value is an error."""
    given = cfg.model.get("num_classes")
    if given and given != num_classes:
        raise ValueError(
            f"model.num_classes={given} but the dataset gives "
            f"{'no labels (dataset.conditional=false)' if num_classes is None else f'{num_classes} classes'}; "
            f"leave model.num_classes unset: it is filled from the dataset (dataset.conditional=true)"
        )
    if "num_classes" in cfg.model or num_classes is not None:  # custom nets without the argument stay untouched
        with open_dict(cfg):
            cfg.model.num_classes = num_classes


def resolved_config(cfg: DictConfig) -> dict:
    """The run's config as plain containers, without Hydra's own node: what checkpoints store."""
    return OmegaConf.to_container(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), resolve=True)


def build_run(cfg: DictConfig) -> Run:
    """Instantiate the datamodule (no data is read yet) and a DiffusionModule sized for it."""
    datamodule = instantiate(cfg.dataset)
    fill_num_classes(cfg, datamodule.num_classes)
    net = instantiate(cfg.model, data_shape=datamodule.data_shape)
    module = instantiate(
        cfg.module,
        net=net,
        schedule=instantiate(cfg.schedule),
        weighting=instantiate(cfg.weighting),
        parameterization=instantiate(cfg.parameterization),
        num_levels=datamodule.num_levels,
        data_shape=datamodule.data_shape,
        num_classes=datamodule.num_classes,
        sampler=build_sampler(cfg),
        fid=OmegaConf.to_container(cfg.fid, resolve=True) if cfg.get("fid") else None,
        seed=cfg.seed,
        _convert_="partial",
    )
    module.run_config = resolved_config(cfg)  # not through instantiate: it holds _target_ keys of its own
    return Run(datamodule=datamodule, module=module)


def build_from_checkpoint(path: str, overrides: dict[str, Any] | None = None) -> Run:
    """Rebuild a run from the config stored in one of its checkpoints and load its weights (EMA included).

    ``overrides`` (dotted keys → values, e.g. ``{"dataset.root": "/data"}``) adjust the stored config first.
    """
    checkpoint = load_checkpoint(path)
    stored = checkpoint["vdmlab"].get("config")
    if not stored:
        raise CheckpointError(f"checkpoint {path} holds no run config; it was not written by python train.py")
    cfg = OmegaConf.create(stored)
    cfg.module.pop("nonfinite_patience", None)  # older checkpoints: now callbacks.nonfinite_guard.patience
    for key, value in (overrides or {}).items():
        OmegaConf.update(cfg, key, value, force_add=True)
    built = build_run(cfg)
    built.module.load_state_dict(checkpoint["state_dict"])
    built.module.on_load_checkpoint(checkpoint)
    built.module.eval()
    return built
