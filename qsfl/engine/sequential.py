"""Reference engine: trains the cohort's clients one after another with torch.optim (SGD or Adam)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from qsfl.engine import local as lt
from qsfl.engine.common import CohortResult, epoch_orders, flat_weights, load_flat, start_rows


class SequentialEngine:
    """Plain per-client loop: E epochs of minibatch steps of torch.optim.SGD/Adam from each row's start weights,
    on the loss of :mod:`qsfl.engine.local` (cross-entropy plus FedProx's proximal term)."""

    name = "sequential"

    def __init__(self, model: nn.Module, client_data: Sequence[tuple[torch.Tensor, torch.Tensor]], *,
                 local: lt.LocalTraining | None = None, seed: int = 0, **fields: Any) -> None:
        self.model = model
        self.client_data = client_data
        self.spec = lt.LocalTraining.build(local, fields)
        self.epochs, self.batch_size, self.lr = self.spec.epochs, self.spec.batch_size, self.spec.lr
        self.momentum, self.weight_decay, self.seed = self.spec.momentum, self.spec.weight_decay, seed

    def train(self, start: torch.Tensor, client_ids: Sequence[int] | np.ndarray, round_index: int) -> CohortResult:
        """Train each row's client from its start weights (``start``: (n,) shared or (rows, n)); return their
        weights, reported losses and sizes."""
        weights, losses, sizes = [], [], []
        starts = start_rows(start, len(client_ids))
        for row, cid in enumerate(client_ids):
            w, loss, n = self._train_client(starts[row], int(cid), round_index)
            weights.append(w)
            losses.append(loss)
            sizes.append(n)
        return CohortResult(torch.stack(weights), np.asarray(losses), np.asarray(sizes, dtype=np.int64))

    def _train_client(self, start_weights: torch.Tensor, cid: int, round_index: int) -> tuple[torch.Tensor, float, int]:
        spec = self.spec
        x, y = self.client_data[cid]
        n = len(y)
        load_flat(self.model, start_weights)
        params = list(self.model.parameters())
        opt = lt.torch_optimizer(spec, params)
        anchor = [p.detach().clone() for p in params] if spec.prox_mu else None
        orders = torch.as_tensor(epoch_orders(self.seed, round_index, cid, n, self.epochs), device=x.device)
        step_losses, counts = [], []
        for epoch in range(self.epochs):
            for start in range(0, n, self.batch_size):
                idx = orders[epoch, start:start + self.batch_size]
                loss, data_loss = lt.client_loss(self.model(x[idx]), y[idx], params, anchor, spec.prox_mu)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step_losses.append(data_loss.item())
                counts.append(len(idx))
        per_epoch = np.asarray([-(-n // self.batch_size)])
        reported = lt.reported_losses(np.asarray(step_losses)[:, None], np.asarray(counts)[:, None], per_epoch,
                                      self.epochs, spec.loss_report)
        return flat_weights(self.model), float(reported[0]), n
