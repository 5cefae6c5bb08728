"""FL algorithms behind one interface: fedavg, topk, qsfl (with QJ-only / SCSS-only ablations)."""

from __future__ import annotations

from qsfl.strategies.base import RoundInfo, Strategy, weighted_mean
from qsfl.strategies.fedavg import FedAvg
from qsfl.strategies.qsfl import QSFL
from qsfl.strategies.topk import TopK

STRATEGY_CLASSES: dict[str, type[Strategy]] = {"fedavg": FedAvg, "topk": TopK, "qsfl": QSFL}


def make_strategy(config, n_params: int) -> Strategy:
    """Instantiate the strategy named in ``config.strategy.name``."""
    return STRATEGY_CLASSES[config.strategy.name](config, n_params)


__all__ = [
    "QSFL",
    "STRATEGY_CLASSES",
    "FedAvg",
    "RoundInfo",
    "Strategy",
    "TopK",
    "make_strategy",
    "weighted_mean",
]
