"""Rounds as a fidelity: successive halving over rounds (the ``[fidelity]`` table), for every searcher.

Each batch of points (a GA generation, or ``fidelity.batch`` points of the other searchers) is one bracket of
successive halving, as in Hyperband / ASHA with the number of rounds as the resource: every point is first
simulated for ``min_rounds``; the best ``floor(n / eta)`` (at least one) of the ``n`` points of a rung go on to
``eta`` times more rounds (Hyperband's rule), up to the study's ``base.rounds`` (the last rung). Rungs:
``min_rounds * eta**i`` below ``base.rounds``, then ``base.rounds``. A promoted point continues its simulation
from the state saved at the end of its rung, so it costs only the extra rounds.

Start points (the authors' defaults, ``[[study.start]]``) always go on, so they end at full rounds and a study's
best is never worse than them. Points are compared only at equal rounds: inside a rung by their fitness at that
rung (the low-rung ranking of :mod:`tuning.objective` for metrics that exist only at the target accuracy), failed
points never go on; several
objectives are ranked by NSGA-II's order (non-dominated front, then crowding distance). The searcher is told
each point's evaluation at the rung where it stopped (``Evaluation.rounds``, ``Evaluation.rung``); how each
searcher uses that is documented with it (GA: rounds first, then fitness; Optuna: stopped points are PRUNED
with their rung fitness as the intermediate value).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from deap import tools

from qsfl.errors import ConfigError, check_range, check_table, reject_unknown
from tuning.objective import Evaluation
from tuning.search.ga import Individual, fitness_class


@dataclass(frozen=True)
class FidelitySettings:
    """The ``[fidelity]`` table (absent: every point is simulated for ``base.rounds``)."""

    min_rounds: int
    eta: int = 3
    batch: int | None = None      # points per bracket for searchers without generations; None -> eta**(rungs-1)

    def rungs(self, rounds: int) -> list[int]:
        """The rounds of every rung, ascending, the last being ``rounds``."""
        return rung_rounds(self.min_rounds, self.eta, rounds)

    def bracket(self, rounds: int) -> int:
        """Points per bracket (for searchers that ask freely)."""
        return self.batch if self.batch is not None else self.eta ** (len(self.rungs(rounds)) - 1)


def rung_rounds(min_rounds: int, eta: int, rounds: int) -> list[int]:
    """``min_rounds * eta**i`` while below ``rounds``, then ``rounds``."""
    out = []
    r = min_rounds
    while r < rounds:
        out.append(r)
        r *= eta
    return out + [rounds]


def parse_fidelity(table: Any, rounds: int, eval_every: int) -> FidelitySettings:
    """Validate the ``[fidelity]`` table against the study's ``base.rounds`` and ``base.eval_every``."""
    fields = tuple(FidelitySettings.__dataclass_fields__)
    reject_unknown("fidelity", check_table("fidelity", table), fields)
    if "min_rounds" not in table:
        raise ConfigError("fidelity.min_rounds: missing; [fidelity] needs min_rounds (the first rung's rounds)")
    s = FidelitySettings(**dict(table))
    check_range("fidelity.min_rounds", s.min_rounds, 1, rounds - 1, integer=True)
    check_range("fidelity.eta", s.eta, 2, None, integer=True)
    if s.batch is not None:
        check_range("fidelity.batch", s.batch, 2, None, integer=True)
    if s.min_rounds % eval_every:
        raise ConfigError(f"fidelity.min_rounds: {s.min_rounds} is not a multiple of base.eval_every "
                          f"({eval_every}); every rung must end on an evaluated round")
    return s


def promote(evaluations: Sequence[Evaluation], eta: int, weights: Sequence[float]) -> list[bool]:
    """Which points of one rung go on: the best ``floor(n / eta)`` (at least 1) of the ``n`` evaluated, complete ones
    only; one objective by fitness (ties: the earlier point), several by NSGA-II's order."""
    n = len(evaluations)
    k = max(1, n // eta)
    ok = [i for i, ev in enumerate(evaluations) if ev.ok]
    if len(weights) == 1:
        sign = 1.0 if weights[0] > 0 else -1.0
        chosen = sorted(ok, key=lambda i: (-sign * evaluations[i].fitness[0], i))[:k]
    else:
        cls = fitness_class(weights)
        inds = []
        for i in ok:
            ind = Individual([float(i)], cls)
            ind.fitness.values = tuple(evaluations[i].fitness)
            inds.append(ind)
        chosen = [int(ind[0]) for ind in tools.selNSGA2(inds, min(k, len(inds)))]
    keep = set(chosen)
    return [i in keep for i in range(n)]

