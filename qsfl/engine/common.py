"""What both engines share: the result type, the seeded minibatch order, flat-weight helpers and
evaluation."""

from __future__ import annotations

from dataclasses import dataclass

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
