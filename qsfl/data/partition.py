"""Client partitions of a training set. Every sample goes to exactly one client; an empty client is an
error.

A scheme is ``f(labels, num_clients, rng, *, option=default, ...) -> list of index arrays``; its
keyword-only parameters are its options (``natural_ids`` is passed by :func:`partition`, not an option).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import numpy as np

from qsfl.errors import ConfigError, check_options, check_range

DIRICHLET_ATTEMPTS = 200   # resamples before dirichlet gives up on min_size


def iid(labels: np.ndarray, num_clients: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Uniformly random split into near-equal parts (sizes differ by at most one)."""
    order = rng.permutation(len(labels))
    return [np.sort(part) for part in np.array_split(order, num_clients)]


def dirichlet(labels: np.ndarray, num_clients: int, rng: np.random.Generator, *,
              alpha: float = 0.5, min_size: int = 1) -> list[np.ndarray]:
    """Label skew: each class is split among clients with proportions ~ Dir(alpha); smaller alpha = more skew."""
    check_range("partition_options.alpha", alpha, 0.0, None, lo_open=True)
    check_range("partition_options.min_size", min_size, 1, len(labels) // num_clients, integer=True)
    by_class = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    for _ in range(DIRICHLET_ATTEMPTS):
        chunks: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
        for idx in by_class:
            props = rng.dirichlet(np.full(num_clients, float(alpha)))
            if not np.all(np.isfinite(props)):                # tiny alpha can underflow to 0/0
                props = np.eye(num_clients)[rng.integers(num_clients)]
            cuts = np.floor(np.cumsum(props)[:-1] * len(idx)).astype(np.int64)
            for client, part in enumerate(np.split(rng.permutation(idx), cuts)):
                chunks[client].append(part)
        parts = [np.sort(np.concatenate(c)) for c in chunks]
        if min(len(p) for p in parts) >= min_size:
            return parts
    raise ConfigError(f"partition_options.min_size: dirichlet(alpha={alpha}) gave some client fewer than "
                      f"{min_size} sample(s) in {DIRICHLET_ATTEMPTS} attempts; raise alpha, lower min_size "
                      f"or use fewer clients")


def shards(labels: np.ndarray, num_clients: int, rng: np.random.Generator, *,
           shards_per_client: int = 2) -> list[np.ndarray]:
    """McMahan et al. 2017: sort by label, cut into shards_per_client * num_clients shards, deal them out."""
    total = len(labels) // num_clients
    check_range("partition_options.shards_per_client", shards_per_client, 1, max(total, 1), integer=True)
    # Shuffle before the stable sort so the samples inside a label, and so each shard, are random.
    order = rng.permutation(len(labels))
    order = order[np.argsort(labels[order], kind="stable")]
    pieces = np.array_split(order, shards_per_client * num_clients)
    deal = rng.permutation(len(pieces)).reshape(num_clients, shards_per_client)
    return [np.sort(np.concatenate([pieces[s] for s in row])) for row in deal]


def natural(labels: np.ndarray, num_clients: int, rng: np.random.Generator, *,
            natural_ids: np.ndarray | None = None) -> list[np.ndarray]:
    """Group samples by their natural owner; with more owners than clients, deal whole owners round-robin."""
    if natural_ids is None:
        from qsfl.data.datasets import NATURAL_ID_DATASETS
        raise ConfigError(f"partition: 'natural' needs a dataset with natural client ids; those are: "
                          f"{', '.join(NATURAL_ID_DATASETS)}")
    ids = np.asarray(natural_ids)
    if ids.shape != (len(labels),):
        raise ConfigError(f"partition: natural ids have shape {ids.shape}, expected ({len(labels)},) "
                          f"(one per training sample)")
    users, inverse = np.unique(ids, return_inverse=True)
    if len(users) < num_clients:
        raise ConfigError(f"clients: {num_clients} is out of range for partition 'natural'; allowed "
                          f"[1, {len(users)}] (the dataset has {len(users)} natural users)")
    client_of_user = np.empty(len(users), dtype=np.int64)
    client_of_user[rng.permutation(len(users))] = np.arange(len(users)) % num_clients
    owner = client_of_user[inverse]
    return [np.flatnonzero(owner == c) for c in range(num_clients)]


PARTITIONS: dict[str, Callable[..., list[np.ndarray]]] = {
    "iid": iid,
    "dirichlet": dirichlet,
    "shards": shards,
    "natural": natural,
}


def partition_options(name: str) -> list[str]:
    """The option names the named partition scheme accepts."""
    params = inspect.signature(PARTITIONS[name]).parameters.values()
    return [p.name for p in params if p.kind is p.KEYWORD_ONLY and p.name != "natural_ids"]


def partition(name: str, labels: np.ndarray, num_clients: int, seed: int,
              natural_ids: np.ndarray | None = None, **options: Any) -> list[np.ndarray]:
    """Split sample indices among ``num_clients`` clients with the named scheme (seeded)."""
    if name not in PARTITIONS:
        raise ConfigError(f"partition: unknown value {name!r}; valid: {', '.join(sorted(PARTITIONS))}")
    check_options("partition_options", "partition", name, options, partition_options(name))
    labels = np.asarray(labels)
    check_range("clients", num_clients, 1, None, integer=True)
    if num_clients > len(labels):
        raise ConfigError(f"clients: {num_clients} is out of range; allowed [1, {len(labels)}] "
                          f"(at most the number of training samples)")
    rng = np.random.default_rng([seed, 0x9A27])
    extra = {"natural_ids": natural_ids} if name == "natural" else {}
    parts = PARTITIONS[name](labels, num_clients, rng, **options, **extra)
    for cid, part in enumerate(parts):
        if len(part) == 0:
            raise ConfigError(f"partition: client {cid} received no samples with {name!r} "
                              f"(options {options}); use fewer clients or other options")
    return [np.asarray(p, dtype=np.int64) for p in parts]
