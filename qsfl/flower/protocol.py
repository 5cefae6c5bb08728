"""One federated round as the messages a real federation exchanges, without Flower: what a client computes from
what it receives (:class:`ClientRunner`) and what the server decides from the replies (:class:`ServerRunner`).

Every step calls the simulator's own functions: local training is :class:`qsfl.engine.SequentialEngine`, QJ is
:func:`qsfl.qualification.judge`, SCSS is :func:`qsfl.segments.choose_segment_entries` and
:func:`qsfl.segments.aggregate_segments` (the ``authors_code`` variant: :func:`qsfl.authors_code.client_upload`
and :func:`qsfl.authors_code.aggregate_uploads`), top-k is :func:`qsfl.segments.top_k_slots`, the means are
:func:`qsfl.strategies.base.weighted_mean`, and every message is billed by a :class:`qsfl.comm.Ledger`. Sparse
uploads travel in :class:`qsfl.segments.SparseSegment`'s exact wire format, so the bytes billed are the bytes sent.

A round (t counted from 0)::

    server: sample the cohort; to each sampled client the model w_t (+ the signs of g_{t-1} if it lacks w_{t-1})
    client: train E epochs from w_t; FedAvg / top-k: reply with the (sparse) update, and the round ends;
            QSFL: reply with the QJ metadata (L_i, n_i, r_i), keep w_i for the next message
    server: QJ on the clients that answered; ask the qualified ones (all, with upload="all") for their upload
    client: reply with the top-p of segment (t + id) mod NS of its update (plus its residual with error feedback)
    server: per-segment sample-weighted means of what arrived; a client that fails or never answers is left out

:mod:`qsfl.flower.strategy` and :mod:`qsfl.flower.client` carry these objects in Flower Messages.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from qsfl import authors_code
from qsfl import qualification as qj
from qsfl.comm import HEADER_BYTES, Ledger, MessageSize, dense_message, meta_message, sign_pattern_message
from qsfl.config import SimConfig
from qsfl.engine import evaluate
from qsfl.errors import ConfigError
from qsfl.segments import (
    SegmentLayout,
    SparseSegment,
    aggregate_segments,
    ceil_fraction,
    choose_segment_entries,
    top_k_slots,
)
from qsfl.sim import Federation
from qsfl.state import CohortSampler
from qsfl.strategies.base import weighted_mean

STRATEGIES = ("fedavg", "topk", "qsfl")


def check_config(config: SimConfig) -> SimConfig:
    """``config`` for a federation: the sequential engine on the CPU; ConfigError naming the field it cannot run."""
    name = config.strategy.name
    if name not in STRATEGIES:
        raise ConfigError(f"strategy.name: {name!r} is not available in qsfl.flower; allowed: {', '.join(STRATEGIES)}")
    s: Any = config.strategy
    if name == "qsfl" and s.downlink_p < 1.0:
        raise ConfigError(f"strategy.downlink_p: {s.downlink_p!r} is not available in qsfl.flower; allowed: 1.0")
    if name == "qsfl" and s.segmentation != "fixed":
        raise ConfigError(f"strategy.segmentation: {s.segmentation!r} is not available in qsfl.flower; "
                          "allowed: 'fixed'")
    return config.replace(engine="sequential", device="cpu")


class Plan:
    """What both sides derive from the config: the strategy's constants, the segment layout, the QSFL path."""

    def __init__(self, config: SimConfig, n_params: int) -> None:
        self.config = config
        self.name = config.strategy.name
        self.s: Any = config.strategy
        self.n = n_params
        self.encoding = getattr(self.s, "index_encoding", "auto")
        self.error_feedback = bool(getattr(self.s, "error_feedback", False))
        self.two_phase = self.name == "qsfl"
        if self.name != "qsfl":
            return
        s: Any = self.s
        if s.use_scss and s.ns > n_params:
            raise ConfigError(f"strategy.ns: {s.ns} is out of range; allowed [1, {n_params}] "
                              f"(at most the model's parameter count)")
        self.ns = s.ns if s.use_scss else 1
        self.options = s.options
        self.authors = bool(self.options.round_function_switches())   # the authors' round function path
        self.hyper = authors_code.Hyperparameters(beta=s.beta, alpha=s.alpha, k=s.k, ns=self.ns,
                                                  p=s.p if s.use_scss else 1.0, use_qj=s.use_qj,
                                                  index_encoding=s.index_encoding)
        self.layout = SegmentLayout(n_params, self.ns)
        self.keep = np.array([ceil_fraction(s.p, int(size)) for size in self.layout.sizes], dtype=np.int64)

    @property
    def needs_last_update(self) -> bool:
        """Whether a client's QJ metadata needs g_{t-1} (relevance="update")."""
        return self.two_phase and self.s.use_qj and self.options.relevance == "update"

    def segment(self, round_index: int, client_id: int) -> int:
        """The segment client ``client_id`` uploads in round ``round_index`` (the default path)."""
        return (int(round_index) + int(client_id)) % self.ns

    def pretraining(self) -> tuple[authors_code.Hyperparameters, authors_code.Options]:
        """The authors' pretraining round's settings (NS = 1, p = 1, unsent entries keep w_t)."""
        return replace(self.hyper, ns=1, p=1.0), replace(self.options, base="global")


