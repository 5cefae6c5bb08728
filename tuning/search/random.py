"""Plain random search: independent uniform genes in [0, 1]^d, decoded like the GA's (so integers are equally
likely, log-scaled parameters uniform in the log), from its own seeded :class:`random.Random` stream."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from qsfl.errors import check_range, check_table, reject_unknown
from tuning.objective import Evaluation
from tuning.search.base import Candidate, SearchContext, Searcher, register


@dataclass(frozen=True)
class RandomSettings:
    """The ``[random]`` table."""

    n_trials: int = 30            # points in the budget (start points included)
    batch_size: int = 10          # points asked at once (one lockstep batch)


@register
class RandomSearcher(Searcher):
    """Uniform random points; the start points come first."""

    name = "random"
    section = "random"
    settings_type = RandomSettings
    resumable_keys = ("n_trials",)

    def __init__(self, settings: RandomSettings, ctx: SearchContext) -> None:
        super().__init__(settings, ctx)
        self.rng = random.Random(ctx.seed)
        self.asked = 0
        self.queue: list[dict[str, Any]] = []

    @classmethod
    def parse_settings(cls, table: Mapping[str, Any], *, dim: int, n_objectives: int,
                       rounds: int) -> RandomSettings:
        fields = tuple(RandomSettings.__dataclass_fields__)
        reject_unknown("random", check_table("random", table), fields)
        s = RandomSettings(**dict(table))
        check_range("random.n_trials", s.n_trials, 1, None, integer=True)
        check_range("random.batch_size", s.batch_size, 1, None, integer=True)
        return s

    def start(self, points: Sequence[Mapping[str, Any]]) -> None:
        self.queue = [dict(p) for p in points]

    def ask(self, n: int) -> list[Candidate]:
        n = min(max(n, 1), self.settings.n_trials - self.asked)
        out = []
        for _ in range(max(n, 0)):
            start = bool(self.queue)
            if start:
                params = self.queue.pop(0)
            else:
                params = self.ctx.space.decode([self.rng.random() for _ in range(self.ctx.space.dim)])
            out.append(Candidate(params, start=start))
            self.asked += 1
        return out

    def tell(self, candidates: Sequence[Candidate], evaluations: Sequence[Evaluation]) -> None:
        """Random search learns nothing."""

    def state(self) -> dict[str, Any]:
        return {"rng": self.rng.getstate(), "asked": self.asked, "queue": list(self.queue)}

    def restore(self, state: dict[str, Any]) -> None:
        self.rng.setstate(state["rng"])
        self.asked = int(state["asked"])
        self.queue = list(state["queue"])

    def batch_size(self) -> int:
        return self.settings.batch_size

    def finished(self) -> bool:
        return self.asked >= self.settings.n_trials

    def expected_evaluations(self) -> int:
        return self.settings.n_trials

    def progress(self) -> tuple[int, int | None]:
        return self.asked, self.settings.n_trials
