"""Client partitions of a training set. Every sample goes to exactly one client; an empty client is an
error."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from qsfl.config import ConfigError


def iid(labels: np.ndarray, num_clients: int, rng: np.random.Generator, **_: Any) -> list[np.ndarray]:
    """Uniformly random split into near-equal parts (sizes differ by at most one)."""
    order = rng.permutation(len(labels))
    return [np.sort(part) for part in np.array_split(order, num_clients)]


PARTITIONS: dict[str, Callable[..., list[np.ndarray]]] = {
    "iid": iid,
}


def partition(name: str, labels: np.ndarray, num_clients: int, seed: int,
              natural_ids: np.ndarray | None = None, **options: Any) -> list[np.ndarray]:
    """Split sample indices among ``num_clients`` clients with the named scheme (seeded)."""
    if name not in PARTITIONS:
        raise ConfigError(f"partition: unknown value {name!r}; valid: {', '.join(sorted(PARTITIONS))}")
    if num_clients > len(labels):
        raise ConfigError(f"clients: {num_clients} is out of range; allowed [1, {len(labels)}] "
                          f"(at most the number of training samples)")
    rng = np.random.default_rng([seed, 0x9A27])
    try:
        parts = PARTITIONS[name](np.asarray(labels), num_clients, rng, natural_ids=natural_ids, **options)
    except TypeError as exc:
        raise ConfigError(f"partition_options: invalid options for {name!r}: {exc}") from None
    for cid, part in enumerate(parts):
        if len(part) == 0:
            raise ConfigError(f"partition: client {cid} received no samples with {name!r} "
                              f"(options {options}); use fewer clients or other options")
    return parts
