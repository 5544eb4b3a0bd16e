"""DiffusionModule: the LightningModule that wraps a denoiser, a schedule, a weighting, a parameterization
and the one loss (docs/architecture.md). It is thin: every formula lives in ``vdmlab.diffusion``, the bits/dim
evaluation step in ``vdmlab.metrics.bpd`` and the FID sampling loop in ``vdmlab.metrics.fid``; every object
arrives already built by Hydra (``_target_``; ``_partial_`` for the optimizer and LR schedule), whose configs
(conf/) hold every default.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from vdmlab import seeds
from vdmlab.checks import ParameterError, check_bool, check_float, check_int
from vdmlab.data.base import split_batch
from vdmlab.diffusion import likelihood
from vdmlab.diffusion.losses import LossTerms, diffusion_loss, low_discrepancy_times
from vdmlab.diffusion.parameterization import Parameterization
from vdmlab.diffusion.sampling import generate
from vdmlab.diffusion.schedules import Schedule, logsnr_grid
from vdmlab.diffusion.weighting import Weighting
from vdmlab.metrics.bpd import BPD_TERMS, BitsPerDim, update_bpd
from vdmlab.metrics.fid import (
    INCEPTION_FEATURES,
    FIDMetric,
    check_inception_path,
    fid_feature,
    sample_fid,
    split_fid,
)
from vdmlab.optim import EMA

#: the sampler group's classifier-free guidance keys (class-conditional models): weight and λ interval
GUIDANCE_KEYS = ("guidance", "guidance_logsnr_min", "guidance_logsnr_max")
FID_KEYS = ("every_n_epochs", "num_samples", "feature", "inception_path", "steps", "batch_size", "repeats", "floor",
            "stats_dir")


_UNSET: Any = object()  # an argument not given to check_module_arguments (its check is skipped)


def check_module_arguments(*, timesteps: Any = _UNSET, ema_decay: Any = _UNSET, ema_warmup: Any = _UNSET,
                           eval_num_samples: Any = _UNSET, seed: Any = _UNSET, nonfinite_patience: Any = _UNSET,
                           compile: Any = _UNSET, channels_last: Any = _UNSET, p_uncond: Any = _UNSET,
                           num_classes: Any = _UNSET, sampler: Any = None, fid: Any = None,
                           data_shape: Any = None, num_levels: Any = None, augment: Any = None, net: Any = None,
                           **others: Any) -> None:
    """Check the DiffusionModule's own arguments (``DiffusionModule.__init__`` and start-up validation call it);
    arguments not given are not checked (this states no defaults: those are the module's, equal to conf/'s).

    Raises ``ParameterError``; sampler and fid keys are named as their config keys (``sampler.steps``, ``fid.*``).
    With the data's ``data_shape`` and ``num_levels`` a given ``fid.inception_path`` must be a file when the FID
    features are Inception's (``fid.feature=auto`` on anything but the 8x8 digits).
    A config key this function does not know is an error too, so that a new module argument cannot go unchecked.
    """
    if others:
        known = set(inspect.signature(DiffusionModule).parameters)
        names = tuple(others)
        raise ParameterError(names, tuple(others.values()),
                             "unknown DiffusionModule argument" if not known & set(names) else
                             "a DiffusionModule argument not checked at start-up: add it to check_module_arguments")
    checks = {"timesteps": lambda v: check_int("timesteps", v, 1, optional=True,
                                               reason="null (continuous time) or an integer >= 1"),
              "ema_decay": lambda v: check_float("ema_decay", v, minimum=0.0, maximum=1.0, open_max=True),
              "ema_warmup": lambda v: check_bool("ema_warmup", v),
              "eval_num_samples": lambda v: check_int("eval_num_samples", v, 1),
              "seed": lambda v: check_int("seed", v),
              "nonfinite_patience": lambda v: check_int("nonfinite_patience", v, 1),
              "compile": lambda v: check_bool("compile", v),
              "channels_last": lambda v: check_bool("channels_last", v),
              "p_uncond": lambda v: check_float("p_uncond", v, minimum=0.0, maximum=1.0, open_max=True),
              "num_classes": lambda v: check_int("num_classes", v, 1, optional=True,
                                                 reason="null (unconditional) or a number of classes >= 1")}
    given = {"timesteps": timesteps, "ema_decay": ema_decay, "ema_warmup": ema_warmup,
             "eval_num_samples": eval_num_samples, "seed": seed, "nonfinite_patience": nonfinite_patience,
             "compile": compile, "channels_last": channels_last, "p_uncond": p_uncond, "num_classes": num_classes}
    for name, value in given.items():
        if value is not _UNSET:
            checks[name](value)
    if sampler is not None:
        if not callable(sampler.get("fn")):
            raise ParameterError("sampler.fn", sampler.get("fn"), "it must be a sampler function (a _partial_ target)")
        check_int("sampler.steps", sampler.get("steps"), 1)
        check_bool("sampler.clip_x", sampler.get("clip_x"))
        if not (sampler.get("schedule") is None or isinstance(sampler["schedule"], Schedule)):
            raise ParameterError("sampler.schedule", sampler["schedule"], "null (the training schedule) or a schedule "
                                 "config (sampling_schedule=...)")
        if sampler.get("guidance") is not None:  # absent in configs older than classifier-free guidance: none
            check_float("sampler.guidance", sampler["guidance"])
        lo = check_float("sampler.guidance_logsnr_min", sampler.get("guidance_logsnr_min"), optional=True)
        hi = check_float("sampler.guidance_logsnr_max", sampler.get("guidance_logsnr_max"), optional=True)
        if lo is not None and hi is not None and lo > hi:
            raise ParameterError(("sampler.guidance_logsnr_min", "sampler.guidance_logsnr_max"), (lo, hi),
                                 "the guidance interval needs guidance_logsnr_min <= guidance_logsnr_max")
    if augment is not None:
        if not callable(augment) or not isinstance(getattr(augment, "label_dim", None), int):
            raise ParameterError("module.augment", augment, "null or an augmentation config (augment=edm)")
        if net is not None and getattr(net, "augment_dim", 0) != augment.label_dim:
            raise ParameterError("model.augment_dim", getattr(net, "augment_dim", None),
                                 f"the augmentation gives the network {augment.label_dim} labels: set "
                                 f"model.augment_dim={augment.label_dim} (augment=edm does) on a network that takes them (unet)")
    if fid is not None:
        missing = [key for key in FID_KEYS if key not in fid]
        if missing:
            raise ParameterError("fid", dict(fid), f"it lacks {', '.join(missing)} (conf/train.yaml's fid lists them)")
        check_int("fid.every_n_epochs", fid["every_n_epochs"], 0)
        check_int("fid.num_samples", fid["num_samples"], 2)
        check_int("fid.steps", fid["steps"], 1)
        check_int("fid.batch_size", fid["batch_size"], 1)
        if fid["feature"] not in ("auto", "digits", "inception", *INCEPTION_FEATURES) or isinstance(fid["feature"], bool):
            raise ParameterError("fid.feature", fid["feature"],
                                 f"it must be auto, digits, inception or one of {', '.join(map(str, INCEPTION_FEATURES))}")
        if fid["inception_path"] is not None and not isinstance(fid["inception_path"], str):
            raise ParameterError("fid.inception_path", fid["inception_path"], "null or the path of a weights file")
        check_int("fid.repeats", fid["repeats"], 1)
        check_bool("fid.floor", fid["floor"])
        if fid["stats_dir"] is not None and not isinstance(fid["stats_dir"], str):
            raise ParameterError("fid.stats_dir", fid["stats_dir"], "null (no cache) or a folder (created when needed)")
        if data_shape is not None and num_levels is not None:
            check_inception_path(fid_feature(fid["feature"], data_shape, num_levels), fid["inception_path"])


class NonFiniteLossError(RuntimeError):
    """Training produced too many consecutive non-finite losses or gradients."""


class DiffusionModule(L.LightningModule):
    """Trains ``net`` on L_w (eq. 4.123) and evaluates the unweighted ELBO in bits/dim with the EMA weights.

    Args:
        net: denoiser ``forward(z, logsnr)``.
        schedule, weighting, parameterization: the three orthogonal choices of docs/architecture.md ("The one loss").
        num_levels, data_shape: K and the per-example shape, from the datamodule.
        optimizer: a (partial) ``torch.optim`` constructor taking the parameters.
        lr_scheduler: a partial taking the optimizer (stepped every optimizer step), or None.
        time_sampler: ``(batch_size, *, generator, device) -> t``; low-discrepancy by default (docs/architecture.md).
        timesteps: None for continuous time, else the number of discrete steps T (eq. A.38).
        ema_decay, ema_warmup: EMA of the weights used for evaluation and sampling.
        eval_num_samples: λ draws per example for val/test bits/dim.
        sampler: ``{"fn": sampler function, "steps": int, "clip_x": bool, "schedule": Schedule | None}`` and,
            for conditional models, ``"guidance"``, ``"guidance_logsnr_min"``/``"_max"`` for
            sample grids and FID (the sampler group); None: ``sample`` then needs ``sampler`` and ``steps``.
        fid: None (no FID) or ``{"every_n_epochs", "num_samples", "feature", "inception_path", "steps",
            "batch_size"}`` (all keys; conf/train.yaml's ``fid``): val/fid every k epochs against the val split
            (0: never) and test/fid at the end
            against the test split, from ``num_samples`` EMA samples; ``feature: auto`` picks the shipped
            digits classifier for 8x8 digits and Inception-2048 otherwise.
        seed: base seed of the training noise; each DDP rank offsets it (docs/architecture.md, "Known traps").
        nonfinite_patience: stop after this many consecutive non-finite steps (each is skipped).
        compile: ``torch.compile`` the denoiser for the training forward (the weights and checkpoint keys are
            those of the plain module).
        channels_last: keep image denoisers and batches in channels-last memory format (faster convs on GPUs).
        run_config: the resolved run config, stored in checkpoints so eval/sample can rebuild the run.
        num_classes: None (unconditional) or the number of classes of a class-conditional model, whose batches
            carry labels ``y`` (``dataset.conditional=true``); the null class ∅ is ``num_classes``. Evaluation
            then reports bits/dim of p(x|y) (``bpd``), of p(x) with ∅ (``bpd_uncond``) from the same model, and
            the bound on p(x) of the balanced class mixture (1/C)·Σ_y p(x|y) (``bpd_mixture``).
        p_uncond: label dropout of classifier-free guidance: each training label is replaced by ∅ with this
            probability (drawn from the training-noise generator, so a resumed run stays exact).
        augment: None, or a non-leaky augmentation ``(x, generator) -> (x', labels)`` (:mod:`vdmlab.data.augment`)
            applied to training batches only, its labels fed to the network (``augment_labels``); evaluation,
            the ELBO and sampling see unaugmented data and no label.
    """

    def __init__(
        self,
        net: nn.Module,
        schedule: Schedule,
        weighting: Weighting,
        parameterization: Parameterization,
        num_levels: int,
        data_shape: tuple[int, ...],
        optimizer: Callable[..., torch.optim.Optimizer] = torch.optim.AdamW,
        lr_scheduler: Callable[..., Any] | None = None,
        time_sampler: Callable[..., Tensor] = low_discrepancy_times,
        timesteps: int | None = None,
        ema_decay: float = 0.999,
        ema_warmup: bool = True,
        eval_num_samples: int = 4,
        sampler: dict | None = None,
        fid: dict | None = None,
        seed: int = 0,
        nonfinite_patience: int = 20,
        compile: bool = False,
        channels_last: bool = False,
        run_config: dict | None = None,
        num_classes: int | None = None,
        p_uncond: float = 0.0,
        augment: Callable[..., tuple[Tensor, Tensor]] | None = None,
    ):
        check_module_arguments(timesteps=timesteps, ema_decay=ema_decay, ema_warmup=ema_warmup,
                               eval_num_samples=eval_num_samples, seed=seed, nonfinite_patience=nonfinite_patience,
                               compile=compile, channels_last=channels_last, p_uncond=p_uncond,
                               num_classes=num_classes, sampler=sampler, fid=fid, data_shape=data_shape,
                               num_levels=num_levels, augment=augment, net=net)
        super().__init__()
        self.augment = augment
        self.num_classes, self.p_uncond = (int(num_classes) if num_classes else None), float(p_uncond)
        self.net, self.schedule = net, schedule
        self.weighting, self.parameterization = weighting, parameterization
        self.num_levels, self.data_shape = int(num_levels), tuple(int(d) for d in data_shape)
        self.data_dim = math.prod(self.data_shape)
        self.optimizer_factory, self.lr_scheduler_factory = optimizer, lr_scheduler
        self.time_sampler, self.timesteps = time_sampler, timesteps
        self.ema = EMA(net, ema_decay, ema_warmup)
        self.eval_num_samples = int(eval_num_samples)
        self.sampler = dict(sampler) if sampler is not None else None
        self.seed, self.nonfinite_patience, self.run_config = int(seed), int(nonfinite_patience), run_config
        self._noise_generator: torch.Generator | None = None
        self._noise_state: Tensor | None = None
        self._step_times: Tensor | None = None  # the current optimizer step's times under gradient accumulation
        self.nonfinite_steps, self._nonfinite_run = 0, 0
        self.channels_last = bool(channels_last) and len(self.data_shape) == 3
        if self.channels_last:
            self.net.to(memory_format=torch.channels_last)
        # compiled training forward, kept out of module registration so state_dict keys stay those of ``net``
        object.__setattr__(self, "_train_net", torch.compile(self.net) if compile else self.net)
        # per-term bits/dim, each example counted once under DDP (indices from the evaluation loaders)
        self.bpd_metrics = nn.ModuleDict({f"{stage}_{term}": BitsPerDim(self.data_dim)
                                          for stage in ("val", "test") for term in BPD_TERMS})
        if self.num_classes is not None:  # p(x) of the same model, with the null label
            self.bpd_metrics.update({f"{stage}_bpd_uncond": BitsPerDim(self.data_dim) for stage in ("val", "test")})
        self.fid_config = None if fid is None else dict(fid)
        if self.fid_config is not None:
            feature = fid_feature(self.fid_config["feature"], self.data_shape, self.num_levels)
            self.fid_metrics = nn.ModuleDict({stage: FIDMetric(feature, self.fid_config["inception_path"],
                                                               reset_real_features=False)
                                              for stage in ("val", "test")})

    def setup(self, stage: str) -> None:
        if self.trainer.world_size > 1 and getattr(self.trainer._accelerator_connector, "use_distributed_sampler", False):
            raise ValueError(
                "vdmlab's datamodules shard the data across DDP ranks themselves (resumable, each example counted "
                "once); create the Trainer with use_distributed_sampler=False (the trainer configs do)"
            )

    # ------------------------------------------------------------------ noise
    @property
    def noise_generator(self) -> torch.Generator:
        """Training-noise generator, seeded ``seed + rank`` so that DDP ranks draw different t and ε."""
        if self._noise_generator is None or self._noise_generator.device != self.device:
            self._noise_generator = torch.Generator(device=self.device)
            self._noise_generator.manual_seed(self.seed + seeds.TRAIN_RANK_STRIDE * self.global_rank)
            if self._noise_state is not None:
                self._noise_generator.set_state(self._noise_state)
                self._noise_state = None
        return self._noise_generator

    def _eval_generator(self, batch_idx: int, stage: str) -> torch.Generator:
        """Common random numbers for evaluation: the same noise every epoch, different per batch and rank."""
        return torch.Generator(device=self.device).manual_seed(
            self._stage_seed(stage) + seeds.EVAL_BATCH_STRIDE * batch_idx + seeds.EVAL_RANK_STRIDE * self.global_rank
        )

    def _stage_seed(self, stage: str) -> int:
        """The evaluation seed of a split: ``seed`` for val, offset for test."""
        return self.seed + {"val": 0, "test": seeds.TEST_OFFSET}[stage]

    # ------------------------------------------------------------------ steps
    def _check_shape(self, x: Tensor) -> Tensor:
        if tuple(x.shape[1:]) != self.data_shape:
            raise ValueError(
                f"data of shape {tuple(x.shape[1:])} reached a model built for {self.data_shape}; "
                f"the dataset and the model disagree (check dataset=... and its image_size/channels)"
            )
        return x

    def _check_labels(self, y: Tensor | None) -> Tensor | None:
        """The batch's labels, checked against the model: conditional models need them, unconditional ones take none."""
        if self.num_classes is None and y is not None:
            raise ValueError(
                "the batches carry class labels but the model is unconditional; build it from the datamodule "
                "(python train.py dataset.conditional=true fills model.num_classes) or set dataset.conditional=false"
            )
        if self.num_classes is not None and y is None:
            raise ValueError(
                f"the model is class-conditional ({self.num_classes} classes) but the batches carry no labels; "
                f"set dataset.conditional=true"
            )
        return y

    def null_labels(self, like: Tensor) -> Tensor:
        """The null class ∅ (index ``num_classes``) for every example of a label batch."""
        return torch.full_like(like, self.num_classes)

    def balanced_labels(self, indices) -> Tensor:
        """Labels ``i mod num_classes`` for sample indices i: every class equally often (FID, sample grids)."""
        return torch.as_tensor(list(indices), dtype=torch.long, device=self.device) % self.num_classes

    def check_label_values(self, labels: Tensor | None) -> Tensor | None:
        """Labels for sampling, checked: a conditional model needs them, in [0, num_classes); others take none."""
        if self.num_classes is None:
            if labels is not None:
                raise ValueError(
                    "this checkpoint is an unconditional model: it takes no labels; drop label=/labels= "
                    "(or train a class-conditional model with dataset.conditional=true)"
                )
            return None
        if labels is None:
            raise ValueError(
                f"this checkpoint is a class-conditional model ({self.num_classes} classes): give the labels to "
                f"sample, e.g. python sample.py label=3 or labels=all"
            )
        labels = torch.as_tensor(labels, dtype=torch.long, device=self.device)
        bad = labels[(labels < 0) | (labels >= self.num_classes)]
        if bad.numel():
            raise ValueError(
                f"label {int(bad[0])} is outside [0, {self.num_classes}): this model has classes "
                f"0..{self.num_classes - 1}; use label=0..{self.num_classes - 1} or labels=all"
            )
        return labels

    def loss_terms(self, x: Tensor, generator: torch.Generator | None = None, net: nn.Module | None = None,
                   cond: Tensor | None = None, t: Tensor | None = None) -> LossTerms:
        """One Monte-Carlo draw of the weighted loss (eq. 4.123) for a batch, conditioned on ``cond`` (labels),
        at times ``t`` when given."""
        if t is None:
            t = self.time_sampler(x.shape[0], generator=generator, device=x.device)
        eps = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        net = self.net if net is None else net  # not `net or self.net`: a compiled module has no truth value
        return diffusion_loss(
            x, t.to(x.dtype), eps, net=net, schedule=self.schedule, weighting=self.weighting,
            parameterization=self.parameterization, timesteps=self.timesteps, cond=cond,
        )

    def _endpoint_terms(self, x: Tensor, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        """Prior KL and decoder NLL (eq. 3.60), each [B] nats; they depend only on the schedule's endpoints
        (differentiably so when the schedule trains them, e.g. ``schedule=learned schedule.learn_endpoints=true``)."""
        eps = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return likelihood.endpoint_terms(x, self.schedule, eps, self.num_levels)

    def _logging_step(self) -> bool:
        """Whether Lightning writes this step's on_step logs (every ``trainer.log_every_n_steps``, or a fast dev run)."""
        if self._trainer is None:
            return True
        return bool(self.trainer.fast_dev_run) or self.trainer._logger_connector.should_update_logs

    def _log_generator(self) -> torch.Generator:
        """Noise for the logging-only train/bpd terms: per step, independent of the training noise."""
        return torch.Generator(device=self.device).manual_seed(self.seed + seeds.LOG_STEP_STRIDE * (self.global_step + 1))

    def _accumulation(self) -> int:
        """k of ``trainer.accumulate_grad_batches``: micro-batches per optimizer step (1 without a trainer)."""
        return int(self.trainer.accumulate_grad_batches) if self._trainer is not None else 1

    def _train_times(self, batch_size: int, batch_idx: int, device: torch.device) -> Tensor:
        """Times of one micro-batch: with k micro-batches per optimizer step the sampler draws the step's k·B times
        at its first micro-batch and micro-batch j takes their strata j·B … (j+1)·B - 1, so that the step sees
        one stratified set of k·B times, as one batch k times larger would."""
        k = self._accumulation()
        if k == 1:
            return self.time_sampler(batch_size, generator=self.noise_generator, device=device)
        j = batch_idx % k
        if j == 0 or self._step_times is None or self._step_times.numel() < (j + 1) * batch_size:
            self._step_times = self.time_sampler(k * batch_size, generator=self.noise_generator, device=device)
        return self._step_times[j * batch_size:(j + 1) * batch_size]

    def training_step(self, batch: Any, batch_idx: int) -> Tensor | None:
        _, x, y = split_batch(batch)
        x, y = self._check_shape(x), self._check_labels(y)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if y is not None and self.p_uncond > 0:  # label dropout: the same net learns p(x) under ∅
            drop = torch.rand(y.shape, generator=self.noise_generator, device=y.device) < self.p_uncond
            y = torch.where(drop, self.null_labels(y), y)
        net = self._train_net
        if self.augment is not None:  # non-leaky augmentation: the network is told what it sees (training only)
            x, augment_labels = self.augment(x, generator=self.noise_generator)
            net = functools.partial(net, augment_labels=augment_labels)
        t = self._train_times(x.shape[0], batch_idx, x.device)
        terms = self.loss_terms(x, self.noise_generator, net, cond=y, t=t)
        if self._accumulation() == 1:
            self.schedule.update(terms.logsnr.detach(), terms.loss.detach())
        else:  # applied once per optimizer step, in on_before_optimizer_step
            self.schedule.accumulate(terms.logsnr.detach(), terms.loss.detach())
        loss = terms.loss.mean()  # a NaN/inf loss gives non-finite gradients: on_before_optimizer_step skips the step
        trained_ends = self.schedule.trainable_endpoints
        log_now = self._logging_step()
        if trained_ends:  # the ELBO's prior and decoder terms train the endpoints (eq. 3.60)
            prior, reconstruction = self._endpoint_terms(x, self.noise_generator)
        elif log_now:  # for train/bpd only: own noise, so that the logging frequency never changes the training noise
            with torch.no_grad():
                prior, reconstruction = self._endpoint_terms(x, self._log_generator())
        if log_now:  # Lightning writes on_step logs only every trainer.log_every_n_steps steps
            with torch.no_grad():
                bpd = likelihood.bits_per_dim(terms.elbo + prior + reconstruction, self.data_dim).mean()
            self.log_dict(
                {"train/loss": loss, "train/bpd": bpd, "train/loss_variance": terms.loss.var(),
                 "train/lr": self.trainer.optimizers[0].param_groups[0]["lr"] if self._trainer else 0.0},
                prog_bar=False, on_step=True, on_epoch=False, batch_size=x.shape[0],
            )
            # the progress bar reads its values on the host: only on logging steps, so other steps never sync
            self.log("loss", loss, prog_bar=True, logger=False, batch_size=x.shape[0])
        if trained_ends:  # the ELBO's prior and decoder terms train the endpoints (eq. 3.60)
            return loss + (prior + reconstruction).mean()
        return loss

    def _skip_nonfinite(self, what: str) -> None:
        """Count a skipped step; stop after ``nonfinite_patience`` consecutive ones (the last checkpoint stays)."""
        self.nonfinite_steps += 1
        self._nonfinite_run += 1
        self.log("train/nonfinite_steps", float(self.nonfinite_steps), on_step=True, on_epoch=False)
        if self._nonfinite_run >= self.nonfinite_patience:
            raise NonFiniteLossError(
                f"{self._nonfinite_run} consecutive training steps had a non-finite {what} "
                f"({self.nonfinite_steps} skipped in total); stopping. The last good checkpoint is untouched: "
                f"lower optimizer.lr, check the data for NaNs, or resume with ckpt_path=last."
            )

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        # one fused kernel and a single device-to-host sync per optimizer step (after all its micro-batches)
        if grads and not torch.isfinite(torch.stack(torch._foreach_norm(grads))).all():
            for p in self.parameters():
                p.grad = None  # AdamW skips parameters without gradients: the step becomes a no-op
            self._skip_nonfinite("loss or gradient")
        elif grads:
            self._nonfinite_run = 0
        if self._accumulation() > 1:  # the schedule update of the whole optimizer step (all its micro-batches)
            self.schedule.apply_accumulated()

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        """The optimizer step, then the EMA: once per optimizer step, whatever ``accumulate_grad_batches``."""
        super().optimizer_step(*args, **kwargs)
        self.ema.update(self.net)

    @torch.no_grad()
    def _evaluation_step(self, batch: Any, batch_idx: int, stage: str) -> None:
        index, x, y = split_batch(batch)
        x, y = self._check_shape(x), self._check_labels(y)
        evaluate = dict(net=self.ema.net, schedule=self.schedule, parameterization=self.parameterization,
                        num_levels=self.num_levels, num_samples=self.eval_num_samples, timesteps=self.timesteps,
                        index=index, example_ids=index, seed=self._stage_seed(stage))
        update_bpd({term: self.bpd_metrics[f"{stage}_{term}"] for term in BPD_TERMS}, x,
                   generator=self._eval_generator(batch_idx, stage), cond=y, **evaluate)  # -log p(x|y) when conditional
        if y is not None:  # -log p(x) of the same model: the null label, same noise
            update_bpd({"bpd": self.bpd_metrics[f"{stage}_bpd_uncond"]}, x, generator=self._eval_generator(batch_idx, stage),
                       cond=self.null_labels(y), terms=("bpd",), **evaluate)
        loss = self.loss_terms(x, self._eval_generator(batch_idx, stage), self.ema.net, cond=y).loss.mean()
        self.log(f"{stage}/loss", loss, on_step=False, on_epoch=True, sync_dist=True, batch_size=x.shape[0])

    def _log_evaluation(self, stage: str) -> None:
        """Log the exact (deduplicated, all-rank) bits/dim terms and the standard error of the total."""
        for term in (*BPD_TERMS, "bpd_uncond"):
            if f"{stage}_{term}" not in self.bpd_metrics:
                continue
            metric = self.bpd_metrics[f"{stage}_{term}"]
            if not metric.update_called:
                continue
            stats = metric.stats()
            self.log(f"{stage}/{term}", float(stats["bpd"]), prog_bar=(term == "bpd"))
            if term == "bpd":
                self.log(f"{stage}/bpd_se", float(stats["bpd_se"]))
                if self.num_classes is not None:  # the balanced mixture that labels=all samples
                    self.log(f"{stage}/bpd_mixture",
                             float(likelihood.balanced_mixture_bpd(stats["bpd"], self.num_classes, self.data_dim)))
            metric.reset()

    def on_validation_epoch_end(self) -> None:
        self._log_evaluation("val")
        every = self.fid_config["every_n_epochs"] if self.fid_config else 0
        if every and not self.trainer.sanity_checking and (self.current_epoch + 1) % every == 0:
            self._log_fid("val")

    def on_test_epoch_end(self) -> None:
        self._log_evaluation("test")
        if self.fid_config is not None:
            self._log_fid("test")

    @torch.no_grad()
    def _log_fid(self, stage: str) -> dict[str, float]:
        """FID of ``num_samples`` EMA samples against the ``stage`` split, logged with its sample count."""
        metric, cfg = self.fid_metrics[stage], self.fid_config
        values = split_fid(metric, self.trainer.datamodule, stage,
                           lambda r: self.compute_fid(metric, cfg["num_samples"], cfg["steps"], cfg["batch_size"], repeat=r),
                           cfg["stats_dir"], cfg["repeats"], cfg["floor"], cfg["batch_size"], self.seed)
        self.log_dict({f"{stage}/{k}": float(v) for k, v in values.items() if k != "fid_std" or values["fid_repeats"] > 1})
        return values

    def compute_fid(self, metric: FIDMetric, num_samples: int, steps: int, batch_size: int = 500,
                    repeat: int = 0) -> dict[str, float]:
        """Feed this rank's share of ``num_samples`` fresh EMA samples (sample seed ``repeat``) to ``metric`` and
        compute FID (collective).

        A conditional model draws every class equally often (sample i gets label i mod C) with the sampler's
        guidance; on the digits the result also holds ``class_acc``, the fraction of samples that the shipped
        digits classifier assigns to the label they were drawn for.
        """
        generator = torch.Generator(device=self.device).manual_seed(
            self.seed + seeds.FID_RANK_STRIDE * self.global_rank + 1 + seeds.FID_REPEAT_STRIDE * repeat)
        if self.num_classes is None:
            return sample_fid(metric, lambda n: self.sample(n, steps=steps, generator=generator), num_samples,
                              batch_size)
        return sample_fid(metric, lambda n, y: self.sample(n, steps=steps, generator=generator, labels=y),
                          num_samples, batch_size, labels=self.balanced_labels,
                          classifier=getattr(metric.extractor, "classifier", None))

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluation_step(batch, batch_idx, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluation_step(batch, batch_idx, "test")

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def sample(self, num: int, steps: int | None = None, sampler: Callable | None = None, clip_x: bool | None = None,
               schedule: Schedule | None = None, generator: torch.Generator | None = None,
               labels: Tensor | None = None, guidance: float | None = None) -> Tensor:
        """Draw ``num`` samples with the EMA weights, decoded to the K data levels; arguments left None come from
        the module's ``sampler`` (the sampler group).

        A class-conditional model needs ``labels`` ``[num]`` and is guided with weight ``guidance`` (default: the
        sampler's ``guidance``; 0 is the plain conditional model), only for λ in the sampler's guidance interval.
        """
        configured = self.sampler or {}
        fn, steps = sampler or configured.get("fn"), steps or configured.get("steps")
        clip = configured.get("clip_x") if clip_x is None else clip_x
        if fn is None or steps is None or clip is None:
            raise ValueError("this DiffusionModule was built without a sampler: pass sample(..., sampler=, steps=, "
                             "clip_x=) or build it with sampler={'fn', 'steps', 'clip_x', 'schedule'} (conf/sampler/)")
        labels = self.check_label_values(labels)
        if labels is not None and labels.shape != (num,):
            raise ValueError(f"{num} samples asked for with {labels.numel()} labels: give one label per sample")
        guidance = float(configured.get("guidance") or 0.0) if guidance is None else float(guidance)
        denoise = self.parameterization.denoiser(
            self.ema.net, clip_x=bool(clip), cond=labels, guidance=guidance,
            null_cond=None if labels is None else self.null_labels(labels),
            guidance_logsnr_min=configured.get("guidance_logsnr_min"),
            guidance_logsnr_max=configured.get("guidance_logsnr_max"),
        )
        grid = logsnr_grid(schedule or configured.get("schedule") or self.schedule, int(steps), device=self.device)
        return generate(denoise, fn, grid, (num, *self.data_shape), self.num_levels, generator=generator,
                        device=self.device)

    # ------------------------------------------------------------------ optimisation and state
    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(params=[p for p in self.parameters() if p.requires_grad])
        if self.lr_scheduler_factory is None:
            return optimizer
        scheduler = self.lr_scheduler_factory(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["vdmlab"] = {
            "config": self.run_config,
            "noise_generator": self.noise_generator.get_state() if self._trainer is not None else None,
            "nonfinite_steps": self.nonfinite_steps,
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
            "num_levels": self.num_levels,
            "data_shape": list(self.data_shape),
            "num_classes": self.num_classes,
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.get("vdmlab", {})
        self._noise_state = state.get("noise_generator")
        self._noise_generator = None
        self.nonfinite_steps = int(state.get("nonfinite_steps", 0))
        if state.get("torch_rng") is not None:  # global RNG (dropout, user code): restored for exact resume
            torch.set_rng_state(state["torch_rng"])
        if state.get("cuda_rng") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
