"""Optuna search: TPE, CMA-ES, NSGA-II, random (and ``ga`` = NSGA-II's genetic operators for one objective),
median/Hyperband pruning on the per-round test accuracy, any RDB storage (SQLite by default, PostgreSQL for
workers on several machines), resume by re-running with the same storage.

* Budget: ``optuna.n_trials`` counts finished trials of the study (complete, pruned, and failed evaluations
  such as diverged runs); a re-run continues the numbering and only runs what is missing. Trials that died
  with their process (stale RUNNING trials) do not count: they are failed and re-queued with the same params.
* Pruning uses the first seed's test accuracy at each evaluation round (reported as ``1 - accuracy`` in a
  minimised study, since Optuna's pruners read intermediate values in the study's direction), and only for
  a single objective (Optuna cannot prune multi-objective studies). Use it when accuracy drives the fitness;
  a pruner can stop a slow-learning but byte-frugal config that the fitness would have liked.
* A failed evaluation ends as ``TrialState.FAIL`` with the reason in the user attr ``fail_reason``.
* Each trial keeps its trials-table row in the user attr ``qsfl_row``: the table is rebuilt from the storage
  after every trial, so no finished trial is lost if a worker is killed between Optuna's commit and the
  table write, and workers on other machines see each other's rows.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qsfl.engine.threads import configure_threads
from qsfl.errors import ConfigError
from tuning.evaluate import Evaluator
from tuning.objective import Evaluation
from tuning.spec import StudySpec, parse_spec, spec_fingerprint
from tuning.storage import open_serialised, storage_kwargs
from tuning.trials import TrialsTable, evaluation_from_row, make_row
from tuning.workers import PoolWorkers

log = logging.getLogger(__name__)

ROW_ATTR = "qsfl_row"
FAIL_ATTR = "fail_reason"
SURPLUS_ATTR = "surplus"
FINGERPRINT_ATTR = "qsfl_fingerprint"


def _quiet_experimental() -> None:
    """Heartbeats and retries are marked experimental in Optuna; the warning is noise for our users."""
    import warnings

    import optuna

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def default_storage(out_dir: str | Path) -> str:
    """``sqlite:///OUT/study.db``."""
    return f"sqlite:///{Path(out_dir).resolve() / 'study.db'}"


def make_storage(url: str, spec: StudySpec) -> Any:
    """An RDBStorage with heartbeats (stale trials are failed and retried with the same params).

    Opening an empty database creates Optuna's schema: call this inside :func:`tuning.storage.open_serialised`
    (as :func:`open_study` does) when other processes may open the same database at the same moment.
    """
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    _quiet_experimental()
    s = spec.optuna
    kwargs: dict[str, Any] = {}
    if s.heartbeat_interval > 0:
        kwargs = dict(heartbeat_interval=s.heartbeat_interval,
                      grace_period=s.grace_period or 3 * s.heartbeat_interval,
                      heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=3))
    return RDBStorage(url, engine_kwargs=storage_kwargs(url), **kwargs)


def storage_error(url: str, exc: Exception) -> ConfigError | None:
    """A one-line ConfigError for a storage that cannot be opened (missing driver, bad or unreachable URL)."""
    import optuna

    if isinstance(exc, ImportError):
        return ConfigError(f"--storage {url}: a database driver is missing ({exc}); e.g. pip install "
                           f"psycopg2-binary for PostgreSQL")
    if isinstance(exc, optuna.exceptions.OptunaError) or "sqlalchemy" in type(exc).__module__:
        return ConfigError(f"--storage {url}: cannot open the storage: {exc}")
    return None


def sampler_seed(spec: StudySpec, worker: int, n_existing: int, shared: bool = False) -> int:
    """The sampler's seed: search_seed for a fresh study's first worker; other workers and resumed runs get
    their own stream (a resumed sampler with the original seed would re-propose the first trials' params).

    On a shared storage (``shared``: any --storage URL) several ``qsfl tune`` processes may start at the same moment,
    each believing it is the first: each sampler then draws fresh OS entropy so that no two propose the
    same parameters. Such studies are not bit-reproducible (trial order depends on timing anyway).
    """
    import numpy as np

    if shared:
        return int(np.random.SeedSequence().generate_state(1)[0])
    if worker == 0 and n_existing == 0:
        return spec.study.search_seed
    return int(np.random.SeedSequence([spec.study.search_seed, worker, n_existing]).generate_state(1)[0])


