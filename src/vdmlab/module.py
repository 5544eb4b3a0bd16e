"""DiffusionModule: the LightningModule that wraps a denoiser, a schedule, a weighting, a parameterization
and the one loss (docs/architecture.md). It is thin: every formula lives in ``vdmlab.diffusion``, the bits/dim
evaluation in ``vdmlab.metrics.bpd``, the FID loop in ``vdmlab.fid_evaluation``, the random streams in
``vdmlab.noise_streams`` and the label checks in ``vdmlab.labels``; every object arrives already built by Hydra
(``_target_``; ``_partial_`` for the optimizer and LR schedule), whose configs (conf/) hold every default.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from vdmlab.checks import check_bool, check_float, check_int
from vdmlab.data.augment import check_augment
from vdmlab.data.base import split_batch
from vdmlab.diffusion import likelihood
from vdmlab.diffusion.likelihood import ELBOModel
from vdmlab.diffusion.losses import LossTerms, diffusion_loss, low_discrepancy_times
from vdmlab.diffusion.parameterization import Parameterization
from vdmlab.diffusion.sampling import generate
from vdmlab.diffusion.schedules import Schedule, logsnr_grid
from vdmlab.diffusion.weighting import Weighting
from vdmlab.fid_evaluation import FIDEvaluation
from vdmlab.labels import ClassLabels
from vdmlab.lightning_compat import attached_trainer, uses_distributed_sampler, writes_step_logs
from vdmlab.metrics.bpd import LikelihoodMetrics
from vdmlab.noise_streams import NoiseStreams, StepTimes
from vdmlab.optim import EMA
from vdmlab.options import FIDOptions, SamplerOptions


class DiffusionModule(L.LightningModule):
    """Trains ``net`` on L_w (eq. (4.123)) and evaluates the unweighted ELBO in bits/dim with the EMA weights.

    Args:
        net: denoiser ``forward(z, logsnr)``.
        schedule, weighting, parameterization: the three orthogonal choices of docs/architecture.md ("The one loss").
        num_levels, data_shape: K and the per-example shape, from the datamodule.
        optimizer: a (partial) ``torch.optim`` constructor taking the parameters.
        lr_scheduler: a partial taking the optimizer (stepped every optimizer step), or None.
        time_sampler: ``(batch_size, *, generator, device) -> t``; low-discrepancy by default (docs/architecture.md).
        timesteps: None for continuous time, else the number of discrete steps T (eq. (A.38)).
        ema_decay, ema_warmup: EMA of the weights used for evaluation and sampling.
        eval_num_samples: λ draws per example for val/test bits/dim.
        sampler: the sampler group (:class:`vdmlab.options.SamplerOptions`, or a dict of its keys) for sample grids
            and FID; None: ``sample`` then needs ``sampler``, ``steps`` and ``clip_x``.
        fid: None (no FID) or :class:`vdmlab.options.FIDOptions` (conf/train.yaml's ``fid``): val/fid every k
            epochs against the val split and test/fid at the end against the test split (``vdmlab.fid_evaluation``).
        seed: base seed of the training noise; each DDP rank offsets it (docs/architecture.md, "Known traps").
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
        sampler: SamplerOptions | dict | None = None,
        fid: FIDOptions | dict | None = None,
        seed: int = 0,
        compile: bool = False,
        channels_last: bool = False,
        run_config: dict | None = None,
        num_classes: int | None = None,
        p_uncond: float = 0.0,
        augment: Callable[..., tuple[Tensor, Tensor]] | None = None,
    ):
        super().__init__()
        self.timesteps = check_int("timesteps", timesteps, 1, optional=True,
                                   reason="null (continuous time) or an integer >= 1")
        self.ema = EMA(net, check_float("ema_decay", ema_decay, minimum=0.0, maximum=1.0, open_max=True),
                       check_bool("ema_warmup", ema_warmup))
        self.eval_num_samples = check_int("eval_num_samples", eval_num_samples, 1)
        self.seed = check_int("seed", seed)
        self.p_uncond = check_float("p_uncond", p_uncond, minimum=0.0, maximum=1.0, open_max=True)
        self.num_classes = check_int("num_classes", num_classes, 1, optional=True,
                                     reason="null (unconditional) or a number of classes >= 1")
        self.augment = check_augment(augment, net)
        self.net, self.schedule = net, schedule
        self.weighting, self.parameterization = weighting, parameterization
        self.num_levels, self.data_shape = int(num_levels), tuple(int(d) for d in data_shape)
        self.data_dim = math.prod(self.data_shape)
        self.optimizer_factory, self.lr_scheduler_factory = optimizer, lr_scheduler
        self.time_sampler, self.run_config = time_sampler, run_config
        self.sampler = None if sampler is None else SamplerOptions.of(sampler)
        self.labels = ClassLabels(self.num_classes)
        self.guide: Callable[[Tensor | None], Callable] | None = None  # autoguidance: labels → the guide's denoiser
        self.noise, self.step_times = NoiseStreams(self.seed), StepTimes(time_sampler)
        self.channels_last = check_bool("channels_last", channels_last) and len(self.data_shape) == 3
        if self.channels_last:
            self.net.to(memory_format=torch.channels_last)
        # compiled training forward, kept out of module registration so state_dict keys stay those of ``net``
        object.__setattr__(self, "_train_net", torch.compile(self.net) if check_bool("compile", compile) else self.net)
        # bits/dim per split, each example counted once under DDP (indices from the evaluation loaders)
        self.bpd_metrics = nn.ModuleDict({stage: LikelihoodMetrics(self.data_dim, self.num_classes) for stage in ("val", "test")})
        self.fid_config = FIDOptions(**fid) if isinstance(fid, dict) else fid
        self.fid_evaluation = None if fid is None else FIDEvaluation(self.fid_config, self.data_shape, self.num_levels)

    def setup(self, stage: str) -> None:
        if self.trainer.world_size > 1 and uses_distributed_sampler(self.trainer):
            raise ValueError(
                "vdmlab's datamodules shard the data across DDP ranks themselves (resumable, each example counted "
                "once); create the Trainer with use_distributed_sampler=False (the trainer configs do)"
            )

    @property
    def noise_generator(self) -> torch.Generator:
        """Training-noise generator, seeded ``seed + rank`` so that DDP ranks draw different t and ε."""
        return self.noise.train(self.device, self.global_rank)

    # ------------------------------------------------------------------ the loss and its pieces
    def _check_shape(self, x: Tensor) -> Tensor:
        if tuple(x.shape[1:]) != self.data_shape:
            raise ValueError(
                f"data of shape {tuple(x.shape[1:])} reached a model built for {self.data_shape}; "
                f"the dataset and the model disagree (check dataset=... and its image_size/channels)"
            )
        return x

    def loss_terms(self, x: Tensor, generator: torch.Generator | None = None, net: nn.Module | None = None,
                   cond: Tensor | None = None, t: Tensor | None = None) -> LossTerms:
        """One Monte-Carlo draw of the weighted loss (eq. (4.123)) for a batch, conditioned on ``cond`` (labels),
        at times ``t`` when given."""
        if t is None:
            t = self.time_sampler(x.shape[0], generator=generator, device=x.device)
        eps = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        net = self.net if net is None else net  # not `net or self.net`: a compiled module has no truth value
        return diffusion_loss(
            x, t.to(x.dtype), eps, net=net, schedule=self.schedule, weighting=self.weighting,
            parameterization=self.parameterization, timesteps=self.timesteps, cond=cond,
        )

    def elbo_model(self, num_samples: int, timesteps: int | None) -> ELBOModel:
        """The EMA model's bound (eq. (3.60)) with ``num_samples`` λ draws per example, in ``timesteps`` steps."""
        return ELBOModel(self.ema.net, self.schedule, self.parameterization, self.num_levels, timesteps, num_samples)

    def _endpoint_terms(self, x: Tensor, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        """Prior KL and decoder NLL (eq. (3.60)), each [B] nats; they depend only on the schedule's endpoints
        (differentiably so when the schedule trains them, e.g. ``schedule=learned schedule.learn_endpoints=true``)."""
        eps = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return likelihood.endpoint_terms(x, self.schedule, eps, self.num_levels)

    def _logging_step(self) -> bool:
        """Whether Lightning writes this step's on_step logs (every ``trainer.log_every_n_steps``, or a fast dev run)."""
        trainer = attached_trainer(self)
        return True if trainer is None else writes_step_logs(trainer)

    def _accumulation(self) -> int:
        """k of ``trainer.accumulate_grad_batches``: micro-batches per optimizer step (1 without a trainer)."""
        return int(self.trainer.accumulate_grad_batches) if attached_trainer(self) is not None else 1

    def _train_times(self, batch_size: int, batch_idx: int, device: torch.device) -> Tensor:
        """Times of one micro-batch: consecutive strata of the optimizer step's stratified set (``StepTimes``)."""
        return self.step_times(batch_size, batch_idx, self._accumulation(), self.noise_generator, device)

    # ------------------------------------------------------------------ training
    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        _, x, y = split_batch(batch)
        x, y = self._check_shape(x), self.labels.check_batch(y)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if y is not None and self.p_uncond > 0:  # label dropout: the same net learns p(x) under ∅
            drop = torch.rand(y.shape, generator=self.noise_generator, device=y.device) < self.p_uncond
            y = torch.where(drop, self.labels.null(y), y)
        net = self._train_net
        if self.augment is not None:  # non-leaky augmentation: the network is told what it sees (training only)
            x, augment_labels = self.augment(x, generator=self.noise_generator)
            net = functools.partial(net, augment_labels=augment_labels)
        terms = self.loss_terms(x, self.noise_generator, net, cond=y, t=self._train_times(x.shape[0], batch_idx, x.device))
        if self._accumulation() == 1:
            self.schedule.update(terms.logsnr.detach(), terms.loss.detach())
        else:  # applied once per optimizer step, in on_before_optimizer_step
            self.schedule.accumulate(terms.logsnr.detach(), terms.loss.detach())
        loss = terms.loss.mean()  # a NaN/inf loss gives non-finite gradients: callbacks.NonFiniteGuard skips the step
        log_now = self._logging_step()
        if self.schedule.trainable_endpoints:  # the ELBO's prior and decoder terms train the endpoints (eq. (3.60))
            prior, reconstruction = self._endpoint_terms(x, self.noise_generator)
            objective = loss + (prior + reconstruction).mean()
        elif log_now:  # for train/bpd only: own noise, so that the logging frequency never changes the training noise
            with torch.no_grad():
                prior, reconstruction = self._endpoint_terms(x, self.noise.logging(self.global_step, self.device))
            objective = loss
        else:  # nothing to train or log from the endpoints
            prior = reconstruction = None
            objective = loss
        if log_now:  # Lightning writes on_step logs only every trainer.log_every_n_steps steps
            self._log_training(loss, terms, prior, reconstruction)
        return objective

    def _log_training(self, loss: Tensor, terms: LossTerms, prior: Tensor, reconstruction: Tensor) -> None:
        """train/loss, train/bpd (the batch's negative ELBO), the loss variance and the learning rate."""
        with torch.no_grad():
            bpd = likelihood.bits_per_dim(terms.elbo + prior + reconstruction, self.data_dim).mean()
        batch_size = terms.loss.shape[0]
        self.log_dict(
            {"train/loss": loss, "train/bpd": bpd, "train/loss_variance": terms.loss.var(),
             "train/lr": self.trainer.optimizers[0].param_groups[0]["lr"] if attached_trainer(self) else 0.0},
            prog_bar=False, on_step=True, on_epoch=False, batch_size=batch_size,
        )
        # the progress bar reads its values on the host: only on logging steps, so other steps never sync
        self.log("loss", loss, prog_bar=True, logger=False, batch_size=batch_size)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if self._accumulation() > 1:  # the schedule update of the whole optimizer step (all its micro-batches)
            self.schedule.apply_accumulated()

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        """The optimizer step, then the EMA: once per optimizer step, whatever ``accumulate_grad_batches``."""
        super().optimizer_step(*args, **kwargs)
        self.ema.update(self.net)

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def _evaluation_step(self, batch: Any, batch_idx: int, stage: str) -> None:
        index, x, y = split_batch(batch)
        x, y = self._check_shape(x), self.labels.check_batch(y)
        generator = lambda: self.noise.evaluation(stage, batch_idx, self.global_rank, self.device)  # noqa: E731
        self.bpd_metrics[stage].update(x, self.elbo_model(self.eval_num_samples, self.timesteps), y,
                                       generator=generator(), index=index, example_ids=index,
                                       seed=self.noise.stage_seed(stage))
        loss = self.loss_terms(x, generator(), self.ema.net, cond=y).loss.mean()
        self.log(f"{stage}/loss", loss, on_step=False, on_epoch=True, sync_dist=True, batch_size=x.shape[0])

    def _log_evaluation(self, stage: str) -> None:
        """Log the exact (deduplicated, all-rank) bits/dim terms, the standard error of the total and, for a
        conditional model, bpd_uncond and bpd_mixture; then the stage's FID when it is due."""
        values = self.bpd_metrics[stage].compute()
        self.bpd_metrics[stage].reset()
        for key, value in values.items():
            if key not in ("n", "bpd_uncond_se"):
                self.log(f"{stage}/{key}", value, prog_bar=(key == "bpd"))
        if self.fid_evaluation is not None and self.fid_evaluation.due(stage, self.current_epoch,
                                                                       self.trainer.sanity_checking):
            values = self.fid_evaluation.evaluate(self, stage)
            self.log_dict({f"{stage}/{k}": float(v) for k, v in values.items()
                           if k != "fid_std" or values["fid_repeats"] > 1})

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluation_step(batch, batch_idx, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluation_step(batch, batch_idx, "test")

    def on_validation_epoch_end(self) -> None:
        self._log_evaluation("val")

    def on_test_epoch_end(self) -> None:
        self._log_evaluation("test")

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def sample(self, num: int, steps: int | None = None, sampler: Callable | None = None, clip_x: bool | None = None,
               schedule: Schedule | None = None, generator: torch.Generator | None = None,
               labels: Tensor | None = None, guidance: float | None = None) -> Tensor:
        """Draw ``num`` samples with the EMA weights, decoded to the K data levels; arguments left None come from
        the module's ``sampler`` (the sampler group).

        A class-conditional model needs ``labels`` ``[num]`` and is guided with weight ``guidance`` (default: the
        sampler's ``guidance``; 0 is the plain conditional model), only for λ in the sampler's guidance interval.
        With ``self.guide`` set (eval/sample ``guide_ckpt=``) the weight is that of autoguidance instead.
        """
        configured = self.sampler
        fn = sampler or (configured and configured.fn)
        steps = steps or (configured and configured.steps)
        clip = configured.clip_x if clip_x is None and configured else clip_x
        if fn is None or not steps or clip is None:
            raise ValueError("this DiffusionModule was built without a sampler: pass sample(..., sampler=, steps=, "
                             "clip_x=) or build it with sampler=SamplerOptions(...) (conf/sampler/)")
        labels = self.labels.check_sampling(labels, self.device)
        if labels is not None and labels.shape != (num,):
            raise ValueError(f"{num} samples asked for with {labels.numel()} labels: give one label per sample")
        if guidance is None:
            guidance = (configured and configured.guidance) or 0.0
        denoise = self.parameterization.denoiser(
            self.ema.net, clip_x=bool(clip), cond=labels, guidance=float(guidance),
            null_cond=None if labels is None else self.labels.null(labels),
            guidance_logsnr_min=configured and configured.guidance_logsnr_min,
            guidance_logsnr_max=configured and configured.guidance_logsnr_max,
            guide=None if self.guide is None else self.guide(labels),
        )
        grid = logsnr_grid(schedule or (configured and configured.schedule) or self.schedule, int(steps),
                           device=self.device)
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
            "noise_generator": self.noise_generator.get_state() if attached_trainer(self) is not None else None,
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
            "num_levels": self.num_levels,
            "data_shape": list(self.data_shape),
            "num_classes": self.num_classes,
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.get("vdmlab", {})
        self.noise.load_state(state.get("noise_generator"))
        if state.get("torch_rng") is not None:  # global RNG (dropout, user code): restored for exact resume
            torch.set_rng_state(state["torch_rng"])
        if state.get("cuda_rng") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
