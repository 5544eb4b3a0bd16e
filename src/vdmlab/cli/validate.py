"""Start-up validation of a composed config: every message names the key, the bad value and what is allowed.

One mechanism: the objects check their own arguments (``vdmlab.checks``), and this builds each group's object
from the config (the datamodule without reading data, the denoiser for its data shape, the schedule, weighting,
parameterization, the sampler and FID options (``vdmlab.options``) and the module around a stand-in network),
collecting every error with its config key
(``model.width=-8 is invalid: it must be an integer >= 1``). A new parameter of any class is covered as soon as
its class checks it. Runs before any data is read; unknown group options are already rejected by Hydra with the
list of options.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from hydra.errors import CompactHydraException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue
from torch import nn

from vdmlab.checks import ParameterError, check_bool, check_float, check_int
from vdmlab.cli.build import build_fid, build_sampler
from vdmlab.data.augment import check_augment

#: the DiffusionModule's partials and objects, each checked when built on its own below
MODULE_PARTIALS = ("optimizer", "lr_scheduler", "time_sampler", "augment")


class ConfigError(CompactHydraException, ValueError):
    """One or more config values are invalid (python train.py prints the message alone, without a traceback;
    HYDRA_FULL_ERROR=1 shows it)."""


def _describe(prefix: str, error: BaseException) -> str:
    """``<prefix><name>=<value> is invalid: <reason>`` for a ParameterError anywhere in the exception's chain
    (Hydra wraps constructor errors), else the error's own message under its group."""
    seen, innermost = error, error
    while seen is not None:
        if isinstance(seen, ParameterError):
            return seen.message(prefix)
        if isinstance(seen, MissingMandatoryValue):
            return _missing(seen.full_key if not prefix and seen.full_key else
                            f"{prefix}{seen.key}" if seen.key else prefix.rstrip("."))
        innermost, seen = seen, seen.__cause__ or seen.__context__
    return f"{prefix.rstrip('.') or 'config'}: {innermost}"


def _missing(key: str) -> str:
    return f"{key} is missing: set it on the command line, e.g. python train.py {key}=..."


