"""FL algorithms behind one interface (qsfl.strategies.base.Strategy): fedavg, topk, qsfl (with QJ-only /
SCSS-only ablations and downlink compression) and the compression baselines randk, qsgd, signsgd, stc. Each is
registered here; a user's strategy is added with :func:`register_strategy`."""

from __future__ import annotations

from qsfl.strategies.base import (
    AggregateJob,
    CompressedUpdates,
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
from qsfl.strategies.qsgd import QSGD
from qsfl.strategies.randk import RandK
from qsfl.strategies.signsgd import SignSGD
from qsfl.strategies.stc import STC
from qsfl.strategies.topk import TopK

for _cls in (FedAvg, TopK, QSFL, RandK, QSGD, SignSGD, STC):
    register_strategy(_cls)

__all__ = [
    "QSFL",
    "QSGD",
    "STC",
    "AggregateJob",
    "CompressedUpdates",
    "FedAvg",
    "RandK",
    "RoundInfo",
    "RoundPlan",
    "SignSGD",
    "Strategy",
    "TopK",
    "VectorisedStrategy",
    "make_strategy",
    "register_strategy",
    "strategy_class",
    "weighted_mean",
]