def make_sampler(spec: StudySpec, worker: int = 0, workers: int = 1, n_existing: int = 0,
                 shared: bool = False) -> Any:
    """The sampler named in the spec, seeded by :func:`sampler_seed`."""
    import optuna

    s = spec.optuna
    seed = sampler_seed(spec, worker, n_existing, shared)
    if s.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=s.n_startup_trials, multivariate=True,
                                          constant_liar=workers > 1 or shared)
    if s.sampler == "cmaes":
        try:
            import cmaes  # noqa: F401
        except ImportError:
            raise ConfigError("optuna.sampler: 'cmaes' needs the cmaes package (pip install cmaes); "
                              "or choose tpe, nsga2, ga, random") from None
        return optuna.samplers.CmaEsSampler(seed=seed, n_startup_trials=max(1, s.n_startup_trials),
                                            warn_independent_sampling=False)
    if s.sampler in ("nsga2", "ga"):
        return optuna.samplers.NSGAIISampler(population_size=s.population_size, seed=seed)
    return optuna.samplers.RandomSampler(seed=seed)


def make_pruner(spec: StudySpec) -> Any:
    """Median, Hyperband (resource = rounds) or none."""
    import optuna

    s = spec.optuna
    if s.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=s.n_startup_trials, n_warmup_steps=s.warmup_rounds)
    if s.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=spec.base.rounds, reduction_factor=3)
    return optuna.pruners.NopPruner()


def study_directions(spec: StudySpec) -> list[Any]:
    """The spec's directions as Optuna's StudyDirection values."""
    from optuna.study import StudyDirection

    return [StudyDirection.MAXIMIZE if d == "maximize" else StudyDirection.MINIMIZE for d in spec.objective.directions]


def open_study(spec: StudySpec, storage_url: str, worker: int = 0, workers: int = 1, shared: bool = True) -> Any:
    """Create or load (load_if_exists) the study; a different spec under the same name is an error.

    ``shared``: other ``qsfl tune`` processes may use this storage (any --storage URL): each process then
    gets its own sampler entropy. Only the run's own default SQLite file is not shared (deterministic).
    """
    import optuna

    def create() -> Any:
        study = optuna.create_study(storage=make_storage(storage_url, spec), study_name=spec.name,
                                    pruner=make_pruner(spec), directions=study_directions(spec),
                                    load_if_exists=True)
        if [d.name.lower() for d in study.directions] != list(spec.objective.directions):
            raise ConfigError(f"study.name: the storage already holds a study {spec.name!r} with directions "
                              f"{[d.name.lower() for d in study.directions]}; choose another study.name")
        fp = spec_fingerprint(spec)
        old = study.user_attrs.get(FINGERPRINT_ATTR)
        if old is None:
            study.set_user_attr(FINGERPRINT_ATTR, fp)
            study.set_user_attr("objectives", spec.objective.describe())
            study.set_user_attr("search_space", spec.space.names)
        elif old != fp:
            raise ConfigError(f"study.name: the storage already holds a study {spec.name!r} run with a different "
                              f"spec (only optuna.n_trials may change on resume); choose another study.name or --out")
        return study

    try:
        study = open_serialised(storage_url, create)
    except ConfigError:
        raise
    except Exception as exc:
        error = storage_error(storage_url, exc)
        if error is None:
            raise
        raise error from None
    study.sampler = make_sampler(spec, worker, workers, len(study.get_trials(deepcopy=False)), shared)
    return study


def counted(trial: Any) -> bool:
    """Does a trial count toward n_trials? (complete, pruned, or failed as an evaluation)."""
    from optuna.trial import TrialState

    if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    return trial.state == TrialState.FAIL and FAIL_ATTR in trial.user_attrs


