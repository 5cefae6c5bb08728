"""Top-k sparsification: every sampled client sends the top-p of its whole update (optional error feedback)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import numpy as np
import torch

from qsfl.comm import Ledger, sparse_message
from qsfl.segments import ceil_fraction, top_k_slots
from qsfl.strategies.base import AggregateJob, RoundInfo, VectorisedStrategy, weighted_mean
from qsfl.strategies.residuals import Residuals
from qsfl.strategy_config import TopKConfig


def bill_sparse(ledger: Ledger, counts: np.ndarray, sizes: np.ndarray, encoding: str, *,
                downlink: bool = False, clients: Sequence[int] | np.ndarray | None = None) -> None:
    """Record one sparse message per row (``counts[r]`` of ``sizes[r]`` entries; uplink unless ``downlink``;
    row r's client ``clients[r]`` when given), grouped by size."""
    if len(counts) == 0:
        return
    record = ledger.downlink if downlink else ledger.uplink
    counts = np.asarray(counts, dtype=np.int64).reshape(-1)
    sizes = np.asarray(sizes, dtype=np.int64).reshape(-1)
    # group the rows by (count, size): one key per pair (np.unique over a 1-D key, not rows of a 2-D array)
    base = int(sizes.max()) + 1
    keys, group = np.unique(counts * base + sizes, return_inverse=True)
    group = group.reshape(-1)
    ids = None if clients is None else np.asarray(clients).reshape(-1)
    for g, key in enumerate(keys.tolist()):
        count, size = divmod(key, base)
        members = np.flatnonzero(group == g) if len(keys) > 1 else np.arange(len(counts))
        msg = sparse_message(int(count), int(size), encoding)
        if ids is None:
            record(msg, count=len(members))
        else:
            record(msg, clients=ids[members])


class TopK(VectorisedStrategy):
    name = "topk"
    config_class = TopKConfig

    def __init__(self, config, n_params: int) -> None:
        super().__init__(config, n_params)
        self.residuals = Residuals(enabled=self.scfg.error_feedback)

    @classmethod
    def aggregate_many(cls, jobs: Sequence[AggregateJob]) -> list[tuple[torch.Tensor, RoundInfo]]:
        """Every job's top-p choice in one vectorised call over all their clients, then each job's mean."""
        strategies = [cast(TopK, job.strategy) for job in jobs]
        accumulated = [s.residuals.add(job.client_ids, job.cohort.weights - job.global_weights)
                       for job, s in zip(jobs, strategies)]
        k = np.concatenate([np.full(len(job.client_ids), ceil_fraction(s.scfg.p, s.n_params))
                            for job, s in zip(jobs, strategies)])
        everything = torch.cat(accumulated) if len(jobs) > 1 else accumulated[0]
        keep = top_k_slots(everything.abs(), k)
        out = []
        start = 0
        for job, s, u in zip(jobs, strategies, accumulated):
            rows = len(job.client_ids)
            sent = keep[start:start + rows]
            start += rows
            payload = u * sent.to(u.dtype)
            if s.residuals.enabled:
                s.residuals.keep_unsent(job.client_ids, u - payload, None)   # exactly the unsent entries
            bill_sparse(job.ledger, sent.sum(dim=1).cpu().numpy(), np.full(rows, u.shape[1]), s.scfg.index_encoding,
                        clients=job.client_ids)
            new = job.global_weights + weighted_mean(payload, job.cohort.num_samples)
            out.append((new, RoundInfo(qualified=[int(c) for c in job.client_ids])))
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"residuals": self.residuals.state_dict()}

    def load_state_dict(self, state: dict[str, Any], device: torch.device | str = "cpu") -> None:
        self.residuals.load_state_dict(state["residuals"], device=device)
