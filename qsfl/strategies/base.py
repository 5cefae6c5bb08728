"""The strategy interface every FL algorithm implements, and the aggregation helpers they share."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from qsfl.comm import Ledger
from qsfl.engine.common import CohortResult


@dataclass
class RoundInfo:
    """What a strategy decided in one round (for the History)."""

    qualified: list[int]
    segment_coverage: list[int] = field(default_factory=list)   # senders per segment (SCSS only)
    segment_ids: dict[int, int] = field(default_factory=dict)   # client id -> segment sent


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


class Strategy:
    """Turns a trained cohort into the next global weights, recording every uplink message.

    A subclass overrides :meth:`aggregate` (one config) or :meth:`aggregate_many` (several configs of this
    class at once, e.g. one per strategy setting in ``simulate_many``; vectorised over all their clients).
    Whatever it carries from round to round (error-feedback residuals, ...) goes through
    :meth:`state_dict` / :meth:`load_state_dict`, so a paused simulation continues exactly.
    """

    name = "base"

    def __init__(self, config, n_params: int) -> None:
        self.config = config
        self.scfg = config.strategy
        self.n_params = n_params

    def aggregate(self, round_index: int, global_weights: torch.Tensor, last_global_update: torch.Tensor | None,
                  client_ids: np.ndarray, cohort: CohortResult, ledger: Ledger) -> tuple[torch.Tensor, RoundInfo]:
        """New global weights after one round, and what was decided (uplink messages go to ``ledger``)."""
        if type(self).aggregate_many.__func__ is Strategy.aggregate_many.__func__:   # type: ignore[attr-defined]
            raise NotImplementedError(f"{type(self).__name__} must override aggregate or aggregate_many")
        job = AggregateJob(self, round_index, global_weights, last_global_update, np.asarray(client_ids), cohort,
                           ledger)
        return type(self).aggregate_many([job])[0]

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


def weighted_mean(rows: torch.Tensor, num_samples: np.ndarray) -> torch.Tensor:
    """Sample-weighted mean of the rows of ``rows`` (weights n_i / sum n_j)."""
    w = torch.as_tensor(np.asarray(num_samples, dtype=np.float64) / float(np.sum(num_samples)),
                        dtype=rows.dtype, device=rows.device)
    return w @ rows
