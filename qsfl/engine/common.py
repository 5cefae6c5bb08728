"""What both engines share: the result type, the seeded minibatch order, flat-weight helpers and
evaluation."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parameters_to_vector


@dataclass
class CohortResult:
    """Local training outcome of one cohort, rows in the order of the client ids given."""

    weights: torch.Tensor      # (C, n) float32 flat local weights after training
    losses: np.ndarray         # (C,) mean training loss over the last local epoch
    num_samples: np.ndarray    # (C,) local sample counts


class Engine(Protocol):
    """What the simulator needs of a local-training engine (sequential, batched, or a user's own)."""

    name: str

    def train(self, start: torch.Tensor, client_ids: Sequence[int] | np.ndarray, round_index: int) -> CohortResult:
        """Train each row's client from its start weights ((n,) shared or (rows, n)) for one round."""
        ...


def start_rows(start: torch.Tensor, rows: int) -> torch.Tensor:
    """Per-row start weights: ``start`` is one flat vector (every row starts from it) or a ``(rows, n)`` matrix.

    Rows may repeat a client id (e.g. the same client under several strategies in ``simulate_many``): each row
    trains independently from its own start.
    """
    if start.dim() == 1:
        return start.reshape(1, -1).expand(rows, -1)
    if start.dim() != 2 or start.shape[0] != rows:
        raise ValueError(f"start weights: expected shape (n,) or ({rows}, n), got {tuple(start.shape)}")
    return start


def epoch_orders(seed: int, round_index: int, client_id: int, num_samples: int, epochs: int) -> np.ndarray:
    """(epochs, num_samples) sample order of one client in one round; both engines use exactly this."""
    rng = np.random.default_rng([int(seed), int(round_index), int(client_id), 0x5EED])
    return np.stack([rng.permutation(num_samples) for _ in range(epochs)])


def flat_weights(model: nn.Module) -> torch.Tensor:
    """The model's parameters as one detached float32 vector."""
    return parameters_to_vector(model.parameters()).detach().clone()


def load_flat(model: nn.Module, flat: torch.Tensor) -> None:
    """Copy a flat vector into the model's parameters.

    Copies, never aliases: torch's ``vector_to_parameters`` makes each parameter a *view* of ``flat``,
    so training would then write into the caller's vector (e.g. the global weights).
    """
    offset = 0
    with torch.no_grad():
        for p in model.parameters():
            n = p.numel()
            p.copy_(flat[offset:offset + n].view_as(p))
            offset += n


@torch.no_grad()
def evaluate(model: nn.Module, flat: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
             batch_size: int = 4096) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of the weights ``flat`` on (x, y)."""
    load_flat(model, flat)
    correct, loss_sum = 0, 0.0
    for start in range(0, len(y), batch_size):
        logits = model(x[start:start + batch_size])
        target = y[start:start + batch_size]
        loss_sum += torch.nn.functional.cross_entropy(logits, target, reduction="sum").item()
        correct += (logits.argmax(dim=1) == target).sum().item()
    return correct / len(y), loss_sum / len(y)
