"""QSGD (Alistarh, Grubic, Li, Tomioka & Vojnovic, NeurIPS 2017): each entry of a client's update v becomes
||v||_2 * sign(v_i) * l_i / s, with l_i = floor(s |v_i| / ||v||) rounded up with probability equal to the
remainder, so the quantised update is unbiased. Bytes: the norm (float32) plus a sign bit and a fixed-width
level (ceil(log2(s + 1)) bits) per entry, bit-packed (qsfl.comm.qsgd_message; no Elias coding)."""

from __future__ import annotations

import numpy as np
import torch

from qsfl.comm import Ledger, qsgd_message
from qsfl.strategies.base import CompressedUpdates
from qsfl.strategies.randomness import uniform
from qsfl.strategy_config import QSGDConfig

STREAM = 2   # randomness stream of qsgd


def quantise(updates: torch.Tensor, levels: int, rand: torch.Tensor) -> torch.Tensor:
    """QSGD's stochastic quantisation of each row of ``updates`` to ``levels`` levels, with uniform ``rand``."""
    norm = torch.linalg.vector_norm(updates, dim=1, keepdim=True)
    safe = torch.where(norm > 0, norm, torch.ones_like(norm))
    scaled = updates.abs() / safe * levels
    lower = torch.floor(scaled)
    level = lower + (rand < scaled - lower).to(updates.dtype)
    return torch.sign(updates) * norm * level / levels


class QSGD(CompressedUpdates):
    name = "qsgd"
    config_class = QSGDConfig

    def compress(self, round_index: int, client_ids: np.ndarray, updates: torch.Tensor,
                 ledger: Ledger) -> torch.Tensor:
        rand = uniform(self.config.seed, STREAM, round_index, client_ids, self.n_params)
        ledger.uplink(qsgd_message(self.n_params, self.scfg.levels), clients=client_ids)
        return quantise(updates, self.scfg.levels, torch.as_tensor(rand, dtype=updates.dtype, device=updates.device))