def budget_used(study: Any) -> tuple[int, int]:
    """(finished trials that count, trials in flight: running or queued)."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    done = sum(1 for t in trials if counted(t))
    active = sum(1 for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING))
    return done, active


def fail_orphans(study: Any) -> int:
    """Fail and re-queue RUNNING trials left by a killed process (only when this run owns the storage)."""
    import copy

    from optuna.storages import RetryHeartbeatStaleTrialCallback
    from optuna.trial import TrialState

    n = 0
    retry = RetryHeartbeatStaleTrialCallback(max_retry=3)
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if study._storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL):
            retry(study, copy.deepcopy(study._storage.get_trial(t._trial_id)))
            n += 1
    return n


def rows_from_study(study: Any, spec: StudySpec) -> list[dict[str, Any]]:
    """The trials table of a study: the stored row of every finished trial that counts, by trial number."""
    from optuna.trial import TrialState

    rows = []
    for t in study.get_trials(deepcopy=False):
        if not counted(t) or ROW_ATTR not in t.user_attrs:
            continue
        row = json.loads(t.user_attrs[ROW_ATTR])
        row["trial"] = t.number
        expected = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed"}[t.state]
        if row["state"] != expected:  # e.g. killed between writing the row and telling Optuna
            continue
        rows.append(row)
    rows.sort(key=lambda r: r["trial"])
    return rows


class TrialObjective:
    """The Optuna objective: suggest -> repair -> evaluate (with pruning) -> row in the trial's user attrs."""

    def __init__(self, spec: StudySpec, evaluator: Evaluator, on_done: Callable[[Evaluation], None] | None = None):
        self.spec = spec
        self.evaluator = evaluator
        self.on_done = on_done
        self.prune = spec.optuna.pruner != "none" and spec.objective.n == 1

    def _surplus(self, trial: Any) -> bool:
        """Another worker already started the last trial of the budget (a race): skip this one."""
        from optuna.trial import TrialState

        before = [t for t in trial.study.get_trials(deepcopy=False) if t.number < trial.number]
        used = sum(1 for t in before if counted(t) or t.state in (TrialState.RUNNING, TrialState.WAITING))
        return used >= self.spec.optuna.n_trials

    def _store(self, trial: Any, ev: Evaluation) -> None:
        row = make_row(self.spec.name, "optuna", -1, trial.number, ev, self.spec.space.names, self.spec.objective.n)
        trial.set_user_attr(ROW_ATTR, json.dumps(row))
        trial.set_user_attr("params_evaluated", ev.params)
        if ev.repair:
            trial.set_user_attr("repair", ev.repair)

    def __call__(self, trial: Any) -> Any:
        import optuna

        nan = tuple(math.nan for _ in range(self.spec.objective.n))
        if self._surplus(trial):
            trial.set_user_attr(SURPLUS_ATTR, True)
            return nan if len(nan) > 1 else nan[0]
        point = self.evaluator.point(self.spec.space.suggest(trial))
        start = time.perf_counter()

        def on_round(row: dict[str, Any]) -> None:
            acc = row.get("test_accuracy", math.nan)
            if not self.prune or acc != acc:
                return
            # Optuna's pruners read intermediate values in the study's direction: report the accuracy
            # when maximising, the error (1 - accuracy) when minimising
            value = float(acc) if self.spec.objective.directions[0] == "maximize" else 1.0 - float(acc)
            trial.report(value, int(row["round"]))
            if trial.should_prune():
                reason = f"pruned at round {row['round']} (test accuracy {acc:.4f})"
                ev = Evaluation(point.params, point.id, list(self.spec.study.seeds), "pruned", reason,
                                {}, {}, self.spec.objective.worst(), time.perf_counter() - start, point.repair)
                self._store(trial, ev)
                if self.on_done is not None:
                    self.on_done(ev)
                raise optuna.TrialPruned(reason)

        ev = self.evaluator.evaluate_here(point, on_round=on_round)
        self._store(trial, ev)
        if self.on_done is not None:
            self.on_done(ev)
        if not ev.ok:
            trial.set_user_attr(FAIL_ATTR, ev.reason)
            log.info("trial %d failed: %s", trial.number, ev.reason)
            return nan if len(nan) > 1 else nan[0]
        return ev.fitness if len(ev.fitness) > 1 else ev.fitness[0]


