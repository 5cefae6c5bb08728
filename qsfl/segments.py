"""Sparse Cyclic Sliding Segment (SCSS): segment bounds, cyclic segment ids, top-p selection and the
exact wire encoding of a sparse segment."""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

import numpy as np
import torch

from qsfl.comm import HEADER_BYTES, MessageSize, index_encoding_bytes, sparse_message


def segment_bounds(n: int, ns: int) -> np.ndarray:
    """Offsets (ns + 1,) of ``ns`` contiguous segments of ``n`` entries, numpy.array_split semantics."""
    if not 1 <= ns <= n:
        raise ValueError(f"ns must be in [1, {n}], got {ns}")
    base, extra = divmod(n, ns)
    sizes = np.full(ns, base, dtype=np.int64)
    sizes[:extra] += 1
    return np.concatenate([[0], np.cumsum(sizes)])


def segment_id(round_index: int, client_id: int, ns: int) -> int:
    """The segment a client uploads in a round: (round + client_id) mod NS."""
    return (int(round_index) + int(client_id)) % int(ns)


def ceil_fraction(fraction: float, total: int) -> int:
    """ceil(fraction * total), immune to float noise such as 0.55 * 100 = 55.00000000000001; at least 1."""
    return max(1, min(total, math.ceil(round(fraction * total, 9))))


def top_p_indices(values: torch.Tensor, p: float) -> torch.Tensor:
    """Ascending indices of the ceil(p * size) largest-magnitude entries; ties go to the lower index."""
    n = values.numel()
    k = ceil_fraction(p, n)
    if k == n:
        return torch.arange(n, device=values.device)
    mag = values.abs()
    kth = torch.topk(mag, k, sorted=False).values.min()     # the k-th largest magnitude
    keep = mag > kth
    ties = torch.nonzero(mag == kth).squeeze(1)[:k - int(keep.sum())]   # lowest indices win ties
    keep[ties] = True
    return torch.nonzero(keep).squeeze(1)


class SegmentLayout:
    """The NS segments of an n-vector as a padded ``(NS, width)`` grid of slots, for vectorised segment work.

    ``cols[s, j]`` is the coordinate in slot j of segment s; a segment shorter than ``width`` (sizes differ by
    at most one) has one padding slot, marked False in ``inside``, whose column repeats a coordinate of the
    segment and must never be chosen. ``flat`` maps each coordinate back to its slot in ``grid.reshape(-1)``.
    """

    def __init__(self, n: int, ns: int, device: torch.device | str = "cpu") -> None:
        self.n, self.ns = n, ns
        self.bounds = segment_bounds(n, ns)
        self.sizes = np.diff(self.bounds)
        self.width = int(self.sizes.max())
        offsets = np.arange(self.width)
        inside = offsets[None, :] < self.sizes[:, None]
        cols = np.where(inside, self.bounds[:-1, None] + offsets[None, :], self.bounds[:-1, None])
        self.cols = torch.as_tensor(cols, dtype=torch.long, device=device)
        self.inside = torch.as_tensor(inside, device=device)
        self.padded = not bool(inside.all())
        self.flat = torch.as_tensor(np.flatnonzero(inside.reshape(-1)), dtype=torch.long, device=device)

    def to(self, device: torch.device | str) -> SegmentLayout:
        """This layout with its index tensors on ``device``."""
        if self.cols.device == torch.device(device):
            return self
        return SegmentLayout(self.n, self.ns, device)


def top_k_slots(magnitudes: torch.Tensor, k: np.ndarray, inside: torch.Tensor | None = None) -> torch.Tensor:
    """Row-wise top-k, vectorised: a bool mask of the ``k[r]`` largest entries of each row ``r`` of the
    non-negative ``magnitudes`` (ties go to the lower slot), never a slot where ``inside`` is False.

    One ``torch.topk`` per distinct k (a few per config, never one per row) finds each row's k-th largest
    value; a row whose count at that value overshoots k (a tie) then keeps its lowest-index tied slots.
    """
    rows = magnitudes.shape[0]
    device = magnitudes.device
    k_np = np.asarray(k, dtype=np.int64)
    if rows == 0:
        return torch.zeros_like(magnitudes, dtype=torch.bool)
    mag = magnitudes if inside is None else magnitudes.masked_fill(~inside, -1.0)   # padding: never chosen
    kth = torch.empty(rows, 1, dtype=mag.dtype, device=device)
    for kv in np.unique(k_np).tolist():
        idx = np.flatnonzero(k_np == kv)
        every = len(idx) == rows
        sub = mag if every else mag[torch.as_tensor(idx, device=device)]
        if kv == mag.shape[1]:   # the whole row (such a row has no padding: k <= its size)
            value = sub.min(dim=1, keepdim=True).values
        else:
            value = torch.topk(sub, kv, dim=1, sorted=False).values.min(dim=1, keepdim=True).values
        if every:
            kth = value
        else:
            kth[torch.as_tensor(idx, device=device)] = value
    keep = mag >= kth
    k_t = torch.as_tensor(k_np, device=device)
    if torch.equal(keep.sum(dim=1), k_t):   # the usual case: no tie beyond the k-th entry itself
        return keep
    keep = mag > kth
    ties = mag == kth
    need = k_t - keep.sum(dim=1)
    return keep | (ties & (torch.cumsum(ties, dim=1) <= need.unsqueeze(1)))   # lowest slots win ties


