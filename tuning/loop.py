"""The one search loop of every study: ask -> evaluate -> tell -> checkpoint -> trials table.

* **Ask.** The searcher proposes a batch (a GA generation; ``batch_size`` points of Optuna or random search;
  ``fidelity.batch`` points per successive-halving bracket).
* **Evaluate.** Identical points of the batch are evaluated once. Without ``[fidelity]`` every point is simulated
  for the study's rounds; with it the batch runs through the rungs of :mod:`tuning.search.fidelity` (promoted
  points continue from their saved simulation state); with an Optuna pruner the batch runs in stages of
  ``prune_every`` rounds and the searcher decides after each one. Every evaluation becomes a trials row as soon
  as it (and every point before it) is finished.
* **Tell** the searcher each point's evaluation at the rounds it stopped at.
* **Checkpoint** ``OUT/checkpoint.pkl`` (atomic) after every ask and every tell: the searcher's ``state()``, the
  batch being evaluated, the evaluation counter and the compute time so far.

**Resume** (also after ``kill -9``): the searcher is restored from the checkpoint, the batch that was being
evaluated is evaluated again, and every row it had already written (trial numbers are assigned in a fixed order)
is taken from the table instead of being simulated again: no finished evaluation is lost or repeated, and the GA
and random search end with the same trials table as an uninterrupted run. Searchers that keep their trials
themselves (Optuna: the storage is the checkpoint) re-queue the trials that were running instead.

Checkpoints are pickles: load them only from directories you trust (trusted-local only).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import pickle
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qsfl.errors import ConfigError
from qsfl.io import atomic_write
from tuning.evaluate import Evaluator, Point
from tuning.objective import Evaluation
from tuning.progress import Progress
from tuning.racing import Race
from tuning.search.base import Candidate, Searcher
from tuning.search.fidelity import (
    FidelitySettings,
    choose_bracket,
    promote,
    rung_correlations,
    trusted_brackets,
)
from tuning.search.ga import load_pickle
from tuning.trials import TrialsTable, evaluation_from_row, make_row

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pkl"
CHECKPOINT_VERSION = 3


@dataclass
class LoopState:
    """The loop's part of the checkpoint."""

    counter: int = 0                              # next trial number (searchers without their own numbering)
    batches: int = 0                              # batches told
    pending: list[Candidate] | None = None        # the batch asked and not yet told
    elapsed_s: float = 0.0                        # compute time of the study's sessions so far
    # [fidelity] hedging: the first rung of every batch told, and of the pending one (tuples and None: class
    # attributes, so a checkpoint of an older version loads with them)
    brackets: tuple[int, ...] = ()
    pending_bracket: int | None = None


@dataclass
class Checkpoint:
    """``OUT/checkpoint.pkl``: the searcher's state and the loop's. Attributes of the searcher's state (the GA's
    ``population``, ``hof``, ``logbook``, ``generation``) can be read from the checkpoint directly."""

    engine: str
    fingerprint: str
    searcher: Any
    loop: LoopState = field(default_factory=LoopState)
    version: int = CHECKPOINT_VERSION

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        state = self.__dict__.get("searcher")
        if state is None:
            raise AttributeError(name)
        return getattr(state, name)


def load_checkpoint(path: Path, engine: str, fingerprint: str) -> Checkpoint:
    """Read and check ``checkpoint.pkl`` (ConfigError naming the file when it is damaged or from another spec)."""
    ckpt = load_pickle(path, "study checkpoint")
    if not isinstance(ckpt, Checkpoint) or ckpt.version != CHECKPOINT_VERSION:
        raise ConfigError(f"{path}: not a study checkpoint of this version; start a new study with another --out")
    if ckpt.engine != engine:
        raise ConfigError(f"{path}: written by study.engine = {ckpt.engine!r}, not {engine!r}; use another --out")
    if ckpt.fingerprint and fingerprint and ckpt.fingerprint != fingerprint:
        raise ConfigError(f"{path}: the study spec changed since this checkpoint was written (only the budget may "
                          f"grow on resume); use another --out")
    return ckpt


