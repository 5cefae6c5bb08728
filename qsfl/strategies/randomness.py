"""Counter-based random numbers for the strategies: a value depends only on (seed, stream, round, client,
entry), never on which other clients or configs are computed in the same call, so batched and single runs,
and paused and continued ones, draw the same numbers. SplitMix64 (Steele, Lea & Flood 2014) in numpy uint64."""

from __future__ import annotations

import numpy as np

_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _mix(z: np.ndarray) -> np.ndarray:
    """SplitMix64's output function (uint64 arithmetic wraps)."""
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def uniform(seed: int, stream: int, round_index: int, client_ids: np.ndarray, n: int) -> np.ndarray:
    """A ``(len(client_ids), n)`` float64 array of uniform numbers in [0, 1), one row per client."""
    with np.errstate(over="ignore"):
        key: np.ndarray = np.zeros((), dtype=np.uint64)
        for part in (seed, stream, round_index):
            key = _mix((key ^ np.uint64(part % 2**64)) + _GAMMA)
        rows = _mix((np.asarray(client_ids, dtype=np.uint64) ^ key) + _GAMMA)   # one key per client
        counters = (np.arange(1, n + 1, dtype=np.uint64) * _GAMMA)[None, :]
        bits = _mix(rows[:, None] + counters)
    return (bits >> np.uint64(11)).astype(np.float64) * (1.0 / 2**53)
