"""Per-client fairness of a run: how often each client took part, how often QJ left it out, and how well the
final global model does on each client's own data distribution.

A client's accuracy is measured on its own label distribution: ``acc_i = sum_c p_i(c) * acc_c`` with ``p_i(c)``
the share of class ``c`` in client ``i``'s training partition and ``acc_c`` the global model's accuracy on the
test samples of class ``c`` (classes absent from the test split are left out and ``p_i`` renormalised). That is
the expected accuracy on a test split drawn from the client's own labels: exact for label-skew partitions
(iid, dirichlet, shards), and the label part only for natural partitions whose writers also differ in style.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from qsfl.engine.common import load_flat

COLUMNS = ("client", "samples", "sampled", "qualified", "not_qualified", "accuracy")


def participation(df: pd.DataFrame, n_clients: int) -> pd.DataFrame:
    """Per client: rounds sampled, rounds qualified (uploaded) and rounds left out by QJ, from a History's df."""
    sampled = np.zeros(n_clients, dtype=np.int64)
    qualified = np.zeros(n_clients, dtype=np.int64)
    for ids in df["sampled_clients"]:
        np.add.at(sampled, np.asarray(list(ids), dtype=np.int64), 1)
    for ids in df["qualified_clients"]:
        np.add.at(qualified, np.asarray(list(ids), dtype=np.int64), 1)
    return pd.DataFrame({"client": np.arange(n_clients), "sampled": sampled, "qualified": qualified,
                         "not_qualified": sampled - qualified})


def label_counts(labels: np.ndarray, parts: Sequence[np.ndarray], num_classes: int) -> np.ndarray:
    """(clients, classes) training-sample counts per client and class."""
    out = np.zeros((len(parts), num_classes), dtype=np.int64)
    for i, idx in enumerate(parts):
        out[i] = np.bincount(labels[np.asarray(idx, dtype=np.int64)], minlength=num_classes)
    return out


@torch.no_grad()
def class_accuracy(model: torch.nn.Module, weights: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                   num_classes: int, batch_size: int = 4096) -> np.ndarray:
    """Accuracy of ``weights`` on the test samples of each class (NaN for a class with no test sample)."""
    load_flat(model, weights)
    correct = torch.zeros(num_classes, dtype=torch.float64)
    total = torch.zeros(num_classes, dtype=torch.float64)
    for start in range(0, len(y), batch_size):
        target = y[start:start + batch_size]
        hit = (model(x[start:start + batch_size]).argmax(dim=1) == target).double()
        correct.index_add_(0, target.cpu(), hit.cpu())
        total.index_add_(0, target.cpu(), torch.ones_like(hit).cpu())
    acc = torch.where(total > 0, correct / total.clamp(min=1), torch.full_like(total, math.nan))
    return acc.numpy()


def client_accuracy(counts: np.ndarray, class_acc: np.ndarray) -> np.ndarray:
    """Per client: its label shares times the per-class accuracies (classes without test samples left out)."""
    known = np.isfinite(class_acc)
    weights = counts[:, known].astype(float)
    totals = weights.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, weights @ class_acc[known] / totals, math.nan)


def client_table(simulation: Any, df: pd.DataFrame, weights: torch.Tensor) -> pd.DataFrame:
    """One row per client of a finished :class:`qsfl.sim.Simulation`: samples, participation and accuracy.

    ``df`` is the run's History DataFrame, ``weights`` the final flat global weights.
    """
    ds = simulation.dataset
    table = participation(df, len(simulation.parts))
    counts = label_counts(ds.y_train.cpu().numpy(), simulation.parts, ds.num_classes)
    acc = class_accuracy(simulation.model, weights, simulation.x_test, simulation.y_test, ds.num_classes)
    table.insert(1, "samples", counts.sum(axis=1))
    table["accuracy"] = client_accuracy(counts, acc)
    return table[list(COLUMNS)]


def summarise(table: pd.DataFrame) -> dict[str, float]:
    """Spread of per-client accuracy (mean, std, min, 10th percentile, max) and of participation."""
    acc = table["accuracy"].to_numpy(dtype=float)
    acc = acc[np.isfinite(acc)]
    nan = math.nan
    return {
        "clients": float(len(table)),
        "accuracy_mean": float(acc.mean()) if len(acc) else nan,
        "accuracy_std": float(acc.std(ddof=0)) if len(acc) else nan,
        "accuracy_min": float(acc.min()) if len(acc) else nan,
        "accuracy_p10": float(np.percentile(acc, 10)) if len(acc) else nan,
        "accuracy_max": float(acc.max()) if len(acc) else nan,
        "qualified_min": float(table["qualified"].min()) if len(table) else nan,
        "qualified_max": float(table["qualified"].max()) if len(table) else nan,
        "never_qualified": float(((table["qualified"] == 0) & (table["sampled"] > 0)).sum()),
        "not_qualified_share": float(table["not_qualified"].sum() / max(int(table["sampled"].sum()), 1)),
    }