class StudyLoop:
    """Runs one session of a study's search; see the module docstring."""

    def __init__(self, spec: Any, out_dir: Path, searcher: Searcher, evaluator: Evaluator, table: TrialsTable,
                 progress: Progress, on_batch: Callable[[], None] | None = None) -> None:
        self.spec = spec
        self.out = out_dir
        self.searcher = searcher
        self.evaluator = evaluator
        self.table = table
        self.progress = progress
        self.fidelity: FidelitySettings | None = spec.fidelity
        self.full = spec.base.rounds
        self.state = LoopState()
        self.known: dict[tuple[str, int], Evaluation] = {}    # (individual, rounds) -> its row's evaluation
        self.replay: dict[int, dict[str, Any]] = {}           # rows written after the checkpoint (resume)
        self.on_batch = on_batch
        self.session_start = time.perf_counter()
        self.session_rows = 0
        race_seeds = spec.study.race_seeds if len(spec.study.race_seeds) > len(spec.study.seeds) else ()
        self.race = Race(race_seeds, spec.objective, self.full, spec.study.incumbents)

    # ----- checkpoint -------------------------------------------------------------------------------------
    @property
    def path(self) -> Path:
        return self.out / CHECKPOINT

    def elapsed(self) -> float:
        """Compute time of the whole study (earlier sessions + this one)."""
        return self.state.elapsed_s + (time.perf_counter() - self.session_start)

    def save(self) -> None:
        """Write the checkpoint atomically."""
        state = dataclasses.replace(self.state, elapsed_s=self.elapsed())
        if self.searcher.owns_trials:
            state.pending = None            # the searcher's storage re-queues what was running
        ckpt = Checkpoint(self.searcher.name, self.spec.fingerprint, self.searcher.state(), state)

        def write(path: Path) -> None:
            with open(path, "wb") as fh:
                pickle.dump(ckpt, fh, protocol=pickle.HIGHEST_PROTOCOL)

        atomic_write(self.path, write)

    def load(self, resume: bool) -> None:
        """Restore the searcher and the loop (resume), and fill the caches from the trials table."""
        if resume and self.path.is_file():
            ckpt = load_checkpoint(self.path, self.searcher.name, self.spec.fingerprint)
            self.searcher.restore(ckpt.searcher)
            self.state = ckpt.loop
            log.info("resuming after %d batches (%d evaluations numbered)", self.state.batches, self.state.counter)
        else:
            self.searcher.start(self.start_points())
        rows = self.searcher.rows() if self.searcher.owns_trials else (self.table.load() if resume else [])
        self.table.rows = [dict(r) for r in rows]
        self.progress.resumed([self._from_row(row) for row in rows])
        for row in rows:
            ev = self._from_row(row)
            self.evaluator.remember(ev)
            # the incumbents as they were before the pending batch: its rows are replayed into it later
            if ev.rounds == self.full and (self.searcher.owns_trials or int(row["trial"]) < self.state.counter):
                self.race.admit(ev)
            if not self.searcher.owns_trials:
                if int(row["trial"]) < self.state.counter:
                    self.known[(ev.individual, ev.rounds)] = ev
                else:
                    self.replay[int(row["trial"])] = dict(row)

    def start_points(self) -> list[dict[str, Any]]:
        """The points every searcher evaluates first: the authors' defaults (``study.start_defaults``), then the
        spec's ``[[study.start]]`` (missing params from the defaults); defaults outside the space are skipped."""
        spec = self.spec
        defaults = spec.space.defaults(spec.base)
        wanted = [("the authors' defaults", defaults)] if spec.study.start_defaults else []
        wanted += [(f"study.start[{i}]", {**defaults, **dict(extra)}) for i, extra in enumerate(spec.study.start)]
        points = []
        for label, params in wanted:   # what would be evaluated (NS <= K repaired) must lie in the space
            fixed, _, penalty = spec.space.repair(params, spec.base)
            if penalty or not spec.space.contains(fixed):
                log.warning("%s %s: %s; not a start point", label, params, penalty or "outside the search space")
            else:
                points.append(fixed)
        return points

    def _from_row(self, row: Mapping[str, Any]) -> Evaluation:
        ev = evaluation_from_row(row, self.spec.space.names, self.spec.objective, self.full)
        return ev

    # ----- the loop ---------------------------------------------------------------------------------------
    def run(self, resume: bool = False, stop_after: int | None = None) -> LoopState:
        """Ask, evaluate, tell until the budget, the time budget or ``stop_after`` batches (0-based) is reached."""
        self.load(resume)
        budget = self.spec.study.time_budget_s
        while True:
            if self.state.pending is not None:
                cands = self.state.pending
            else:
                if self.searcher.finished():
                    break
                if stop_after is not None and self.state.batches > stop_after:
                    break
                if budget is not None and self.elapsed() >= budget:
                    log.info("time budget of %.0f s used up", budget)
                    break
                # isolated: no draw of the backend's own threads from Python's global random falls inside (the GA's
                # DEAP operators draw from it; tuning.workers.DaskWorkers.isolated)
                cands = self.evaluator.workers.isolated(self.searcher.ask, self._batch_size())
                if not cands:
                    break
                self.state.pending = cands
                self.state.pending_bracket = self._next_bracket(len(cands))
                self.save()
            evaluations = self.evaluate_batch(cands)
            self.evaluator.workers.isolated(self.searcher.tell, cands, evaluations)
            if self.fidelity is not None:
                self.state.brackets = (*self.state.brackets, self._bracket())
            self.state.pending = None
            self.state.pending_bracket = None
            self.state.batches += 1
            if self.searcher.owns_trials:
                self.table.replace(self.searcher.rows())
            self.save()
            if self.on_batch is not None:
                self.on_batch()
            self._after_batch(cands, evaluations)
        if self.searcher.owns_trials:   # other workers' trials too, also when this one had nothing left to run
            self.table.replace(self.searcher.rows())
        self.state.elapsed_s = self.elapsed()
        return self.state

    def _batch_size(self) -> int:
        if self.fidelity is not None:
            return self.fidelity.bracket(self.full)
        return self.searcher.batch_size()

    def _after_batch(self, cands: Sequence[Candidate], evaluations: Sequence[Evaluation]) -> None:
        step, steps = self.searcher.progress()
        of = f"/{steps}" if steps else ""
        if self.searcher.name == "ga":     # progress() counts generations including generation 0
            text = f"generation {step - 1}" + (f"/{steps - 1}" if steps else "")
        else:
            text = f"batch {self.state.batches}: {step}{of} points"
        new = sum(ev.new_rows for ev in evaluations)
        failed = sum(1 for ev in evaluations if ev.state == "failed")
        self.progress.revise_total(step, steps)
        self.progress.batch(text, new, failed)

    # ----- one batch ----------------------------------------------------------------------------------------
    def _bracket(self) -> int:
        """The first rung of the pending batch (0 without hedging, or for a batch asked by an older version)."""
        return self.state.pending_bracket or 0

    def _next_bracket(self, n: int) -> int:
        """The bracket of a new batch of ``n`` points (:func:`tuning.search.fidelity.choose_bracket`)."""
        if self.fidelity is None:
            return 0
        rungs = self.fidelity.rungs(self.full)
        allowed = trusted_brackets(self.fidelity, rungs, self.correlations())
        return choose_bracket(rungs, n, self.fidelity.eta, self.state.brackets, allowed)

    def correlations(self) -> dict[int, tuple[float, int]]:
        """Per lower rung: Spearman correlation of its fitness with the full-rounds fitness, and its pairs."""
        if self.fidelity is None:
            return {}
        sign = self.spec.objective.weights[0]
        return rung_correlations(self.table.rows, self.fidelity.rungs(self.full), self.full, sign)

    def _stages(self) -> list[tuple[int, bool]]:
        """(rounds, rows recorded) of every stage of a batch, the last being the study's rounds."""
        if self.fidelity is not None:
            return [(r, True) for r in self.fidelity.rungs(self.full)[self._bracket():]]
        return [(r, False) for r in self.searcher.prune_stages(self.full)] + [(self.full, True)]

    def evaluate_batch(self, cands: Sequence[Candidate]) -> list[Evaluation]:
        """Evaluate a batch through its stages; the evaluation of each candidate where it stopped."""
        points: list[Point] = []
        owners: list[list[int]] = []
        index: dict[str, int] = {}
        for ci, cand in enumerate(cands):
            pt = self.evaluator.point(cand.params)
            if pt.id in index:
                owners[index[pt.id]].append(ci)
            else:
                index[pt.id] = len(points)
                points.append(pt)
                owners.append([ci])
        rows: dict[int, list[dict[str, Any]]] = {ci: [] for ci in range(len(cands))}
        written = [0] * len(points)
        final: list[Evaluation | None] = [None] * len(points)
        stages = self._stages()
        alive = list(range(len(points)))
        pruning = self.fidelity is None and len(stages) > 1
        for rung, (rounds, record) in enumerate(stages):
            last = rung == len(stages) - 1
            deferred: dict[int, int] = {}   # the last stage: point -> trial, its row written after the race
            absolute = rung + self._bracket() if self.fidelity else 0
            evs = self._stage(points, owners, cands, alive, rounds, absolute, record,
                              keep_states=not last, curve=pruning, rows=rows, written=written,
                              defer=deferred if last else None)
            if last:
                raced = self.race.run([points[i] for i in deferred], [evs[i] for i in deferred],
                                      functools.partial(self._evaluate_on, rounds=rounds))
                for i, ev in zip(deferred, raced):
                    evs[i] = ev
                    self._record(i, points[i], owners, cands, ev, deferred[i], rows, written)
                for i in alive:   # the batch enters the incumbents at its end, in point order (tuning.racing)
                    self.race.admit(evs[i])
                    final[i] = evs[i]
                break
            keep_alive = []
            if self.fidelity is not None:
                for i in alive:
                    for ci in owners[i]:
                        self.searcher.report_rung(cands[ci], evs[i])
                keep = promote([evs[i] for i in alive], self.fidelity.eta, self.spec.objective.weights)
                for i, go in zip(alive, keep):
                    # a start point (the known-good config) always goes on: it ends at full rounds, so the study's
                    # best is never worse than it (unless it fails)
                    if go or (evs[i].ok and any(cands[ci].start for ci in owners[i])):
                        keep_alive.append(i)
                    else:
                        final[i] = evs[i]
            else:
                for i in alive:
                    ev = evs[i]
                    prune = [self.searcher.should_prune(cands[ci], ev.curve) for ci in owners[i]] if ev.ok else []
                    if ev.ok and not all(prune):
                        keep_alive.append(i)
                        continue
                    if ev.ok:
                        acc = ev.curve[-1][1] if ev.curve else float("nan")
                        ev = dataclasses.replace(ev, state="pruned", reason=f"pruned at round {rounds} "
                                                 f"(test accuracy {acc:.4f})", fitness=self.spec.objective.worst())
                    final[i] = ev
                    self._rows_for(i, points[i], owners, cands, ev, rung, rows, written)
            alive = keep_alive
        self.evaluator.forget_states()
        out: list[Evaluation] = []
        for ci in range(len(cands)):
            i = next(j for j, own in enumerate(owners) if ci in own)
            done = final[i]
            assert done is not None
            out.append(dataclasses.replace(done, new_rows=written[i] if owners[i][0] == ci else 0))
        if self.searcher.owns_trials:
            for ci, cand in enumerate(cands):
                self.searcher.record(cand, rows[ci])
        return out

    def _stage(self, points: Sequence[Point], owners: Sequence[list[int]], cands: Sequence[Candidate],
               alive: Sequence[int], rounds: int, rung: int, record: bool, *, keep_states: bool, curve: bool,
               rows: dict[int, list[dict[str, Any]]], written: list[int],
               defer: dict[int, int] | None = None) -> dict[int, Evaluation]:
        """Evaluate the alive points at ``rounds``; known and replayed rows are not simulated again. With ``defer``
        the rows of newly simulated points are not written: ``defer`` gets point -> trial number (-1 for searchers
        that keep their own trials) and the caller writes them (:meth:`_record`) after racing."""
        results: dict[int, Evaluation] = {}
        todo: list[int] = []
        trials: dict[int, int] = {}
        numbered = not self.searcher.owns_trials and record
        for i in alive:
            pt = points[i]
            if numbered:
                known = self.known.get((pt.id, rounds))
                if known is not None:
                    results[i] = dataclasses.replace(known, rung=rung)
                    continue
                trial = self.state.counter
                self.state.counter += 1
                trials[i] = trial
                replay = self.replay.pop(trial, None)
                if replay is not None and replay["individual"] == pt.id and \
                        int(replay.get("rounds") or self.full) == rounds:
                    ev = self._from_row(replay)
                    self.evaluator.remember(ev)
                    self.known[(pt.id, rounds)] = ev
                    results[i] = ev
                    written[i] += 1
                    continue
                if replay is not None:   # a row that this run does not reproduce: replaced, not duplicated
                    log.warning("trials row %d (%s) does not match the resumed run; re-evaluating", trial,
                                replay["individual"])
                    self.table.rows = [r for r in self.table.rows if int(r["trial"]) != trial]
            todo.append(i)

        def on_done(j: int, ev: Evaluation) -> None:
            i = todo[j]
            ev.rung = rung
            results[i] = ev
            if not record:
                return
            if defer is not None:
                defer[i] = trials.get(i, -1)
            else:
                self._record(i, points[i], owners, cands, ev, trials.get(i, -1), rows, written)

        self.evaluator.evaluate([points[i] for i in todo], rounds, keep_states=keep_states, curve=curve,
                                on_done=on_done)
        return results

    def _evaluate_on(self, points: Sequence[Point], seeds: Sequence[int], *, rounds: int) -> list[Evaluation]:
        """Racing's evaluations: ``points`` at ``rounds`` on ``seeds``."""
        return self.evaluator.evaluate(points, rounds, seeds=seeds)

    def _record(self, i: int, point: Point, owners: Sequence[list[int]], cands: Sequence[Candidate],
                ev: Evaluation, trial: int, rows: dict[int, list[dict[str, Any]]], written: list[int]) -> None:
        """Write a point's row(s): the table's (numbered by the loop) or the searcher's own."""
        if not self.searcher.owns_trials:
            self.known[(point.id, ev.rounds)] = ev
            self._write(ev, trial, cands[owners[i][0]].generation)
            written[i] += 1
        else:
            self._rows_for(i, point, owners, cands, ev, ev.rung, rows, written)

    def _write(self, ev: Evaluation, trial: int, generation: int) -> None:
        row = make_row(self.spec.name, self.searcher.name, generation, trial, ev, self.spec.space.names,
                       self.spec.objective.n)
        self.table.append(row)
        self.session_rows += 1
        self.progress.evaluation(ev, trial, generation)

    def _rows_for(self, i: int, point: Point, owners: Sequence[list[int]], cands: Sequence[Candidate],
                  ev: Evaluation, rung: int, rows: dict[int, list[dict[str, Any]]], written: list[int]) -> None:
        """Rows of a point for searchers that keep their own trials: one per candidate (its trial number)."""
        ev.rung = rung
        for ci in owners[i]:
            cand = cands[ci]
            trial = cand.trial if cand.trial is not None else -1
            rows[ci].append(make_row(self.spec.name, self.searcher.name, cand.generation, trial, ev,
                                     self.spec.space.names, self.spec.objective.n))
            self.session_rows += 1
            self.progress.evaluation(ev, trial, cand.generation)
        written[i] += 1
