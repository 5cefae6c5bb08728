"""QSFL (Yi, Wang & Liu, ICML 2022): Qualification Judgment + Sparse Cyclic Sliding Segment.

``use_qj`` and ``use_scss`` switch the two levels independently, giving the QJ-only and SCSS-only
ablations. Without SCSS a qualified client uploads its dense update (p is then unused).

SCSS runs vectorised: one top-p call (:func:`qsfl.segments.top_k_rows`) for the qualified clients of every
job together, and each job's per-segment means as a few tensor ops, with no Python loop over clients.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from qsfl import qualification as qj
from qsfl.comm import Ledger, dense_message, meta_message
from qsfl.engine.common import CohortResult
from qsfl.errors import ConfigError
from qsfl.segments import ceil_fraction, segment_bounds, top_k_rows
from qsfl.strategies.base import AggregateJob, RoundInfo, Strategy, weighted_mean
from qsfl.strategies.residuals import Residuals
from qsfl.strategies.topk import bill_sparse


class QSFL(Strategy):
    name = "qsfl"

    def __init__(self, config, n_params: int) -> None:
        super().__init__(config, n_params)
        if self.scfg.use_scss and self.scfg.ns > n_params:
            raise ConfigError(f"strategy.ns: {self.scfg.ns} is out of range; allowed [1, {n_params}] "
                              f"(at most the model's parameter count)")
        self.ns = self.scfg.ns if self.scfg.use_scss else 1
        self.bounds = segment_bounds(n_params, self.ns)
        self.sizes = np.diff(self.bounds)
        # entries sent of each segment: ceil(p * size), computed once (segment sizes differ by at most one)
        self.keep = np.array([ceil_fraction(self.scfg.p, int(s)) for s in self.sizes], dtype=np.int64)
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

    @classmethod
    def aggregate_many(cls, jobs: Sequence[AggregateJob]) -> list[tuple[torch.Tensor, RoundInfo]]:
        """QJ per job, then one vectorised top-p over the qualified clients of every SCSS job."""
        out: list[Any] = [None] * len(jobs)
        pending = []   # (job index, qualified ids, qualified rows, accumulated updates, segment ids)
        for i, job in enumerate(jobs):
            s: Any = job.strategy
            ids = np.asarray(job.client_ids)
            qualified = s.qualify(job.global_weights, job.last_global_update, ids, job.cohort, job.ledger)
            rows = np.flatnonzero(np.isin(ids, qualified))
            updates = job.cohort.weights - job.global_weights
            if not s.scfg.use_scss:
                job.ledger.uplink(dense_message(s.n_params), count=len(rows))
                new = job.global_weights + weighted_mean(updates[rows], job.cohort.num_samples[rows])
                out[i] = (new, RoundInfo(qualified=[int(c) for c in qualified]))
                continue
            u = s.residuals.add(ids, updates)
            segments = (int(job.round_index) + ids[rows].astype(np.int64)) % s.ns
            pending.append((i, qualified, rows, u, segments))
        if pending:
            chosen = [p[3][torch.as_tensor(p[2], dtype=torch.long, device=p[3].device)] for p in pending]
            lo = np.concatenate([jobs[p[0]].strategy.bounds[p[4]] for p in pending])   # type: ignore[attr-defined]
            hi = np.concatenate([jobs[p[0]].strategy.bounds[p[4] + 1] for p in pending])   # type: ignore[attr-defined]
            k = np.concatenate([jobs[p[0]].strategy.keep[p[4]] for p in pending])   # type: ignore[attr-defined]
            masks = top_k_rows(torch.cat(chosen) if len(chosen) > 1 else chosen[0], lo, hi, k)
            start = 0
            for (i, qualified, rows, u, segments), sel in zip(pending, chosen):
                sent = masks[start:start + len(rows)]
                start += len(rows)
                out[i] = jobs[i].strategy._scss(jobs[i], qualified, rows, u, sel, segments, sent)   # type: ignore[attr-defined]
        return out

    def _scss(self, job: AggregateJob, qualified: np.ndarray, rows: np.ndarray, u: torch.Tensor,
              chosen: torch.Tensor, segments: np.ndarray, sent: torch.Tensor) -> tuple[torch.Tensor, RoundInfo]:
        """Level 2 of one job: residuals, bytes and the per-segment sample-weighted means of what was sent."""
        ids = np.asarray(job.client_ids)
        g = job.global_weights
        if self.residuals.enabled:   # unqualified clients keep everything, qualified ones what they did not send
            unsent = torch.zeros_like(u, dtype=torch.bool)
            unsent[torch.as_tensor(rows, dtype=torch.long, device=u.device)] = sent
            self.residuals.keep_unsent(ids, u, unsent)
        bill_sparse(job.ledger, sent.sum(dim=1).cpu().numpy(), self.sizes[segments], self.scfg.index_encoding)
        n_i = np.asarray(job.cohort.num_samples, dtype=np.float64)[rows]
        official = self.scfg.aggregate == "official"
        # "official" reproduces the authors' averaging of sparse *weights* (zeros elsewhere).
        payload = job.cohort.weights[torch.as_tensor(rows, dtype=torch.long, device=u.device)] if official else chosen
        acc = torch.as_tensor(n_i, dtype=g.dtype, device=g.device) @ payload.masked_fill(~sent, 0.0)
        seg_weight = np.bincount(segments, weights=n_i, minlength=self.ns)
        coverage = np.bincount(segments, minlength=self.ns)
        covered = torch.as_tensor(np.repeat(seg_weight > 0, self.sizes), device=g.device)
        divisor = torch.as_tensor(np.repeat(np.where(seg_weight > 0, seg_weight, 1.0), self.sizes),
                                  dtype=g.dtype, device=g.device)
        mean = acc / divisor
        new = torch.where(covered, mean if official else g + mean, g)   # a segment nobody sent stays unchanged
        sent_segments = {int(c): int(s) for c, s in zip(ids[rows], segments)}
        return new, RoundInfo(qualified=[int(c) for c in qualified], segment_coverage=coverage.tolist(),
                              segment_ids=sent_segments)

    def state_dict(self) -> dict[str, Any]:
        return {"residuals": self.residuals.state_dict()}

    def load_state_dict(self, state: dict[str, Any], device: torch.device | str = "cpu") -> None:
        self.residuals.load_state_dict(state["residuals"], device=device)
