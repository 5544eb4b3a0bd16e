"""Non-leaky geometric augmentation (Karras et al. 2022, EDM, App. B.2 / §5 "augmentation regularization").

A training image is transformed with probability ``p`` per augmentation, and the network is told which transform
it saw through a label vector (its ``augment_labels`` conditioning). Sampling and evaluation give no label, which
the network reads as "not augmented" (the label embedding is bias-free, so a zero label adds nothing): the model
learns the augmented distributions as separate conditionals, and the unaugmented one is what it samples and what
the ELBO measures, so the augmentations do not leak into the samples.

Only the transforms that permute pixels are implemented: x-flip, y-flip, rotation by a multiple of 90° and integer
translation with reflection at the border (EDM's ``xflip``, ``yflip``, ``rotate_int`` and ``translate_int``, the
same label layout). They keep every image on its K-level grid, so the discretised decoder and bits/dim stay exact;
EDM's fractional ones (scale, arbitrary rotation, anisotropy, fractional translation) resample and are left out.
The random draws come from the caller's generator (the module's training-noise generator, so resumed runs are exact).
"""

from __future__ import annotations

import torch
from torch import Tensor

from vdmlab.checks import ParameterError, check_float

#: entries of the label vector: x-flip, y-flip, rotation (two bits: which of 0°, 90°, 180°, 270°), translation (x, y)
LABEL_DIM = 6


class GeometricAugment:
    """EDM's pixel-exact geometric augmentations with probability ``p``; ``__call__(x, generator) -> (x', labels)``.

    Each augmentation is applied with probability ``p`` times its multiplier (EDM's ``AugmentPipe(p, xflip=…)``
    convention: a multiplier of 1e8 means "always", e.g. EDM's x-flips on CIFAR-10); when applied, the flip is drawn
    with probability ½, the rotation uniformly from {0°, 90°, 180°, 270°}, and the translation uniformly in
    ±``translate_int_max`` of the image side, rounded to whole pixels. ``labels`` ``[B, 6]`` is zero for an
    unaugmented image.
    """

    label_dim = LABEL_DIM

    def __init__(self, p: float = 0.12, xflip: float = 1.0, yflip: float = 1.0, rotate_int: float = 1.0,
                 translate_int: float = 1.0, translate_int_max: float = 0.125):
        self.p = check_float("p", p, minimum=0.0, maximum=1.0)
        self.xflip, self.yflip = check_float("xflip", xflip, minimum=0.0), check_float("yflip", yflip, minimum=0.0)
        self.rotate_int = check_float("rotate_int", rotate_int, minimum=0.0)
        self.translate_int = check_float("translate_int", translate_int, minimum=0.0)
        self.translate_int_max = check_float("translate_int_max", translate_int_max, minimum=0.0, maximum=1.0)

    def _applied(self, multiplier: float, shape: tuple[int, ...], generator, device) -> Tensor:
        """Whether each example gets this augmentation: probability min(1, multiplier·p)."""
        return torch.rand(shape, generator=generator, device=device) < multiplier * self.p

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        if x.ndim != 4 or x.shape[-1] != x.shape[-2]:
            raise ParameterError("module.augment", type(self).__name__, f"geometric augmentation needs square images "
                                 f"[B, C, H, H], got {tuple(x.shape)}; use augment=null for this data")
        n, c, h, w = x.shape
        device = x.device
        shape = (n, 1, 1, 1)
        # x-flip and y-flip: each a bit drawn with probability ½ where applied
        flip_x = torch.randint(2, shape, generator=generator, device=device) * self._applied(self.xflip, shape, generator, device)
        x = torch.where(flip_x == 1, x.flip(3), x)
        flip_y = torch.randint(2, shape, generator=generator, device=device) * self._applied(self.yflip, shape, generator, device)
        x = torch.where(flip_y == 1, x.flip(2), x)
        # rotation by k·90°, k uniform in {0, 1, 2, 3}, written as flips and a transpose (EDM's rotate_int)
        k = torch.randint(4, shape, generator=generator, device=device) * self._applied(self.rotate_int, shape, generator, device)
        x = torch.where((k == 1) | (k == 2), x.flip(3), x)
        x = torch.where((k == 2) | (k == 3), x.flip(2), x)
        x = torch.where((k == 1) | (k == 3), x.transpose(2, 3), x)
        # integer translation with reflection at the border
        shift = torch.rand((2, n, 1, 1, 1), generator=generator, device=device) * 2 - 1
        shift = shift * self._applied(self.translate_int, (1, n, 1, 1, 1), generator, device)
        tx = (shift[0] * (w * self.translate_int_max)).round().long()
        ty = (shift[1] * (h * self.translate_int_max)).round().long()
        if w > 1 and h > 1:
            col = torch.arange(w, device=device).view(1, 1, 1, w)
            row = torch.arange(h, device=device).view(1, 1, h, 1)
            col = (w - 1 - (w - 1 - (col - tx) % (2 * w - 2)).abs()).expand(n, c, h, w)
            row = (h - 1 - (h - 1 - (row - ty) % (2 * h - 2)).abs()).expand(n, c, h, w)
            x = x.gather(2, row).gather(3, col)
        scale = max(w * self.translate_int_max, 1e-12)
        labels = [flip_x, flip_y, (k == 1) | (k == 2), (k == 2) | (k == 3), tx / scale, ty / scale]
        return x, torch.cat([v.reshape(n, 1).to(x.dtype) for v in labels], dim=1)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(p={self.p}, xflip={self.xflip}, yflip={self.yflip}, rotate_int={self.rotate_int}, "
                f"translate_int={self.translate_int}, translate_int_max={self.translate_int_max})")


def check_augment(augment, net=None):
    """``augment`` checked: None or an augmentation with ``label_dim`` labels; with ``net``, a network that takes them
    (``model.augment_dim`` equal to ``label_dim``). Returns ``augment``."""
    if augment is None:
        return None
    if not callable(augment) or not isinstance(getattr(augment, "label_dim", None), int):
        raise ParameterError("module.augment", augment, "null or an augmentation config (augment=edm)")
    if net is not None and getattr(net, "augment_dim", 0) != augment.label_dim:
        raise ParameterError("model.augment_dim", getattr(net, "augment_dim", None),
                             f"the augmentation gives the network {augment.label_dim} labels: set "
                             f"model.augment_dim={augment.label_dim} (augment=edm does) on a network that takes them (unet)")
    return augment
