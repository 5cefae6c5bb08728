"""Evaluating points of the search space: the :class:`Evaluator` that caches per-(params, seed) results,
numbers evaluations and writes one trials-table row per finished evaluation, on any pool of
:mod:`tuning.workers` (serial, processes, Dask); rows are written as evaluations finish.

Every evaluation runs with one torch thread, serial or parallel, so results never depend on ``--workers``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from qsfl.config import SimConfig
from qsfl.errors import ConfigError
from tuning.objective import (
    Evaluation,
    SeedResult,
    combine,
    failed_evaluation,
    params_id,
    run_seed,
)
from tuning.spec import StudySpec
from tuning.trials import TrialsTable, evaluation_from_row, make_row
from tuning.workers import SerialWorkers, Workers

log = logging.getLogger(__name__)


# ----- the worker task --------------------------------------------------------------------------------
def run_task(task: tuple[dict[str, Any]]) -> dict[str, Any]:
    """Worker entry: simulate one (config, seed) and return the SeedResult as a dict."""
    (config_dict,) = task
    return run_seed(SimConfig.from_dict(config_dict)).to_dict()


# ----- the evaluator -----------------------------------------------------------------------------------
@dataclass
class Point:
    """A proposed point after the constraint repair."""

    params: dict[str, Any]
    repair: str = ""
    penalty: str = ""          # non-empty: not simulated, failed with this reason

    @property
    def id(self) -> str:
        return params_id(self.params)


class SameParams:
    """DEAP ``similar``: two genomes are the same individual when they decode to the same params."""

    def __init__(self, spec: StudySpec) -> None:
        self.space = spec.space
        self.base = spec.base

    def __call__(self, a: Sequence[float], b: Sequence[float]) -> bool:
        pa = self.space.repair(self.space.decode(list(a)), self.base)[0]
        pb = self.space.repair(self.space.decode(list(b)), self.base)[0]
        return params_id(pa) == params_id(pb)


class Evaluator:
    """Evaluates points on the spec's seeds with a cache keyed by (params id, seed); one row per evaluation."""

    def __init__(self, spec: StudySpec, table: TrialsTable, mapper: Workers | None = None,
                 engine: str = "ga", on_evaluation: Callable[[Evaluation, dict[str, Any]], None] | None = None) -> None:
        self.spec = spec
        self.table = table
        self.mapper = mapper or SerialWorkers()
        self.engine = engine
        self.on_evaluation = on_evaluation
        self.cache: dict[tuple[str, int], SeedResult] = {}
        self.penalised: dict[str, Evaluation] = {}
        self.counter = 0                              # GA evaluation counter (the table's ``trial``)
        self.replay: dict[int, dict[str, Any]] = {}   # rows written after the last checkpoint (resume)

    # ----- points and configs --------------------------------------------------------------------------
    def point(self, params: Mapping[str, Any]) -> Point:
        """Apply the NS <= K repair/penalty to raw params."""
        fixed, repair, penalty = self.spec.space.repair(params, self.spec.base)
        return Point(fixed, repair, penalty)

    def config(self, params: Mapping[str, Any], seed: int) -> SimConfig:
        """The SimConfig of a point on one seed (base + params)."""
        return self.spec.base.with_overrides({**self.spec.space.overrides(params), "seed": seed})

    def remember(self, ev: Evaluation) -> None:
        """Put an evaluation's per-seed results into the cache (simulations are deterministic)."""
        for r in ev.per_seed:
            self.cache[(ev.individual, r.seed)] = r
        if not ev.per_seed and ev.state == "failed":
            self.penalised[ev.individual] = ev

    def load_rows(self, rows: Sequence[Mapping[str, Any]], counter: int) -> None:
        """Resume: rows before ``counter`` fill the cache, later ones are replayed when their trial comes."""
        self.counter = counter
        self.replay = {}
        for row in rows:
            ev = self._from_row(row)
            if int(row["trial"]) < counter:
                self.remember(ev)
            else:
                self.replay[int(row["trial"])] = dict(row)
        self.table.rows = [dict(r) for r in rows]

    def _from_row(self, row: Mapping[str, Any]) -> Evaluation:
        return evaluation_from_row(row, self.spec.space.names, self.spec.objective, self.spec.base.rounds)

    def _cached(self, point: Point) -> Evaluation | None:
        seeds = self.spec.study.seeds
        if point.id in self.penalised:
            return self.penalised[point.id]
        results = [self.cache.get((point.id, s)) for s in seeds]
        if all(r is not None for r in results):
            return combine(point.params, seeds, results, self.spec.objective, self.spec.base.rounds,  # type: ignore[arg-type]
                           point.repair)
        return None

    def _record(self, ev: Evaluation, generation: int, trial: int) -> None:
        row = make_row(self.spec.name, self.engine, generation, trial, ev, self.spec.space.names,
                       self.spec.objective.n)
        self.table.append(row)
        if self.on_evaluation is not None:
            self.on_evaluation(ev, row)

    # ----- batches (GA) ------------------------------------------------------------------------------
    def evaluate_points(self, points: Sequence[Point], generation: int) -> tuple[list[Evaluation], int]:
        """Evaluate a batch in order; returns the evaluations and how many were new (rows written)."""
        seeds = self.spec.study.seeds
        out: list[Evaluation | None] = [None] * len(points)
        planned: dict[str, tuple[int, Point, list[int]]] = {}   # id -> (trial, point, indices)
        order: list[str] = []
        for i, pt in enumerate(points):
            hit = self._cached(pt)
            if hit is not None:
                out[i] = hit
            elif pt.id in planned:
                planned[pt.id][2].append(i)
            else:
                planned[pt.id] = (self.counter, pt, [i])
                order.append(pt.id)
                self.counter += 1
        tasks: list[tuple[dict[str, Any]]] = []
        task_owner: list[str] = []
        results: dict[str, list[SeedResult | None]] = {}
        done: dict[str, Evaluation] = {}
        for pid in order:
            trial, pt, _ = planned[pid]
            replay = self.replay.pop(trial, None)
            if replay is not None and replay["individual"] == pid:
                ev = self._from_row(replay)
                self.remember(ev)
                done[pid] = ev
                continue
            if replay is not None:  # a row that this run does not reproduce: it is replaced, not duplicated
                log.warning("trials row %d (%s) does not match the resumed run; re-evaluating", trial,
                            replay["individual"])
                self.table.rows = [r for r in self.table.rows if int(r["trial"]) != trial]
            if pt.penalty:
                ev = failed_evaluation(pt.params, seeds, pt.penalty, self.spec.objective, pt.repair)
                self.penalised[pid] = ev
                self._record(ev, generation, trial)
                done[pid] = ev
                continue
            results[pid] = [self.cache.get((pid, s)) for s in seeds]
            try:
                configs = {s: self.config(pt.params, s) for s, r in zip(seeds, results[pid]) if r is None}
            except ConfigError as exc:
                results[pid] = [SeedResult(s, "failed", f"invalid config: {exc}", {}, 0.0) for s in seeds]
                continue
            for cfg in configs.values():
                tasks.append((cfg.to_dict(),))
                task_owner.append(pid)
        pending = {pid: sum(1 for o in task_owner if o == pid) for pid in results}
        # points whose seeds were all cached or whose config was invalid finish without simulating
        for pid in [p for p in order if p in results and pending[p] == 0]:
            done[pid] = self._finish(pid, planned[pid], results[pid], generation)
        for j, res in self.mapper.map_unordered(run_task, tasks):   # rows are written as evaluations finish
            owner = task_owner[j]
            sr = SeedResult.from_dict(res)
            slot = results[owner]
            slot[self.spec.study.seeds.index(sr.seed)] = sr
            pending[owner] -= 1
            if pending[owner] == 0:
                done[owner] = self._finish(owner, planned[owner], slot, generation)
        for pid in order:
            for i in planned[pid][2]:
                out[i] = done[pid]
        return [ev for ev in out if ev is not None], len(order)

    def _finish(self, pid: str, plan: tuple[int, Point, list[int]], results: list[SeedResult | None],
                generation: int) -> Evaluation:
        trial, pt, _ = plan
        ev = combine(pt.params, self.spec.study.seeds, [r for r in results if r is not None],
                     self.spec.objective, self.spec.base.rounds, pt.repair)
        self.remember(ev)
        self._record(ev, generation, trial)
        return ev

    # ----- one point in this process (Optuna, baseline) ------------------------------------------------
    def evaluate_here(self, point: Point, on_round: Callable[[dict[str, Any]], None] | None = None,
                      seeds: Sequence[int] | None = None) -> Evaluation:
        """Evaluate one point in this process (``on_round`` sees the first seed's rounds); no row written."""
        seeds = list(seeds if seeds is not None else self.spec.study.seeds)
        if point.penalty:
            return failed_evaluation(point.params, seeds, point.penalty, self.spec.objective, point.repair)
        results: list[SeedResult] = []
        for i, s in enumerate(seeds):
            cached = self.cache.get((point.id, s))
            if cached is None:
                try:
                    cfg = self.config(point.params, s)
                except ConfigError as exc:
                    cached = SeedResult(s, "failed", f"invalid config: {exc}", {}, 0.0)
                else:
                    cached = run_seed(cfg, on_round=on_round if i == 0 else None)
            results.append(cached)
        ev = combine(point.params, seeds, results, self.spec.objective, self.spec.base.rounds, point.repair)
        self.remember(ev)
        return ev
