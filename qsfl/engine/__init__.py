"""Local-training engines: ``sequential`` (reference loop) and ``batched`` (torch.func, vectorised)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from qsfl.engine.allocator import keep_freed_memory
from qsfl.engine.common import (
    CohortResult,
    Engine,
    epoch_orders,
    evaluate,
    flat_weights,
    load_flat,
)
from qsfl.engine.local import LocalTraining
from qsfl.engine.sequential import SequentialEngine

log = logging.getLogger(__name__)

__all__ = [
    "CohortResult",
    "Engine",
    "LocalTraining",
    "SequentialEngine",
    "epoch_orders",
    "evaluate",
    "flat_weights",
    "load_flat",
    "make_engine",
]


def make_engine(kind: str, model: nn.Module, client_data: Sequence[tuple[torch.Tensor, torch.Tensor]], *,
                seed: int, local: LocalTraining | None = None, max_chunk_mb: float = 1024.0,
                **fields: Any) -> Engine:
    """Build the engine named by ``kind`` (auto -> batched when the model can be vectorised).

    Local training is ``local`` (a :class:`LocalTraining`) or its fields as keywords (epochs, batch_size,
    lr, momentum, weight_decay, optimizer, adam_beta1, adam_beta2, adam_eps, prox_mu, loss_report).
    """
    spec = LocalTraining.build(local, fields)
    keep_freed_memory()
    if kind in ("auto", "batched"):
        from qsfl.engine.batched import BatchedEngine, unsupported_reason

        reason = unsupported_reason(model)
        if reason is None:
            return BatchedEngine(model, client_data, local=spec, seed=seed, max_chunk_mb=max_chunk_mb)
        if kind == "batched":
            from qsfl.errors import ConfigError
            raise ConfigError(f"engine: 'batched' cannot run this model: {reason}; use 'sequential' or 'auto'")
        log.info("engine auto -> sequential: %s", reason)
    return SequentialEngine(model, client_data, local=spec, seed=seed)
