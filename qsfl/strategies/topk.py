"""Top-k sparsification: every sampled client sends the top-p of its whole update (optional error feedback)."""

from __future__ import annotations

import numpy as np
import torch

from qsfl.comm import Ledger, sparse_message
from qsfl.engine.common import CohortResult
from qsfl.segments import top_p_indices
from qsfl.strategies.base import RoundInfo, Strategy, weighted_mean
from qsfl.strategies.residuals import Residuals


class TopK(Strategy):
    name = "topk"

    def __init__(self, config, n_params: int) -> None:
        super().__init__(config, n_params)
        self.residuals = Residuals(enabled=self.scfg.error_feedback)

    def aggregate(self, round_index, global_weights, last_global_update, client_ids: np.ndarray,
                  cohort: CohortResult, ledger: Ledger) -> tuple[torch.Tensor, RoundInfo]:
        updates = cohort.weights - global_weights
        sparse = torch.zeros_like(updates)
        for row, cid in enumerate(client_ids):
            u = self.residuals.add(int(cid), updates[row])
            idx = top_p_indices(u, self.scfg.p)
            sparse[row, idx] = u[idx]
            self.residuals.keep_unsent(int(cid), u, idx)
            ledger.uplink(sparse_message(len(idx), self.n_params, self.scfg.index_encoding))
        new = global_weights + weighted_mean(sparse, cohort.num_samples)
        return new, RoundInfo(qualified=[int(c) for c in client_ids])