def seed_cache(evaluator: Evaluator, study: Any, spec: StudySpec) -> None:
    """Fill the evaluator's cache from the rows already in the study (identical configs run once)."""
    for row in rows_from_study(study, spec):
        evaluator.remember(evaluation_from_row(row, spec.space.names, spec.objective, spec.base.rounds))


def worker_loop(spec: StudySpec, out_dir: Path, storage_url: str, worker: int = 0, workers: int = 1,
                on_trial: Callable[[Any], None] | None = None, shared: bool = True) -> None:
    """Run trials until the study has n_trials that count; rewrite the trials table after each one."""
    configure_threads(1)
    study = open_study(spec, storage_url, worker, workers, shared)
    table = TrialsTable(out_dir, spec.space.names, spec.objective.n,
                        {p.name: p.type for p in spec.space.params})
    evaluator = Evaluator(spec, table, engine="optuna")
    seed_cache(evaluator, study, spec)
    objective = TrialObjective(spec, evaluator)
    while True:
        done, active = budget_used(study)
        if done >= spec.optuna.n_trials:
            break
        if done + active >= spec.optuna.n_trials and active and not _has_waiting(study):
            break
        study.optimize(objective, n_trials=1, gc_after_trial=False, show_progress_bar=False)
        table.replace(rows_from_study(study, spec))
        if on_trial is not None:
            on_trial(study)


def _has_waiting(study: Any) -> bool:
    from optuna.trial import TrialState

    return bool(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))


def _worker_main(task: tuple[dict[str, Any], str, str, str, int, int, bool, bool]) -> str:
    """Entry of an extra Optuna worker process (a :class:`tuning.workers.PoolWorkers` task); returns "" or the
    error that ended it (the other workers and this process go on)."""
    import optuna

    raw, name, out_dir, storage_url, worker, workers, verbose, shared = task
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    optuna.logging.set_verbosity(optuna.logging.INFO if verbose else optuna.logging.ERROR)
    try:
        spec = parse_spec(raw, default_name=name)
        worker_loop(spec, Path(out_dir), storage_url, worker, workers, shared=shared)
    except Exception as exc:  # noqa: BLE001 - reported by the parent, like a crashed process's exit code
        return f"{type(exc).__name__}: {exc}"
    return ""


def run_optuna(spec: StudySpec, out_dir: Path, storage_url: str | None, *, workers: int = 1, owns_storage: bool = True,
               on_trial: Callable[[Any], None] | None = None, verbose: bool = False) -> Any:
    """Run the study with ``workers`` processes (this one included); returns the loaded study."""
    import optuna

    if not verbose:
        optuna.logging.set_verbosity(optuna.logging.ERROR)
    url = storage_url or default_storage(out_dir)
    shared = not owns_storage   # a --storage URL may be used by other processes too
    study = open_study(spec, url, shared=shared)
    if owns_storage:
        n = fail_orphans(study)
        if n:
            log.warning("re-queued %d trial(s) left running by an interrupted run", n)
    tasks = [(dict(spec.raw), spec.name, str(out_dir), url, w, workers, verbose, shared) for w in range(1, workers)]
    errors: list[str] = []
    if tasks:
        with PoolWorkers(len(tasks), spec.base) as pool:
            extra = pool.map_unordered(_worker_main, tasks)    # submitted now; they run beside this process
            worker_loop(spec, out_dir, url, 0, workers, on_trial=on_trial, shared=shared)
            errors = [err for _, err in extra if err]
    else:
        worker_loop(spec, out_dir, url, 0, workers, on_trial=on_trial, shared=shared)
    if errors:
        log.warning("%d Optuna worker process(es) stopped with an error: %s", len(errors), "; ".join(errors))
    study = open_study(spec, url, shared=shared)
    TrialsTable(out_dir, spec.space.names, spec.objective.n,
                {p.name: p.type for p in spec.space.params}).replace(rows_from_study(study, spec))
    return study
