"""The Strategy API every FL algorithm implements (in the style of Flower's Strategy), the registry of
strategies, and the aggregation helpers they share.

A round of the simulator, for one strategy::

    plan = strategy.configure_round(t, global_weights, sampled_ids, ledger)   # who trains, from what; downlink
    cohort = engine.train(plan.start, plan.client_ids, t)                      # local training
    new_weights, info = strategy.aggregate(t, global_weights, last_update, plan.client_ids, cohort, ledger)

``configure_round`` decides which clients train and what each one receives (its start weights) and bills
the downlink messages; ``aggregate`` bills the uplink messages and returns the new global weights with a
:class:`RoundInfo` whose ``metrics`` become History columns. What a strategy carries between rounds goes
through ``state_dict`` / ``load_state_dict`` (a paused simulation continues exactly).

Adding a strategy is one file: a config dataclass (subclass of :class:`~qsfl.strategy_config.StrategyConfig`
with ``strategy_name``), a :class:`Strategy` subclass with ``name`` and ``config_class``, and
``register_strategy(MyStrategy)``. Copy ``qsfl/strategies/topk.py``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import numpy as np
import torch

from qsfl.comm import Ledger, dense_message
from qsfl.engine.common import CohortResult
from qsfl.errors import ConfigError
from qsfl.strategies.residuals import Residuals
from qsfl.strategy_config import StrategyConfig, register_config, strategy_names
from qsfl.system import SystemConfig


class RunConfig(Protocol):
    """What a strategy reads of the simulation's config (a :class:`qsfl.config.SimConfig`)."""

    @property
    def strategy(self) -> StrategyConfig: ...

    @property
    def clients(self) -> int: ...

    @property
    def seed(self) -> int: ...

    @property
    def system(self) -> SystemConfig | None: ...


@dataclass
class RoundPlan:
    """What :meth:`Strategy.configure_round` decided: who trains this round, and from which weights."""

    client_ids: np.ndarray                  # the clients that train (rows of the engine call), ascending
    start: torch.Tensor                     # (n,) one start for all, or (rows, n) each client's own
    metrics: dict[str, Any] = field(default_factory=dict)   # downlink-side History columns


@dataclass
class RoundInfo:
    """What :meth:`Strategy.aggregate` decided: whose update was aggregated, and History columns (``metrics``)."""

    qualified: list[int]
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def segment_coverage(self) -> list[int]:
        """Senders per segment (SCSS strategies; empty otherwise)."""
        return list(self.metrics.get("segment_coverage", []))

    @property
    def segment_ids(self) -> dict[int, int]:
        """Client id -> the segment it sent (SCSS strategies; empty otherwise). The columns: ``segment_ids`` in
        the order of ``segment_senders``, or of the qualified clients when those are the senders."""
        senders = self.metrics.get("segment_senders", self.qualified)
        return dict(zip(senders, self.metrics.get("segment_ids", [])))


@dataclass
class AggregateJob:
    """One config's aggregation of one round: the inputs of :meth:`Strategy.aggregate`."""

    strategy: Strategy
    round_index: int
    global_weights: torch.Tensor
    last_global_update: torch.Tensor | None
    client_ids: np.ndarray
    cohort: CohortResult
    ledger: Ledger


class Strategy(ABC):
    """Decides what each round's clients receive and turns their training into the next global weights.

    A subclass sets ``name`` and ``config_class`` and implements :meth:`aggregate`; one whose work is
    written for many configs at once derives from :class:`VectorisedStrategy` instead.
    """

    name: ClassVar[str] = ""
    config_class: ClassVar[type[StrategyConfig]] = StrategyConfig

    def __init__(self, config: RunConfig, n_params: int) -> None:
        if not isinstance(config.strategy, self.config_class):
            raise ConfigError(f"strategy: {type(self).__name__} needs a {self.config_class.__name__}, "
                              f"got {type(config.strategy).__name__}")
        self.config = config
        self.scfg: Any = config.strategy
        self.n_params = n_params

    def configure_round(self, round_index: int, global_weights: torch.Tensor, client_ids: np.ndarray,
                        ledger: Ledger) -> RoundPlan:
        """Which of the sampled ``client_ids`` train and from which weights; bills the downlink in ``ledger``.

        Default: the dense downlink. Every sampled client receives the whole float32 model (one dense
        message each) and starts from the global weights.
        """
        ids = np.asarray(client_ids)
        ledger.downlink(dense_message(self.n_params), clients=ids)
        return RoundPlan(ids, global_weights)

    @abstractmethod
    def aggregate(self, round_index: int, global_weights: torch.Tensor, last_global_update: torch.Tensor | None,
                  client_ids: np.ndarray, cohort: CohortResult, ledger: Ledger) -> tuple[torch.Tensor, RoundInfo]:
        """New global weights after one round, and what was decided (uplink messages go to ``ledger``).

        ``client_ids`` and the rows of ``cohort`` are those of this round's :class:`RoundPlan`.
        """

    @classmethod
    def aggregate_many(cls, jobs: Sequence[AggregateJob]) -> list[tuple[torch.Tensor, RoundInfo]]:
        """:meth:`aggregate` of every job (each job's strategy is an instance of ``cls``), in order."""
        return [job.strategy.aggregate(job.round_index, job.global_weights, job.last_global_update,
                                       job.client_ids, job.cohort, job.ledger) for job in jobs]

    def state_dict(self) -> dict[str, Any]:
        """What the strategy carries between rounds, as CPU tensors and plain values (picklable)."""
        return {}

    def load_state_dict(self, state: dict[str, Any], device: torch.device | str = "cpu") -> None:
        """Restore :meth:`state_dict`'s result onto ``device`` (the simulation's)."""
        if state:
            raise ValueError(f"{type(self).__name__} carries no state between rounds, got {sorted(state)}")


