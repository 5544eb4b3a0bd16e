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
from vdmlab.options import FIDOptions, SamplerOptions


@dataclass
class Run:
    """The built pieces of one run."""

    datamodule: DiffusionDataModule
    module: DiffusionModule


def build_options(node: DictConfig, cls: type) -> Any:
    """Typed options (``vdmlab.options``) built by Hydra from their config node, which checks them. The config of
    a checkpoint written before the node had its ``_target_`` gets it, and the keys added since (``ADDED_LATER``)
    as null."""
    if "_target_" not in node:
        node = OmegaConf.merge({"_target_": f"{cls.__module__}.{cls.__qualname__}", **dict.fromkeys(cls.ADDED_LATER)},
                               node)
    return instantiate(node)


def build_sampler(cfg: DictConfig) -> SamplerOptions:
    """The sampler group: the sampler function, its steps, x̂ clipping, an optional sampling schedule and the
    classifier-free guidance weight and λ interval."""
    return build_options(cfg.sampler, SamplerOptions)


def build_fid(cfg: DictConfig) -> FIDOptions | None:
    """The FID options of training (``fid``), None when ``fid=null``."""
    return build_options(cfg.fid, FIDOptions) if cfg.get("fid") else None


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
    make_module = instantiate(cfg.module, _partial_=True, _convert_="partial")  # options go in as objects, not configs
    module = make_module(
        net=net,
        schedule=instantiate(cfg.schedule),
        weighting=instantiate(cfg.weighting),
        parameterization=instantiate(cfg.parameterization),
        num_levels=datamodule.num_levels,
        data_shape=datamodule.data_shape,
        num_classes=datamodule.num_classes,
        sampler=build_sampler(cfg),
        fid=build_fid(cfg),
        seed=cfg.seed,
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
