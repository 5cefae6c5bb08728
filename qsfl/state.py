"""What a paused simulation carries to its next round (SimState), and the seeded cohort sampler."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from qsfl.config import SimConfig
from qsfl.errors import ConfigError

if TYPE_CHECKING:
    import torch

# Fields a continued run may change: a longer run. Everything else must equal the paused run's config.
RESUMABLE_CHANGES = ("rounds",)


class CohortSampler:
    """The sampled client ids of each round in turn (all clients when the cohort is every client).

    One seeded generator per run; :meth:`state` / :meth:`set_state` save and restore its position, so
    a continued run draws exactly the cohorts an uninterrupted one would.
    """

    def __init__(self, clients: int, cohort_size: int, seed: int) -> None:
        self.clients, self.cohort_size = clients, cohort_size
        self.rng = np.random.default_rng([seed, 0xC0407])

    def draw(self) -> np.ndarray:
        """The next round's sampled client ids, ascending."""
        if self.cohort_size == self.clients:
            return np.arange(self.clients)
        return np.sort(self.rng.choice(self.clients, size=self.cohort_size, replace=False))

    def state(self) -> dict[str, Any]:
        """The generator's position (numpy's bit_generator state, a plain dict)."""
        return copy.deepcopy(dict(self.rng.bit_generator.state))

    def set_state(self, state: dict[str, Any]) -> None:
        """Move the generator to a position saved by :meth:`state`."""
        self.rng.bit_generator.state = copy.deepcopy(state)


@dataclass
class SimState:
    """Everything the next round of a simulation depends on; picklable, tensors on the CPU.

    ``rows`` are the History rows so far, ``config`` the dict of the config that ran them. A state whose
    ``status`` is ``"diverged"`` has stopped for good: continuing it runs nothing.
    """

    next_round: int
    weights: torch.Tensor
    last_update: torch.Tensor | None
    strategy: dict[str, Any]
    sampler: dict[str, Any]
    cum_uplink_bytes: int
    cum_downlink_bytes: int
    rows: list[dict[str, Any]]
    config: dict[str, Any]
    status: str = "running"
    reason: str | None = None
    n_params: int = 0
    version: int = field(default=1)

    def check_continues(self, config: SimConfig) -> None:
        """Raise ConfigError unless ``config`` may continue this state (same run, possibly more rounds)."""
        new = config.to_dict()
        for key in sorted(set(new) | set(self.config)):
            if key in RESUMABLE_CHANGES:
                continue
            if new.get(key) != self.config.get(key):
                raise ConfigError(f"{key}: {new.get(key)!r} differs from the paused run's {self.config.get(key)!r}; "
                                  f"a run continues only with the same config (it may have more rounds)")
        if config.rounds < self.next_round:
            raise ConfigError(f"rounds: {config.rounds} is out of range; allowed [{self.next_round}, inf] "
                              f"(the paused run has already run {self.next_round} rounds)")
