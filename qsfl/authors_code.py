"""One QSFL round as a pure function whose options reproduce the authors' released code (issue 11).

The authors' code (github.com/LipingYi/QSFL, commit 4b11db9: ``fl_client_QSFL.py`` lines 157-243,
``fl_server_QSFL.py`` ``Aggregator.update_weights`` lines 104-186) departs from the paper and from this
project's default in several places. Each departure is one field of :class:`Options`, so that it can be
switched alone and its effect measured; ``Options()`` is this project's default and :data:`AUTHORS_CODE`
sets every field to what their code does. ``tests/qsfl/test_authors_code.py`` checks :func:`aggregate_round`
with :data:`AUTHORS_CODE` against a transcription of their two functions, and ``docs/faithfulness.md``
lists the choices side by side.

Where their code crashes (their server writes a whole segment of ``round(n / NS)`` values past the end of
the model when ``NS * round(n / NS) > n``), segments are cut at ``n`` instead: the segment ids and entries
are theirs, a segment that starts at or after ``n`` is empty (its client sends a header only).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np
import torch

from qsfl import qualification as qj
from qsfl.comm import MessageSize, meta_message, sparse_message
from qsfl.errors import check_bool, check_choice, check_range
from qsfl.segments import ceil_fraction, segment_bounds

# field -> (this project's default, the authors' code); the first value is also Options()'s default
SWITCHES: dict[str, tuple[object, object]] = {
    "relevance": ("update", "weights"),         # sign(d_i) vs sign(g_{t-1})  |  sign(w_i) vs sign(w_t)
    "selection": ("topk", "percentile"),        # K best scores  |  scores >= their (1 - alpha) percentile
    "aggregate": ("delta", "official"),         # base + mean sparse update  |  mean of sparse weights
    "rank_by": ("update", "weights"),           # top-p of |w_i - w_t|  |  top-p of |w_i|
    "k_rounding": ("ceil", "round"),            # ceil(p * size)  |  round(p * size), 0 -> whole segment
    "segment_layout": ("array_split", "authors"),  # sizes differ by <= 1  |  round(n / NS) each, cut at n
    "base": ("global", "pretrained"),           # unsent segments keep w_t  |  rebuild from a fixed model
    "client_numbering": (0, 1),                 # segment (t + id) mod NS with ids from 0  |  from 1
    "tie_break": ("low", "high"),               # equal |value|: lower index kept  |  higher index kept
    "segment_mean": ("weighted", "plain"),      # sample-weighted  |  unweighted mean per segment
    "upload": ("qualified", "all"),             # only qualified clients upload  |  every sampled client
}
VARIANTS = ("default", "authors_code")
# the switches that only aggregate_round implements (the vectorised qsfl strategy does the other three)
ROUND_FUNCTION_SWITCHES = ("rank_by", "k_rounding", "segment_layout", "base", "client_numbering", "tie_break",
                           "segment_mean", "upload")
_CHOICES: dict[str, tuple[str, ...]] = {
    "relevance": ("update", "weights"), "selection": ("topk", "percentile"), "aggregate": ("delta", "official"),
    "rank_by": ("update", "weights"), "k_rounding": ("ceil", "round"),
    "segment_layout": ("array_split", "authors"), "base": ("global", "pretrained"),
    "tie_break": ("low", "high"), "segment_mean": ("weighted", "plain"), "upload": ("qualified", "all"),
}


@dataclass(frozen=True)
class Options:
    """How one round qualifies, sparsifies and aggregates; the defaults are this project's QSFL."""

    relevance: str = "update"
    selection: str = "topk"
    aggregate: str = "delta"
    rank_by: str = "update"
    k_rounding: str = "ceil"
    segment_layout: str = "array_split"
    base: str = "global"
    client_numbering: int = 0
    tie_break: str = "low"
    segment_mean: str = "weighted"
    upload: str = "qualified"

    def __post_init__(self) -> None:
        for name, choices in _CHOICES.items():
            check_choice(f"strategy.{name}", getattr(self, name), choices)
        check_range("strategy.client_numbering", self.client_numbering, 0, 1, integer=True)

    def switched(self) -> list[str]:
        """Names of the fields that differ from this project's default."""
        return [f.name for f in fields(self) if getattr(self, f.name) != SWITCHES[f.name][0]]

    def round_function_switches(self) -> list[str]:
        """The switched fields that only :func:`aggregate_round` implements."""
        return [name for name in self.switched() if name in ROUND_FUNCTION_SWITCHES]


