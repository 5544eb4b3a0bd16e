"""Defaults that follow the data: the rules behind each dataset's λ endpoints and UNet size (docs/datasets.md).

The rules are registered as OmegaConf resolvers (``${vdmlab.logsnr_max:256}``, ...) on ``import vdmlab``, so the
dataset configs state which rule they use and the composed (resolved) config shows the value.

λ_max from the number of levels K (the decoder term). At t = 0 the decoder p(x|z_0) of eq. (3.54) puts x at the
level nearest to z_0/α_0 = x + e^{-λ_max/2}·ε. A denoiser cannot do better than the decoder there, so the
reconstruction term is negligible only when the noise e^{-λ_max/2} is well below half the level spacing
Δ/2 = 1/(K-1). With e^{-λ_max/2} = (Δ/2)/m, i.e.

    λ_max = 2·log(m·(K-1)),   m = 3 (three standard deviations inside half a level),

a level is missed with probability 2Φ(-3) = 0.27 % and the decoder term of data on the grid is ≈ 0.011 bits/dim
for every K (tests/test_dataset_defaults.py measures it). K = 256 gives 13.28 (VDM's γ_min = -13.3), K = 17
gives 7.74 (the digits use 8, the value their Optuna search chose, above this minimum).

λ_min (the prior term) needs no rule per dataset: D_KL(q(z_1|x)‖N(0,1)) per dimension is
½(α²(x² - 1) - log σ²) ≤ -½ log σ² = ½ log(1 + e^{λ_min}) nats for x ∈ [-1, 1], so λ_min = -5 bounds it by
0.0048 bits/dim whatever the data (VDM's γ_max = 5).

UNet size from the resolution S (DDPM's anchors: 32x32 → 32, 16, 8, 4 with attention at 16): halve while the side
is even and the half is >= 4, channel multipliers [1, 2, 2, ...], self-attention at the largest level resolution
<= 16. 32 → [1, 2, 2, 2] @16; 28 (MNIST) → 28, 14, 7: [1, 2, 2] @14; 16 → [1, 2, 2] @16.
"""

from __future__ import annotations

import math
import os

from omegaconf import OmegaConf

DECODER_MARGIN = 3.0  # m: half a level spacing over the decoder's noise std at λ_max


def logsnr_max_for_levels(num_levels: int, margin: float = DECODER_MARGIN) -> float:
    """λ_max = 2·log(m·(K-1)): decoder noise e^{-λ_max/2} = (Δ/2)/m, rounded to 2 decimals (13.28 for K = 256)."""
    k = int(num_levels)
    if k != num_levels or k < 2:
        raise ValueError(f"num_levels must be an integer >= 2, got {num_levels!r}")
    return round(2.0 * math.log(margin * (k - 1)), 2)


def prior_kl_bound_bits(logsnr_min: float) -> float:
    """The prior term's maximum over x ∈ [-1, 1] in bits/dim: at x² = 1 it is -½ log σ² = ½ log(1 + e^{λ_min}) nats."""
    return 0.5 * math.log1p(math.exp(logsnr_min)) / math.log(2.0)


def unet_resolutions(image_size: int) -> list[int]:
    """The level resolutions: halve while the side is even and the half is >= 4 (32 → [32, 16, 8, 4])."""
    size = int(image_size)
    if size != image_size or size < 1:
        raise ValueError(f"image_size must be an integer >= 1, got {image_size!r}")
    resolutions = [size]
    while resolutions[-1] % 2 == 0 and resolutions[-1] // 2 >= 4:
        resolutions.append(resolutions[-1] // 2)
    return resolutions


def unet_channel_mults(image_size: int) -> list[int]:
    """[1, 2, 2, ...], one entry per level of :func:`unet_resolutions`."""
    return [1] + [2] * (len(unet_resolutions(image_size)) - 1)


def unet_attention(image_size: int) -> list[int]:
    """Self-attention at the largest level resolution <= 16 (DDPM: 16 for 32x32); none when all are larger."""
    small = [r for r in unet_resolutions(image_size) if r <= 16]
    return [max(small)] if small else []


def launch_dir() -> str:
    """Where the command was started: Hydra's ``runtime.cwd`` once Hydra has set its config, else the process's cwd.

    ``${hydra:runtime.cwd}`` cannot be resolved before Hydra sets its config, and a sweeper plugin (Optuna's) and
    the multirun callbacks read ``hydra.sweep.dir``, which lies below ``paths.root_dir``, before that; with
    ``hydra.job.chdir=false`` both are the same folder.
    """
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return str(HydraConfig.get().runtime.cwd)
    return os.getcwd()


RESOLVERS = {
    "vdmlab.launch_dir": launch_dir,
    "vdmlab.logsnr_max": logsnr_max_for_levels,
    "vdmlab.unet_channel_mults": unet_channel_mults,
    "vdmlab.unet_attention": unet_attention,
}


def register_resolvers() -> None:
    """Register the rules as OmegaConf resolvers (idempotent)."""
    for name, fn in RESOLVERS.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)
