"""Model registry: logreg, mlp, cnn1d, femnist_cnn (the QSFL paper's CNN), cnn2d (small CNN for CIFAR-10-style
images), and users' own models (:func:`register_model`, or an import path such as ``"mypkg.models:MyNet"``).

Every built-in model is buffer-free (no BatchNorm running stats) so the batched engine can vectorise it, and
reshapes its flat input itself, so datasets may store images flat or shaped.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from qsfl.errors import ConfigError, check_range


def _numel(shape: Sequence[int]) -> int:
    return int(math.prod(shape))


class LogReg(nn.Module):
    """Multinomial logistic regression on the flattened input."""

    def __init__(self, input_shape: Sequence[int], num_classes: int) -> None:
        super().__init__()
        self.linear = nn.Linear(_numel(input_shape), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1))


class MLP(nn.Module):
    """Fully connected ReLU network on the flattened input."""

    def __init__(self, input_shape: Sequence[int], num_classes: int, hidden: Sequence[int] = (128,)) -> None:
        super().__init__()
        if isinstance(hidden, (str, bytes)) or not isinstance(hidden, Sequence):
            raise ConfigError(f"model_options.hidden: expected a list of layer widths, got {hidden!r}")
        for h in hidden:
            check_range("model_options.hidden[]", h, 1, 1_000_000, integer=True)
        layers: list[nn.Module] = []
        width = _numel(input_shape)
        for h in hidden:
            layers += [nn.Linear(width, int(h)), nn.ReLU()]
            width = int(h)
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1))


class CNN1D(nn.Module):
    """Small 1-D CNN for sequence inputs such as mnist1d (length 40)."""

    def __init__(self, input_shape: Sequence[int], num_classes: int, channels: int = 32) -> None:
        super().__init__()
        check_range("model_options.channels", channels, 1, 4096, integer=True)
        length = _numel(input_shape)
        if length < 4:
            raise ConfigError(f"model: cnn1d needs inputs of length >= 4, got shape {tuple(input_shape)}")
        self.length = length
        self.conv1 = nn.Conv1d(1, channels, 5, padding=2)
        self.conv2 = nn.Conv1d(channels, channels, 5, padding=2)
        self.fc = nn.Linear(channels * (length // 4), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], 1, self.length)
        x = torch.max_pool1d(torch.relu(self.conv1(x)), 2)
        x = torch.max_pool1d(torch.relu(self.conv2(x)), 2)
        return self.fc(x.flatten(1))


class FemnistCNN(nn.Module):
    """The QSFL paper's CNN: conv(1,16,5)-relu-pool-conv(16,32,5)-relu-pool-linear(32*7*7, classes)."""

    def __init__(self, input_shape: Sequence[int], num_classes: int) -> None:
        super().__init__()
        if _numel(input_shape) != 28 * 28:
            raise ConfigError(f"model: femnist_cnn needs 28x28 single-channel inputs, got shape {tuple(input_shape)}")
        self.conv1 = nn.Conv2d(1, 16, 5, padding=2)
        self.conv2 = nn.Conv2d(16, 32, 5, padding=2)
        self.fc = nn.Linear(32 * 7 * 7, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], 1, 28, 28)
        x = torch.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = torch.max_pool2d(torch.relu(self.conv2(x)), 2)
        return self.fc(x.flatten(1))


class CNN2D(nn.Module):
    """A small 2-D CNN for (C, H, W) images such as CIFAR-10's (3, 32, 32): two 3x3 conv-relu-maxpool blocks
    (``channels`` and 2 x ``channels`` filters) and a linear classifier. Buffer-free, so the batched engine
    runs it on its folded-convolution path."""

    def __init__(self, input_shape: Sequence[int], num_classes: int, channels: int = 16) -> None:
        super().__init__()
        check_range("model_options.channels", channels, 1, 4096, integer=True)
        shape = tuple(int(d) for d in input_shape)
        if len(shape) != 3 or shape[1] < 4 or shape[2] < 4:
            raise ConfigError(f"model: cnn2d needs (channels, height, width) images of at least 4 x 4, got shape "
                              f"{shape}; for flat or 1-D inputs use mlp or cnn1d")
        self.shape = shape
        self.conv1 = nn.Conv2d(shape[0], channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, 2 * channels, 3, padding=1)
        self.fc = nn.Linear(2 * channels * (shape[1] // 4) * (shape[2] // 4), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], *self.shape)
        x = torch.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = torch.max_pool2d(torch.relu(self.conv2(x)), 2)
        return self.fc(x.flatten(1))


MODELS: dict[str, Callable[..., nn.Module]] = {
    "logreg": LogReg,
    "mlp": MLP,
    "cnn1d": CNN1D,
    "femnist_cnn": FemnistCNN,
    "cnn2d": CNN2D,
}


def register_model(name: str, factory: Callable[..., nn.Module], *, replace: bool = False) -> None:
    """Add a model: ``factory(input_shape, num_classes, **model_options)`` returns an ``nn.Module``.

    Its other keyword arguments become the model's ``model_options`` (checked like the built-ins'). A model
    without buffers (no BatchNorm) runs on the batched engine's fast paths; others fall back to vmap or the
    sequential engine. Registering an existing name is an error unless ``replace``.
    """
    from qsfl.plugins import registration_params

    params = registration_params("model", MODELS, name, factory, replace)
    if params[:2] != ["input_shape", "num_classes"]:
        raise ConfigError(f"model: {name!r}: the factory's first arguments must be (input_shape, num_classes), "
                          f"got ({', '.join(params)})")
    MODELS[name] = factory


def resolve_model(name: str) -> None:
    """Register an import-path model name (``"mypkg.models:MyNet"``) on first use; other names are left alone."""
    from qsfl.plugins import is_import_path, load_object

    if is_import_path(name) and name not in MODELS:
        register_model(name, load_object(name, "model"))


def model_options(name: str) -> list[str]:
    """The option names the named model accepts (beyond input shape and class count)."""
    import inspect

    params = list(inspect.signature(MODELS[name]).parameters)
    return [p for p in params if p not in ("input_shape", "num_classes")]


def build_model(name: str, input_shape: Sequence[int], num_classes: int, seed: int = 0,
                **options: Any) -> nn.Module:
    """Instantiate a registered model with weights initialised from ``seed``."""
    resolve_model(name)
    if name not in MODELS:
        raise ConfigError(f"model: unknown value {name!r}; valid: {', '.join(sorted(MODELS))}")
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        return MODELS[name](tuple(input_shape), int(num_classes), **options)
    except TypeError as exc:
        raise ConfigError(f"model_options: invalid options for {name!r}: {exc}") from None
    finally:
        torch.random.set_rng_state(generator_state)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable scalar parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
