"""Sparse Cyclic Sliding Segment (SCSS): segment bounds, cyclic segment ids, top-p selection, the exact wire
encoding of a sparse segment, and the per-client frames of dynamic segmentation.

Dynamic segmentation (``strategy.segmentation``, our reading of the journal version's "varied counts or sizes";
docs/architecture.md): every client has a *relative count* ``r_i = clip(ns * median(uplink) / uplink_i, ns_min,
ns_max)``, the number of segments a client with its uplink bandwidth would split the model into so that its
upload takes as long as the median client's with ``ns`` segments.

``count``  client i splits the model into its own ``NS_i = min(n, ceil(r_i))`` array_split segments and sends
           segment ``(t + id) mod NS_i`` (:func:`count_frames`).
``size``   client i sends a window of ``L_i = min(n, ceil(n / r_i))`` consecutive coordinates (cyclic, wrapping
           from n - 1 to 0) starting at ``((t + id) * L_i) mod n``: its windows slide by their own length, so
           consecutive rounds tile the model (:func:`size_frames`).

Either way a client that sends in ``B_i`` consecutive rounds (``NS_i``, resp. ``ceil(n / L_i)``) has covered
every coordinate, and ``B_i <= ns`` for every client whose uplink is at least the median.
"""

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


def fraction_counts(fraction: float, sizes: np.ndarray) -> np.ndarray:
    """:func:`ceil_fraction` of every entry of ``sizes`` (computed once per distinct size)."""
    sizes = np.asarray(sizes, dtype=np.int64)
    distinct, inverse = np.unique(sizes, return_inverse=True)
    return np.array([ceil_fraction(fraction, int(s)) for s in distinct], dtype=np.int64)[inverse.reshape(-1)]


def _ceil(values: np.ndarray) -> np.ndarray:
    """Element-wise ceil immune to float noise (as :func:`ceil_fraction`), as int64."""
    return np.ceil(np.round(values, 9)).astype(np.int64)


def relative_counts(uplink: np.ndarray, ns: int, ns_min: int = 1, ns_max: int | None = None) -> np.ndarray:
    """Each client's relative segment count ``clip(ns * median(uplink) / uplink_i, ns_min, ns_max)`` (float)."""
    up = np.asarray(uplink, dtype=np.float64)
    if up.ndim != 1 or not len(up) or not np.all(np.isfinite(up) & (up > 0)):
        raise ValueError("relative_counts: uplink must be a non-empty vector of positive bandwidths")
    r = ns * (float(np.median(up)) / up)
    return np.clip(r, ns_min, np.inf if ns_max is None else ns_max)


def client_segment_counts(uplink: np.ndarray, ns: int, n: int, ns_min: int = 1,
                          ns_max: int | None = None) -> np.ndarray:
    """``segmentation="count"``: each client's own number of segments, ``min(n, ceil(r_i))``."""
    return np.minimum(_ceil(relative_counts(uplink, ns, ns_min, ns_max)), n)


def client_segment_sizes(uplink: np.ndarray, ns: int, n: int, ns_min: int = 1,
                         ns_max: int | None = None) -> np.ndarray:
    """``segmentation="size"``: each client's window length, ``min(n, ceil(n / r_i))`` (at least 1)."""
    return np.clip(_ceil(n / relative_counts(uplink, ns, ns_min, ns_max)), 1, n)


