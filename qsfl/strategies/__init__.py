"""FL algorithms behind one interface (qsfl.strategies.base.Strategy): fedavg, topk, qsfl (with QJ-only /
SCSS-only ablations). Each is registered here; a user's strategy is added with :func:`register_strategy`."""

from __future__ import annotations

from qsfl.strategies.base import (
    AggregateJob,
    RoundInfo,
    RoundPlan,
    Strategy,
    VectorisedStrategy,
    make_strategy,
    register_strategy,
    strategy_class,
    weighted_mean,
)
from qsfl.strategies.fedavg import FedAvg
from qsfl.strategies.qsfl import QSFL
from qsfl.strategies.topk import TopK

for _cls in (FedAvg, TopK, QSFL):
    register_strategy(_cls)

__all__ = [
    "QSFL",
    "AggregateJob",
    "FedAvg",
    "RoundInfo",
    "RoundPlan",
    "Strategy",
    "TopK",
    "VectorisedStrategy",
    "make_strategy",
    "register_strategy",
    "strategy_class",
    "weighted_mean",
]
