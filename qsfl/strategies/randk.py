"""Random-k sparsification: every sampled client sends ceil(p * n) entries of its update chosen uniformly at
random, as (index, value) pairs like topk (optional error feedback). The choice comes from a counter-based
generator keyed by (seed, round, client), so it does not depend on batching or pausing."""

from __future__ import annotations

import numpy as np
import torch

from qsfl.comm import Ledger
from qsfl.segments import ceil_fraction
from qsfl.strategies.base import CompressedUpdates
from qsfl.strategies.randomness import uniform
from qsfl.strategies.topk import bill_sparse
from qsfl.strategy_config import RandKConfig

STREAM = 1   # randomness stream of randk


def random_k_mask(seed: int, round_index: int, client_ids: np.ndarray, n: int, k: int) -> np.ndarray:
    """``(C, n)`` bool: each client's k entries, the k smallest of its uniform keys (a uniform k-subset)."""
    keys = uniform(seed, STREAM, round_index, client_ids, n)
    mask = np.zeros(keys.shape, dtype=bool)
    if k == n:
        mask[:] = True
    else:
        chosen = np.argpartition(keys, k - 1, axis=1)[:, :k]
        np.put_along_axis(mask, chosen, True, axis=1)
    return mask


class RandK(CompressedUpdates):
    name = "randk"
    config_class = RandKConfig

    def compress(self, round_index: int, client_ids: np.ndarray, updates: torch.Tensor,
                 ledger: Ledger) -> torch.Tensor:
        k = ceil_fraction(self.scfg.p, self.n_params)
        mask = random_k_mask(self.config.seed, round_index, client_ids, self.n_params, k)
        bill_sparse(ledger, mask.sum(axis=1), np.full(len(client_ids), self.n_params), self.scfg.index_encoding,
                    clients=client_ids)
        return updates * torch.as_tensor(mask, dtype=updates.dtype, device=updates.device)