# ----- messages --------------------------------------------------------------------------------------------
@dataclass
class TrainRequest:
    """Server -> client: train from ``weights`` (w_t). ``last_update`` says where the client's g_{t-1} comes from:
    "none" (round 0: r_i = 1), "stored" (w_t - the w_{t-1} it kept) or "signs" (``signs``, 2 bits per entry)."""

    round: int
    weights: np.ndarray
    last_update: str = "none"
    signs: bytes | None = None


@dataclass
class TrainReply:
    """Client -> server after training: its loss and sample count, QSFL's relevance, FedAvg's / top-k's update."""

    client_id: int
    loss: float
    num_samples: int
    relevance: float | None = None
    update: bytes | None = None


@dataclass
class UploadRequest:
    """Server -> a QSFL client: send your segment; ``pretrain``: also the authors' pretraining upload (and its
    QJ metadata) of round 0; ``segment``: False for a client that only sends that metadata."""

    round: int
    segment: bool = True
    pretrain: bool = False


@dataclass
class UploadReply:
    """A QSFL client's upload (SparseSegment bytes), and in the authors' pretraining round its second upload."""

    client_id: int
    segment: bytes | None = None
    pretrain: bytes | None = None
    meta: tuple[float, int, float | None] | None = None


@dataclass
class ClientState:
    """What a client keeps between messages (Flower: ``Context.state``): the last global model it received and
    its round, the error-feedback residual, and between a QSFL round's two messages its training result."""

    prev_round: int = -1
    prev_global: np.ndarray | None = None
    residual: np.ndarray | None = None
    local: np.ndarray | None = None
    meta: tuple[float, int, float | None] | None = None


