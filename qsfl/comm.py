"""Exact byte accounting of every message (Ledger) and the byte sizes of each message kind.

Every message carries a fixed header of :data:`HEADER_BYTES` (client id, segment id, entry count:
three int32). Payloads are float32 values; sparse messages add their indices as int32 (4 B each) or a
bitmap over the segment (ceil(size/8) B). A message that sends every entry of its segment is dense and
needs no index at all. This module is the only place these numbers are declared.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

HEADER_BYTES = 12   # client id, segment id, entry count: 3 x int32
VALUE_BYTES = 4     # float32
INDEX_BYTES = 4     # int32
META_BYTES = 12     # QJ metadata payload: loss, sample count, relevance (3 x 4 B)


@dataclass(frozen=True)
class MessageSize:
    """Bytes of one message, split by purpose."""

    header: int
    values: int
    indices: int
    meta: int = 0
    encoding: str = "dense"

    @property
    def total(self) -> int:
        return self.header + self.values + self.indices + self.meta


def index_encoding_bytes(count: int, size: int, encoding: str = "auto") -> tuple[str, int]:
    """(encoding used, index bytes) for ``count`` of ``size`` entries: dense, int32 or bitmap.

    ``auto`` picks the smallest of int32 indices, a bitmap, or dense (all values, no index).
    """
    if not 0 <= count <= size:
        raise ValueError(f"count {count} not in [0, {size}]")
    if count == size:
        return "dense", 0
    int32 = INDEX_BYTES * count
    bitmap = math.ceil(size / 8)
    if encoding == "int32":
        return "int32", int32
    if encoding == "bitmap":
        return "bitmap", bitmap
    if encoding != "auto":
        raise ValueError(f"unknown index encoding {encoding!r}")
    dense_extra = VALUE_BYTES * (size - count)   # dense sends the unsent zeros instead of indices
    best = min((int32, "int32"), (bitmap, "bitmap"), (dense_extra, "dense"))
    return best[1], best[0]


def sparse_message(count: int, size: int, encoding: str = "auto") -> MessageSize:
    """Size of a message carrying ``count`` of the ``size`` entries of one segment."""
    used, idx = index_encoding_bytes(count, size, encoding)
    if used == "dense":
        return MessageSize(HEADER_BYTES, VALUE_BYTES * size, 0, encoding="dense")
    return MessageSize(HEADER_BYTES, VALUE_BYTES * count, idx, encoding=used)


def dense_message(n: int) -> MessageSize:
    """Size of a message carrying a full float32 vector of ``n`` entries."""
    return MessageSize(HEADER_BYTES, VALUE_BYTES * n, 0)


def meta_message() -> MessageSize:
    """Size of a client's QJ metadata message (loss, sample count, relevance)."""
    return MessageSize(HEADER_BYTES, 0, 0, meta=META_BYTES, encoding="meta")


SCALE_BYTES = 4     # float32 scale of a quantised message (QSGD's norm, signSGD's and STC's magnitude)


def packed_bytes(count: int, bits: int) -> int:
    """Bytes of ``count`` values of ``bits`` bits each, packed: ceil(count * bits / 8)."""
    return math.ceil(count * bits / 8)


def qsgd_bits(levels: int) -> int:
    """Bits per entry of a QSGD message with ``levels`` (s): a sign bit + ceil(log2(s + 1)) for the level 0..s."""
    return 1 + math.ceil(math.log2(levels + 1))


def qsgd_message(n: int, levels: int) -> MessageSize:
    """QSGD: the update's L2 norm (float32) and every entry's sign and level, fixed-width bit-packed (no Elias
    coding)."""
    return MessageSize(HEADER_BYTES, SCALE_BYTES + packed_bytes(n, qsgd_bits(levels)), 0, encoding="qsgd")


def sign_message(n: int) -> MessageSize:
    """signSGD: one scale (float32) and one sign bit per entry."""
    return MessageSize(HEADER_BYTES, SCALE_BYTES + packed_bytes(n, 1), 0, encoding="sign")


def ternary_message(count: int, size: int, encoding: str = "auto") -> MessageSize:
    """Sparse ternary (STC): one magnitude (float32), a sign bit per sent entry, and the positions as int32
    indices or a bitmap over ``size`` (``auto``: the smaller; none when every entry is sent)."""
    if not 0 <= count <= size:
        raise ValueError(f"count {count} not in [0, {size}]")
    values = SCALE_BYTES + packed_bytes(count, 1)
    if count == size:
        return MessageSize(HEADER_BYTES, values, 0, encoding="dense")
    int32, bitmap = INDEX_BYTES * count, math.ceil(size / 8)
    if encoding not in ("auto", "int32", "bitmap"):
        raise ValueError(f"unknown index encoding {encoding!r}")
    used = encoding if encoding != "auto" else ("int32" if int32 < bitmap else "bitmap")
    return MessageSize(HEADER_BYTES, values, int32 if used == "int32" else bitmap, encoding=used)


