"""Per-client vectors kept by a strategy between rounds, one row per client of one matrix (vectorised):
error-feedback residuals (what a client did not send) and the clients' own copies of the global model."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


class ClientRows:
    """A vector per client, stored as rows of one matrix; a client seen for the first time gets ``initial``."""

    def __init__(self) -> None:
        self._slots: dict[int, int] = {}            # client id -> row of _matrix
        self._matrix: torch.Tensor | None = None    # (clients seen, n)

    def rows(self, client_ids: np.ndarray, like: torch.Tensor, initial: torch.Tensor | None = None) -> torch.Tensor:
        """Row indices of ``client_ids``, adding a row (``initial``, default zeros) for each new client."""
        new = [int(c) for c in client_ids if int(c) not in self._slots]
        for cid in new:
            self._slots[cid] = len(self._slots)
        n = like.shape[-1]
        fill = torch.zeros(n, dtype=like.dtype, device=like.device) if initial is None else initial
        if self._matrix is None:
            self._matrix = fill.detach().unsqueeze(0).repeat(len(self._slots), 1)
        elif new:
            self._matrix = torch.cat([self._matrix, fill.detach().unsqueeze(0).repeat(len(new), 1)])
        return torch.as_tensor([self._slots[int(c)] for c in client_ids], dtype=torch.long, device=like.device)

    def get_rows(self, client_ids: np.ndarray, like: torch.Tensor, initial: torch.Tensor | None = None) -> torch.Tensor:
        """A ``(rows, n)`` copy of the clients' vectors (``initial`` for a client seen for the first time)."""
        rows = self.rows(client_ids, like, initial)
        assert self._matrix is not None
        return self._matrix[rows]

    def set_rows(self, client_ids: np.ndarray, values: torch.Tensor) -> None:
        """Store row r of ``values`` as the vector of ``client_ids[r]``."""
        rows = self.rows(client_ids, values)
        assert self._matrix is not None
        self._matrix[rows] = values.detach().to(self._matrix.dtype)

    def get(self, client_id: int) -> torch.Tensor | None:
        """A copy of one client's vector, or None if it has none."""
        slot = self._slots.get(int(client_id))
        if slot is None or self._matrix is None:
            return None
        return self._matrix[slot].clone()

    def state_dict(self) -> dict[str, Any]:
        """The rows as CPU tensors (picklable) for a checkpoint."""
        ids = sorted(self._slots, key=self._slots.__getitem__)
        matrix = None if self._matrix is None else self._matrix.detach().cpu().clone()
        return {"client_ids": ids, "matrix": matrix}

    def load_state_dict(self, state: dict[str, Any], device: torch.device | str = "cpu") -> None:
        """Restore what :meth:`state_dict` returned (copies it)."""
        self._slots = {int(c): i for i, c in enumerate(state["client_ids"])}
        matrix = state["matrix"]
        self._matrix = None if matrix is None else matrix.detach().clone().to(device)


class Residuals(ClientRows):
    """Client-side error feedback: each client keeps what it did not send and adds it to its next update.
    A no-op when disabled."""

    def __init__(self, enabled: bool) -> None:
        super().__init__()
        self.enabled = enabled

    def add(self, client_ids: np.ndarray, updates: torch.Tensor) -> torch.Tensor:
        """The ``(rows, n)`` updates plus each row's client's carried residual (zero for a new client)."""
        if not self.enabled:
            return updates
        return updates + self.get_rows(client_ids, updates)

    def keep_unsent(self, client_ids: np.ndarray, accumulated: torch.Tensor, sent: torch.Tensor | None) -> None:
        """Remember each row of ``accumulated`` with its ``sent`` (bool, same shape) entries zeroed."""
        if self.enabled:
            self.set_rows(client_ids, accumulated if sent is None else accumulated.masked_fill(sent, 0.0))