PROJECT_DEFAULT = Options()
AUTHORS_CODE = Options(**{name: values[1] for name, values in SWITCHES.items()})  # type: ignore[arg-type]

# The SimConfig fields (not strategy options) of the authors' local training, for SimConfig(**...):
# torch.optim.Adam with its defaults (lr 0.001; their model/model_wrapper.py line 372), the client's loss is the
# mean over its epochs of the mean batch loss (fl_client_QSFL.py lines 50-57, model_wrapper.py lines 392-415).
# 10 local epochs and batch 2 are from issue 11: their task configs are not in the repository.
AUTHORS_EXPERIMENT_TRAINING: dict[str, Any] = {"optimizer": "adam", "lr": 0.001, "adam_beta1": 0.9,
                                               "adam_beta2": 0.999, "adam_eps": 1e-8, "local_epochs": 10,
                                               "batch_size": 2, "loss_report": "all_batches"}


def resolve_options(variant: str, explicit: Mapping[str, Any]) -> Options:
    """The preset of ``variant`` ("default" or "authors_code") with every non-None value of ``explicit``."""
    check_choice("strategy.variant", variant, VARIANTS)
    preset = AUTHORS_CODE if variant == "authors_code" else PROJECT_DEFAULT
    return replace(preset, **{k: v for k, v in explicit.items() if v is not None})


@dataclass(frozen=True)
class Hyperparameters:
    """The tunable numbers of one round (the authors hard-code beta 0.9, alpha 0.7, NS 6, p 0.4)."""

    beta: float = 0.9
    alpha: float = 0.7
    k: int | None = None         # qualified count for selection="topk"; None -> ceil(alpha * C)
    ns: int = 6
    p: float = 0.4
    use_qj: bool = True          # False: every sampled client is qualified, no metadata is sent
    index_encoding: str = "auto"

    def __post_init__(self) -> None:
        check_range("strategy.beta", self.beta, 0.0, 1.0)
        check_range("strategy.alpha", self.alpha, 0.0, 1.0, lo_open=True)
        if self.k is not None:
            check_range("strategy.k", self.k, 1, None, integer=True)
        check_range("strategy.ns", self.ns, 1, None, integer=True)
        check_range("strategy.p", self.p, 0.0, 1.0, lo_open=True)
        check_bool("strategy.use_qj", self.use_qj)
        check_choice("strategy.index_encoding", self.index_encoding, ("auto", "int32", "bitmap"))


@dataclass
class RoundOutput:
    """What one round decided: the new global model, who qualified, what each client sent, the bytes."""

    weights: torch.Tensor                       # (n,) new global weights
    qualified: np.ndarray                       # qualified client ids, ascending
    entries: dict[int, torch.Tensor]            # client id -> absolute indices it uploaded, ascending
    values: dict[int, torch.Tensor]             # client id -> the values it uploaded at those indices
    segment_ids: dict[int, int]                 # client id -> segment it uploaded
    coverage: list[int]                         # per segment: qualified clients that sent it
    scores: np.ndarray | None                   # QJ score per row (None without QJ)
    # (message, the clients that each sent one): who sent what, for the ledger and the clients' upload times
    uplink: list[tuple[MessageSize, list[int]]] = field(default_factory=list)

    @property
    def uplink_bytes(self) -> int:
        """Total uplink bytes of the round."""
        return sum(msg.total * len(clients) for msg, clients in self.uplink)


def authors_segment_length(n: int, ns: int) -> int:
    """``np.round(n / NS)`` (half to even), the authors' segment length (client line 192, server line 140)."""
    return int(np.round(n / ns))


def layout_bounds(n: int, ns: int, layout: str) -> np.ndarray:
    """Offsets (ns + 1,): segment s is ``[b[s], b[s+1])``; with "authors", ``[b[ns], n)`` is in no segment.

    "array_split": sizes differ by at most one and cover every coordinate. "authors": every segment has
    ``round(n / NS)`` entries, cut at ``n`` (their server crashes there; a segment past ``n`` is empty),
    and when ``NS * round(n / NS) < n`` the tail is never sent, so it keeps the base values.
    """
    if layout == "array_split":
        return segment_bounds(n, ns)
    if not 1 <= ns <= n:
        raise ValueError(f"ns must be in [1, {n}], got {ns}")
    length = authors_segment_length(n, ns)
    return np.minimum(np.arange(ns + 1, dtype=np.int64) * length, n)


