"""The strategy interface every FL algorithm implements, and the aggregation helpers they share."""

from __future__ import annotations

from dataclasses import dataclass, field

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


class Strategy:
    """Turns a trained cohort into the next global weights, recording every uplink message."""

    name = "base"

    def __init__(self, config, n_params: int) -> None:
        self.config = config
        self.scfg = config.strategy
        self.n_params = n_params

    def aggregate(self, round_index: int, global_weights: torch.Tensor, last_global_update: torch.Tensor | None,
                  client_ids: np.ndarray, cohort: CohortResult, ledger: Ledger) -> tuple[torch.Tensor, RoundInfo]:
        raise NotImplementedError


def weighted_mean(rows: torch.Tensor, num_samples: np.ndarray) -> torch.Tensor:
    """Sample-weighted mean of the rows of ``rows`` (weights n_i / sum n_j)."""
    w = torch.as_tensor(np.asarray(num_samples, dtype=np.float64) / float(np.sum(num_samples)),
                        dtype=rows.dtype, device=rows.device)
    return w @ rows
