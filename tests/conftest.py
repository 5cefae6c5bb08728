"""Shared pytest fixtures."""

from __future__ import annotations

import pytest
import torch

# One torch thread: the models under test are tiny, and extra threads only add contention on a busy
# 2-core CI machine (measured 10-100x slow-downs under load with 2 threads).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def restore_registries():
    """Models and datasets a test registers (qsfl.register_model, import paths) do not leak into other tests."""
    from qsfl.data.datasets import DATASETS
    from qsfl.models import MODELS

    models, datasets = dict(MODELS), dict(DATASETS)
    yield
    for registry, saved in ((MODELS, models), (DATASETS, datasets)):
        registry.clear()
        registry.update(saved)


@pytest.fixture
def small_config():
    """A fast digits configuration (8 clients, 3 rounds)."""
    from qsfl.config import SimConfig

    return SimConfig(dataset="digits", model="mlp", clients=8, rounds=3, batch_size=20, seed=0)
