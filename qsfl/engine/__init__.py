"""Local-training engines: ``sequential`` (reference loop) and ``batched`` (torch.func, vectorised)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from qsfl.engine.common import (
    CohortResult,
    Engine,
    epoch_orders,
    evaluate,
    flat_weights,
    load_flat,
)
from qsfl.engine.sequential import SequentialEngine

log = logging.getLogger(__name__)

__all__ = [
    "CohortResult",
    "Engine",
    "SequentialEngine",
    "epoch_orders",
    "evaluate",
    "flat_weights",
    "load_flat",
    "make_engine",
]


def make_engine(kind: str, model: nn.Module, client_data: Sequence[tuple[torch.Tensor, torch.Tensor]], *,
                epochs: int, batch_size: int, lr: float, momentum: float, weight_decay: float, seed: int,
                max_chunk_mb: float = 1024.0) -> Engine:
    """Build the engine named by ``kind`` (auto -> batched when the model can be vectorised)."""
    kwargs: dict[str, Any] = dict(epochs=epochs, batch_size=batch_size, lr=lr, momentum=momentum,
                  weight_decay=weight_decay, seed=seed)
    if kind in ("auto", "batched"):
        from qsfl.engine.batched import BatchedEngine, unsupported_reason

        reason = unsupported_reason(model)
        if reason is None:
            return BatchedEngine(model, client_data, max_chunk_mb=max_chunk_mb, **kwargs)
        if kind == "batched":
            from qsfl.errors import ConfigError
            raise ConfigError(f"engine: 'batched' cannot run this model: {reason}; use 'sequential' or 'auto'")
        log.info("engine auto -> sequential: %s", reason)
    return SequentialEngine(model, client_data, **kwargs)