def entry_count(p: float, size: int, rounding: str) -> int:
    """How many entries of a segment of ``size`` are sent: ceil(p * size) (at least 1), or the authors' rule.

    The authors keep ``round(p * size)`` entries (Python's round, half to even, client line 212) with the
    slice ``[-count:]`` (line 213), which keeps the whole segment when the count rounds to 0.
    """
    if size == 0:
        return 0
    if rounding == "ceil":
        return ceil_fraction(p, size)
    count = round(p * size)
    return size if count == 0 else count


def top_entries(values: torch.Tensor, count: int, tie_break: str) -> torch.Tensor:
    """Ascending indices of the ``count`` largest |values|; among equal |values| the lower ("low") or higher
    ("high") indices are kept. "high" is what the authors' ``argsort(...)[-count:]`` keeps with a stable sort."""
    n = values.numel()
    if count >= n:
        return torch.arange(n, device=values.device)
    if count <= 0:
        return torch.zeros(0, dtype=torch.long, device=values.device)
    mag = values.abs()
    if tie_break == "low":
        chosen = torch.sort(mag, descending=True, stable=True).indices[:count]
    else:
        chosen = torch.sort(mag, stable=True).indices[n - count:]
    return torch.sort(chosen).values


def qualify(global_weights: torch.Tensor, last_global_update: torch.Tensor | None, client_ids: np.ndarray,
            weights: torch.Tensor, losses: np.ndarray, num_samples: np.ndarray, hyper: Hyperparameters,
            options: Options) -> tuple[np.ndarray, np.ndarray | None]:
    """(qualified ids ascending, scores per row or None without QJ)."""
    ids = np.asarray(client_ids)
    if not hyper.use_qj:
        return np.sort(ids), None
    if options.relevance == "weights":
        relev = qj.relevance_weights(weights, global_weights)
    else:
        relev = qj.relevance(weights - global_weights, last_global_update)
    return qj.judge(losses, num_samples, relev, ids, beta=hyper.beta, k=hyper.k, alpha=hyper.alpha,
                    selection=options.selection)


@dataclass
class Upload:
    """What one client uploads in a round: its segment's chosen entries (absolute indices) and their values."""

    client_id: int
    segment: int
    lo: int                      # the segment is [lo, lo + size)
    size: int
    indices: torch.Tensor        # absolute, ascending
    values: torch.Tensor         # the update's (or, with aggregate="official", the weights') values there
    message: MessageSize


def client_upload(round_index: int, client_id: int, local_weights: torch.Tensor, global_weights: torch.Tensor,
                  hyper: Hyperparameters, options: Options = PROJECT_DEFAULT) -> Upload:
    """A client's side of one round: the top-p entries of its cyclic segment (t + id [+ 1]) mod NS of its update
    (ranked by ``options.rank_by``), as the simulator and a Flower client (:mod:`qsfl.flower`) both compute it."""
    n = global_weights.numel()
    bounds = layout_bounds(n, hyper.ns, options.segment_layout)
    seg = (int(round_index) + int(client_id) + options.client_numbering) % hyper.ns
    lo, hi = int(bounds[seg]), int(bounds[seg + 1])
    update = local_weights[lo:hi] - global_weights[lo:hi]
    key = local_weights[lo:hi] if options.rank_by == "weights" else update
    idx = top_entries(key, entry_count(hyper.p, hi - lo, options.k_rounding), options.tie_break) + lo
    payload = local_weights[idx] if options.aggregate == "official" else update[idx - lo]
    return Upload(int(client_id), seg, lo, hi - lo, idx, payload,
                  sparse_message(len(idx), hi - lo, hyper.index_encoding))


