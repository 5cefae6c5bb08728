"""Shared pytest fixtures."""

from __future__ import annotations

import os

import pytest
import torch

# Tests run on CPU with few threads so the suite behaves the same on 2-core CI machines.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture
def small_config():
    """A fast digits configuration (8 clients, 3 rounds)."""
    from qsfl.config import SimConfig

    return SimConfig(dataset="digits", model="mlp", clients=8, rounds=3, batch_size=20, seed=0)
