"""The six equivalent model parameterizations of §4.1: what the network outputs, and its map to ε̂ and x̂.

Each parameterization is a linear map between the network output and (ε̂, x̂) given z_t and λ (Table 4.2),
so the one loss is always written on ε (docs/architecture.md, "The one loss") and a parameterization changes nothing else. The
``flow`` output u = ε - x lives in rectified-flow coordinates (α + σ = 1); it is mapped to the VP latent
by the rescaling z_rf = z_t/(α_t + σ_t) of eq. (A.45).

Conditioning (class labels, ...) is one keyword ``cond`` passed unchanged to the network, ``net(z, λ, cond)``;
with ``cond=None`` the network is called as ``net(z, λ)``, so unconditional networks need not know about it.
:meth:`Parameterization.denoiser` binds ``cond`` and the classifier-free guidance weight into the closure
``denoise(z_t, λ)``, so every sampler gets conditioning and guidance without a change of signature.
Autoguidance (a guiding denoiser, e.g. an earlier checkpoint or a smaller network, in place of the unconditional
model) is bound the same way: ``denoiser(net, guide=guide_denoise, guidance=w)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from vdmlab.diffusion.process import alpha_sigma, expand_like, posterior_mean

Denoiser = Callable[[Tensor, Tensor], "Prediction"]


@dataclass
class Prediction:
    """A denoiser's estimates at (z_t, λ): the noise ε̂ and the clean data x̂."""

    eps_hat: Tensor
    x_hat: Tensor


def _coefs(z_t: Tensor, logsnr: Tensor) -> tuple[Tensor, Tensor]:
    alpha_t, sigma_t = alpha_sigma(logsnr)
    return expand_like(alpha_t, z_t), expand_like(sigma_t, z_t)


def eps_from_x(x_hat: Tensor, z_t: Tensor, logsnr: Tensor) -> Tensor:
    """ε̂ = (z_t - α_t x̂)/σ_t, Table 4.2."""
    alpha_t, sigma_t = _coefs(z_t, logsnr)
    return (z_t - alpha_t * x_hat) / sigma_t


def x_from_eps(eps_hat: Tensor, z_t: Tensor, logsnr: Tensor) -> Tensor:
    """x̂ = (z_t - σ_t ε̂)/α_t, Table 4.2."""
    alpha_t, sigma_t = _coefs(z_t, logsnr)
    return (z_t - sigma_t * eps_hat) / alpha_t


def call_net(net: nn.Module, z_t: Tensor, logsnr: Tensor, cond=None) -> Tensor:
    """The network output: ``net(z_t, λ)``, or ``net(z_t, λ, cond)`` when there is a conditioning."""
    return net(z_t, logsnr) if cond is None else net(z_t, logsnr, cond)


def guided_eps(eps_cond: Tensor, eps_uncond: Tensor, guidance: Tensor | float) -> Tensor:
    """Classifier-free guidance ε̂ = (1 + w)·ε̂(z, c) − w·ε̂(z, ∅) (Ho & Salimans 2022, eq. (6)); with a guiding model
    in place of ε̂(z, ∅), autoguidance ε̂ = ε̂_main + w·(ε̂_main − ε̂_guide) (Karras et al. 2024, "Guiding a diffusion
    model with a bad version of itself", §3)."""
    w = expand_like(torch.as_tensor(guidance, dtype=eps_cond.dtype, device=eps_cond.device), eps_cond)
    return eps_cond + w * (eps_cond - eps_uncond)


def guidance_weight(logsnr: Tensor, guidance: float, logsnr_min: float | None, logsnr_max: float | None) -> Tensor:
    """w(λ): ``guidance`` inside the interval [logsnr_min, logsnr_max] (None: unbounded), 0 outside
    (guidance in a limited interval, Kynkäänniemi et al. 2024); shape of λ."""
    inside = torch.ones_like(logsnr, dtype=torch.bool)
    if logsnr_min is not None:
        inside = inside & (logsnr >= logsnr_min)
    if logsnr_max is not None:
        inside = inside & (logsnr <= logsnr_max)
    return inside.to(logsnr.dtype) * float(guidance)