def encode_signs(client_id: int, vector: torch.Tensor) -> bytes:
    """sign(vector) as 2-bit codes (0: -1, 1: 0, 2: +1), four per byte, behind the 12-byte header."""
    codes = (torch.sign(vector).to(torch.int8) + 1).cpu().numpy().astype(np.uint8)
    padded = np.zeros(-(-len(codes) // 4) * 4, dtype=np.uint8)
    padded[:len(codes)] = codes
    q = padded.reshape(-1, 4)
    packed = q[:, 0] | (q[:, 1] << 2) | (q[:, 2] << 4) | (q[:, 3] << 6)
    return struct.pack("<iii", int(client_id), 0, len(codes)) + packed.astype(np.uint8).tobytes()


def decode_signs(data: bytes) -> torch.Tensor:
    """Inverse of :func:`encode_signs`: the float32 signs (-1, 0, +1)."""
    _, _, n = struct.unpack_from("<iii", data, 0)
    packed = np.frombuffer(data[HEADER_BYTES:], dtype=np.uint8)
    codes = np.stack([(packed >> shift) & 3 for shift in (0, 2, 4, 6)], axis=1).reshape(-1)[:n]
    return torch.from_numpy(codes.astype(np.float32) - 1.0)


def dense_bytes(client_id: int, vector: torch.Tensor) -> bytes:
    """A whole float32 vector as a dense SparseSegment (header + values): :func:`qsfl.comm.dense_message`'s size."""
    n = vector.numel()
    values = vector.detach().cpu().numpy().astype(np.float32)
    return SparseSegment(int(client_id), 0, n, np.arange(n), values).to_bytes()


def decode_segment(data: bytes, size: int, encoding: str, client_id: int, segment: int) -> SparseSegment:
    """A SparseSegment from the wire, checked against the sender, the segment and its billed size."""
    seg = SparseSegment.from_bytes(data, size, encoding)
    if seg.client_id != client_id or seg.segment != segment:
        raise ValueError(f"upload of client {client_id}: header names client {seg.client_id}, segment {seg.segment} "
                         f"(expected segment {segment})")
    if len(data) != seg.message_size.total:
        raise ValueError(f"upload of client {client_id}: {len(data)} bytes, its encoding needs "
                         f"{seg.message_size.total}")
    return seg


# ----- client ------------------------------------------------------------------------------------------
class ClientRunner:
    """One client of the federation: its partition of the config's data and the sequential engine."""

    def __init__(self, config: SimConfig, client_id: int) -> None:
        self.config = check_config(config)
        if not 0 <= client_id < self.config.clients:
            raise ConfigError(f"partition-id: {client_id} is out of range; allowed [0, {self.config.clients - 1}]")
        self.fed = Federation(self.config)
        self.client_id = int(client_id)
        self.plan = Plan(self.config, self.fed.n_params)

    def train(self, req: TrainRequest, state: ClientState) -> TrainReply:
        """Train from w_t; FedAvg / top-k: the update message; QSFL: the QJ metadata (w_i kept in ``state``)."""
        plan, cid, t = self.plan, self.client_id, int(req.round)
        w_t = torch.from_numpy(np.asarray(req.weights, dtype=np.float32).copy())
        cohort = self.fed.engine.train(w_t, np.array([cid]), t)
        w_i = cohort.weights[0]
        loss, n_i = float(cohort.losses[0]), int(cohort.num_samples[0])
        update = w_i - w_t
        reply = TrainReply(cid, loss, n_i)
        relevance = self._relevance(req, state, w_i, w_t, update) if plan.two_phase else None
        state.prev_round, state.prev_global = t, w_t.numpy()
        if plan.name == "fedavg":
            reply.update = dense_bytes(cid, update)
        elif plan.name == "topk":
            u = self._with_residual(update, state)
            sent = top_k_slots(u.abs().unsqueeze(0), np.array([ceil_fraction(plan.s.p, plan.n)]))[0]
            payload = u * sent.to(u.dtype)
            if plan.error_feedback:
                state.residual = (u - payload).numpy()   # exactly the unsent entries
            idx = torch.nonzero(sent).squeeze(1)
            reply.update = SparseSegment(cid, 0, plan.n, idx.numpy(), u[idx].numpy(), plan.encoding).to_bytes()
        else:
            reply.relevance = relevance
            state.local = w_i.numpy()
            state.meta = (loss, n_i, relevance)
            if plan.error_feedback and plan.s.use_scss:   # unqualified clients keep everything
                state.residual = self._with_residual(update, state).numpy()
        return reply

    def _with_residual(self, update: torch.Tensor, state: ClientState) -> torch.Tensor:
        if not self.plan.error_feedback or state.residual is None:
            return update
        return update + torch.from_numpy(state.residual)

    def _relevance(self, req: TrainRequest, state: ClientState, w_i: torch.Tensor, w_t: torch.Tensor,
                   update: torch.Tensor) -> float | None:
        plan = self.plan
        if not plan.s.use_qj:
            return None
        if plan.options.relevance == "weights":
            return float(qj.relevance_weights(w_i.unsqueeze(0), w_t)[0])
        if req.last_update == "none":
            return 1.0
        if req.last_update == "signs":
            if req.signs is None:
                raise ValueError("train request: last_update='signs' without the signs")
            g = decode_signs(req.signs)
        elif state.prev_global is not None and state.prev_round == req.round - 1:
            g = w_t - torch.from_numpy(state.prev_global)
        else:
            raise RuntimeError(f"client {self.client_id}: no global model of round {req.round - 1} kept and no "
                               "signs sent; it cannot compute its relevance this round")
        return float(qj.relevance(update.unsqueeze(0), g)[0])

    def upload(self, req: UploadRequest, state: ClientState) -> UploadReply:
        """QSFL's second message: the segment (and in the authors' pretraining round the dense upload and the
        metadata again) from the w_i kept by :meth:`train`."""
        plan, cid, t = self.plan, self.client_id, int(req.round)
        if state.local is None or state.prev_global is None or state.prev_round != t:
            raise RuntimeError(f"client {cid}: asked for its round-{t} upload but holds no round-{t} training")
        w_i, w_t = torch.from_numpy(state.local), torch.from_numpy(state.prev_global)
        reply = UploadReply(cid)
        if req.pretrain:
            reply.meta = state.meta if plan.s.use_qj else None
            if req.segment:
                hyper, options = plan.pretraining()
                reply.pretrain = self._authors_bytes(authors_code.client_upload(0, cid, w_i, w_t, hyper, options),
                                                     hyper)
        if not req.segment:
            return reply
        if plan.authors:
            reply.segment = self._authors_bytes(authors_code.client_upload(t, cid, w_i, w_t, plan.hyper,
                                                                           plan.options), plan.hyper)
        elif not plan.s.use_scss:
            reply.segment = dense_bytes(cid, w_i - w_t)
        else:
            reply.segment = self._scss_bytes(t, w_i, w_t, state)
        return reply

    def _authors_bytes(self, up: authors_code.Upload, hyper: authors_code.Hyperparameters) -> bytes:
        idx = (up.indices - up.lo).cpu().numpy().astype(np.int64)
        return SparseSegment(self.client_id, up.segment, up.size, idx, up.values.cpu().numpy().astype(np.float32),
                             hyper.index_encoding).to_bytes()

    def _scss_bytes(self, t: int, w_i: torch.Tensor, w_t: torch.Tensor, state: ClientState) -> bytes:
        plan, cid = self.plan, self.client_id
        layout = plan.layout
        seg = plan.segment(t, cid)
        u = torch.from_numpy(state.residual) if plan.error_feedback and state.residual is not None else w_i - w_t
        row, seg_t = torch.zeros(1, dtype=torch.long), torch.tensor([seg])
        slots = layout.segment_slots(u.unsqueeze(0), row, seg_t)
        sent = choose_segment_entries(layout, slots, np.array([seg]), plan.keep[[seg]])[0]
        official = plan.options.aggregate == "official"
        chosen = layout.segment_slots(w_i.unsqueeze(0), row, seg_t)[0] if official else slots[0]
        if plan.error_feedback:   # a qualified client keeps what it did not send
            kept = u.clone()
            kept[layout.cols[seg][sent]] = 0.0
            state.residual = kept.numpy()
        idx = torch.nonzero(sent).squeeze(1)   # slot j of segment s is coordinate bounds[s] + j
        return SparseSegment(cid, seg, int(layout.sizes[seg]), idx.numpy(), chosen[idx].numpy(),
                             plan.encoding).to_bytes()

    def evaluate(self, weights: np.ndarray) -> tuple[float, float, int]:
        """(accuracy, loss, samples) of ``weights`` on this client's own partition."""
        x, y = self.fed.client_data[self.client_id]
        acc, loss = evaluate(self.fed.model, torch.from_numpy(np.asarray(weights, dtype=np.float32)), x, y)
        return acc, loss, len(y)


# ----- server ------------------------------------------------------------------------------------------
@dataclass
class RoundRecord:
    """What the server keeps of a round while it runs (turned into a row by :meth:`ServerRunner.finish_round`)."""

    round: int
    sampled: list[int]
    answered: list[int] = field(default_factory=list)
    losses: dict[int, float] = field(default_factory=dict)
    samples: dict[int, int] = field(default_factory=dict)
    relevance: dict[int, float] = field(default_factory=dict)
    qualified: list[int] = field(default_factory=list)
    uploaders: list[int] = field(default_factory=list)
    uploaded: list[int] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)
    segment_ids: list[int] = field(default_factory=list)
    segment_coverage: list[int] = field(default_factory=list)
    messages: list[list[Any]] = field(default_factory=list)   # [direction, kind, client, bytes] per message
    pretrain: bool = False


class ServerRunner:
    """The server of the federation: cohort sampling, QJ, aggregation, the Ledger, evaluation on the test split."""

    def __init__(self, config: SimConfig) -> None:
        self.config = check_config(config)
        self.fed = Federation(self.config)
        self.plan = Plan(self.config, self.fed.n_params)
        self.sampler = CohortSampler(self.config.clients, self.config.cohort_size, self.config.seed)
        self.weights = self.fed.initial_weights.clone()
        self.last_update: torch.Tensor | None = None
        self.pretrained: torch.Tensor | None = None
        self.ledger = Ledger()
        self.holds_previous: set[int] = set()   # clients that answered the last round's train message
        self.rows: list[dict[str, Any]] = []
        self.record: RoundRecord | None = None

    @property
    def next_round(self) -> int:
        """The index of the next round (0-based)."""
        return len(self.rows)

    def _bill(self, direction: str, kind: str, client: int, msg: MessageSize) -> None:
        (self.ledger.uplink if direction == "up" else self.ledger.downlink)(msg, clients=[client])
        assert self.record is not None
        self.record.messages.append([direction, kind, int(client), msg.total])

    def train_requests(self) -> dict[int, TrainRequest]:
        """Sample round t's cohort; each sampled client's train message (the downlink billed)."""
        t = self.next_round
        ids = [int(c) for c in self.sampler.draw()]
        self.record = RoundRecord(t, ids)
        weights = self.weights.numpy()
        out = {}
        for cid in ids:
            req = TrainRequest(t, weights)
            self._bill("down", "model", cid, dense_message(self.plan.n))
            if self.plan.needs_last_update and self.last_update is not None:
                if cid in self.holds_previous:
                    req.last_update = "stored"
                else:
                    req.last_update, req.signs = "signs", encode_signs(cid, self.last_update)
                    self._bill("down", "signs", cid, sign_pattern_message(self.plan.n))
            out[cid] = req
        return out

    def receive_train(self, replies: dict[int, TrainReply], failed: dict[int, str]) -> dict[int, UploadRequest]:
        """The train replies (``failed``: client -> why it did not answer). FedAvg / top-k aggregate at once and
        return {}; QSFL runs QJ and returns the upload requests."""
        rec, plan = self.record, self.plan
        assert rec is not None
        rec.failed.update(failed)
        ids = sorted(c for c in replies if c in rec.sampled and c not in failed)
        rec.answered = ids
        self.holds_previous = set(ids)
        for c in ids:
            rec.losses[c], rec.samples[c] = replies[c].loss, replies[c].num_samples
        if not plan.two_phase:
            self._aggregate_updates({c: replies[c] for c in ids})
            return {}
        if plan.s.use_qj:
            for c in ids:
                self._bill("up", "meta", c, meta_message())
                rec.relevance[c] = float(replies[c].relevance)   # type: ignore[arg-type]
            if ids:
                qualified, _ = qj.judge(np.array([rec.losses[c] for c in ids]), np.array([rec.samples[c] for c in ids]),
                                        np.array([rec.relevance[c] for c in ids]), np.array(ids), beta=plan.s.beta,
                                        k=plan.s.k, alpha=plan.s.alpha, selection=plan.options.selection)
                rec.qualified = [int(c) for c in qualified]
        else:
            rec.qualified = list(ids)
        rec.uploaders = list(ids) if plan.options.upload == "all" else list(rec.qualified)
        rec.pretrain = plan.authors and plan.options.base == "pretrained" and self.pretrained is None
        targets = ids if rec.pretrain else rec.uploaders
        return {c: UploadRequest(rec.round, segment=c in rec.uploaders, pretrain=rec.pretrain) for c in targets}

    def _aggregate_updates(self, replies: dict[int, TrainReply]) -> None:
        """FedAvg / top-k: w_t + the sample-weighted mean of the (sparse) updates that arrived."""
        rec, plan = self.record, self.plan
        assert rec is not None
        rows, samples = [], []
        for cid, reply in replies.items():
            try:
                seg = decode_segment(reply.update or b"", plan.n, plan.encoding, cid, 0)
            except (ValueError, struct.error) as exc:
                rec.failed[cid] = f"malformed update: {exc}"
                continue
            self._bill("up", "update", cid, seg.message_size)
            rows.append(torch.from_numpy(seg.decode()))
            samples.append(reply.num_samples)
            rec.uploaded.append(cid)
        rec.qualified = list(rec.uploaded)
        if rows:
            self._set_weights(self.weights + weighted_mean(torch.stack(rows), np.asarray(samples)))
        else:
            self._set_weights(self.weights.clone())

    def receive_uploads(self, replies: dict[int, UploadReply], failed: dict[int, str]) -> None:
        """QSFL's second phase: aggregate the segments that arrived (a qualified client that failed or never
        answered is left out of the means; a segment nobody sent keeps its values)."""
        rec, plan = self.record, self.plan
        assert rec is not None
        rec.failed.update(failed)
        got = {c: r for c, r in sorted(replies.items()) if c not in failed}
        if rec.pretrain:
            self._pretrain(got)
        if plan.authors:
            self._aggregate_authors(got)
        else:
            self._aggregate_default(got)

    def _decode_or_fail(self, cid: int, data: bytes | None, size: int, segment: int, encoding: str,
                        kind: str) -> SparseSegment | None:
        rec = self.record
        assert rec is not None
        try:
            seg = decode_segment(data or b"", size, encoding, cid, segment)
        except (ValueError, struct.error) as exc:
            rec.failed[cid] = f"malformed {kind}: {exc}"
            return None
        self._bill("up", kind, cid, seg.message_size)
        return seg

    def _pretrain(self, got: dict[int, UploadReply]) -> None:
        """The authors' pretraining round on round 0's training: its metadata again, the dense uploads, the base."""
        rec, plan = self.record, self.plan
        assert rec is not None
        hyper, options = plan.pretraining()
        uploads, samples = [], []
        for cid, reply in got.items():
            if plan.s.use_qj and reply.meta is not None:
                self._bill("up", "meta", cid, meta_message())
            if cid not in rec.uploaders:
                continue
            up = self._authors_upload(cid, reply.pretrain, 0, hyper, options, "pretrain")
            if up is not None and cid in rec.qualified:
                uploads.append(up)
                samples.append(float(rec.samples[cid]))
        self.pretrained, _ = authors_code.aggregate_uploads(self.weights, uploads, samples, hyper, options)

    def _authors_upload(self, cid: int, data: bytes | None, t: int, hyper: authors_code.Hyperparameters,
                        options: authors_code.Options, kind: str) -> authors_code.Upload | None:
        bounds = authors_code.layout_bounds(self.plan.n, hyper.ns, options.segment_layout)
        seg_id = (int(t) + cid + options.client_numbering) % hyper.ns
        lo, size = int(bounds[seg_id]), int(bounds[seg_id + 1] - bounds[seg_id])
        seg = self._decode_or_fail(cid, data, size, seg_id, hyper.index_encoding, kind)
        if seg is None:
            return None
        return authors_code.Upload(cid, seg_id, lo, size, torch.from_numpy(seg.indices + lo),
                                   torch.from_numpy(seg.values), seg.message_size)

    def _aggregate_authors(self, got: dict[int, UploadReply]) -> None:
        rec, plan = self.record, self.plan
        assert rec is not None
        uploads, samples = [], []
        for cid, reply in got.items():
            if cid not in rec.uploaders:
                continue
            up = self._authors_upload(cid, reply.segment, rec.round, plan.hyper, plan.options, "segment")
            if up is None:
                continue
            rec.uploaded.append(cid)
            if cid in rec.qualified:   # upload="all": an unqualified upload is billed, then discarded
                uploads.append(up)
                samples.append(float(rec.samples[cid]))
                rec.segment_ids.append(up.segment)
        start = self.pretrained if plan.options.base == "pretrained" and self.pretrained is not None else self.weights
        new, rec.segment_coverage = authors_code.aggregate_uploads(start, uploads, samples, plan.hyper, plan.options)
        self._set_weights(new)

    def _aggregate_default(self, got: dict[int, UploadReply]) -> None:
        rec, plan = self.record, self.plan
        assert rec is not None
        layout, n = plan.layout, plan.n
        rows, samples, segments = [], [], []
        for cid, reply in got.items():
            if cid not in rec.qualified:
                continue
            seg_id = plan.segment(rec.round, cid) if plan.s.use_scss else 0
            size = int(layout.sizes[seg_id]) if plan.s.use_scss else n
            seg = self._decode_or_fail(cid, reply.segment, size, seg_id, plan.encoding,
                                       "segment" if plan.s.use_scss else "update")
            if seg is None:
                continue
            row = torch.zeros(layout.width if plan.s.use_scss else n)
            row[torch.from_numpy(seg.indices)] = torch.from_numpy(seg.values)
            rows.append(row)
            samples.append(rec.samples[cid])
            segments.append(seg_id)
            rec.uploaded.append(cid)
        if not plan.s.use_scss:
            new = self.weights + weighted_mean(torch.stack(rows), np.asarray(samples)) if rows else self.weights.clone()
            self._set_weights(new)
            return
        payload = torch.stack(rows) if rows else torch.zeros(0, layout.width)
        official = plan.options.aggregate == "official"
        new, rec.segment_coverage = aggregate_segments(self.weights, layout, payload, np.asarray(segments, np.int64),
                                                       np.asarray(samples, np.float64), official)
        rec.segment_ids = segments
        self._set_weights(new)

    def _set_weights(self, new: torch.Tensor) -> None:
        self.last_update, self.weights = new - self.weights, new

    def finish_round(self) -> dict[str, Any]:
        """Close the round: evaluate when due, the ledger's counters; the round's row (also kept in ``rows``)."""
        rec, cfg = self.record, self.config
        assert rec is not None
        t = rec.round
        acc = loss = float("nan")
        if (t + 1) % cfg.eval_every == 0 or t == cfg.rounds - 1:
            acc, loss = self.evaluate()
        answered = rec.answered
        train_loss = (float(np.average([rec.losses[c] for c in answered], weights=[rec.samples[c] for c in answered]))
                      if answered else float("nan"))
        row = {"round": t, "test_accuracy": acc, "test_loss": loss, "train_loss": train_loss,
               "n_sampled": len(rec.sampled), "n_qualified": len(rec.qualified), "sampled_clients": rec.sampled,
               "answered_clients": answered, "qualified_clients": rec.qualified, "uploaded_clients": rec.uploaded,
               "failed_clients": sorted(rec.failed), "failures": {str(c): why for c, why in sorted(rec.failed.items())},
               "segment_ids": rec.segment_ids, "segment_coverage": rec.segment_coverage, "messages": rec.messages,
               **self.ledger.close_round()}
        self.rows.append(row)
        self.record = None
        return row

    def evaluate(self) -> tuple[float, float]:
        """(accuracy, loss) of the global model on the held-out test split."""
        return evaluate(self.fed.model, self.weights, self.fed.x_test, self.fed.y_test)