class VectorisedStrategy(Strategy):
    """A strategy written for many configs at once: :meth:`aggregate_many` does the work (one vectorised
    call for the clients of every config), :meth:`aggregate` is its one-config case."""

    def aggregate(self, round_index: int, global_weights: torch.Tensor, last_global_update: torch.Tensor | None,
                  client_ids: np.ndarray, cohort: CohortResult, ledger: Ledger) -> tuple[torch.Tensor, RoundInfo]:
        job = AggregateJob(self, round_index, global_weights, last_global_update, np.asarray(client_ids), cohort,
                           ledger)
        return type(self).aggregate_many([job])[0]

    @classmethod
    @abstractmethod
    def aggregate_many(cls, jobs: Sequence[AggregateJob]) -> list[tuple[torch.Tensor, RoundInfo]]:
        """Every job's aggregation (each job's strategy is an instance of ``cls``), in order."""


class CompressedUpdates(Strategy):
    """A strategy in which every sampled client sends a compressed version of its update (plus its residual
    with error feedback) and the server adds their sample-weighted mean. A subclass implements
    :meth:`compress` for all clients at once; the residual is what compression left out."""

    def __init__(self, config: RunConfig, n_params: int) -> None:
        super().__init__(config, n_params)
        self.residuals = Residuals(enabled=bool(getattr(self.scfg, "error_feedback", False)))

    @abstractmethod
    def compress(self, round_index: int, client_ids: np.ndarray, updates: torch.Tensor,
                 ledger: Ledger) -> torch.Tensor:
        """The ``(C, n)`` decompressed updates the server receives; bills each client's message in ``ledger``."""

    def aggregate(self, round_index: int, global_weights: torch.Tensor, last_global_update: torch.Tensor | None,
                  client_ids: np.ndarray, cohort: CohortResult, ledger: Ledger) -> tuple[torch.Tensor, RoundInfo]:
        ids = np.asarray(client_ids)
        accumulated = self.residuals.add(ids, cohort.weights - global_weights)
        received = self.compress(round_index, ids, accumulated, ledger)
        self.residuals.keep_unsent(ids, accumulated - received, None)
        new = global_weights + weighted_mean(received, cohort.num_samples)
        return new, RoundInfo(qualified=[int(c) for c in ids])

    def state_dict(self) -> dict[str, Any]:
        return {"residuals": self.residuals.state_dict()}

    def load_state_dict(self, state: dict[str, Any], device: torch.device | str = "cpu") -> None:
        self.residuals.load_state_dict(state["residuals"], device=device)


_STRATEGIES: dict[str, type[Strategy]] = {}   # name -> implementation; the names are strategy_names()'s


def register_strategy(cls: type[Strategy]) -> type[Strategy]:
    """Register a strategy (its ``config_class`` too): ``[strategy] name = cls.name`` then runs it."""
    if not cls.name or cls.config_class.strategy_name != cls.name:
        raise TypeError(f"{cls.__name__}: name {cls.name!r} and config_class.strategy_name "
                        f"{cls.config_class.strategy_name!r} must be the same non-empty name")
    register_config(cls.config_class)
    known = _STRATEGIES.get(cls.name)
    if known is not None and known is not cls:
        raise ValueError(f"strategy {cls.name!r} is already registered ({known.__name__})")
    _STRATEGIES[cls.name] = cls
    return cls


def strategy_class(name: str) -> type[Strategy]:
    """The implementation registered for strategy ``name``."""
    if name not in _STRATEGIES:
        raise ConfigError(f"strategy.name: {name!r} has a config but no registered implementation; "
                          f"implemented: {', '.join(n for n in strategy_names() if n in _STRATEGIES)}")
    return _STRATEGIES[name]


def make_strategy(config: RunConfig, n_params: int) -> Strategy:
    """Instantiate the strategy named in ``config.strategy.name``."""
    return strategy_class(config.strategy.name)(config, n_params)


def weighted_mean(rows: torch.Tensor, num_samples: np.ndarray) -> torch.Tensor:
    """Sample-weighted mean of the rows of ``rows`` (weights n_i / sum n_j)."""
    w = torch.as_tensor(np.asarray(num_samples, dtype=np.float64) / float(np.sum(num_samples)),
                        dtype=rows.dtype, device=rows.device)
    return w @ rows