class Parameterization:
    """Base class: ``output`` runs the network; ``to_eps``/``to_x``/``from_eps`` are the Table 4.2 maps."""

    name = "base"

    def output(self, net: nn.Module, z_t: Tensor, logsnr: Tensor, cond=None) -> Tensor:
        """The parameterised quantity: the network output itself for all but ``energy``."""
        return call_net(net, z_t, logsnr, cond)

    def to_eps(self, out: Tensor, z_t: Tensor, logsnr: Tensor) -> Tensor:
        """ε̂ from the output (Table 4.2)."""
        return eps_from_x(self.to_x(out, z_t, logsnr), z_t, logsnr)

    def to_x(self, out: Tensor, z_t: Tensor, logsnr: Tensor) -> Tensor:
        """x̂ from the output (Table 4.2)."""
        return x_from_eps(self.to_eps(out, z_t, logsnr), z_t, logsnr)

    def from_eps(self, eps_hat: Tensor, z_t: Tensor, logsnr: Tensor) -> Tensor:
        """The output that encodes a given ε̂ (the inverse Table 4.2 map)."""
        raise TypeError(f"{type(self).__name__} does not define from_eps()")

    def predict(self, net: nn.Module, z_t: Tensor, logsnr: Tensor, clip_x: bool = False, cond=None) -> Prediction:
        """(ε̂, x̂) at (z_t, λ) given ``cond``; with ``clip_x`` x̂ is clipped to [-1, 1] and ε̂ re-derived (§4.1)."""
        out = self.output(net, z_t, logsnr, cond)
        x_hat = self.to_x(out, z_t, logsnr)
        if clip_x:
            x_hat = x_hat.clamp(-1.0, 1.0)
            return Prediction(eps_from_x(x_hat, z_t, logsnr), x_hat)
        return Prediction(self.to_eps(out, z_t, logsnr), x_hat)

    def predict_guided(
        self, net: nn.Module, z_t: Tensor, logsnr: Tensor, cond: Tensor, null_cond: Tensor, guidance: Tensor,
        clip_x: bool = False,
    ) -> Prediction:
        """Classifier-free guided (ε̂, x̂): ε̂ = (1 + w)·ε̂(z, c) − w·ε̂(z, ∅) formed in ε space, x̂ from it (Table 4.2).

        One network call on the concatenated batch [c, ∅]; the energy model's autograd gradient stays per
        example, since each example's energy depends only on its own z. ``guidance`` is w per example ``[B]``.
        """
        batch = z_t.shape[0]
        logsnr_b = logsnr.expand(batch) if logsnr.numel() == 1 else logsnr
        z_2, logsnr_2 = torch.cat([z_t, z_t]), torch.cat([logsnr_b, logsnr_b])
        out = self.output(net, z_2, logsnr_2, torch.cat([cond, null_cond]))
        eps_cond, eps_uncond = self.to_eps(out, z_2, logsnr_2).split(batch)
        eps_hat = guided_eps(eps_cond, eps_uncond, guidance)
        x_hat = x_from_eps(eps_hat, z_t, logsnr_b)
        if clip_x:
            x_hat = x_hat.clamp(-1.0, 1.0)
            eps_hat = eps_from_x(x_hat, z_t, logsnr_b)
        return Prediction(eps_hat, x_hat)

    def predict_autoguided(self, net: nn.Module, guide: Denoiser, z_t: Tensor, logsnr: Tensor, cond, guidance: Tensor,
                           clip_x: bool = False) -> Prediction:
        """Autoguided (ε̂, x̂): the main prediction pushed away from ``guide``'s (its own parameterization, through ε
        and x as Table 4.2 does); with ``clip_x`` x̂ is clipped after guidance and ε̂ re-derived from it."""
        main, weak = self.predict(net, z_t, logsnr, cond=cond), guide(z_t, logsnr)
        # every Table 4.2 map is affine in the output at fixed z_t: the same combination of x̂ is the x̂ of the ε̂
        eps_hat, x_hat = guided_eps(main.eps_hat, weak.eps_hat, guidance), guided_eps(main.x_hat, weak.x_hat, guidance)
        if clip_x:
            x_hat = x_hat.clamp(-1.0, 1.0)
            eps_hat = eps_from_x(x_hat, z_t, logsnr)
        return Prediction(eps_hat, x_hat)

    def posterior_mean(self, out: Tensor, z_t: Tensor, logsnr_s: Tensor, logsnr_t: Tensor) -> Tensor:
        """μθ(z_t; s, t) for this parameterization: eq. (3.47) with x̂ in place of x, eqs. (3.59), (4.1), Table 4.1."""
        return posterior_mean(z_t, self.to_x(out, z_t, logsnr_t), logsnr_s, logsnr_t)

    def denoiser(
        self, net: nn.Module, clip_x: bool = False, cond=None, guidance: float = 0.0, null_cond=None,
        guidance_logsnr_min: float | None = None, guidance_logsnr_max: float | None = None, guide: Denoiser | None = None,
    ) -> Denoiser:
        """A closure (z_t, λ) → Prediction for samplers and likelihood evaluation, with ``cond`` bound.

        With ``guidance`` w ≠ 0 the closure is classifier-free guided toward ``cond`` against ``null_cond`` (the
        null class ∅), or, given a ``guide`` denoiser (z_t, λ) → Prediction, autoguided away from it, for λ in
        [guidance_logsnr_min, guidance_logsnr_max] only (None: no bound).
        """
        if not guidance:
            return lambda z_t, logsnr: self.predict(net, z_t, logsnr, clip_x=clip_x, cond=cond)
        if guide is not None:
            def autoguide(z_t: Tensor, logsnr: Tensor) -> Prediction:
                w = guidance_weight(logsnr.expand(z_t.shape[0]), guidance, guidance_logsnr_min, guidance_logsnr_max)
                if not bool(w.any()):
                    return self.predict(net, z_t, logsnr, clip_x=clip_x, cond=cond)
                return self.predict_autoguided(net, guide, z_t, logsnr, cond, w, clip_x=clip_x)

            return autoguide
        if cond is None or null_cond is None:
            raise ValueError(
                f"classifier-free guidance (sampler.guidance={guidance}) needs a conditional model and labels: "
                f"train with dataset.conditional=true, or set sampler.guidance=0"
            )

        def denoise(z_t: Tensor, logsnr: Tensor) -> Prediction:
            w = guidance_weight(logsnr.expand(z_t.shape[0]), guidance, guidance_logsnr_min, guidance_logsnr_max)
            if not bool(w.any()):  # outside the guidance interval: the conditional prediction alone
                return self.predict(net, z_t, logsnr, clip_x=clip_x, cond=cond)
            return self.predict_guided(net, z_t, logsnr, cond, null_cond, w, clip_x=clip_x)

        return denoise


