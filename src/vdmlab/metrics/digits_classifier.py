"""A small CNN classifier of the 8x8 digits whose penultimate activations are the FID features on digits.

Inception features (FID's usual extractor) mean little on 8x8 grayscale digits upsampled to 299x299, so on the
default dataset FID is computed in the 64-d feature space of this classifier, trained on the digits training
split only by ``scripts/train_digits_classifier.py``. Its weights ship with the package
(``vdmlab/assets/digits_classifier.pt``, test accuracy and training details in ``digits_classifier.json``).

Inputs are images ``[B, 1, 8, 8]`` in the data convention, floats in [-1, 1] (x = 2v/16 - 1).
"""

from __future__ import annotations

import importlib.resources
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

NUM_FEATURES = 64
NUM_CLASSES = 10
TRAIN_COMMAND = "python scripts/train_digits_classifier.py"


class DigitsClassifierWeightsError(RuntimeError):
    """The shipped digits-classifier weights are unreadable or do not match the architecture."""


class DigitsClassifier(nn.Module):
    """conv(1→32)-conv(32→64)-maxpool-conv(64→128)-global avg pool-linear(128→64)-SiLU [features]-linear(64→10).

    ReLU after the convolutions; SiLU on the feature layer, because ReLU there left about half of the 64 units
    dead (constant 0 on every digit), i.e. a rank-deficient FID feature space.
    """

    num_features = NUM_FEATURES

    def __init__(self, num_features: int = NUM_FEATURES, num_classes: int = NUM_CLASSES):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.conv3 = nn.Conv2d(64, 128, 3, padding=1)
        self.fc = nn.Linear(128, num_features)
        self.head = nn.Linear(num_features, num_classes)
        self.num_features = num_features

    def features(self, x: Tensor) -> Tensor:
        """Penultimate activations (after the SiLU), ``[B, num_features]``: the FID feature space."""
        h = F.relu(self.conv1(x))
        h = F.max_pool2d(F.relu(self.conv2(h)), 2)
        h = F.relu(self.conv3(h)).mean(dim=(2, 3))
        return F.silu(self.fc(h))

    def forward(self, x: Tensor) -> Tensor:
        """Class logits ``[B, 10]``."""
        return self.head(self.features(x))


def class_matches(classifier: nn.Module, x: Tensor, labels: Tensor) -> Tensor:
    """Whether the classifier assigns each image of ``x`` to its label, ``[B]`` bool (for the class accuracy of
    samples drawn for those labels)."""
    with torch.no_grad():
        return classifier(x.float()).argmax(dim=1) == labels.to(x.device)


def default_weights_path() -> Path:
    """Where the shipped weights live: ``importlib.resources.files("vdmlab") / "assets/digits_classifier.pt"``."""
    return Path(str(importlib.resources.files("vdmlab") / "assets" / "digits_classifier.pt"))


def load_digits_classifier(path: str | os.PathLike | None = None) -> DigitsClassifier:
    """The trained classifier from ``path`` (default: the shipped weights), frozen and in eval mode.

    Raises FileNotFoundError if the file is missing and DigitsClassifierWeightsError if it is unreadable or
    does not match the architecture; both name the path and the command that recreates it.
    """
    path = Path(path) if path is not None else default_weights_path()
    if not path.is_file():
        raise FileNotFoundError(
            f"digits classifier weights not found at {path}; create them with `{TRAIN_COMMAND}` (about a minute on CPU)"
        )
    model = DigitsClassifier()
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state_dict)
    except Exception as err:  # unpickling, truncated zip, wrong keys or shapes: all mean "recreate the file"
        raise DigitsClassifierWeightsError(
            f"digits classifier weights at {path} are corrupt or do not match DigitsClassifier "
            f"({type(err).__name__}: {err}); recreate them with `{TRAIN_COMMAND}`"
        ) from err
    model.requires_grad_(False)
    return model.eval()
