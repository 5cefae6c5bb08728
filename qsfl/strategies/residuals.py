"""Client-side error feedback: each client keeps what it did not send and adds it to its next update."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


class Residuals:
    """Per-client residual vectors, one row per client of one matrix (vectorised); a no-op when disabled."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._slots: dict[int, int] = {}            # client id -> row of _matrix
        self._matrix: torch.Tensor | None = None    # (clients seen, n)

    def _rows(self, client_ids: np.ndarray, like: torch.Tensor) -> torch.Tensor:
        """Rows of ``client_ids`` in the matrix, adding zero rows for clients seen for the first time."""
        new = [int(c) for c in client_ids if int(c) not in self._slots]
        for cid in new:
            self._slots[cid] = len(self._slots)
        if self._matrix is None:
            self._matrix = torch.zeros(len(self._slots), like.shape[1], dtype=like.dtype, device=like.device)
        elif new:
            extra = torch.zeros(len(new), self._matrix.shape[1], dtype=self._matrix.dtype, device=self._matrix.device)
            self._matrix = torch.cat([self._matrix, extra])
        return torch.as_tensor([self._slots[int(c)] for c in client_ids], dtype=torch.long, device=like.device)

    def add(self, client_ids: np.ndarray, updates: torch.Tensor) -> torch.Tensor:
        """The ``(rows, n)`` updates plus each row's client's carried residual (zero for a new client)."""
        if not self.enabled:
            return updates
        rows = self._rows(client_ids, updates)
        assert self._matrix is not None
        return updates + self._matrix[rows]

    def keep_unsent(self, client_ids: np.ndarray, accumulated: torch.Tensor, sent: torch.Tensor | None) -> None:
        """Remember each row of ``accumulated`` with its ``sent`` (bool, same shape) entries zeroed."""
        if not self.enabled:
            return
        rows = self._rows(client_ids, accumulated)
        assert self._matrix is not None
        kept = accumulated.detach() if sent is None else accumulated.detach().masked_fill(sent, 0.0)
        self._matrix[rows] = kept.to(self._matrix.dtype)

    def get(self, client_id: int) -> torch.Tensor | None:
        """A copy of the client's residual, or None if it has none (or error feedback is off)."""
        slot = self._slots.get(int(client_id))
        if slot is None or self._matrix is None:
            return None
        return self._matrix[slot].clone()

    def state_dict(self) -> dict[str, Any]:
        """The residuals as CPU tensors (picklable) for a checkpoint."""
        ids = sorted(self._slots, key=self._slots.__getitem__)
        matrix = None if self._matrix is None else self._matrix.detach().cpu().clone()
        return {"client_ids": ids, "matrix": matrix}

    def load_state_dict(self, state: dict[str, Any], device: torch.device | str = "cpu") -> None:
        """Restore what :meth:`state_dict` returned (copies it)."""
        self._slots = {int(c): i for i, c in enumerate(state["client_ids"])}
        matrix = state["matrix"]
        self._matrix = None if matrix is None else matrix.detach().clone().to(device)