class XParameterization(Parameterization):
    """Image denoising: the network predicts x̂θ(z_t; λ) directly (eq. (4.1))."""

    name = "x"

    def to_x(self, out: Tensor, z_t: Tensor, logsnr: Tensor) -> Tensor:
        """x̂ = output."""
        return out

    def from_eps(self, eps_hat: Tensor, z_t: Tensor, logsnr: Tensor) -> Tensor:
        """x̂ = (z_t - σ_t ε̂)/α_t, Table 4.2."""
        return x_from_eps(eps_hat, z_t, logsnr)


class EpsParameterization(Parameterization):
    """Noise prediction ε̂θ(z_t; λ) (Ho et al. 2020; eq. (4.2))."""

    name = "eps"

    def to_eps(self, out: Tensor, z_t: Tensor, logsnr: Tensor) -> Tensor:
        """ε̂ = output."""
        return out

    def from_eps(self, eps_hat: Tensor, z_t: Tensor, logsnr: Tensor) -> Tensor:
        """The output is ε̂ itself."""
        return eps_hat


class ScoreParameterization(Parameterization):
    """Score prediction sθ(z_t; λ) ≈ ∇ log q(z_t), with ε̂ = -σ_t sθ (eqs. (4.11), (4.19))."""

    name = "score"

    def to_eps(self, out: Tensor, z_t: Tensor, logsnr: Tensor) -> Tensor:
        """ε̂ = -σ_t sθ, eq. (4.19)."""
        _, sigma_t = _coefs(z_t, logsnr)
        return -sigma_t * out

    def from_eps(self, eps_hat: Tensor, z_t: Tensor, logsnr: Tensor) -> Tensor:
        """sθ = -ε̂/σ_t, Table 4.2."""
        _, sigma_t = _coefs(z_t, logsnr)
        return -eps_hat / sigma_t


