"""Sparse ternary compression (STC; Sattler, Wiedemann, Müller & Samek, IEEE TNNLS 2019), uplink: a client
keeps the top-p entries (by magnitude) of p = update + residual, sends each as +-mu with mu their mean
magnitude, and keeps p minus what it sent (error feedback). Bytes: mu (float32), a sign bit per sent entry
and the positions as int32 indices or a bitmap (qsfl.comm.ternary_message; the paper's Golomb coding of the
positions and its downlink compression are not modelled)."""

from __future__ import annotations

import numpy as np
import torch

from qsfl.comm import Ledger, ternary_message
from qsfl.segments import ceil_fraction, top_k_slots
from qsfl.strategies.base import CompressedUpdates
from qsfl.strategy_config import STCConfig


def sparse_ternary(values: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ternarised rows, kept mask): the k largest-magnitude entries of each row as +-mu (their mean magnitude)."""
    keep = top_k_slots(values.abs(), np.full(values.shape[0], k))
    kept = keep.to(values.dtype)
    mu = (values.abs() * kept).sum(dim=1, keepdim=True) / k
    return torch.where(values >= 0, mu, -mu) * kept, keep


class STC(CompressedUpdates):
    name = "stc"
    config_class = STCConfig

    def compress(self, round_index: int, client_ids: np.ndarray, updates: torch.Tensor,
                 ledger: Ledger) -> torch.Tensor:
        k = ceil_fraction(self.scfg.p, self.n_params)
        received, _ = sparse_ternary(updates, k)
        ledger.uplink(ternary_message(k, self.n_params, self.scfg.index_encoding), clients=client_ids)
        return received