def _container(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def _optimizer(node: DictConfig) -> torch.optim.Optimizer:
    """The optimizer partial built on one dummy parameter (torch checks its own arguments), after checking that its
    scalar hyperparameters (lr, weight_decay, eps, momentum ...) are what every torch optimizer takes."""
    for key, value in _container(node).items():
        if key.startswith("_") or isinstance(value, (list, dict)):
            continue
        if isinstance(value, bool):
            check_bool(key, value)
        else:
            check_float(key, value, minimum=0.0)
    return instantiate(node)(params=[torch.zeros(1, requires_grad=True)])


def _time_sampler(node: DictConfig) -> Callable:
    """The configured time sampler, tried once: ``sampler(B, generator=, device=)`` must give B times in [0, 1];
    a ``path`` (``hydra.utils.get_method``) that is not an importable function is named as such."""
    path = node.get("path")
    try:
        sampler = instantiate(node)
    except Exception as error:  # noqa: BLE001 - Hydra wraps the import error
        if path is None:
            raise
        raise ParameterError("path", path, "not an importable function, e.g. vdmlab.diffusion.losses.iid_times") from error
    name, value = ("path", path) if path is not None else ("_target_", node.get("_target_"))
    reason = "a time sampler is called as sampler(batch, generator=..., device=...) and returns [batch] times in [0, 1]"
    try:
        t = sampler(4, generator=torch.Generator().manual_seed(0), device=torch.device("cpu"))
    except TypeError as error:
        raise ParameterError(name, value, f"{reason} ({error})") from error
    if not (torch.is_tensor(t) and tuple(t.shape) == (4,) and bool(((t >= 0) & (t <= 1)).all())):
        raise ParameterError(name, value, reason)
    return sampler


def validate_config(cfg: DictConfig) -> None:
    """Raise ConfigError listing every invalid value of ``cfg`` (one per object: its first bad argument)."""
    errors: list[str] = []

    def attempt(prefix: str, build: Callable[[], Any]) -> Any:
        try:
            return build()
        except Exception as error:  # noqa: BLE001 - every error becomes a line of the report
            errors.append(_describe(prefix, error))
            return None

    attempt("", lambda: check_int("seed", cfg.get("seed")))
    datamodule = attempt("dataset.", lambda: instantiate(cfg.dataset))
    if datamodule is not None:
        attempt("dataset.", datamodule.check_location)
        attempt("", lambda: check_preset(cfg, datamodule.data_shape, datamodule.num_levels))
        attempt("dataset.", lambda: datamodule.num_classes)  # conditional=true needs a dataset with labels
        attempt("model.", lambda: instantiate(cfg.model, data_shape=datamodule.data_shape))
    built = {group: attempt(f"{group}.", lambda group=group: instantiate(cfg[group]))
             for group in ("schedule", "weighting", "parameterization")}
    attempt("", lambda: check_weighting_schedule(cfg, built["weighting"], built["schedule"]))
    if not isinstance(cfg.sampler.get("schedule"), DictConfig) or attempt("sampler.schedule.",
                                                                         lambda: instantiate(cfg.sampler.schedule)):
        attempt("", lambda: build_sampler(cfg))  # its errors name sampler.* in full
    fid = attempt("", lambda: build_fid(cfg))  # fid.* in full
    if fid is not None and datamodule is not None:
        attempt("", lambda: fid.extractor_feature(datamodule.data_shape, datamodule.num_levels))
    own = OmegaConf.masked_copy(cfg.module, [key for key in cfg.module if key not in MODULE_PARTIALS])
    errors.extend(_missing(f"module.{key}") for key in sorted(OmegaConf.missing_keys(own)))  # a partial skips them
    attempt("module.", lambda: instantiate(own, _partial_=True)(  # its own arguments, around stand-in objects
        net=nn.Identity(), schedule=None, weighting=None, parameterization=None, num_levels=2, data_shape=(1,)))
    augment = cfg.module.get("augment")
    if isinstance(augment, DictConfig):  # the augmentation alone (its network's labels: at build time)
        augment = attempt("module.augment.", lambda: instantiate(cfg.module.augment))
    attempt("", lambda: check_augment(augment))  # names module.augment
    optimizer = attempt("module.optimizer.", lambda: _optimizer(cfg.module.optimizer))
    if cfg.module.get("lr_scheduler"):  # (on a stand-in optimizer when the configured one is invalid)
        optimizer = optimizer or torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.0)
        attempt("module.lr_scheduler.", lambda: instantiate(cfg.module.lr_scheduler)(optimizer))
    if cfg.module.get("time_sampler"):
        attempt("module.time_sampler.", lambda: _time_sampler(cfg.module.time_sampler))
    if errors:
        raise ConfigError("invalid configuration:\n  - " + "\n  - ".join(errors))


def check_weighting_schedule(cfg: DictConfig, weighting: Any, schedule: Any) -> None:
    """A weighting defined through the training schedule's p(λ) (simple, min_snr) with a schedule whose p(λ) moves
    while training (learned, adaptive): the objective would chase the schedule fitted to it."""
    if not (getattr(weighting, "reads_density", False) and getattr(schedule, "adapts", False)):
        return
    choices = cfg.get("hydra", {}).get("runtime", {}).get("choices", {})
    w, s = choices.get("weighting", type(weighting).__name__), choices.get("schedule", type(schedule).__name__)
    raise ConfigError(
        f"weighting={w} with schedule={s} is invalid: weighting={w} is defined through the training schedule's "
        f"density p(λ), and schedule={s} changes p(λ) while training (the adaptive one fits it to w(λ)·loss), so the "
        f"objective follows its own schedule and collapses onto a narrow range of λ. Use a fixed schedule, e.g. "
        f"schedule=cosine (as experiment=weighting_study does).")


def check_preset(cfg: DictConfig, data_shape: tuple[int, ...], num_levels: int) -> None:
    """A preset (``experiment=...`` with a ``preset`` node) combined with data it was not made for: name the fix."""
    preset = cfg.get("preset")
    if not preset:
        return
    want_shape, want_levels = tuple(int(d) for d in preset.data_shape), int(preset.num_levels)
    if (tuple(data_shape), int(num_levels)) != (want_shape, want_levels):
        choice = cfg.get("hydra", {}).get("runtime", {}).get("choices", {}).get("dataset", "this dataset")
        raise ConfigError(
            f"experiment={preset.name} is the recipe for data of shape {list(want_shape)} with K = {want_levels} levels, "
            f"but dataset={choice} gives {list(data_shape)} with K = {num_levels}: drop the dataset override (the preset "
            f"chooses its dataset), use a dataset of that shape (e.g. dataset=image_folder dataset.image_size="
            f"{want_shape[-1]} dataset.channels={want_shape[0]}), or train without the preset"
        )
