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


# ----- the device the engine tests run on: ``pytest --device cuda`` (benchmarks/gpu_check.sh) -----------------

# Tolerance floor on CUDA: batched GEMMs and grouped convolutions accumulate float32 sums in other orders than
# the per-client kernels of the reference loop. Not yet measured on a GPU (benchmarks/README.md).
CUDA_TOLERANCE = 1e-4


def pytest_addoption(parser):
    parser.addoption("--device", default="cpu", choices=("cpu", "cuda"),
                     help="device of the engine equivalence tests (default cpu)")


def pytest_configure(config):
    if config.getoption("--device") == "cuda" and not torch.cuda.is_available():
        raise pytest.UsageError("--device cuda: no CUDA device is available")


@pytest.fixture
def device(request):
    """The torch device of the engine tests (``--device``)."""
    dev = torch.device(request.config.getoption("--device"))
    if dev.type != "cuda":
        yield dev
        return
    # TF32 off: float32 as on CPU; deterministic cuDNN: a client trained twice gives the same bits
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
             torch.backends.cudnn.deterministic)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.deterministic = True
    try:
        yield dev
    finally:
        (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
         torch.backends.cudnn.deterministic) = saved


@pytest.fixture
def tol(device):
    """``tol(cpu_tolerance)``: the tolerance to use on the test device."""
    return lambda cpu: cpu if device.type == "cpu" else max(cpu, CUDA_TOLERANCE)
