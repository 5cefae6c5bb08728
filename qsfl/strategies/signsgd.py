"""signSGD with error feedback (EF-SignSGD; Karimireddy, Rebjock, Stich & Jaggi, ICML 2019): a client sends
the signs of p = update + residual scaled by ||p||_1 / n, and keeps p minus what it sent. A zero entry is
sent as +1 (one bit per entry has no zero). Bytes: the scale (float32) plus one bit per entry."""

from __future__ import annotations

import numpy as np
import torch

from qsfl.comm import Ledger, sign_message
from qsfl.strategies.base import CompressedUpdates
from qsfl.strategy_config import SignSGDConfig


def scaled_signs(values: torch.Tensor) -> torch.Tensor:
    """(||p||_1 / n) * sign(p) for each row p, with sign(0) = +1."""
    scale = values.abs().mean(dim=1, keepdim=True)
    return torch.where(values >= 0, scale, -scale)


class SignSGD(CompressedUpdates):
    name = "signsgd"
    config_class = SignSGDConfig

    def compress(self, round_index: int, client_ids: np.ndarray, updates: torch.Tensor,
                 ledger: Ledger) -> torch.Tensor:
        ledger.uplink(sign_message(self.n_params), clients=client_ids)
        return scaled_signs(updates)
