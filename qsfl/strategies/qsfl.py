"""QSFL (Yi, Wang & Liu, ICML 2022): Qualification Judgment + Sparse Cyclic Sliding Segment.

``use_qj`` and ``use_scss`` switch the two levels independently, giving the QJ-only and SCSS-only
ablations. Without SCSS a qualified client uploads its dense update (p is then unused).
``variant="authors_code"`` and the options of :mod:`qsfl.authors_code` that this vectorised path does not
implement (``Options.round_function_switches``) run each round through :func:`qsfl.authors_code.aggregate_round`.

SCSS runs vectorised: one top-p call (:func:`qsfl.segments.top_k_slots`) for the qualified clients of every
job with the same NS together, and each job's per-segment means as a few tensor ops, with no Python loop
over clients.

Dynamic segmentation (``segmentation="count"`` or ``"size"``, :mod:`qsfl.segments`): each client sends its own
frame (a segment of its own layout, or a window of its own length) sized from its uplink bandwidth in the
simulation's system model; the server sets every coordinate to w_t + the sample-weighted mean of the sparse
updates of the clients whose frame contains it (unsent entries of a frame count as zeros, as in fixed SCSS);
a coordinate in no frame stays unchanged. One top-p call and two ``index_add_`` per job, no loop over clients.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, cast

import numpy as np
import torch

from qsfl import authors_code
from qsfl import qualification as qj
from qsfl.comm import Ledger, dense_message, meta_message
from qsfl.engine.common import CohortResult
from qsfl.errors import ConfigError
from qsfl.segments import (
    SegmentLayout,
    aggregate_segments,
    ceil_fraction,
    choose_segment_entries,
    client_segment_counts,
    client_segment_sizes,
    count_frames,
    fraction_counts,
    frame_grid,
    size_frames,
    top_k_slots,
)
from qsfl.strategies.base import AggregateJob, RoundInfo, RoundPlan, VectorisedStrategy, weighted_mean
from qsfl.strategies.residuals import ClientRows, Residuals
from qsfl.strategies.topk import bill_sparse
from qsfl.strategy_config import QSFLConfig
from qsfl.system import client_profiles


@dataclass
class _Pending:
    """One job's SCSS inputs between its QJ and the shared top-p call."""

    job: int                 # index in the jobs
    rows: np.ndarray         # their rows in the cohort
    u: torch.Tensor          # (C, n) updates plus residuals
    segments: np.ndarray     # (K,) segment each qualified client sends

    @cached_property
    def rows_t(self) -> torch.Tensor:
        """``rows`` as an index tensor on ``u``'s device (built once, for the gather and the aggregation)."""
        return torch.as_tensor(self.rows, dtype=torch.long, device=self.u.device)

    @cached_property
    def segments_t(self) -> torch.Tensor:
        """``segments`` as an index tensor on ``u``'s device."""
        return torch.as_tensor(self.segments, dtype=torch.long, device=self.u.device)


