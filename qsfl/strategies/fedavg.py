"""FedAvg: every sampled client uploads its dense update; the server adds their sample-weighted mean."""

from __future__ import annotations

import numpy as np
import torch

from qsfl.comm import Ledger, dense_message
from qsfl.engine.common import CohortResult
from qsfl.strategies.base import RoundInfo, Strategy, weighted_mean
from qsfl.strategy_config import FedAvgConfig


class FedAvg(Strategy):
    name = "fedavg"
    config_class = FedAvgConfig

    def aggregate(self, round_index, global_weights, last_global_update, client_ids: np.ndarray,
                  cohort: CohortResult, ledger: Ledger) -> tuple[torch.Tensor, RoundInfo]:
        ledger.uplink(dense_message(self.n_params), clients=client_ids)
        updates = cohort.weights - global_weights
        new = global_weights + weighted_mean(updates, cohort.num_samples)
        return new, RoundInfo(qualified=[int(c) for c in client_ids])