def count_frames(round_index: int, client_ids: np.ndarray, counts: np.ndarray,
                 n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(start, size, segment) of each client's segment ``(t + id) mod NS_i`` of its own ``NS_i = counts[r]``
    array_split segments of the n coordinates (row r is ``client_ids[r]``)."""
    ids = np.asarray(client_ids, dtype=np.int64)
    ns = np.asarray(counts, dtype=np.int64)
    segment = (int(round_index) + ids) % ns
    base, extra = np.divmod(n, ns)
    start = segment * base + np.minimum(segment, extra)     # array_split: the first `extra` segments are longer
    return start, base + (segment < extra), segment


def size_frames(round_index: int, client_ids: np.ndarray, sizes: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(start, size) of each client's cyclic window of ``L_i = sizes[r]`` coordinates starting at
    ``((t + id) * L_i) mod n`` (row r is ``client_ids[r]``)."""
    ids = np.asarray(client_ids, dtype=np.int64)
    length = np.asarray(sizes, dtype=np.int64)
    # ((t + id) mod n) * L mod n == (t + id) * L mod n, without overflow for any round
    return ((int(round_index) + ids) % n) * length % n, length


def frame_grid(start: np.ndarray, size: np.ndarray, n: int,
               device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Frames as a padded ``(rows, width)`` grid: ``cols[r, j] = (start[r] + j) mod n`` and ``inside[r, j] =
    j < size[r]`` (padding slots repeat coordinates and must never be chosen)."""
    start = np.asarray(start, dtype=np.int64)
    size = np.asarray(size, dtype=np.int64)
    width = int(size.max()) if len(size) else 0
    offsets = np.arange(width)
    cols = (start[:, None] + offsets[None, :]) % n
    inside = offsets[None, :] < size[:, None]
    return torch.as_tensor(cols, dtype=torch.long, device=device), torch.as_tensor(inside, device=device)


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
        # each segment's slots as one window of `width` consecutive coordinates (see segment_slots); a short
        # segment's window reaches one coordinate past its end, except the last one's, which would leave the
        # vector: its window starts one coordinate early and is rotated so that its padding slot comes last
        self.window_starts = torch.as_tensor(np.minimum(self.bounds[:-1], n - self.width), device=device)
        self.short = torch.as_tensor(self.sizes < self.width, device=device)

    def segment_slots(self, x: torch.Tensor, rows: torch.Tensor, segments: torch.Tensor) -> torch.Tensor:
        """``x[rows[r], cols[segments[r]]]`` for every r, as a ``(len(rows), width)`` copy: row ``rows[r]`` of the
        ``(C, n)`` matrix ``x`` in the slots of segment ``segments[r]``. A padding slot holds some coordinate of
        that row (never one to use: mask it with :meth:`mask_padding`).

        Gathers whole windows of consecutive coordinates (an ``unfold`` view indexed by row and window start),
        ~8x faster on the CPU than a 2-D gather of the slots' columns.
        """
        windows = x.unfold(1, self.width, 1)[rows, self.window_starts[segments]]
        if self.padded:
            last = segments == self.ns - 1
            if bool(last.any()):   # its window starts one coordinate early: rotate its padding slot to the end
                windows[last] = windows[last].roll(-1, dims=1)
        return windows

    def mask_padding(self, slots: torch.Tensor, segments: torch.Tensor, value: float) -> torch.Tensor:
        """Set the padding slot of each row of ``slots`` (rows in ``segments``' segments) to ``value``, in place."""
        if self.padded:
            slots[self.short[segments], self.width - 1] = value
        return slots

    def to(self, device: torch.device | str) -> SegmentLayout:
        """This layout with its index tensors on ``device``."""
        if self.cols.device == torch.device(device):
            return self
        return SegmentLayout(self.n, self.ns, device)


def kth_largest(rows: torch.Tensor, k: int) -> torch.Tensor:
    """Each row's ``k``-th largest value, as a ``(rows, 1)`` column (NaN counts as the largest, as in topk).

    On the CPU a numpy partition (introselect, O(n)) is ~5.5x faster than ``torch.topk`` for the QSFL segment
    shapes (35 x 1602, k = 641: 0.13 ms vs 0.73 ms, ``benchmarks/topk_cut.py``); on a GPU, or with a NaN in
    ``rows``, ``torch.topk``. Both return the same value.
    """
    n = rows.shape[1]
    if rows.device.type == "cpu" and rows.dtype in (torch.float32, torch.float64) and not rows.requires_grad:
        values = rows.contiguous().numpy()
        if not np.isnan(values).any():   # numpy's partition does not order NaN as topk does
            return torch.from_numpy(np.ascontiguousarray(np.partition(values, n - k, axis=1)[:, n - k:n - k + 1]))
    return torch.topk(rows, k, dim=1, sorted=False).values.min(dim=1, keepdim=True).values


def top_k_slots(magnitudes: torch.Tensor, k: np.ndarray, inside: torch.Tensor | None = None) -> torch.Tensor:
    """Row-wise top-k, vectorised: a bool mask of the ``k[r]`` largest entries of each row ``r`` of the
    non-negative ``magnitudes`` (ties go to the lower slot), never a slot where ``inside`` is False.

    One :func:`kth_largest` per distinct k (a few per config, never one per row) finds each row's k-th largest
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
            value = kth_largest(sub, kv)
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


def choose_segment_entries(layout: SegmentLayout, slots: torch.Tensor, segments: np.ndarray,
                           keep: np.ndarray) -> torch.Tensor:
    """SCSS's choice: a ``(K, width)`` bool mask of the ``keep[r]`` largest-magnitude real slots of row r of
    ``slots`` (row r: segment ``segments[r]`` of a sender's update, as :meth:`SegmentLayout.segment_slots` gathers
    it; ties to the lower slot). The simulator calls it for all senders at once, a Flower client for itself."""
    seg_t = torch.as_tensor(np.asarray(segments, dtype=np.int64), device=slots.device)
    magnitudes = layout.mask_padding(slots.abs(), seg_t, -1.0)
    return top_k_slots(magnitudes, np.asarray(keep, dtype=np.int64))   # padding slots (-1) are never chosen


def aggregate_segments(global_weights: torch.Tensor, layout: SegmentLayout, payload: torch.Tensor,
                       segments: np.ndarray, num_samples: np.ndarray,
                       official: bool = False) -> tuple[torch.Tensor, list[int]]:
    """SCSS's server step: (new global weights, senders per segment). Each segment becomes w_t + the
    sample-weighted mean of the ``(K, width)`` sparse ``payload`` rows sent for it (unsent slots hold 0); a
    segment nobody sent keeps w_t. ``official``: the payload rows are sparse *weights* and a sent segment becomes
    their mean (the authors' averaging, which shrinks the model)."""
    g = global_weights
    device = g.device
    segments = np.asarray(segments, dtype=np.int64)
    n_i = np.asarray(num_samples, dtype=np.float64)
    seg_t = torch.as_tensor(segments, dtype=torch.long, device=device)
    senders = torch.zeros(layout.ns, len(segments), dtype=g.dtype, device=device)   # segment x sender: n_i
    senders[seg_t, torch.arange(len(segments), device=device)] = torch.as_tensor(n_i, dtype=g.dtype, device=device)
    sums = senders @ payload                                                          # (NS, width)
    seg_weight = np.bincount(segments, weights=n_i, minlength=layout.ns)
    coverage = np.bincount(segments, minlength=layout.ns)
    covered = torch.as_tensor(seg_weight > 0, device=device).unsqueeze(1)
    divisor = torch.as_tensor(np.where(seg_weight > 0, seg_weight, 1.0), dtype=g.dtype, device=device)
    mean = sums / divisor.unsqueeze(1)
    g_slots = g[layout.cols]
    new_slots = torch.where(covered, mean if official else g_slots + mean, g_slots)   # unsent segment: unchanged
    return new_slots.reshape(-1)[layout.flat], coverage.tolist()


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