class QSFL(VectorisedStrategy):
    name = "qsfl"
    config_class = QSFLConfig

    def __init__(self, config, n_params: int) -> None:
        super().__init__(config, n_params)
        if self.scfg.use_scss and self.scfg.ns > n_params:
            raise ConfigError(f"strategy.ns: {self.scfg.ns} is out of range; allowed [1, {n_params}] "
                              f"(at most the model's parameter count)")
        self.ns = self.scfg.ns if self.scfg.use_scss else 1
        self.layout = SegmentLayout(n_params, self.ns)
        self.bounds, self.sizes = self.layout.bounds, self.layout.sizes
        # entries sent of each segment: ceil(p * size), computed once (segment sizes differ by at most one)
        self.keep = np.array([ceil_fraction(self.scfg.p, int(s)) for s in self.sizes], dtype=np.int64)
        self.residuals = Residuals(enabled=self.scfg.error_feedback)
        self.options = self.scfg.options
        self.hyper = authors_code.Hyperparameters(
            beta=self.scfg.beta, alpha=self.scfg.alpha, k=self.scfg.k, ns=self.ns,
            p=self.scfg.p if self.scfg.use_scss else 1.0, use_qj=self.scfg.use_qj,
            index_encoding=self.scfg.index_encoding)
        self.pretrained: torch.Tensor | None = None   # base="pretrained": the authors' fixed model
        # dynamic segmentation: each client's own segment count ("count") or window length ("size"), by client id
        self.segmentation = self.scfg.segmentation
        self.client_counts: np.ndarray | None = None
        self.client_sizes: np.ndarray | None = None
        if self.segmentation != "fixed":
            self.scfg.check_simulation(config.clients, config.system)   # a ConfigError without a system model
            uplink = client_profiles(config.system, config.clients, config.seed).uplink
            bandwidth = (uplink, self.ns, n_params, self.scfg.ns_min, self.scfg.ns_max)
            if self.segmentation == "count":
                self.client_counts = client_segment_counts(*bandwidth)
            else:
                self.client_sizes = client_segment_sizes(*bandwidth)
        # symmetric downlink compression (downlink_p < 1): each client's own copy of the global model
        self.compress_downlink = self.scfg.downlink_p < 1.0
        self.copies = ClientRows()
        self.initial: torch.Tensor | None = None         # w_0: every client's copy before its first round
        self._round_start: torch.Tensor | None = None    # this round's (C, n) start rows, for aggregate

    def configure_round(self, round_index: int, global_weights: torch.Tensor, client_ids: np.ndarray,
                        ledger: Ledger) -> RoundPlan:
        """The dense downlink, or with ``downlink_p < 1`` the symmetric downlink compression.

        Each sampled client receives the ceil(downlink_p * size) largest-magnitude entries of its cyclic
        segment (round + id) mod NS of ``w_t - copy_i`` (with dynamic segmentation: of its own frame, the same
        coordinates it would upload this round), the change of the global model since its copy
        was last synchronised, and sets those entries of its copy to the global values; it trains from its
        copy. What is not sent stays in the difference (error feedback is built in). Every client starts
        from w_0, which it builds from the shared seed (no bytes). Bytes: one sparse message per client.
        """
        self._round_start = None
        if not self.compress_downlink:
            return super().configure_round(round_index, global_weights, client_ids, ledger)
        ids = np.asarray(client_ids)
        if self.initial is None:
            self.initial = global_weights.detach().clone()
        copies = self.copies.get_rows(ids, global_weights, self.initial)
        cols, inside, sizes = self._grid(round_index, ids, global_weights.device)
        change = global_weights[cols] - copies.gather(1, cols)
        keep = top_k_slots(change.abs(), fraction_counts(self.scfg.downlink_p, sizes), inside)
        rows = torch.arange(len(ids), device=global_weights.device).unsqueeze(1).expand_as(cols)[keep]
        copies[rows, cols[keep]] = global_weights[cols[keep]]
        self.copies.set_rows(ids, copies)
        bill_sparse(ledger, keep.sum(dim=1).cpu().numpy(), sizes, self.scfg.index_encoding, downlink=True,
                    clients=ids)
        self._round_start = copies
        return RoundPlan(ids, copies)

    def frames(self, round_index: int, client_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """(start, size, segment id) of the coordinates each client sends this round: its segment (t + id) mod NS
        (``fixed``), its segment (t + id) mod NS_i of its own NS_i (``count``), or its window (``size``: no
        segment id, None)."""
        ids = np.asarray(client_ids, dtype=np.int64)
        if self.client_counts is not None:
            return count_frames(round_index, ids, self.client_counts[ids], self.n_params)
        if self.client_sizes is not None:
            start, size = size_frames(round_index, ids, self.client_sizes[ids], self.n_params)
            return start, size, None
        segments = (int(round_index) + ids) % self.ns
        return self.bounds[segments], self.sizes[segments], segments

    def _grid(self, round_index: int, client_ids: np.ndarray,
              device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None, np.ndarray]:
        """The clients' frames this round as ``(rows, width)`` slots: columns, the real slots (None: all are)
        and the frame sizes."""
        if self.segmentation == "fixed":
            layout = self.layout_on(device)
            segments = (int(round_index) + np.asarray(client_ids, dtype=np.int64)) % self.ns
            seg_t = torch.as_tensor(segments, device=device)
            return layout.cols[seg_t], layout.inside[seg_t] if layout.padded else None, self.sizes[segments]
        start, size, _ = self.frames(round_index, client_ids)
        cols, inside = frame_grid(start, size, self.n_params, device)
        return cols, inside, size

    def qualify(self, global_weights: torch.Tensor, last_global_update: torch.Tensor | None,
                client_ids: np.ndarray, cohort: CohortResult, ledger: Ledger,
                updates: torch.Tensor | None = None) -> np.ndarray:
        """Level 1: ids of the qualified clients (every sampled client when QJ is off); ``updates`` are the
        cohort's ``weights - global_weights`` when the caller has them already."""
        if not self.scfg.use_qj:
            return np.asarray(client_ids)
        ledger.uplink(meta_message(), clients=client_ids)
        if self.options.relevance == "weights":
            relev = qj.relevance_weights(cohort.weights, global_weights)
        elif last_global_update is None:
            relev = qj.relevance(cohort.weights, None)   # round 0: r_i = 1, no update needed
        else:
            relev = qj.relevance(cohort.weights - global_weights if updates is None else updates, last_global_update)
        qualified, _ = qj.judge(cohort.losses, cohort.num_samples, relev, client_ids, beta=self.scfg.beta,
                                k=self.scfg.k, alpha=self.scfg.alpha, selection=self.options.selection)
        return qualified

    @classmethod
    def aggregate_many(cls, jobs: Sequence[AggregateJob]) -> list[tuple[torch.Tensor, RoundInfo]]:
        """QJ per job, then one vectorised top-p over the qualified clients of every SCSS job with the same NS."""
        out: list[Any] = [None] * len(jobs)
        strategies = [cast(QSFL, job.strategy) for job in jobs]
        pending: dict[int, list[_Pending]] = {}   # NS -> SCSS jobs with that segment layout
        for i, (job, s) in enumerate(zip(jobs, strategies)):
            if s.options.round_function_switches():
                out[i] = s._round_function(job)
                continue
            ids = np.asarray(job.client_ids)
            # d_i = w_i - the client's start: its own copy under downlink compression, else the global weights
            start = job.global_weights if s._round_start is None else s._round_start
            s._round_start = None
            updates = job.cohort.weights - start
            qualified = s.qualify(job.global_weights, job.last_global_update, ids, job.cohort, job.ledger, updates)
            rows = np.flatnonzero(np.isin(ids, qualified))
            if not s.scfg.use_scss:
                job.ledger.uplink(dense_message(s.n_params), clients=ids[rows])
                new = job.global_weights + weighted_mean(updates[rows], job.cohort.num_samples[rows])
                out[i] = (new, RoundInfo(qualified=[int(c) for c in qualified]))
                continue
            u = s.residuals.add(ids, updates)
            if s.segmentation != "fixed":
                out[i] = s._scss_frames(job, rows, u)
                continue
            segments = (int(job.round_index) + ids[rows].astype(np.int64)) % s.ns
            pending.setdefault(s.ns, []).append(_Pending(i, rows, u, segments))
        # jobs of one layout share the slot grid: their segments are gathered and chosen in one call
        for group in pending.values():
            device = group[0].u.device
            layout = strategies[group[0].job].layout_on(device)
            gathered = [layout.segment_slots(p.u, p.rows_t, p.segments_t) for p in group]   # (K, width) each
            values = torch.cat(gathered) if len(gathered) > 1 else gathered[0]
            segments = np.concatenate([p.segments for p in group])
            k = np.concatenate([strategies[p.job].keep[p.segments] for p in group])
            keep = choose_segment_entries(layout, values, segments, k)
            offset = 0
            for p, vals in zip(group, gathered):
                sent = keep[offset:offset + len(p.rows)]
                offset += len(p.rows)
                out[p.job] = strategies[p.job]._scss(jobs[p.job], p, layout, vals, sent)
        return out

    def layout_on(self, device: torch.device) -> SegmentLayout:
        """The segment layout with its index tensors on ``device`` (moved once)."""
        self.layout = self.layout.to(device)
        return self.layout

    def _scss(self, job: AggregateJob, p: _Pending, layout: SegmentLayout, values: torch.Tensor,
              sent: torch.Tensor) -> tuple[torch.Tensor, RoundInfo]:
        """Level 2 of one job: residuals, bytes and the per-segment sample-weighted means of what was sent
        (``values``/``sent``: the senders' segments as ``(K, width)`` slots and the chosen ones)."""
        g, u, rows, segments = job.global_weights, p.u, p.rows, p.segments
        ids = np.asarray(job.client_ids)
        rows_t, seg_t = p.rows_t, p.segments_t
        if self.residuals.enabled:   # unqualified clients keep everything, qualified ones what they did not send
            cols = layout.cols[seg_t]
            u[rows_t.unsqueeze(1).expand_as(cols)[sent], cols[sent]] = 0.0   # u is the strategy's own sum here
            self.residuals.keep_unsent(ids, u, None)
        bill_sparse(job.ledger, sent.sum(dim=1).cpu().numpy(), self.sizes[segments], self.scfg.index_encoding,
                    clients=ids[rows])
        official = self.options.aggregate == "official"
        # "official" reproduces the authors' averaging of sparse *weights* (zeros elsewhere).
        # where(), not a product: a padding slot holds a coordinate of another segment, which must not leak in
        chosen = layout.segment_slots(job.cohort.weights, rows_t, seg_t) if official else values
        payload = torch.where(sent, chosen, 0.0)
        new, coverage = aggregate_segments(g, layout, payload, segments, job.cohort.num_samples[rows], official)
        # qualified clients are exactly the senders, in the same (ascending id) order
        return new, RoundInfo(qualified=[int(c) for c in ids[rows]],
                              metrics={"segment_coverage": coverage,
                                       "segment_ids": [int(s) for s in segments]})

    def _scss_frames(self, job: AggregateJob, rows: np.ndarray, u: torch.Tensor) -> tuple[torch.Tensor, RoundInfo]:
        """Level 2 of one job with dynamic segmentation: each sender (``rows`` of the cohort, ``u`` the cohort's
        updates plus residuals) sends the top-p of its own frame; per coordinate, the sample-weighted mean over
        the senders whose frame contains it (unsent entries of a frame are zeros); other coordinates keep w_t."""
        g = job.global_weights
        device, n = g.device, self.n_params
        ids = np.asarray(job.client_ids)
        senders = ids[rows]
        start, size, segment = self.frames(job.round_index, senders)
        cols, inside = frame_grid(start, size, n, device)
        rows_t = torch.as_tensor(rows, dtype=torch.long, device=device).unsqueeze(1).expand_as(cols)
        values = u[rows_t, cols]
        sent = top_k_slots(values.abs(), fraction_counts(self.scfg.p, size), inside)
        if self.residuals.enabled:   # as in _scss: qualified clients keep what they did not send
            u[rows_t[sent], cols[sent]] = 0.0
            self.residuals.keep_unsent(ids, u, None)
        bill_sparse(job.ledger, sent.sum(dim=1).cpu().numpy(), size, self.scfg.index_encoding, clients=senders)
        official = self.options.aggregate == "official"
        payload = (job.cohort.weights[rows_t, cols] if official else values) * sent.to(g.dtype)
        n_i = torch.as_tensor(np.asarray(job.cohort.num_samples, dtype=np.float64)[rows], dtype=g.dtype,
                              device=device).unsqueeze(1).expand_as(cols)
        where = cols[inside]   # each frame's coordinates once (padding slots left out)
        sums = torch.zeros(n, dtype=g.dtype, device=device).index_add_(0, where, (payload * n_i)[inside])
        weight = torch.zeros(n, dtype=g.dtype, device=device).index_add_(0, where, n_i[inside])
        covered = weight > 0
        mean = sums / torch.where(covered, weight, torch.ones_like(weight))
        new = torch.where(covered, mean if official else g + mean, g)   # a coordinate in no frame: unchanged
        metrics: dict[str, Any] = {"frame_starts": start.tolist(), "frame_sizes": size.tolist(),
                                   "covered_share": float(covered.sum()) / n}
        if segment is not None:
            assert self.client_counts is not None
            metrics["segment_ids"] = segment.tolist()
            metrics["segment_counts"] = self.client_counts[senders].tolist()
        return new, RoundInfo(qualified=[int(c) for c in senders], metrics=metrics)

    def _round_function(self, job: AggregateJob) -> tuple[torch.Tensor, RoundInfo]:
        """One round through :func:`qsfl.authors_code.aggregate_round`; with base="pretrained" the first round
        also runs the authors' pretraining (their round 0 with NS=1, p=1), billed, to get the fixed base."""
        data = (np.asarray(job.client_ids), job.cohort.weights, job.cohort.losses, job.cohort.num_samples)
        if self.options.base == "pretrained" and self.pretrained is None:
            pre = authors_code.pretraining_round(*data, job.global_weights, self.hyper, self.options,
                                                 job.last_global_update)
            self.pretrained = pre.weights
            for msg, clients in pre.uplink:
                job.ledger.uplink(msg, clients=clients)
        out = authors_code.aggregate_round(job.round_index, self.pretrained, job.global_weights, *data, self.hyper,
                                           self.options, job.last_global_update)
        for msg, clients in out.uplink:
            job.ledger.uplink(msg, clients=clients)
        qualified = [int(c) for c in out.qualified]
        senders = sorted(int(c) for c in out.segment_ids)
        metrics: dict[str, Any] = {"segment_coverage": list(out.coverage)}
        if out.segment_ids:
            metrics["segment_ids"] = [int(out.segment_ids[c]) for c in senders]
            if self.options.upload == "all":   # unqualified clients send too: name the senders
                metrics["segment_senders"] = senders
        return out.weights, RoundInfo(qualified=qualified, metrics=metrics)

    def state_dict(self) -> dict[str, Any]:
        pretrained = None if self.pretrained is None else self.pretrained.detach().cpu().clone()
        return {"residuals": self.residuals.state_dict(), "pretrained": pretrained, "copies": self.copies.state_dict(),
                "initial": None if self.initial is None else self.initial.detach().cpu().clone()}

    def load_state_dict(self, state: dict[str, Any], device: torch.device | str = "cpu") -> None:
        self.residuals.load_state_dict(state["residuals"], device=device)
        pretrained = state.get("pretrained")
        self.pretrained = None if pretrained is None else pretrained.detach().clone().to(device)
        self.copies.load_state_dict(state["copies"], device=device)
        initial = state["initial"]
        self.initial = None if initial is None else initial.detach().clone().to(device)
