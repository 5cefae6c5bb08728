"""Top-k sparsification: every sampled client sends the top-p of its whole update (optional error feedback)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from qsfl.comm import Ledger, sparse_message
from qsfl.segments import ceil_fraction, top_k_rows
from qsfl.strategies.base import AggregateJob, RoundInfo, Strategy, weighted_mean
from qsfl.strategies.residuals import Residuals


def bill_sparse(ledger: Ledger, counts: np.ndarray, sizes: np.ndarray, encoding: str) -> None:
    """Record one sparse uplink message per row (``counts[r]`` of ``sizes[r]`` entries), grouped by size."""
    if len(counts) == 0:
        return
    pairs, times = np.unique(np.stack([counts, sizes], axis=1), axis=0, return_counts=True)
    for (count, size), m in zip(pairs.tolist(), times.tolist()):
        ledger.uplink(sparse_message(int(count), int(size), encoding), count=int(m))


class TopK(Strategy):
    name = "topk"

    def __init__(self, config, n_params: int) -> None:
        super().__init__(config, n_params)
        self.residuals = Residuals(enabled=self.scfg.error_feedback)

    @classmethod
    def aggregate_many(cls, jobs: Sequence[AggregateJob]) -> list[tuple[torch.Tensor, RoundInfo]]:
        """Every job's top-p choice in one vectorised call over all their clients, then each job's mean."""
        accumulated = []
        for job in jobs:
            updates = job.cohort.weights - job.global_weights
            accumulated.append(job.strategy.residuals.add(job.client_ids, updates))   # type: ignore[attr-defined]
        k = np.concatenate([np.full(len(job.client_ids), ceil_fraction(job.strategy.scfg.p, job.strategy.n_params))
                            for job in jobs])
        everything = torch.cat(accumulated) if len(jobs) > 1 else accumulated[0]
        n = everything.shape[1]
        masks = top_k_rows(everything, np.zeros(len(k), dtype=np.int64), np.full(len(k), n), k)
        out = []
        start = 0
        for job, u in zip(jobs, accumulated):
            rows = len(job.client_ids)
            sent = masks[start:start + rows]
            start += rows
            strategy: Any = job.strategy
            strategy.residuals.keep_unsent(job.client_ids, u, sent)
            bill_sparse(job.ledger, sent.sum(dim=1).cpu().numpy(), np.full(rows, n), strategy.scfg.index_encoding)
            new = job.global_weights + weighted_mean(u.masked_fill(~sent, 0.0), job.cohort.num_samples)
            out.append((new, RoundInfo(qualified=[int(c) for c in job.client_ids])))
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"residuals": self.residuals.state_dict()}

    def load_state_dict(self, state: dict[str, Any], device: torch.device | str = "cpu") -> None:
        self.residuals.load_state_dict(state["residuals"], device=device)
