"""Client-side error feedback: each client keeps what it did not send and adds it to its next update."""

from __future__ import annotations

import torch


class Residuals:
    """Per-client residual vectors; a no-op when disabled."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._store: dict[int, torch.Tensor] = {}

    def add(self, client_id: int, update: torch.Tensor) -> torch.Tensor:
        """The update plus the client's carried residual (if any)."""
        if self.enabled and client_id in self._store:
            return update + self._store[client_id]
        return update

    def keep_unsent(self, client_id: int, accumulated: torch.Tensor, sent_indices: torch.Tensor | None) -> None:
        """Remember ``accumulated`` with the entries at ``sent_indices`` zeroed (None: nothing was sent)."""
        if self.enabled:
            residual = accumulated.detach().clone()
            if sent_indices is not None:
                residual[sent_indices] = 0.0
            self._store[client_id] = residual

    def get(self, client_id: int) -> torch.Tensor | None:
        return self._store.get(client_id)
