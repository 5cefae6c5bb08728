"""``qsfl data check PATH --dataset NAME``: load a local dataset directory the way a run would and say what is in it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from qsfl.data.datasets import DATASETS, Dataset, load_dataset
from qsfl.errors import ConfigError, check_choice

LOCAL = ("femnist", "mnist", "cifar10")


def _files(root: Path) -> list[str]:
    """The data files under ``root`` (relative paths, at most two levels down)."""
    found = [p for p in sorted(root.rglob("*")) if p.is_file() and len(p.relative_to(root).parts) <= 3
             and not p.name.startswith(".")]
    return [f"{p.relative_to(root)} ({p.stat().st_size / 1e6:.1f} MB)" for p in found]


def _spread(counts: np.ndarray) -> str:
    return f"min {int(counts.min())}, median {int(np.median(counts))}, max {int(counts.max())}"


def describe_dataset(ds: Dataset) -> list[str]:
    """Lines describing a loaded dataset: sizes, shape, classes, natural clients."""
    ytr, yte = ds.y_train.numpy(), ds.y_test.numpy()
    lines = [f"train samples       {len(ytr):,}", f"test samples        {len(yte):,}",
             f"input shape         {tuple(ds.input_shape)}",
             f"classes             {ds.num_classes} ({len(np.unique(ytr))} present in train, "
             f"{len(np.unique(yte))} in test)",
             f"value range         [{float(ds.x_train.min()):.3g}, {float(ds.x_train.max()):.3g}]"]
    if ds.client_ids is not None:
        per = np.bincount(ds.client_ids)
        lines.append(f"natural clients     {len(per)} (samples per client: {_spread(per)}); "
                     "use partition = \"natural\" with clients <= this number")
    return lines


def check_dataset(name: str, path: str | Path, **options: Any) -> list[str]:
    """Load dataset ``name`` from ``path`` (ConfigError naming what is wrong) and describe it, one line each."""
    check_choice("--dataset", name, tuple(n for n in LOCAL if n in DATASETS))
    root = Path(path).expanduser()
    if not root.exists():
        raise ConfigError(f"{root}: no such file or directory")
    ds = load_dataset(name, path=str(root), **options)
    lines = [f"dataset             {name} at {root.resolve()}", "status              OK: loads as a run would load it"]
    lines += describe_dataset(ds)
    files = _files(root) if root.is_dir() else [root.name]
    lines.append(f"files               {len(files)}")
    lines += [f"  {f}" for f in files[:20]] + ([f"  ... and {len(files) - 20} more"] if len(files) > 20 else [])
    lines.append(f"use in a spec       [base] dataset = \"{name}\", dataset_options = {{ path = \"{root}\" }}")
    return lines