class EnergyParameterization(Parameterization):
    """Energy-based: sθ = -∇_z Eθ, so ε̂ = σ_t ∇_z Eθ(z_t; λ) by autograd (eqs. (4.20)–(4.24)).

    The scalar energy is built from the network f: Eθ(z; λ) = ‖z - f(z, λ)‖²/(2σ_t), which makes
    ε̂ = (I - J_f)ᵀ(z - f) an O(1) quantity at every noise level. The gradient is taken with
    ``create_graph`` whenever gradients are enabled, so the energy model trains through it; ``output``
    returns ∇_z E, the negative score.
    """

    name = "energy"

    def energy(self, net: nn.Module, z_t: Tensor, logsnr: Tensor, cond=None) -> Tensor:
        """Eθ(z_t; λ, c) = ‖z_t - f(z_t, λ, c)‖²/(2σ_t), shape ``[B]``."""
        _, sigma_t = alpha_sigma(logsnr)
        return 0.5 * (z_t - call_net(net, z_t, logsnr, cond)).pow(2).flatten(1).sum(1) / sigma_t

    def output(self, net: nn.Module, z_t: Tensor, logsnr: Tensor, cond=None) -> Tensor:
        """∇_z Eθ(z_t; λ, c) by autograd, differentiable when gradients are enabled (eq. (4.24))."""
        create_graph = torch.is_grad_enabled()
        with torch.enable_grad():
            z = z_t if z_t.requires_grad else z_t.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(self.energy(net, z, logsnr, cond).sum(), z, create_graph=create_graph)
        return grad

    def to_eps(self, out: Tensor, z_t: Tensor, logsnr: Tensor) -> Tensor:
        """ε̂ = σ_t ∇_z E, since sθ = -∇E (eq. (4.24)) and ε̂ = -σ_t sθ (eq. (4.19))."""
        _, sigma_t = _coefs(z_t, logsnr)
        return sigma_t * out

    def from_eps(self, eps_hat: Tensor, z_t: Tensor, logsnr: Tensor) -> Tensor:
        """∇_z E = ε̂/σ_t."""
        _, sigma_t = _coefs(z_t, logsnr)
        return eps_hat / sigma_t


class VParameterization(Parameterization):
    """Velocity prediction v̂ = α_t ε̂ - σ_t x̂ (Salimans & Ho 2022; eqs. (4.25)–(4.34))."""

    name = "v"

    def to_eps(self, out: Tensor, z_t: Tensor, logsnr: Tensor) -> Tensor:
        """ε̂ = α_t v̂ + σ_t z_t, eq. (4.34)."""
        alpha_t, sigma_t = _coefs(z_t, logsnr)
        return alpha_t * out + sigma_t * z_t

    def to_x(self, out: Tensor, z_t: Tensor, logsnr: Tensor) -> Tensor:
        """x̂ = α_t z_t - σ_t v̂, eq. (4.56)."""
        alpha_t, sigma_t = _coefs(z_t, logsnr)
        return alpha_t * z_t - sigma_t * out

    def from_eps(self, eps_hat: Tensor, z_t: Tensor, logsnr: Tensor) -> Tensor:
        """v̂ = (ε̂ - σ_t z_t)/α_t, Table 4.2."""
        alpha_t, sigma_t = _coefs(z_t, logsnr)
        return (eps_hat - sigma_t * z_t) / alpha_t


class FlowParameterization(Parameterization):
    """Flow matching: û = ε - x in rectified-flow coordinates, mapped to the VP latent (eqs. (4.38)–(4.46)).

    With z_rf = z_t/(α_t + σ_t) and σ_rf = σ_t/(α_t + σ_t): x̂ = z_rf - σ_rf û and ε̂ = z_rf + α_rf û,
    which are the Table 4.2 entries x̂ = z - σû, ε̂ = αû + z written for α + σ ≠ 1.
    """

    name = "flow"

    def to_eps(self, out: Tensor, z_t: Tensor, logsnr: Tensor) -> Tensor:
        """ε̂ = (z_t + α_t û)/(α_t + σ_t), eq. (4.46) in VP coordinates."""
        alpha_t, sigma_t = _coefs(z_t, logsnr)
        return (z_t + alpha_t * out) / (alpha_t + sigma_t)

    def to_x(self, out: Tensor, z_t: Tensor, logsnr: Tensor) -> Tensor:
        """x̂ = (z_t - σ_t û)/(α_t + σ_t), Table 4.2 in VP coordinates."""
        alpha_t, sigma_t = _coefs(z_t, logsnr)
        return (z_t - sigma_t * out) / (alpha_t + sigma_t)

    def from_eps(self, eps_hat: Tensor, z_t: Tensor, logsnr: Tensor) -> Tensor:
        """û = ε̂ - x̂ = ((α_t + σ_t) ε̂ - z_t)/α_t."""
        alpha_t, sigma_t = _coefs(z_t, logsnr)
        return ((alpha_t + sigma_t) * eps_hat - z_t) / alpha_t
