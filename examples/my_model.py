"""Bring your own model and dataset: a module qsfl imports by path (README, "Your own model and dataset").

    model = "examples.my_model:TinyNet"          in a SimConfig TOML or a study spec's [base]
    dataset = "examples.my_model:load_blobs"

The module must be importable where the simulation runs (installed, or its directory on PYTHONPATH);
pool workers import it again themselves. Or register it under a short name from Python:
``qsfl.register_model("tiny", TinyNet)``, ``qsfl.register_dataset("blobs", load_blobs)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from qsfl.data import Dataset


class TinyNet(nn.Module):
    """A one-hidden-layer network; ``width`` is a model option (model_options = { width = 32 })."""

    def __init__(self, input_shape: Sequence[int], num_classes: int, width: int = 16) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(int(np.prod(input_shape)), width), nn.ReLU(), nn.Linear(width, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1))


def load_blobs(seed: int = 0, samples: int = 600, classes: int = 4, features: int = 8) -> Dataset:
    """Gaussian blobs, one per class (seeded); 20 % held out for testing. Options: samples, classes, features."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0.0, 3.0, size=(classes, features))
    y = rng.integers(0, classes, size=samples)
    x = (centres[y] + rng.normal(size=(samples, features))).astype(np.float32)
    cut = int(0.8 * samples)
    return Dataset(name="blobs", x_train=torch.from_numpy(x[:cut]), y_train=torch.from_numpy(y[:cut]),
                   x_test=torch.from_numpy(x[cut:]), y_test=torch.from_numpy(y[cut:]), num_classes=classes)
