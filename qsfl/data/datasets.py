"""Dataset registry. Nothing is downloaded: built-in data is bundled or generated, the rest is read
from local files given by path."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from qsfl.config import ConfigError


@dataclass
class Dataset:
    """Train/test tensors of one dataset. ``client_ids`` gives a natural owner per training sample."""

    name: str
    x_train: torch.Tensor          # float32, (N, *input_shape)
    y_train: torch.Tensor          # int64, (N,)
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    client_ids: np.ndarray | None = None   # int64 (N,), natural client of each training sample

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])


def _split(x: np.ndarray, y: np.ndarray, test_fraction: float, seed: int):
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(y))
    n_test = int(round(test_fraction * len(y)))
    test, train = order[:n_test], order[n_test:]
    return x[train], y[train], x[test], y[test]


def _tensors(name: str, xtr, ytr, xte, yte, num_classes: int, client_ids=None) -> Dataset:
    return Dataset(name=name,
                   x_train=torch.as_tensor(np.ascontiguousarray(xtr), dtype=torch.float32),
                   y_train=torch.as_tensor(np.ascontiguousarray(ytr), dtype=torch.int64),
                   x_test=torch.as_tensor(np.ascontiguousarray(xte), dtype=torch.float32),
                   y_test=torch.as_tensor(np.ascontiguousarray(yte), dtype=torch.int64),
                   num_classes=num_classes, client_ids=client_ids)


def load_digits(seed: int = 0, test_fraction: float = 0.2) -> Dataset:
    """scikit-learn's bundled 8x8 digits (1797 samples, 64 features scaled to [0, 1], 10 classes)."""
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    x = (bunch.data / 16.0).astype(np.float32)
    y = bunch.target.astype(np.int64)
    return _tensors("digits", *_split(x, y, test_fraction, seed), num_classes=10)


DATASETS: dict[str, Callable[..., Dataset]] = {
    "digits": load_digits,
}


def load_dataset(name: str, seed: int = 0, **options: Any) -> Dataset:
    """Load a registered dataset; ``options`` are the loader's keyword arguments (e.g. path)."""
    if name not in DATASETS:
        raise ConfigError(f"dataset: unknown value {name!r}; valid: {', '.join(sorted(DATASETS))}")
    try:
        return DATASETS[name](seed=seed, **options)
    except TypeError as exc:
        raise ConfigError(f"dataset_options: invalid options for {name!r}: {exc}") from None
