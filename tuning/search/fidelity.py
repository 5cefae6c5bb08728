"""Rounds as a fidelity: successive halving over rounds (the ``[fidelity]`` table), for every searcher.

Each batch of points (a GA generation, or ``fidelity.batch`` points of the other searchers) is one bracket of
successive halving, as in Hyperband / ASHA with the number of rounds as the resource: every point is first
simulated for the bracket's first rung; the best ``floor(n / eta)`` (at least one) of the ``n`` points of a rung go
on to ``eta`` times more rounds (Hyperband's rule), up to the study's ``base.rounds`` (the last rung). Rungs:
``min_rounds * eta**i`` below ``base.rounds``, then ``base.rounds``. A promoted point continues its simulation
from the state saved at the end of its rung, so it costs only the extra rounds.

**Hedging** (``hedge = true``, the default). A bracket that starts at a low rung trusts that a few rounds rank
points as the full run would; on non-IID data they may not. As Hyperband hedges, the batches cycle through brackets
that start at different rungs (bracket ``s`` starts at rung ``s``; the bracket of full rounds only is left out: that
is the search without ``[fidelity]``), each used in proportion to the inverse of its cost in rounds, so every
bracket spends about the same budget (Hyperband's equal-budget rule for a fixed batch size). The order is a smooth
weighted round robin, deterministic. **Measured, then trusted:** after every batch the rank correlation (Spearman)
between each lower rung's fitness and the full-rounds fitness is computed over the points that reached both
(:func:`rung_correlations`); a bracket starting at a rung whose correlation is shown to be below ``min_correlation``
(default 0.5) is no longer used, so the budget moves to later rungs and, when no rung ranks well, to full rounds.
"Shown" means at least ``min_pairs`` points (default 5) and the one-sided 90 % upper confidence bound of the
correlation (Fisher's z with the Spearman standard error ``1.03 / sqrt(n - 3)``) below ``min_correlation``: with
five to ten pairs a point estimate swings by +-0.4, and acting on it would drop good rungs on noise (the points that
reached full rounds are the survivors of the rung, a restricted range that lowers their correlation further).
``hedge = false`` is the single bracket of earlier versions.

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

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from deap import tools

from qsfl.errors import ConfigError, check_bool, check_range, check_table, reject_unknown
from tuning.objective import Evaluation
from tuning.search.ga import Individual, fitness_class


@dataclass(frozen=True)
class FidelitySettings:
    """The ``[fidelity]`` table (absent: every point is simulated for ``base.rounds``)."""

    min_rounds: int
    eta: int = 3
    batch: int | None = None      # points per bracket for searchers without generations; None -> eta**(rungs-1)
    hedge: bool = True            # cycle through brackets starting at different rungs (see the module docstring)
    min_correlation: float = 0.5  # a rung ranking worse than this (Spearman, vs full rounds) starts no bracket
    min_pairs: int = 5            # points that reached a rung and full rounds before its correlation counts

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
    check_bool("fidelity.hedge", s.hedge)
    check_range("fidelity.min_correlation", s.min_correlation, -1.0, 1.0)
    check_range("fidelity.min_pairs", s.min_pairs, 2, None, integer=True)
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



# ----- hedging over brackets ------------------------------------------------------------------------------------
def bracket_cost(rungs: Sequence[int], start: int, n: int, eta: int) -> int:
    """Rounds one bracket of ``n`` points simulates when it starts at rung ``start`` (continuations: extra rounds)."""
    cost, alive, prev = 0, n, 0
    for r in rungs[start:]:
        cost += alive * (r - prev)
        prev = r
        alive = max(1, alive // eta)
    return cost


def choose_bracket(rungs: Sequence[int], n: int, eta: int, history: Sequence[int], allowed: Sequence[int]) -> int:
    """The bracket (its first rung's index) of the next batch: a smooth weighted round robin over ``allowed``
    with weights 1 / cost (every bracket spends about the same rounds), given the brackets of the earlier batches
    (``history``); the full-rounds bracket ``len(rungs) - 1`` when ``allowed`` is empty."""
    if not allowed:
        return len(rungs) - 1
    weights = {s: 1.0 / bracket_cost(rungs, s, n, eta) for s in allowed}
    total = sum(weights.values())
    done = len(history) + 1
    # the bracket furthest behind its share after this batch (ties: the earlier rung, the most aggressive)
    return max(allowed, key=lambda s: (done * weights[s] / total - sum(1 for h in history if h == s), -s))


def rung_correlations(rows: Sequence[Mapping[str, Any]], rungs: Sequence[int], full: int, sign: float
                      ) -> dict[int, tuple[float, int]]:
    """rung rounds -> (Spearman correlation, pairs) between a point's fitness at that rung and at full rounds,
    over the complete points (one per ``simulation`` key) that reached both; NaN with fewer than 3 pairs."""
    import pandas as pd

    at: dict[int, dict[str, float]] = {r: {} for r in rungs}
    for row in rows:
        r = int(row.get("rounds") or full)
        fit = row.get("fitness", row.get("fitness_0"))   # several objectives: the first one
        if row.get("state") != "complete" or r not in at or not isinstance(fit, (int, float)) or fit != fit:
            continue
        at[r][str(row.get("simulation") or row["individual"])] = sign * float(fit)
    out: dict[int, tuple[float, int]] = {}
    for r in rungs[:-1]:
        keys = sorted(set(at[r]) & set(at[full]))
        if len(keys) < 3:
            out[r] = (float("nan"), len(keys))
            continue
        low = pd.Series([at[r][k] for k in keys])
        high = pd.Series([at[full][k] for k in keys])
        rho = low.corr(high, method="spearman")
        out[r] = (float(rho) if rho == rho else float("nan"), len(keys))
    return out


TRUST_LEVEL = 0.9   # one-sided level of the upper confidence bound that must fall below min_correlation


def correlation_upper_bound(rho: float, pairs: int, level: float = TRUST_LEVEL) -> float:
    """The one-sided ``level`` upper confidence bound of a Spearman correlation from ``pairs`` points (Fisher's z,
    standard error ``1.03 / sqrt(pairs - 3)``, Fieller, Hartley and Pearson 1957); 1 with fewer than 4 pairs, -1
    ... 1 always. A NaN correlation (all points tied) bounds at 1: it shows nothing."""
    import math

    from scipy import stats

    if pairs < 4 or not math.isfinite(rho):
        return 1.0
    z = math.atanh(max(min(rho, 0.999999), -0.999999)) + float(stats.norm.ppf(level)) * 1.03 / math.sqrt(pairs - 3)
    return math.tanh(z)


def trusted_brackets(settings: FidelitySettings, rungs: Sequence[int],
                     correlations: Mapping[int, tuple[float, int]]) -> list[int]:
    """The brackets hedging may use: every one with a lower rung, less those starting at a rung shown to rank
    badly (at least ``min_pairs`` pairs and the correlation's upper confidence bound below ``min_correlation``)."""
    if not settings.hedge:
        return [0]
    out = []
    for s, r in enumerate(rungs[:-1]):
        rho, pairs = correlations.get(r, (float("nan"), 0))
        if pairs >= settings.min_pairs and correlation_upper_bound(rho, pairs) < settings.min_correlation:
            continue
        out.append(s)
    return out
