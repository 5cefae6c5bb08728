"""qsfl: a seeded, reproducible federated-learning simulator of QSFL and its baselines."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from qsfl.errors import ConfigError

if TYPE_CHECKING:
    from qsfl.config import SimConfig, StrategyConfig, load_config
    from qsfl.history import History
    from qsfl.sim import Simulation
    from qsfl.state import SimState

__version__ = "0.1.0"


def simulate(config: SimConfig, **kwargs: Any) -> History:
    """Run one federated simulation of ``config`` and return its History (see qsfl.sim.simulate)."""
    from qsfl.sim import simulate as _simulate

    return _simulate(config, **kwargs)


def simulate_many(configs: Sequence[SimConfig], **kwargs: Any) -> list[History] | list[tuple[History, SimState]]:
    """Run configs that differ only in their strategy in lockstep, one History each (see qsfl.sim.simulate_many)."""
    from qsfl.sim import simulate_many as _simulate_many

    return _simulate_many(configs, **kwargs)


def register_model(name: str, factory: Any, *, replace: bool = False) -> None:
    """Add a model under ``name``: ``factory(input_shape, num_classes, **model_options) -> nn.Module``
    (see qsfl.models.register_model); a config may also name it by import path, "mypkg.models:MyNet"."""
    from qsfl.models import register_model as _register

    _register(name, factory, replace=replace)


def register_dataset(name: str, loader: Any, *, replace: bool = False) -> None:
    """Add a dataset under ``name``: ``loader(seed=0, **dataset_options) -> qsfl.data.Dataset`` (see
    qsfl.data.datasets.register_dataset); a config may also name it by import path, "mypkg.data:load_mine"."""
    from qsfl.data.datasets import register_dataset as _register

    _register(name, loader, replace=replace)


#: names imported when first used, so that ``import qsfl`` (and the CLI's argument parsing) does not import torch
_LAZY = {"SimConfig": "qsfl.config", "StrategyConfig": "qsfl.config", "load_config": "qsfl.config",
         "History": "qsfl.history", "SimState": "qsfl.state", "Simulation": "qsfl.sim"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'qsfl' has no attribute {name!r}")


__all__ = ["ConfigError", "History", "SimConfig", "SimState", "Simulation", "StrategyConfig", "__version__",
           "load_config", "register_dataset", "register_model", "simulate", "simulate_many"]
