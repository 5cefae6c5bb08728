"""Seeds as a resource: challengers raced against the incumbents on shared seeds (intensification).

A simulation seed is one draw of the data partition, the model's initial weights and the client sampling; a
configuration's fitness on a few seeds is a noisy estimate, and a searcher that keeps the best of many noisy
estimates keeps luck. As SMAC's intensifier does with problem instances (and irace with its races), every point is
first simulated on the study's ``seeds``; a point that would enter the **incumbents** (the ``study.incumbents``
best points, the Pareto front for several objectives) is simulated on more seeds, doubling their number up to
``study.max_seeds`` (the racing seeds: ``seeds`` then automatic extra seeds from 300 on), and after every step
compared with the incumbents **on the seeds they share**; it stops as soon as it no longer beats the worst of them.
Only a point raced to all ``max_seeds`` seeds becomes an incumbent, so every incumbent has the same seeds and a
challenger's seeds are always a prefix of theirs.

A raced point's trials row holds every seed it ran on (``seeds``, ``n_seeds``, ``per_seed``) and its fitness is the
mean over them; the searcher is told that fitness (an Optuna trial once, after the race). Racing happens at the
study's full rounds only (after the last ``[fidelity]`` rung). ``study.max_seeds`` equal to the number of
``seeds`` turns it off.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from tuning.evaluate import Point
from tuning.objective import Evaluation, Objective, combine, dominates

# evaluate(points, seeds) -> their evaluations at the study's rounds on those seeds
EvaluateOn = Callable[[Sequence[Point], Sequence[int]], list[Evaluation]]


def on_seeds(ev: Evaluation, seeds: Sequence[int], objective: Objective, rounds: int) -> Evaluation:
    """``ev`` restricted to ``seeds`` (a subset of its own): the fitness a comparison on shared seeds uses."""
    keep = [r for r in ev.per_seed if r.seed in set(seeds)]
    return combine(ev.params, [r.seed for r in keep], keep, objective, rounds, ev.repair, rounds)


class Race:
    """The incumbents of a study and the racing of challengers against them (see the module docstring)."""

    def __init__(self, seeds: Sequence[int], objective: Objective, rounds: int, size: int) -> None:
        self.seeds = list(seeds)
        self.objective = objective
        self.rounds = rounds
        self.size = size
        self.incumbents: list[Evaluation] = []

    def admit(self, ev: Evaluation) -> None:
        """Add a point raced to every racing seed; keep the best ``size`` (the front for several objectives)."""
        if not ev.ok or len(ev.seeds) < len(self.seeds):
            return
        ident = ev.simulation or ev.individual
        pool = [e for e in self.incumbents if (e.simulation or e.individual) != ident] + [ev]
        signs = self.objective.weights
        if self.objective.n == 1:
            pool.sort(key=lambda e: -signs[0] * e.fitness[0])
            self.incumbents = pool[:self.size]
        else:
            self.incumbents = [e for e in pool if not any(dominates(o.fitness, e.fitness, signs) for o in pool)]

    def challenges(self, ev: Evaluation, incumbents: Sequence[Evaluation] | None = None) -> bool:
        """Would ``ev`` (on its seeds) enter the incumbents (default the current ones), compared on the seeds it
        shares with them?"""
        incumbents = self.incumbents if incumbents is None else incumbents
        if not ev.ok:
            return False
        if self.objective.n == 1 and len(incumbents) < self.size:
            return True
        signs = self.objective.weights
        mine = ev.fitness
        theirs = [on_seeds(inc, ev.seeds, self.objective, self.rounds).fitness for inc in incumbents]
        if self.objective.n == 1:
            return signs[0] * mine[0] > min(signs[0] * f[0] for f in theirs)
        return not any(dominates(f, mine, signs) for f in theirs)

    def run(self, points: Sequence[Point], evaluations: Sequence[Evaluation], evaluate: EvaluateOn
            ) -> list[Evaluation]:
        """Race every point of a batch (``evaluations`` on the study's seeds, in order); their final evaluations.
        Every point races against the incumbents as they were when the batch began, and the batch's points enter
        them only at its end: a point's race does not depend on the others of its batch, so a resumed batch races
        as the interrupted one did. Points at the same number of seeds advance together (one batch for the
        workers); the caller admits the batch (:meth:`admit`) once its rows are written."""
        out = list(evaluations)
        before = list(self.incumbents)
        if len(self.seeds) <= min((len(ev.seeds) for ev in evaluations), default=len(self.seeds)):
            return out
        active = [i for i, ev in enumerate(out) if self.challenges(ev, before)]
        while active:
            by_n: dict[int, list[int]] = {}
            for i in active:
                n = len(out[i].seeds)
                if n >= len(self.seeds):
                    continue
                by_n.setdefault(min(2 * n, len(self.seeds)), []).append(i)
            active = []
            for n, members in sorted(by_n.items()):
                seeds = self.seeds[:n]
                for i, ev in zip(members, evaluate([points[i] for i in members], seeds)):
                    ev.simulated_rounds += out[i].simulated_rounds   # duration_s sums every seed already
                    ev.rung, ev.curve = out[i].rung, out[i].curve
                    out[i] = ev
                    if len(ev.seeds) < len(self.seeds) and self.challenges(ev, before):
                        active.append(i)
        return out
