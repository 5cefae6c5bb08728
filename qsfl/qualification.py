"""Qualification Judgment (QJ): contribution, relevance, score and selection. Pure functions."""

from __future__ import annotations

import numpy as np
import torch

from qsfl.segments import ceil_fraction


def contribution(losses: np.ndarray, num_samples: np.ndarray) -> np.ndarray:
    """Normalised contribution c~_i = (L_i / n_i) / sum_j (L_j / n_j); uniform if every c_i is 0."""
    c = np.asarray(losses, dtype=np.float64) / np.asarray(num_samples, dtype=np.float64)
    total = c.sum()
    if total == 0:
        return np.full(len(c), 1.0 / len(c))
    return c / total


def relevance(updates: torch.Tensor, last_global_update: torch.Tensor | None) -> np.ndarray:
    """Share of coordinates where sign(d_i) == sign(g_{t-1}); 1 for every client when g is None."""
    if last_global_update is None:
        return np.ones(updates.shape[0])
    agree = (torch.sign(updates) == torch.sign(last_global_update).unsqueeze(0))
    return agree.to(torch.float64).mean(dim=1).cpu().numpy()


def relevance_weights(local_weights: torch.Tensor, global_weights: torch.Tensor) -> np.ndarray:
    """Authors' variant: share of coordinates where sign(w_i) == sign(w_t)."""
    agree = (torch.sign(local_weights) == torch.sign(global_weights).unsqueeze(0))
    return agree.to(torch.float64).mean(dim=1).cpu().numpy()


def score(contrib: np.ndarray, relev: np.ndarray, beta: float) -> np.ndarray:
    """s_i = beta * c~_i + (1 - beta) * r_i."""
    return beta * np.asarray(contrib, dtype=np.float64) + (1.0 - beta) * np.asarray(relev, dtype=np.float64)


def qualified_count(cohort_size: int, k: int | None, alpha: float) -> int:
    """K: ``k`` capped at the cohort size, or ceil(alpha * cohort size)."""
    if k is not None:
        return max(1, min(int(k), cohort_size))
    return ceil_fraction(alpha, cohort_size)


def select_top(scores: np.ndarray, client_ids: np.ndarray, k: int) -> np.ndarray:
    """Ids of the ``k`` highest scores, ties broken by lower client id; returned ascending."""
    scores = np.asarray(scores, dtype=np.float64)
    ids = np.asarray(client_ids)
    order = np.lexsort((ids, -scores))   # primary key: score descending; secondary: id ascending
    return np.sort(ids[order[:k]])


def select_percentile(scores: np.ndarray, client_ids: np.ndarray, alpha: float) -> np.ndarray:
    """Authors' rule: ids whose score >= numpy percentile of the scores at (1 - alpha) * 100."""
    scores = np.asarray(scores, dtype=np.float64)
    cut = np.percentile(scores, (1.0 - alpha) * 100.0)
    return np.sort(np.asarray(client_ids)[scores >= cut])
