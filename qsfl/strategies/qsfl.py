"""QSFL (Yi, Wang & Liu, ICML 2022): Qualification Judgment + Sparse Cyclic Sliding Segment.

``use_qj`` and ``use_scss`` switch the two levels independently, giving the QJ-only and SCSS-only
ablations. Without SCSS a qualified client uploads its dense update (p is then unused).
"""

from __future__ import annotations

import numpy as np
import torch

from qsfl import qualification as qj
from qsfl.comm import Ledger, dense_message, meta_message, sparse_message
from qsfl.engine.common import CohortResult
from qsfl.errors import ConfigError
from qsfl.segments import segment_bounds, segment_id, top_p_indices
from qsfl.strategies.base import RoundInfo, Strategy, weighted_mean
from qsfl.strategies.residuals import Residuals


class QSFL(Strategy):
    name = "qsfl"

    def __init__(self, config, n_params: int) -> None:
        super().__init__(config, n_params)
        if self.scfg.use_scss and self.scfg.ns > n_params:
            raise ConfigError(f"strategy.ns: {self.scfg.ns} is out of range; allowed [1, {n_params}] "
                              f"(at most the model's parameter count)")
        self.ns = self.scfg.ns if self.scfg.use_scss else 1
        self.bounds = segment_bounds(n_params, self.ns)
        self.residuals = Residuals(enabled=self.scfg.error_feedback)

    def qualify(self, global_weights: torch.Tensor, last_global_update: torch.Tensor | None,
                client_ids: np.ndarray, cohort: CohortResult, ledger: Ledger) -> np.ndarray:
        """Level 1: ids of the qualified clients (every sampled client when QJ is off)."""
        if not self.scfg.use_qj:
            return np.asarray(client_ids)
        ledger.uplink(meta_message(), count=len(client_ids))
        contrib = qj.contribution(cohort.losses, cohort.num_samples)
        if self.scfg.relevance == "weights":
            relev = qj.relevance_weights(cohort.weights, global_weights)
        else:
            relev = qj.relevance(cohort.weights - global_weights, last_global_update)
        scores = qj.score(contrib, relev, self.scfg.beta)
        if self.scfg.selection == "percentile":
            return qj.select_percentile(scores, client_ids, self.scfg.alpha)
        k = qj.qualified_count(len(client_ids), self.scfg.k, self.scfg.alpha)
        return qj.select_top(scores, client_ids, k)

    def aggregate(self, round_index, global_weights, last_global_update, client_ids: np.ndarray,
                  cohort: CohortResult, ledger: Ledger) -> tuple[torch.Tensor, RoundInfo]:
        client_ids = np.asarray(client_ids)
        qualified = self.qualify(global_weights, last_global_update, client_ids, cohort, ledger)
        rows = np.flatnonzero(np.isin(client_ids, qualified))
        updates = cohort.weights - global_weights
        if not self.scfg.use_scss:
            ledger.uplink(dense_message(self.n_params), count=len(rows))
            new = global_weights + weighted_mean(updates[rows], cohort.num_samples[rows])
            return new, RoundInfo(qualified=[int(c) for c in qualified])
        return self._scss(round_index, global_weights, client_ids, rows, cohort, updates, ledger, qualified)

    def _scss(self, round_index, global_weights, client_ids, rows, cohort, updates, ledger, qualified):
        """Level 2: each qualified client sends the top-p of its cyclic segment; average per segment."""
        acc = torch.zeros_like(global_weights)
        seg_weight = np.zeros(self.ns)
        coverage = np.zeros(self.ns, dtype=np.int64)
        sent_segments: dict[int, int] = {}
        official = self.scfg.aggregate == "official"
        qualified_rows = set(rows.tolist())
        for row in range(len(client_ids)):
            cid = int(client_ids[row])
            u = self.residuals.add(cid, updates[row])
            if row not in qualified_rows:   # unqualified: sends nothing, keeps everything as residual
                self.residuals.keep_unsent(cid, u, None)
                continue
            seg = segment_id(round_index, cid, self.ns)
            lo, hi = int(self.bounds[seg]), int(self.bounds[seg + 1])
            idx = top_p_indices(u[lo:hi], self.scfg.p) + lo
            self.residuals.keep_unsent(cid, u, idx)
            ledger.uplink(sparse_message(len(idx), hi - lo, self.scfg.index_encoding))
            n_i = float(cohort.num_samples[row])
            # "official" reproduces the authors' averaging of sparse *weights* (zeros elsewhere).
            payload = cohort.weights[row, idx] if official else u[idx]
            acc[idx] += n_i * payload
            seg_weight[seg] += n_i
            coverage[seg] += 1
            sent_segments[cid] = seg
        new = global_weights.clone()
        for seg_index in np.flatnonzero(seg_weight > 0):
            lo, hi = int(self.bounds[seg_index]), int(self.bounds[seg_index + 1])
            mean = acc[lo:hi] / seg_weight[seg_index]
            new[lo:hi] = mean if official else global_weights[lo:hi] + mean
        return new, RoundInfo(qualified=[int(c) for c in qualified], segment_coverage=coverage.tolist(),
                              segment_ids=sent_segments)