def sign_pattern_message(n: int) -> MessageSize:
    """The signs (-1, 0, +1) of an n-vector, 2 bits each, bit-packed: the last global update's signs that a
    Flower client needs for QJ's relevance when it does not hold the previous global model (qsfl.flower)."""
    return MessageSize(HEADER_BYTES, packed_bytes(n, 2), 0, encoding="signs")


ROUND_FIELDS = ("uplink_bytes", "uplink_header_bytes", "uplink_value_bytes", "uplink_index_bytes",
                "uplink_meta_bytes", "uplink_messages", "downlink_bytes", "downlink_messages")


@dataclass
class ClientBytes:
    """One round's bytes by client (for simulated time): what each named client received and sent, and the
    bytes billed without naming their clients."""

    downlink: dict[int, int] = field(default_factory=dict)
    uplink: dict[int, int] = field(default_factory=dict)
    unattributed_downlink: int = 0
    unattributed_uplink: int = 0

    def add(self, direction: str, total: int, count: int | None, clients: Iterable[Any] | None) -> int:
        """Record ``count`` messages of ``total`` bytes each, one per client of ``clients`` when given (then
        ``count`` may be None); returns the number of messages."""
        if clients is None:
            n = 1 if count is None else int(count)
            setattr(self, f"unattributed_{direction}", getattr(self, f"unattributed_{direction}") + total * n)
            return n
        ids = [int(c) for c in clients]
        if count is not None and int(count) != len(ids):
            raise ValueError(f"ledger: count {count} but {len(ids)} clients named")
        per_client = getattr(self, direction)
        for c in ids:
            per_client[c] = per_client.get(c, 0) + total
        return len(ids)


class Ledger:
    """Counts the bytes of every uplink and downlink message, per round and cumulatively.

    A message may name its clients (``clients=``: one message per client); the round's bytes by client
    (:meth:`client_bytes`) then give each client's transfer times (``qsfl.system``).
    """

    def __init__(self) -> None:
        self.cum_uplink = 0
        self.cum_downlink = 0
        self._round = self._empty()
        self._clients = ClientBytes()

    @staticmethod
    def _empty() -> dict[str, int]:
        return {k: 0 for k in ROUND_FIELDS}

    def uplink(self, msg: MessageSize, count: int | None = None, *, clients: Iterable[Any] | None = None) -> None:
        """Record ``count`` identical uplink messages (default 1), or one from each of ``clients``."""
        count = self._clients.add("uplink", msg.total, count, clients)
        r = self._round
        r["uplink_bytes"] += msg.total * count
        r["uplink_header_bytes"] += msg.header * count
        r["uplink_value_bytes"] += msg.values * count
        r["uplink_index_bytes"] += msg.indices * count
        r["uplink_meta_bytes"] += msg.meta * count
        r["uplink_messages"] += count
        self.cum_uplink += msg.total * count

    def downlink(self, msg: MessageSize, count: int | None = None, *, clients: Iterable[Any] | None = None) -> None:
        """Record ``count`` identical downlink messages (default 1), or one to each of ``clients``."""
        count = self._clients.add("downlink", msg.total, count, clients)
        self._round["downlink_bytes"] += msg.total * count
        self._round["downlink_messages"] += count
        self.cum_downlink += msg.total * count

    def client_bytes(self) -> ClientBytes:
        """This round's bytes by client so far (a copy)."""
        c = self._clients
        return ClientBytes(dict(c.downlink), dict(c.uplink), c.unattributed_downlink, c.unattributed_uplink)

    def close_round(self) -> dict[str, int]:
        """Return this round's counters (plus cumulative totals) and start a new round."""
        out = dict(self._round, cum_uplink_bytes=self.cum_uplink, cum_downlink_bytes=self.cum_downlink)
        self._round = self._empty()
        self._clients = ClientBytes()
        return out


def fedavg_uplink_bytes(n_params: int, cohort_sizes: list[int] | int, rounds: int | None = None) -> int:
    """Uplink bytes FedAvg spends with the same cohorts: every sampled client sends its dense update."""
    per_client = dense_message(n_params).total
    if isinstance(cohort_sizes, int):
        return per_client * cohort_sizes * int(rounds or 1)
    return per_client * int(sum(cohort_sizes))
