"""Evaluating points of the search space: simulations grouped into lockstep batches, a cache of simulations, and
a pluggable map (serial or a process pool with one torch thread per worker).

* **Simulation cache.** A result is cached under (simulation key, seed, rounds): the key is the canonical config
  of :mod:`tuning.simkey`, so points that simulate identically (e.g. two ``p`` that keep the same number of
  entries per segment) are simulated once, and the cache key includes the rounds of the fidelity.
* **Population batches** (``study.population_batch``, default on): the configs of one batch that share seed,
  dataset, partition, model and local training (all but the strategy table) and the round they start from run
  in lockstep through :func:`qsfl.simulate_many` (configs at different rounds catch up first), split into as
  many tasks as there are workers; off, every (config, seed) is its own task.
* **Continuation.** An evaluation at more rounds continues the simulation from the state saved at the end of the
  previous fidelity (``Simulation.state()`` / ``simulate_many(states=...)``), so it costs only the extra rounds.
  States live in memory for the batch being evaluated only (a study resumed after a crash re-simulates a
  promoted point from round 0, which gives the same numbers).

Where the tasks run is :mod:`tuning.workers` (serial, a process pool, a Dask cluster): every evaluation runs with
one torch thread there, so results never depend on ``--workers`` or ``--cluster``; results are taken as they
finish, and each point is handed on as soon as it and every point before it are done.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from qsfl.config import SimConfig
from qsfl.errors import ConfigError
from qsfl.sim import PER_CONFIG_FIELDS
from tuning.objective import (
    Evaluation,
    MetricSettings,
    SeedResult,
    combine,
    failed_evaluation,
    failure_result,
    history_result,
    params_id,
    with_slowdown,
)
from tuning.simkey import model_size, simulation_key
from tuning.workers import SerialWorkers, Workers

log = logging.getLogger(__name__)


# ----- one task: configs of one lockstep group --------------------------------------------------------------
@dataclass
class GroupTask:
    """Configs that run in lockstep from the same round (their states, or from scratch) up to ``until``."""

    configs: list[SimConfig]
    until: int
    full_rounds: int
    states: list[Any] | None = None
    return_states: bool = False
    curve: bool = False           # also return the per-round test accuracy of this stretch
    metrics: MetricSettings = field(default_factory=MetricSettings)   # the spec's [metrics]


def simulate_group(configs: Sequence[SimConfig], states: Sequence[Any] | None, until: int,
                   return_states: bool) -> list[tuple[Any, Any, int]]:
    """[(History, state or None, first round simulated)] of ``configs`` run in lockstep up to round ``until``
    (:func:`qsfl.simulate_many`), each from its state when it has one."""
    import qsfl

    out: list[Any] = list(qsfl.simulate_many(list(configs), states=list(states) if states is not None else None,
                                             until=until, return_states=return_states))
    firsts = [int(st.next_round) if st is not None else 0 for st in (states or [None] * len(configs))]
    pairs = out if return_states else [(h, None) for h in out]
    return [(h, st, first) for (h, st), first in zip(pairs, firsts)]


def run_group(task: GroupTask) -> list[dict[str, Any]]:
    """Worker entry: simulate a group; one dict per config: result (SeedResult dict), simulated rounds, state,
    accuracy curve. A group that raises is re-run config by config, so only the failing config fails."""
    start = time.perf_counter()
    try:
        outs = simulate_group(task.configs, task.states, task.until, task.return_states)
    except (KeyboardInterrupt, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - a failing simulation is a failed evaluation, not a failed study
        if len(task.configs) > 1:
            singles = [GroupTask([c], task.until, task.full_rounds, [s] if task.states else None,
                                 task.return_states, task.curve, task.metrics)
                       for c, s in zip(task.configs, task.states or [None] * len(task.configs))]
            return [r for single in singles for r in run_group(single)]
        return [{"result": failure_result(task.configs[0], exc, time.perf_counter() - start).to_dict(),
                 "simulated": 0, "state": None, "curve": []}]
    each = (time.perf_counter() - start) / max(len(task.configs), 1)
    results = []
    for cfg, (history, state, first) in zip(task.configs, outs):
        sr = history_result(history, cfg.seed, each, task.full_rounds, task.metrics)
        curve: list[tuple[int, float]] = []
        if task.curve:
            df = history.df
            curve = [(int(r), float(a)) for r, a in zip(df["round"], df["test_accuracy"]) if int(r) >= first]
        results.append({"result": sr.to_dict(), "simulated": max(sr.rounds - first, 0), "state": state,
                        "curve": curve})
        del history
    return results


def reference_config(config: SimConfig) -> SimConfig:
    """The FedAvg reference of ``config`` for ``slowdown``: the same setting (data, model, training, cohort, seed,
    rounds) with the strategy FedAvg."""
    return config.with_overrides({"strategy": {"name": "fedavg"}})


# ----- points ------------------------------------------------------------------------------------------------
@dataclass
class Point:
    """A proposed point after the constraint repair (``overrides``: explicit SimConfig overrides, e.g. the
    baseline's, instead of the space's mapping of ``params``)."""

    params: dict[str, Any]
    repair: str = ""
    penalty: str = ""          # non-empty: not simulated, failed with this reason
    overrides: dict[str, Any] | None = None

    @property
    def id(self) -> str:
        return params_id(self.params)


@dataclass
class _Slot:
    """A point being evaluated: its per-seed results as they arrive."""

    point: Point
    key: str = ""
    results: dict[int, SeedResult] = field(default_factory=dict)
    references: dict[int, SeedResult] = field(default_factory=dict)   # seed -> FedAvg reference (slowdown)
    missing: int = 0
    simulated: int = 0
    curve: list[tuple[int, float]] = field(default_factory=list)
    evaluation: Evaluation | None = None


class Evaluator:
    """Evaluates points on the spec's seeds at a given number of rounds; see the module docstring."""

    def __init__(self, spec: Any, workers: Workers | None = None, population_batch: bool | None = None) -> None:
        self.spec = spec
        self.workers = workers or SerialWorkers()
        self.population_batch = spec.study.population_batch if population_batch is None else population_batch
        self.cache: dict[tuple[str, int, int], SeedResult] = {}
        self.metrics: MetricSettings = spec.metrics
        self.states: dict[tuple[str, int], tuple[int, Any]] = {}
        self._n_params: int | None = None

    # ----- points and configs ---------------------------------------------------------------------------
    def point(self, params: Mapping[str, Any]) -> Point:
        """Apply the NS <= K repair/penalty to raw params."""
        fixed, repair, penalty = self.spec.space.repair(params, self.spec.base)
        return Point(fixed, repair, penalty)

    def config(self, point: Point, seed: int) -> SimConfig:
        """The SimConfig of a point on one seed (base + params, full rounds)."""
        overrides = point.overrides if point.overrides is not None else self.spec.space.overrides(point.params)
        return self.spec.base.with_overrides({**overrides, "seed": seed})

    @property
    def n_params(self) -> int:
        if self._n_params is None:
            self._n_params = model_size(self.spec.base)
        return self._n_params

    def simulation(self, point: Point) -> str:
        """The point's simulation key ('' when its config is invalid)."""
        try:
            return simulation_key(self.config(point, self.spec.study.seeds[0]), self.n_params)
        except ConfigError:
            return ""

    def remember(self, ev: Evaluation) -> None:
        """Put an evaluation's per-seed results into the cache (simulations are deterministic)."""
        if ev.simulation and ev.rounds:
            for r in ev.per_seed:
                self.cache[(ev.simulation, r.seed, ev.rounds)] = r

    def forget_states(self) -> None:
        """Drop the saved simulation states (after a batch)."""
        self.states.clear()

    # ----- a batch at one fidelity ----------------------------------------------------------------------
    def evaluate(self, points: Sequence[Point], rounds: int, *, keep_states: bool = False, curve: bool = False,
                 on_done: Callable[[int, Evaluation], None] | None = None,
                 seeds: Sequence[int] | None = None) -> list[Evaluation]:
        """Evaluate ``points`` after ``rounds`` rounds on every seed (``seeds``, default the study's search seeds:
        racing adds seeds, validation uses its own); ``on_done(i, ev)`` sees each evaluation as soon as it and
        every point before it are finished (so rows are written in order)."""
        seeds = list(self.spec.study.seeds if seeds is None else seeds)
        full = self.spec.base.rounds
        slots = [_Slot(pt) for pt in points]
        # (key, seed) -> (slot, is a reference) waiting for that simulation
        jobs: dict[tuple[str, int], list[tuple[int, bool]]] = {}
        configs: dict[tuple[str, int], SimConfig] = {}

        def need(i: int, key: str, seed: int, cfg: SimConfig, reference: bool) -> None:
            slot = slots[i]
            hit = self.cache.get((key, seed, rounds))
            if hit is not None:
                (slot.references if reference else slot.results)[seed] = hit
                return
            jobs.setdefault((key, seed), []).append((i, reference))
            configs[(key, seed)] = cfg
            slot.missing += 1

        for i, slot in enumerate(slots):
            pt = slot.point
            if pt.penalty:
                slot.evaluation = failed_evaluation(pt.params, seeds, pt.penalty, self.spec.objective, pt.repair)
                continue
            try:
                cfgs = {s: self.config(pt, s) for s in seeds}
            except ConfigError as exc:
                results = [SeedResult(s, "failed", f"invalid config: {exc}", {}, 0.0) for s in seeds]
                slot.evaluation = combine(pt.params, seeds, results, self.spec.objective, rounds, pt.repair, full)
                continue
            slot.key = simulation_key(cfgs[seeds[0]], self.n_params)
            for s in seeds:
                need(i, slot.key, s, cfgs[s], False)
            if self.metrics.slowdown:   # FedAvg on the same seed and setting (the FedAvg point's own run for FedAvg)
                ref = reference_config(cfgs[seeds[0]])
                ref_key = simulation_key(ref, self.n_params)
                for s in seeds:
                    need(i, ref_key, s, ref.replace(seed=s), True)
        tasks, owners = self._tasks(configs, rounds, keep_states, curve)
        emitted = 0

        def emit() -> None:
            nonlocal emitted
            while emitted < len(slots) and (slots[emitted].evaluation is not None or slots[emitted].missing == 0):
                slot = slots[emitted]
                if slot.evaluation is None:
                    slot.evaluation = self._finish(slot, seeds, rounds)
                if on_done is not None:
                    on_done(emitted, slot.evaluation)
                emitted += 1

        emit()
        for index, outs in self.workers.map_unordered(run_group, tasks):
            for job, out in zip(owners[index], outs):
                key, seed = job
                sr = SeedResult.from_dict(out["result"])
                if out["state"] is not None:
                    self.states[job] = (rounds, out["state"])
                self.cache[(key, seed, rounds)] = sr
                first = True
                for i, reference in jobs[job]:
                    slot = slots[i]
                    (slot.references if reference else slot.results)[seed] = sr
                    slot.missing -= 1
                    if first:   # a simulation shared by identical points (or a reference) counts once
                        slot.simulated += int(out["simulated"])
                        first = False
                    if curve and seed == seeds[0] and not reference:
                        slot.curve = [tuple(c) for c in out["curve"]]
            emit()
        emit()
        return [s.evaluation for s in slots if s.evaluation is not None]

    def _finish(self, slot: _Slot, seeds: Sequence[int], rounds: int) -> Evaluation:
        pt = slot.point
        results = [slot.results[s] for s in seeds]
        if self.metrics.slowdown:
            results = [with_slowdown(r, slot.references[s]) for r, s in zip(results, seeds)]
        ev = combine(pt.params, seeds, results, self.spec.objective, rounds, pt.repair, self.spec.base.rounds)
        ev.simulation = slot.key
        ev.simulated_rounds = slot.simulated
        ev.curve = slot.curve
        return ev

    def _tasks(self, configs: Mapping[tuple[str, int], SimConfig], rounds: int, keep_states: bool,
               curve: bool) -> tuple[list[GroupTask], list[list[tuple[str, int]]]]:
        """Group the missing simulations into lockstep tasks (see the module docstring)."""
        groups: dict[tuple[Any, ...], list[tuple[str, int]]] = {}
        for job, cfg in configs.items():
            if self.population_batch:     # simulate_many's lockstep: everything but the per-config fields shared
                shared = {k: v for k, v in cfg.to_dict().items() if k not in PER_CONFIG_FIELDS}
                gkey: tuple[Any, ...] = (job[1], json.dumps(shared, sort_keys=True, default=repr))
            else:
                gkey = (job,)
            groups.setdefault(gkey, []).append(job)
        workers = max(int(self.workers.n), 1)
        chunks: list[tuple[int, int, list[tuple[str, int]]]] = []
        for gkey, members in groups.items():
            n = min(workers, len(members))
            size = math.ceil(len(members) / n)
            for c in range(0, len(members), size):
                chunks.append((c // size, gkey[0] if self.population_batch else 0, members[c:c + size]))
        # interleave seeds chunk by chunk, so points finish (and their rows are written) early
        chunks.sort(key=lambda ch: ch[0])
        tasks, owners = [], []
        for _, _, members in chunks:
            states = [self.states[j][1] if j in self.states and self.states[j][0] < rounds else None
                      for j in members]
            tasks.append(GroupTask([configs[j] for j in members], rounds, self.spec.base.rounds,
                                   states if any(s is not None for s in states) else None, keep_states, curve,
                                   self.metrics))
            owners.append(members)
        return tasks, owners