def aggregate_uploads(start: torch.Tensor, uploads: list[Upload], num_samples: list[float] | np.ndarray,
                      hyper: Hyperparameters, options: Options = PROJECT_DEFAULT) -> tuple[torch.Tensor, list[int]]:
    """The server's side: (new weights, senders per segment) from the qualified clients' ``uploads`` (in
    ascending client id; ``num_samples`` aligned with them): per segment, ``start`` + the (weighted or plain)
    mean of the sparse values, or with ``aggregate="official"`` the mean itself; other entries keep ``start``."""
    n = start.numel()
    bounds = layout_bounds(n, hyper.ns, options.segment_layout)
    acc = torch.zeros(n, dtype=torch.float64, device=start.device)
    seg_weight = np.zeros(hyper.ns)
    coverage = np.zeros(hyper.ns, dtype=np.int64)
    for up, n_i in zip(uploads, num_samples):
        w = float(n_i) if options.segment_mean == "weighted" else 1.0
        acc[up.indices] += w * up.values.to(torch.float64)
        seg_weight[up.segment] += w
        coverage[up.segment] += 1
    new = start.clone()
    for seg in np.flatnonzero(seg_weight > 0):
        lo, hi = int(bounds[seg]), int(bounds[seg + 1])
        mean = acc[lo:hi] / seg_weight[seg]
        if options.aggregate == "delta":
            mean = start[lo:hi].to(torch.float64) + mean
        new[lo:hi] = mean.to(new.dtype)
    return new, coverage.tolist()


def aggregate_round(round_index: int, base: torch.Tensor | None, global_weights: torch.Tensor,
                    client_ids: np.ndarray, weights: torch.Tensor, losses: np.ndarray, num_samples: np.ndarray,
                    hyper: Hyperparameters, options: Options = PROJECT_DEFAULT,
                    last_global_update: torch.Tensor | None = None) -> RoundOutput:
    """One round: QJ, each client's top-p of its cyclic segment (:func:`client_upload`), per-segment mean
    (:func:`aggregate_uploads`), bytes.

    ``global_weights`` (n,) is w_t, the model the clients trained from; ``weights`` (C, n) their local
    models, one row per entry of ``client_ids`` (distinct ids); ``base`` the fixed model that
    ``options.base == "pretrained"`` rebuilds every round from (unused with "global");
    ``last_global_update`` g_{t-1} for ``relevance="update"`` (None in round 0).
    """
    ids = np.asarray(client_ids)
    if options.base == "pretrained":
        if base is None:
            raise ValueError('options.base == "pretrained" needs the base weights')
        start = base
    else:
        start = global_weights
    qualified, scores = qualify(global_weights, last_global_update, ids, weights, losses, num_samples,
                                hyper, options)
    qualified_set = set(qualified.tolist())
    uplink: list[tuple[MessageSize, list[int]]] = []
    if hyper.use_qj:
        uplink.append((meta_message(), [int(c) for c in ids]))
    kept: list[Upload] = []
    kept_samples: list[float] = []
    entries: dict[int, torch.Tensor] = {}
    values: dict[int, torch.Tensor] = {}
    segment_ids: dict[int, int] = {}
    for row, cid in enumerate(ids.tolist()):
        is_qualified = cid in qualified_set
        if not is_qualified and options.upload == "qualified":
            continue
        up = client_upload(round_index, cid, weights[row], global_weights, hyper, options)
        uplink.append((up.message, [cid]))
        entries[cid], values[cid], segment_ids[cid] = up.indices, up.values, up.segment
        if is_qualified:          # an unqualified upload (upload="all") is sent, then discarded by the server
            kept.append(up)
            kept_samples.append(float(num_samples[row]))
    new, coverage = aggregate_uploads(start, kept, kept_samples, hyper, options)
    return RoundOutput(new, qualified, entries, values, segment_ids, coverage, scores, uplink)


def pretraining_round(client_ids: np.ndarray, weights: torch.Tensor, losses: np.ndarray, num_samples: np.ndarray,
                      global_weights: torch.Tensor, hyper: Hyperparameters, options: Options,
                      last_global_update: torch.Tensor | None = None) -> RoundOutput:
    """The authors' "pretrained" model: their round 0 with NS = 1 and p = 1 (server line 127's comment).

    With one segment and every entry sent, nothing of the base survives, so the base is irrelevant.
    """
    dense = replace(hyper, ns=1, p=1.0)
    return aggregate_round(0, global_weights, global_weights, client_ids, weights, losses, num_samples, dense,
                           replace(options, base="global"), last_global_update)

