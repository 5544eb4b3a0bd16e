"""DiffusionModule: the LightningModule that wraps a denoiser, a schedule, a weighting, a parameterization
and the one loss (design §3). It is thin: every formula lives in ``vdmlab.diffusion``; every object
arrives already built by Hydra (``_target_``; ``_partial_`` for the optimizer and LR schedule).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from vdmlab.diffusion import likelihood
from vdmlab.diffusion.losses import LossTerms, diffusion_loss, low_discrepancy_times
from vdmlab.diffusion.parameterization import Parameterization
from vdmlab.diffusion.process import diffuse
from vdmlab.diffusion.sampling import ancestral, generate
from vdmlab.diffusion.schedules import Schedule, logsnr_grid
from vdmlab.diffusion.weighting import Weighting
from vdmlab.optim import EMA


class NonFiniteLossError(RuntimeError):
    """Training produced too many consecutive non-finite losses or gradients."""


class DiffusionModule(L.LightningModule):
    """Trains ``net`` on L_w (eq. 4.123) and evaluates the unweighted ELBO in bits/dim with the EMA weights.

    Args:
        net: denoiser ``forward(z, logsnr)``.
        schedule, weighting, parameterization: the three orthogonal choices of design §3.
        num_levels, data_shape: K and the per-example shape, from the datamodule.
        optimizer: a (partial) ``torch.optim`` constructor taking the parameters.
        lr_scheduler: a partial taking the optimizer (stepped every optimizer step), or None.
        time_sampler: ``(batch_size, *, generator, device) -> t``; low-discrepancy by default (design §3).
        timesteps: None for continuous time, else the number of discrete steps T (eq. A.38).
        ema_decay, ema_warmup: EMA of the weights used for evaluation and sampling.
        eval_num_samples: λ draws per example for val/test bits/dim.
        sampler: ``{"fn": sampler function, "steps": int, "clip_x": bool}`` for sample grids.
        seed: base seed of the training noise; each DDP rank offsets it (design §6).
        nonfinite_patience: stop after this many consecutive non-finite steps (each is skipped).
        run_config: the resolved run config, stored in checkpoints so eval/sample can rebuild the run.
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
        eval_num_samples: int = 1,
        sampler: dict | None = None,
        seed: int = 0,
        nonfinite_patience: int = 20,
        run_config: dict | None = None,
    ):
        super().__init__()
        self.net, self.schedule = net, schedule
        self.weighting, self.parameterization = weighting, parameterization
        self.num_levels, self.data_shape = int(num_levels), tuple(int(d) for d in data_shape)
        self.data_dim = math.prod(self.data_shape)
        self.optimizer_factory, self.lr_scheduler_factory = optimizer, lr_scheduler
        self.time_sampler, self.timesteps = time_sampler, timesteps
        self.ema = EMA(net, ema_decay, ema_warmup)
        self.eval_num_samples = int(eval_num_samples)
        self.sampler = dict(sampler or {"fn": ancestral, "steps": 100, "clip_x": True})
        self.seed, self.nonfinite_patience, self.run_config = int(seed), int(nonfinite_patience), run_config
        self._noise_generator: torch.Generator | None = None
        self._noise_state: Tensor | None = None
        self.nonfinite_steps, self._nonfinite_run = 0, 0

    # ------------------------------------------------------------------ noise
    @property
    def noise_generator(self) -> torch.Generator:
        """Training-noise generator, seeded ``seed + rank`` so that DDP ranks draw different t and ε."""
        if self._noise_generator is None or self._noise_generator.device != self.device:
            self._noise_generator = torch.Generator(device=self.device)
            self._noise_generator.manual_seed(self.seed + 1_000_003 * self.global_rank)
            if self._noise_state is not None:
                self._noise_generator.set_state(self._noise_state)
                self._noise_state = None
        return self._noise_generator

    def _eval_generator(self, batch_idx: int, stage: str) -> torch.Generator:
        """Common random numbers for evaluation: the same noise every epoch, different per batch and rank."""
        offset = {"val": 0, "test": 7_919}[stage]
        return torch.Generator(device=self.device).manual_seed(
            self.seed + offset + 104_729 * batch_idx + 15_485_863 * self.global_rank
        )

    # ------------------------------------------------------------------ steps
    def _check_batch(self, batch: Any) -> Tensor:
        x = batch[-1] if isinstance(batch, (tuple, list)) else batch
        if tuple(x.shape[1:]) != self.data_shape:
            raise ValueError(
                f"data of shape {tuple(x.shape[1:])} reached a model built for {self.data_shape}; "
                f"the dataset and the model disagree (check dataset=... and its image_size/channels)"
            )
        return x

    def loss_terms(self, x: Tensor, generator: torch.Generator | None = None, net: nn.Module | None = None) -> LossTerms:
        """One Monte-Carlo draw of the weighted loss (eq. 4.123) for a batch."""
        t = self.time_sampler(x.shape[0], generator=generator, device=x.device)
        eps = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return diffusion_loss(
            x, t.to(x.dtype), eps, net=net or self.net, schedule=self.schedule, weighting=self.weighting,
            parameterization=self.parameterization, timesteps=self.timesteps,
        )

    def _endpoint_terms(self, x: Tensor, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        """Prior KL and decoder NLL (eq. 3.60), each [B] nats; they depend only on the schedule's endpoints."""
        ends = torch.tensor([self.schedule.logsnr_max, self.schedule.logsnr_min], device=x.device, dtype=x.dtype)
        logsnr_0, logsnr_1 = (e.expand(x.shape[0]) for e in ends)
        eps = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        z_0 = diffuse(x, logsnr_0, eps)
        return likelihood.prior_kl(x, logsnr_1), likelihood.decoder_nll(x, z_0, logsnr_0, self.num_levels)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor | None:
        x = self._check_batch(batch)
        terms = self.loss_terms(x, self.noise_generator)
        self.schedule.update(terms.logsnr.detach(), terms.loss.detach())
        loss = terms.loss.mean()
        if not torch.isfinite(loss):
            self._skip_nonfinite("loss")
            return None
        with torch.no_grad():
            prior, reconstruction = self._endpoint_terms(x, self.noise_generator)
            bpd = likelihood.bits_per_dim(terms.elbo + prior + reconstruction, self.data_dim).mean()
        self.log_dict(
            {"train/loss": loss, "train/bpd": bpd, "train/loss_variance": terms.loss.var(),
             "train/lr": self.trainer.optimizers[0].param_groups[0]["lr"] if self._trainer else 0.0},
            prog_bar=False, on_step=True, on_epoch=False, batch_size=x.shape[0],
        )
        self.log("loss", loss, prog_bar=True, logger=False, batch_size=x.shape[0])
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
        if grads and not torch.isfinite(torch.stack([g.detach().abs().max() for g in grads])).all():
            for p in self.parameters():
                p.grad = None  # AdamW skips parameters without gradients: the step becomes a no-op
            self._skip_nonfinite("gradient")
        else:
            self._nonfinite_run = 0

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.ema.update(self.net)

    @torch.no_grad()
    def _evaluation_step(self, batch: Any, batch_idx: int, stage: str) -> None:
        x = self._check_batch(batch)
        terms = likelihood.negative_elbo(
            x, net=self.ema.net, schedule=self.schedule, parameterization=self.parameterization,
            num_levels=self.num_levels, num_samples=self.eval_num_samples, timesteps=self.timesteps,
            generator=self._eval_generator(batch_idx, stage),
        )
        to_bpd = partial(likelihood.bits_per_dim, data_dim=self.data_dim)
        values = {
            f"{stage}/bpd": to_bpd(terms.total).mean(),
            f"{stage}/bpd_diffusion": to_bpd(terms.diffusion).mean(),
            f"{stage}/bpd_prior": to_bpd(terms.prior).mean(),
            f"{stage}/bpd_reconstruction": to_bpd(terms.reconstruction).mean(),
            f"{stage}/loss": self.loss_terms(x, self._eval_generator(batch_idx, stage), self.ema.net).loss.mean(),
        }
        self.log_dict(values, on_step=False, on_epoch=True, sync_dist=True, batch_size=x.shape[0],
                      prog_bar=False)
        if stage == "val":
            self.log("val_bpd", values["val/bpd"], prog_bar=True, logger=False, on_epoch=True, batch_size=x.shape[0],
                     sync_dist=True)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluation_step(batch, batch_idx, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluation_step(batch, batch_idx, "test")

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def sample(self, num: int, steps: int | None = None, sampler: Callable | None = None, clip_x: bool | None = None,
               schedule: Schedule | None = None, generator: torch.Generator | None = None) -> Tensor:
        """Draw ``num`` samples with the EMA weights, decoded to the K data levels."""
        steps = int(steps or self.sampler["steps"])
        clip = self.sampler.get("clip_x", True) if clip_x is None else clip_x
        denoise = self.parameterization.denoiser(self.ema.net, clip_x=clip)
        grid = logsnr_grid(schedule or self.sampler.get("schedule") or self.schedule, steps, device=self.device)
        return generate(denoise, sampler or self.sampler["fn"], grid, (num, *self.data_shape), self.num_levels,
                        generator=generator, device=self.device)

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
            "num_levels": self.num_levels,
            "data_shape": list(self.data_shape),
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.get("vdmlab", {})
        self._noise_state = state.get("noise_generator")
        self._noise_generator = None
        self.nonfinite_steps = int(state.get("nonfinite_steps", 0))
