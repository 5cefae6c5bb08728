"""Reference engine: trains the cohort's clients one after another with torch.optim.SGD."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from qsfl.engine.common import CohortResult, epoch_orders, flat_weights, load_flat, start_rows


class SequentialEngine:
    """Plain per-client loop: E epochs of minibatch SGD (momentum, weight decay) from the global weights."""

    name = "sequential"

    def __init__(self, model: nn.Module, client_data: Sequence[tuple[torch.Tensor, torch.Tensor]], *,
                 epochs: int, batch_size: int, lr: float, momentum: float = 0.0, weight_decay: float = 0.0,
                 seed: int = 0) -> None:
        self.model = model
        self.client_data = client_data
        self.epochs, self.batch_size, self.lr = epochs, batch_size, lr
        self.momentum, self.weight_decay, self.seed = momentum, weight_decay, seed

    def train(self, start: torch.Tensor, client_ids: Sequence[int] | np.ndarray, round_index: int) -> CohortResult:
        """Train each row's client from its start weights (``start``: (n,) shared or (rows, n)); return their
        weights, last-epoch losses and sizes."""
        weights, losses, sizes = [], [], []
        starts = start_rows(start, len(client_ids))
        for row, cid in enumerate(client_ids):
            w, loss, n = self._train_client(starts[row], int(cid), round_index)
            weights.append(w)
            losses.append(loss)
            sizes.append(n)
        return CohortResult(torch.stack(weights), np.asarray(losses), np.asarray(sizes, dtype=np.int64))

    def _train_client(self, global_weights: torch.Tensor, cid: int, round_index: int):
        x, y = self.client_data[cid]
        n = len(y)
        load_flat(self.model, global_weights)
        opt = torch.optim.SGD(self.model.parameters(), lr=self.lr, momentum=self.momentum,
                              weight_decay=self.weight_decay, foreach=False)
        orders = torch.as_tensor(epoch_orders(self.seed, round_index, cid, n, self.epochs), device=x.device)
        loss_sum = 0.0
        for epoch in range(self.epochs):
            loss_sum = 0.0
            for start in range(0, n, self.batch_size):
                idx = orders[epoch, start:start + self.batch_size]
                loss = torch.nn.functional.cross_entropy(self.model(x[idx]), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                loss_sum += loss.item() * len(idx)
        return flat_weights(self.model), loss_sum / n, n