def top_k_rows(values: torch.Tensor, lo: np.ndarray, hi: np.ndarray, k: np.ndarray) -> torch.Tensor:
    """Row-wise :func:`top_p_indices` over arbitrary ranges: a ``(rows, n)`` bool mask of the ``k[r]``
    largest-magnitude entries of ``values[r, lo[r]:hi[r]]`` (ties to the lower index). The reference form of
    :func:`top_k_slots` (the strategies use the slot form directly)."""
    rows, n = values.shape
    lo_np, hi_np = np.asarray(lo, dtype=np.int64), np.asarray(hi, dtype=np.int64)
    k_np = np.asarray(k, dtype=np.int64)
    sizes = hi_np - lo_np
    if rows and not (np.all(lo_np >= 0) and np.all(hi_np <= n) and np.all((k_np >= 1) & (k_np <= sizes))):
        raise ValueError("top_k_rows: need 0 <= lo < hi <= n and 1 <= k <= hi - lo in every row")
    mask = torch.zeros(rows, n, dtype=torch.bool, device=values.device)
    if rows == 0:
        return mask
    offsets = np.arange(int(sizes.max()))
    inside = offsets[None, :] < sizes[:, None]
    cols = torch.as_tensor(np.where(inside, lo_np[:, None] + offsets[None, :], lo_np[:, None]), device=values.device)
    keep = top_k_slots(values.gather(1, cols).abs(), k_np, torch.as_tensor(inside, device=values.device))
    r, c = torch.nonzero(keep, as_tuple=True)
    mask[r, cols[r, c]] = True
    return mask


@dataclass
class SparseSegment:
    """One segment of an update as sent on the wire: the chosen entries and their positions."""

    client_id: int
    segment: int
    size: int
    indices: np.ndarray      # int64, ascending, relative to the segment start
    values: np.ndarray       # float32
    encoding: str = "auto"

    @property
    def message_size(self) -> MessageSize:
        return sparse_message(len(self.indices), self.size, self.encoding)

    def to_bytes(self) -> bytes:
        """Exact wire format: header (client, segment, count as int32) + index block + float32 values."""
        used, _ = index_encoding_bytes(len(self.indices), self.size, self.encoding)
        if used == "dense":
            dense = np.zeros(self.size, dtype="<f4")
            dense[self.indices] = self.values
            return struct.pack("<iii", self.client_id, self.segment, self.size) + dense.tobytes()
        header = struct.pack("<iii", self.client_id, self.segment, len(self.indices))
        if used == "int32":
            index_block = self.indices.astype("<i4").tobytes()
        else:
            mask = np.zeros(self.size, dtype=bool)
            mask[self.indices] = True
            index_block = np.packbits(mask, bitorder="little").tobytes()
        return header + index_block + self.values.astype("<f4").tobytes()

    @classmethod
    def from_bytes(cls, data: bytes, size: int, encoding: str = "auto") -> SparseSegment:
        """Inverse of :meth:`to_bytes` for a segment of known ``size`` and the same encoding policy."""
        client_id, segment, count = struct.unpack_from("<iii", data, 0)
        body = data[HEADER_BYTES:]
        used, nidx = index_encoding_bytes(count, size, encoding)
        if used == "dense":
            dense = np.frombuffer(body, dtype="<f4", count=size)
            idx = np.arange(size)
            return cls(client_id, segment, size, idx, dense.astype(np.float32), encoding)
        if used == "int32":
            idx = np.frombuffer(body[:nidx], dtype="<i4").astype(np.int64)
        else:
            bits = np.unpackbits(np.frombuffer(body[:nidx], dtype=np.uint8), bitorder="little")[:size]
            idx = np.flatnonzero(bits).astype(np.int64)
        values = np.frombuffer(body[nidx:], dtype="<f4", count=count).astype(np.float32)
        return cls(client_id, segment, size, idx, values, encoding)

    def decode(self) -> np.ndarray:
        """Dense float32 segment with unsent entries set to zero."""
        out = np.zeros(self.size, dtype=np.float32)
        out[self.indices] = self.values
        return out


def encode_segment(client_id: int, segment: int, values: torch.Tensor, p: float,
                   encoding: str = "auto") -> SparseSegment:
    """Keep the top-p entries of one segment of an update as a :class:`SparseSegment`."""
    idx = top_p_indices(values, p)
    return SparseSegment(client_id, segment, values.numel(), idx.cpu().numpy().astype(np.int64),
                         values[idx].detach().cpu().numpy().astype(np.float32), encoding)
