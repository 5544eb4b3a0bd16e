"""Typed options of the sampler group (conf/sampler/*.yaml) and of the FID block (conf/train.yaml's ``fid``).

Hydra builds them from their ``_target_``; each checks its values once, in ``__post_init__``, with
:mod:`vdmlab.checks`, naming the bad value by its config key (``sampler.steps=0 is invalid: ...``). They state no
defaults: conf/ does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vdmlab.checks import ParameterError, check_bool, check_float, check_int
from vdmlab.diffusion.sampling import Sampler, checked_sampler
from vdmlab.diffusion.schedules import Schedule
from vdmlab.metrics.fid import INCEPTION_FEATURES, check_inception_path, fid_feature

#: the sampler group's classifier-free guidance keys (class-conditional models): weight and λ interval
GUIDANCE_KEYS = ("guidance", "guidance_logsnr_min", "guidance_logsnr_max")


@dataclass
class SamplerOptions:
    """How EMA samples are drawn (sample grids, FID, ``python sample.py``).

    Args:
        fn: a sampler of :mod:`vdmlab.diffusion.sampling` with its options bound (a ``_partial_`` target).
        steps: denoising steps on the sampling grid.
        clip_x: clip x̂ to [-1, 1] at every step.
        schedule: the sampling schedule, or None for the training schedule.
        guidance: classifier-free guidance weight w of class-conditional models (None, in configs older than
            guidance: none), applied only for λ in [``guidance_logsnr_min``, ``guidance_logsnr_max``] (None: no bound).
    """

    fn: Sampler
    steps: int
    clip_x: bool
    schedule: Schedule | None
    guidance: float | None
    guidance_logsnr_min: float | None
    guidance_logsnr_max: float | None

    #: keys absent from the configs of checkpoints written before they existed (read as null)
    ADDED_LATER = ("schedule", *GUIDANCE_KEYS)

    def __post_init__(self) -> None:
        checked_sampler(self.fn)
        self.steps = check_int("sampler.steps", self.steps, 1)
        self.clip_x = check_bool("sampler.clip_x", self.clip_x)
        if not (self.schedule is None or isinstance(self.schedule, Schedule)):
            raise ParameterError("sampler.schedule", self.schedule,
                                 "null (the training schedule) or a schedule config (sampling_schedule=...)")
        self.guidance = check_float("sampler.guidance", self.guidance, optional=True)
        lo = self.guidance_logsnr_min = check_float("sampler.guidance_logsnr_min", self.guidance_logsnr_min, optional=True)
        hi = self.guidance_logsnr_max = check_float("sampler.guidance_logsnr_max", self.guidance_logsnr_max, optional=True)
        if lo is not None and hi is not None and lo > hi:
            raise ParameterError(("sampler.guidance_logsnr_min", "sampler.guidance_logsnr_max"), (lo, hi),
                                 "the guidance interval needs guidance_logsnr_min <= guidance_logsnr_max")

    @classmethod
    def of(cls, options: SamplerOptions | dict[str, Any]) -> SamplerOptions:
        """``options`` as SamplerOptions; a plain dict may leave out the keys of ``ADDED_LATER`` (null)."""
        if isinstance(options, cls):
            return options
        return cls(**{**dict.fromkeys(cls.ADDED_LATER), **options})

    def guidance_settings(self) -> dict[str, float | None]:
        """The guidance weight and interval, by their config keys."""
        return {key: getattr(self, key) for key in GUIDANCE_KEYS}


@dataclass
class FIDOptions:
    """FID of EMA samples during training (conf/train.yaml's ``fid``; its comments say what each key does)."""

    every_n_epochs: int
    num_samples: int
    feature: str | int
    inception_path: str | None
    steps: int
    batch_size: int
    repeats: int
    floor: bool
    stats_dir: str | None

    ADDED_LATER = ()

    def __post_init__(self) -> None:
        self.every_n_epochs = check_int("fid.every_n_epochs", self.every_n_epochs, 0)
        self.num_samples = check_int("fid.num_samples", self.num_samples, 2)
        self.steps = check_int("fid.steps", self.steps, 1)
        self.batch_size = check_int("fid.batch_size", self.batch_size, 1)
        if self.feature not in ("auto", "digits", "inception", *INCEPTION_FEATURES) or isinstance(self.feature, bool):
            raise ParameterError("fid.feature", self.feature,
                                 f"it must be auto, digits, inception or one of {', '.join(map(str, INCEPTION_FEATURES))}")
        if self.inception_path is not None and not isinstance(self.inception_path, str):
            raise ParameterError("fid.inception_path", self.inception_path, "null or the path of a weights file")
        self.repeats = check_int("fid.repeats", self.repeats, 1)
        self.floor = check_bool("fid.floor", self.floor)
        if self.stats_dir is not None and not isinstance(self.stats_dir, str):
            raise ParameterError("fid.stats_dir", self.stats_dir, "null (no cache) or a folder (created when needed)")

    def extractor_feature(self, data_shape: tuple[int, ...], num_levels: int) -> str | int:
        """The features for data of this shape and K (``auto`` resolved), after checking that a given
        ``inception_path`` is a file when they are Inception's."""
        feature = fid_feature(self.feature, data_shape, num_levels)
        check_inception_path(feature, self.inception_path)
        return feature
