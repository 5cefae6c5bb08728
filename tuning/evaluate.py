"""Evaluating points of the search space: a pluggable map (serial or a process pool with one torch thread
per worker) and the :class:`Evaluator` that caches per-(params, seed) results, numbers evaluations and
writes one trials-table row per finished evaluation.

Every evaluation runs with one torch thread, serial or parallel, so results never depend on ``--workers``.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
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

log = logging.getLogger(__name__)


# ----- threads and worker processes -----------------------------------------------------------------------
def configure_threads(n: int = 1) -> None:
    """One torch thread per evaluation (the engine's helper when present)."""
    from qsfl.engine.threads import configure_threads as engine_threads

    engine_threads(n)


def init_worker(dataset: str, options: Mapping[str, Any]) -> None:
    """Pool initializer: one torch thread, and load the dataset once into the per-process cache."""
    configure_threads(1)
    try:
        from qsfl.sim import get_dataset

        get_dataset(dataset, dict(options))
    except Exception as exc:  # noqa: BLE001 - the evaluation itself will report the error
        log.debug("worker warm-up failed: %s", exc)


def run_task(task: tuple[dict[str, Any]]) -> dict[str, Any]:
    """Worker entry: simulate one (config, seed) and return the SeedResult as a dict."""
    (config_dict,) = task
    return run_seed(SimConfig.from_dict(config_dict)).to_dict()


class SerialMap:
    """Evaluate in this process, in order."""

    workers = 1

    def imap(self, fn: Callable[[Any], Any], tasks: Iterable[Any]) -> Iterator[Any]:
        return map(fn, tasks)

    def close(self) -> None:
        pass


class PoolMap:
    """A process pool (forkserver where available, else spawn); results come back in task order."""

    def __init__(self, workers: int, base: SimConfig) -> None:
        methods = mp.get_all_start_methods()
        ctx = mp.get_context("forkserver" if "forkserver" in methods else "spawn")
        if "forkserver" in methods:
            ctx.set_forkserver_preload(["torch", "qsfl.sim", "tuning.objective"])
        self.workers = workers
        self.pool = ctx.Pool(workers, initializer=init_worker,
                             initargs=(base.dataset, dict(base.dataset_options)))

    def imap(self, fn: Callable[[Any], Any], tasks: Iterable[Any]) -> Iterator[Any]:
        return self.pool.imap(fn, list(tasks), chunksize=1)

    def close(self) -> None:
        self.pool.close()
        self.pool.join()

    def terminate(self) -> None:
        self.pool.terminate()
        self.pool.join()


def make_map(workers: int, base: SimConfig) -> SerialMap | PoolMap:
    """Serial for one worker, else a process pool of ``workers``."""
    if workers < 1:
        raise ConfigError(f"--workers: {workers} is out of range; allowed [1, inf)")
    return SerialMap() if workers == 1 else PoolMap(workers, base)


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

    def __init__(self, spec: StudySpec, table: TrialsTable, mapper: SerialMap | PoolMap | None = None,
                 engine: str = "ga", on_evaluation: Callable[[Evaluation, dict[str, Any]], None] | None = None) -> None:
        self.spec = spec
        self.table = table
        self.mapper = mapper or SerialMap()
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
        for owner, res in zip(task_owner, self.mapper.imap(run_task, tasks)):
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
