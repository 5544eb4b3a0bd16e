"""Class labels of a class-conditional model (``dataset.conditional=true``): the checks of the labels that batches
and sampling requests carry, the null class ∅ of classifier-free guidance and balanced label sets."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor


class ClassLabels:
    """The labels a model takes: none (``num_classes`` None, unconditional) or 0 … C-1, with ∅ = C."""

    def __init__(self, num_classes: int | None):
        self.num_classes = num_classes

    def check_batch(self, y: Tensor | None) -> Tensor | None:
        """A batch's labels, checked against the model: conditional models need them, unconditional ones take none."""
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

    def check_sampling(self, labels: Tensor | Iterable[int] | None, device: torch.device | None = None) -> Tensor | None:
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
        labels = torch.as_tensor(labels, dtype=torch.long, device=device)
        bad = labels[(labels < 0) | (labels >= self.num_classes)]
        if bad.numel():
            raise ValueError(
                f"label {int(bad[0])} is outside [0, {self.num_classes}): this model has classes "
                f"0..{self.num_classes - 1}; use label=0..{self.num_classes - 1} or labels=all"
            )
        return labels

    def null(self, like: Tensor) -> Tensor:
        """The null class ∅ (index ``num_classes``) for every example of a label batch."""
        return torch.full_like(like, self.num_classes)

    def balanced(self, indices: Iterable[int], device: torch.device | None = None) -> Tensor:
        """Labels ``i mod num_classes`` for sample indices i: every class equally often (FID, sample grids)."""
        return torch.as_tensor(list(indices), dtype=torch.long, device=device) % self.num_classes
