"""Optuna as a :class:`~tuning.search.base.Searcher`, through its ask/tell interface: TPE, CMA-ES, NSGA-II, random
(and ``ga`` = NSGA-II's genetic operators for one objective), median/Hyperband pruning on the per-round test
accuracy, any RDB storage (SQLite by default, PostgreSQL for workers on several machines).

* **Budget**: ``optuna.n_trials`` counts finished trials of the study (complete, pruned, and failed evaluations
  such as diverged runs); a re-run continues the numbering and only runs what is missing. Trials that died with
  their process (stale RUNNING trials) do not count: they are failed and re-queued with the same params (at once
  for the run's own SQLite file, after the heartbeat grace period on a shared storage).
* **Params are the evaluated values**: with the NS <= K repair, ``ns`` is suggested define-by-run in
  ``[min(low, K), min(high, K)]`` after ``k`` / ``alpha``, so the stored params never hold an invalid NS and
  ``trials_dataframe()``, ``optuna trials`` and optuna-dashboard show what was simulated. Each metric is also a
  numeric user attribute (``metric_<name>``, finite values only).
* **Pruning** (``pruner``): the loop evaluates in stages of ``prune_every`` rounds, continuing each simulation
  from its saved state; after each stage the first seed's test accuracy of every new round is reported with
  ``trial.report`` (``1 - accuracy`` in a minimised study: Optuna's pruners read intermediate values in the
  study's direction) and ``trial.should_prune()`` decides. Single objective only (Optuna cannot prune
  multi-objective studies).
* **Rounds as a fidelity** (``[fidelity]``): a point stopped at a lower rung is told ``PRUNED`` after its fitness
  at that rung was reported at step = rounds, which is how Optuna's samplers learn from early-stopped trials.
* A failed evaluation ends as ``TrialState.FAIL`` with the reason in the user attr ``fail_reason``.
* **Retried trials** (:class:`RetrySameParams`): a trial left RUNNING is re-queued with its params and the
  distributions this search space asks for them (``ns``'s range follows the trial's K), so re-asking it suggests
  exactly what it stored; an ``ns`` stored above its K (a trial asked outside this space) is re-run as the repair
  evaluates it, ``ns = K``.
* Each trial keeps its trials-table row in the user attr ``qsfl_row`` (and the rows of its lower rungs in
  ``qsfl_rung_rows``): the table is rebuilt from the storage after every batch, so no finished trial is lost if
  a worker is killed between Optuna's commit and the table write, and workers on other machines see each
  other's rows.
* Heartbeats: Optuna records heartbeats only inside ``study.optimize``; with ask/tell this searcher records them
  itself (a thread, every ``heartbeat_interval`` seconds, for the trials being evaluated).
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import threading
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback, fail_stale_trials
from optuna.study import StudyDirection
from optuna.trial import TrialState

from qsfl.errors import ConfigError, check_choice, check_range, check_table, reject_unknown
from tuning.objective import METRICS, Evaluation
from tuning.search.base import Candidate, SearchContext, Searcher, register
from tuning.storage import ENV_PREFIX, open_serialised, redact, resolve_url, storage_kwargs

if TYPE_CHECKING:
    from qsfl.config import SimConfig
    from tuning.space import SearchSpace

log = logging.getLogger(__name__)

ROW_ATTR = "qsfl_row"
RUNG_ROWS_ATTR = "qsfl_rung_rows"
FAIL_ATTR = "fail_reason"
SURPLUS_ATTR = "surplus"
FINGERPRINT_ATTR = "qsfl_fingerprint"
STARTED_ATTR = "qsfl_start_points"
SAMPLERS = ("tpe", "gp", "cmaes", "nsga2", "random", "ga")
PRUNERS = ("none", "median", "hyperband")


# ----- settings: the [optuna] table -------------------------------------------------------------------------
@dataclass(frozen=True)
class OptunaSettings:
    """The ``[optuna]`` table."""

    n_trials: int = 30
    sampler: str = "tpe"
    pruner: str = "none"
    storage: str | None = None          # None -> sqlite:///OUT/study.db
    n_startup_trials: int = 5
    population_size: int = 10           # nsga2 / ga samplers
    warmup_rounds: int = 2              # median pruner: rounds before pruning may start
    prune_every: int = 1                # rounds between two pruning decisions
    batch_size: int = 1                 # trials asked at once (one lockstep batch; at least --workers)
    heartbeat_interval: int = 10        # seconds; 0 disables heartbeats (stale trials then stay RUNNING)
    grace_period: int | None = None     # seconds; None -> 3 * heartbeat_interval


def parse_optuna(table: Mapping[str, Any], n_objectives: int) -> OptunaSettings:
    """Validate the ``[optuna]`` table."""
    fields = tuple(OptunaSettings.__dataclass_fields__)
    reject_unknown("optuna", check_table("optuna", table), fields)
    s = OptunaSettings(**dict(table))
    check_range("optuna.n_trials", s.n_trials, 1, None, integer=True)
    check_choice("optuna.sampler", s.sampler, SAMPLERS)
    check_choice("optuna.pruner", s.pruner, PRUNERS)
    if s.storage is not None and (not isinstance(s.storage, str)
                                  or ("://" not in s.storage and not s.storage.startswith(ENV_PREFIX))):
        raise ConfigError(f"optuna.storage: expected a database URL such as sqlite:///study.db or "
                          f"postgresql://user@host/db, or env:NAME, got {redact(repr(s.storage))}")
    check_range("optuna.n_startup_trials", s.n_startup_trials, 0, None, integer=True)
    check_range("optuna.population_size", s.population_size, 2, None, integer=True)
    check_range("optuna.warmup_rounds", s.warmup_rounds, 0, None, integer=True)
    check_range("optuna.prune_every", s.prune_every, 1, None, integer=True)
    check_range("optuna.batch_size", s.batch_size, 1, None, integer=True)
    check_range("optuna.heartbeat_interval", s.heartbeat_interval, 0, None, integer=True)
    if s.grace_period is not None:
        check_range("optuna.grace_period", s.grace_period, 1, None, integer=True)
    if s.pruner != "none" and n_objectives > 1:
        raise ConfigError(f"optuna.pruner: {s.pruner!r} needs a single objective (Optuna cannot prune "
                          f"multi-objective studies); allowed here: none")
    if s.sampler == "cmaes" and n_objectives > 1:
        raise ConfigError("optuna.sampler: 'cmaes' is single-objective; allowed for several objectives: "
                          "nsga2, ga, tpe, random")
    return s


# ----- storage, sampler, pruner, study ----------------------------------------------------------------------
def _quiet_experimental() -> None:
    """Heartbeats and retries are marked experimental in Optuna; the warning is noise for our users."""
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def default_storage(out_dir: str | Path) -> str:
    """``sqlite:///OUT/study.db``."""
    return f"sqlite:///{Path(out_dir).resolve() / 'study.db'}"


class _Replay:
    """Stands in for an Optuna trial in :meth:`SearchSpace.suggest`: each ``suggest_*`` answers with the stored
    value (clipped into the range asked for) and records the distribution Optuna's own ``suggest_*`` builds."""

    class Missing(Exception):
        """The stored params end here (a trial stopped while it was being asked)."""

    def __init__(self, params: Mapping[str, Any]) -> None:
        self.stored = dict(params)
        self.params: dict[str, Any] = {}
        self.distributions: dict[str, BaseDistribution] = {}

    def _take(self, name: str, dist: BaseDistribution) -> Any:
        if name not in self.stored:
            raise _Replay.Missing(name)
        value = self.stored[name]
        if isinstance(dist, CategoricalDistribution):
            if value not in dist.choices:
                raise _Replay.Missing(name)
        else:
            assert isinstance(dist, (IntDistribution, FloatDistribution))
            value = min(max(value, dist.low), dist.high)
        self.params[name] = value
        self.distributions[name] = dist
        return value

    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1, log: bool = False) -> int:
        return int(self._take(name, IntDistribution(low, high, log=log, step=step)))

    def suggest_float(self, name: str, low: float, high: float, *, step: float | None = None,
                      log: bool = False) -> float:
        return float(self._take(name, FloatDistribution(low, high, log=log, step=step)))

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any:
        return self._take(name, CategoricalDistribution(choices))


def replay_params(space: SearchSpace, base: SimConfig | None,
                  params: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, BaseDistribution]]:
    """(params, distributions) that ``space.suggest`` gives a trial whose stored values are ``params``: each
    value clipped into the distribution asked for it (an ns above its K becomes K); params after a missing one
    are left out (asked afresh when the trial is asked again)."""
    replay = _Replay(params)
    with contextlib.suppress(_Replay.Missing):
        space.suggest(replay, base)
    return replay.params, replay.distributions


class RetrySameParams(RetryHeartbeatStaleTrialCallback):
    """Optuna's retry of a stale trial (a WAITING copy with ``failed_trial`` / ``retry_history``, at most
    ``max_retry`` times), its params and distributions replayed through the search space
    (:func:`replay_params`).

    Optuna copies the stale trial's distributions as they were stored; when they differ from what this space
    asks for the same params (e.g. ns's define-by-run range after K), re-asking the trial warns "Inconsistent
    parameter values for distribution" and evaluates an ns the repair then changes.
    """

    def __init__(self, space: SearchSpace | None = None, base: SimConfig | None = None, max_retry: int = 3) -> None:
        _quiet_experimental()
        super().__init__(max_retry=max_retry)
        self.space = space
        self.base = base

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if self.space is not None:
            trial = copy.deepcopy(trial)
            trial.params, trial.distributions = replay_params(self.space, self.base, trial.params)
        super().__call__(study, trial)


def make_storage(url: str, settings: OptunaSettings, retry: RetrySameParams | None = None) -> RDBStorage:
    """An RDBStorage with heartbeats (stale trials are failed and retried with the same params, by ``retry``).

    Opening an empty database creates Optuna's schema: call this inside :func:`tuning.storage.open_serialised`
    (as :func:`open_study` does) when other processes may open the same database at the same moment.
    """
    _quiet_experimental()
    s = settings
    kwargs: dict[str, Any] = {}
    if s.heartbeat_interval > 0:
        kwargs = dict(heartbeat_interval=s.heartbeat_interval,
                      grace_period=s.grace_period or 3 * s.heartbeat_interval,
                      heartbeat_stale_trial_callback=retry or RetrySameParams())
    return RDBStorage(url, engine_kwargs=storage_kwargs(url), **kwargs)


def storage_error(url: str, exc: Exception) -> ConfigError | None:
    """A one-line ConfigError for a storage that cannot be opened (missing driver, bad or unreachable URL)."""
    if isinstance(exc, ImportError):
        return ConfigError(redact(f"--storage {url}: a database driver is missing ({exc}); e.g. pip install "
                                  f"psycopg2-binary for PostgreSQL"))
    if isinstance(exc, (optuna.exceptions.OptunaError, ValueError)) or "sqlalchemy" in type(exc).__module__:
        return ConfigError(redact(f"--storage {url}: cannot open the storage: {exc}"))   # ValueError: a bad URL
    return None


def sampler_seed(search_seed: int, worker: int, n_existing: int, shared: bool = False) -> int:
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
        return search_seed
    return int(np.random.SeedSequence([search_seed, worker, n_existing]).generate_state(1)[0])


def make_sampler(settings: OptunaSettings, seed: int, liar: bool = False) -> optuna.samplers.BaseSampler:
    """The sampler named in the settings (``liar``: other trials run at the same time: TPE's constant liar)."""
    s = settings
    if s.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=s.n_startup_trials, multivariate=True,
                                          constant_liar=liar)
    if s.sampler == "gp":
        # Gaussian-process Bayesian optimisation for small budgets; a batch's running trials enter its q-batch
        # acquisition (qLogEI), Optuna's own form of the constant liar, so a batch is asked in one go
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=s.n_startup_trials,
                                         warn_independent_sampling=False)
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


def make_pruner(settings: OptunaSettings, rounds: int) -> optuna.pruners.BasePruner:
    """Median, Hyperband (resource = rounds) or none."""
    s = settings
    if s.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=s.n_startup_trials, n_warmup_steps=s.warmup_rounds)
    if s.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=rounds, reduction_factor=3)
    return optuna.pruners.NopPruner()


def study_directions(directions: Sequence[str]) -> list[StudyDirection]:
    """Directions as Optuna's StudyDirection values."""
    return [StudyDirection.MAXIMIZE if d == "maximize" else StudyDirection.MINIMIZE for d in directions]


def open_study(spec: Any, storage_url: str, worker: int = 0, workers: int = 1, shared: bool = True,
               start_points: Sequence[Mapping[str, Any]] = ()) -> optuna.Study:
    """Create or load (load_if_exists) the study of a StudySpec; a different spec under the same name is an error.

    ``shared``: other ``qsfl tune`` processes may use this storage (any --storage URL): each process then gets
    its own sampler entropy. Only the run's own default SQLite file is not shared (deterministic).
    """
    settings: OptunaSettings = spec.optuna
    fingerprint = spec.fingerprint
    return _open(spec.name, settings, storage_url, spec.objective.directions, spec.objective.describe(),
                 spec.space.names, fingerprint, spec.base.rounds, spec.study.search_seed, worker=worker,
                 liar=workers > 1 or shared, shared=shared, start_points=start_points,
                 retry=RetrySameParams(spec.space, spec.base))[0]


def _open(name: str, settings: OptunaSettings, url: str, directions: Sequence[str], objectives: list[str],
          names: list[str], fingerprint: str, rounds: int, search_seed: int, *, worker: int = 0,
          liar: bool = False, shared: bool = True, start_points: Sequence[Mapping[str, Any]] = (),
          retry: RetrySameParams | None = None) -> tuple[optuna.Study, RDBStorage]:
    holder: dict[str, RDBStorage] = {}
    url = resolve_url(url)

    def create() -> optuna.Study:
        storage = make_storage(url, settings, retry)
        holder["storage"] = storage
        study = optuna.create_study(storage=storage, study_name=name, pruner=make_pruner(settings, rounds),
                                    directions=study_directions(directions), load_if_exists=True)
        if [d.name.lower() for d in study.directions] != list(directions):
            raise ConfigError(f"study.name: the storage already holds a study {name!r} with directions "
                              f"{[d.name.lower() for d in study.directions]}; choose another study.name")
        old = study.user_attrs.get(FINGERPRINT_ATTR)
        if old is None:
            study.set_user_attr(FINGERPRINT_ATTR, fingerprint)
            study.set_user_attr("objectives", objectives)
            study.set_user_attr("search_space", names)
        elif old != fingerprint:
            raise ConfigError(f"study.name: the storage already holds a study {name!r} run with a different "
                              f"spec (only optuna.n_trials may change on resume); choose another study.name or --out")
        # the start points are queued once per study, inside the creation lock: workers that open a fresh study
        # together never queue them twice
        if start_points and not study.user_attrs.get(STARTED_ATTR) and not study.get_trials(deepcopy=False):
            for params in start_points:
                study.enqueue_trial(dict(params), user_attrs={"start_point": True})
            study.set_user_attr(STARTED_ATTR, True)
        return study

    try:
        study = open_serialised(url, create)
    except ConfigError:
        raise
    except Exception as exc:
        error = storage_error(url, exc)
        if error is None:
            raise
        raise error from None
    n_existing = len(study.get_trials(deepcopy=False))
    study.sampler = make_sampler(settings, sampler_seed(search_seed, worker, n_existing, shared), liar)
    return study, holder["storage"]


def counted(trial: optuna.trial.FrozenTrial) -> bool:
    """Does a trial count toward n_trials? (complete, pruned, or failed as an evaluation)."""
    if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    return trial.state == TrialState.FAIL and FAIL_ATTR in trial.user_attrs


def budget_used(study: optuna.Study) -> tuple[int, int]:
    """(finished trials that count, trials in flight: running or queued)."""
    trials = study.get_trials(deepcopy=False)
    done = sum(1 for t in trials if counted(t))
    active = sum(1 for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING))
    return done, active


def fail_orphans(study: optuna.Study, retry: RetrySameParams | None = None) -> int:
    """Fail and re-queue (by ``retry``) RUNNING trials left by a killed process (only when this run owns the
    storage)."""
    n = 0
    retry = retry or RetrySameParams()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(t.number, state=TrialState.FAIL)
        frozen = next(f for f in study.get_trials(deepcopy=True) if f.number == t.number)
        retry(study, frozen)
        n += 1
    return n


def rows_from_study(study: optuna.Study) -> list[dict[str, Any]]:
    """The trials table of a study: the stored rows of every finished trial that counts, by trial number."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        if not counted(t) or ROW_ATTR not in t.user_attrs:
            continue
        row = json.loads(t.user_attrs[ROW_ATTR])
        row["trial"] = t.number
        allowed = {TrialState.COMPLETE: ("complete",), TrialState.PRUNED: ("pruned", "complete"),
                   TrialState.FAIL: ("failed",)}[t.state]
        if row["state"] not in allowed:   # e.g. killed between writing the row and telling Optuna
            continue
        for lower in json.loads(t.user_attrs.get(RUNG_ROWS_ATTR, "[]")):
            lower["trial"] = t.number
            rows.append(lower)
        rows.append(row)
    rows.sort(key=lambda r: (r["trial"], r.get("rounds", 0)))
    return rows


# ----- heartbeats for ask/tell ------------------------------------------------------------------------------
class Heartbeat:
    """Records a heartbeat for every trial being evaluated, every ``interval`` seconds, in a daemon thread."""

    def __init__(self, storage: RDBStorage, study_name: str, interval: int) -> None:
        self.storage = storage
        self.interval = interval
        self.study_id = storage.get_study_id_from_name(study_name)
        self.trial_ids: set[int] = set()
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="qsfl-heartbeat", daemon=True)
        self.thread.start()

    def add(self, number: int) -> None:
        trial_id = self.storage.get_trial_id_from_study_id_trial_number(self.study_id, number)
        self.storage.record_heartbeat(trial_id)
        with self.lock:
            self.trial_ids.add(trial_id)

    def remove(self, number: int) -> None:
        trial_id = self.storage.get_trial_id_from_study_id_trial_number(self.study_id, number)
        with self.lock:
            self.trial_ids.discard(trial_id)

    def _run(self) -> None:
        while not self.stop.wait(self.interval):
            with self.lock:
                ids = list(self.trial_ids)
            for trial_id in ids:
                try:
                    self.storage.record_heartbeat(trial_id)
                except Exception as exc:  # noqa: BLE001 - a missed beat only risks a retry of the trial
                    log.debug("heartbeat of trial %d failed: %s", trial_id, exc)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)


# ----- the searcher ---------------------------------------------------------------------------------------
@register
class OptunaSearcher(Searcher):
    """Optuna's samplers and pruners through ask/tell; the storage holds the trials (and so the checkpoint)."""

    name = "optuna"
    section = "optuna"
    settings_type = OptunaSettings
    resumable_keys = ("n_trials", "storage", "batch_size")
    owns_trials = True

    def __init__(self, settings: OptunaSettings, ctx: SearchContext) -> None:
        super().__init__(settings, ctx)
        self.url = ctx.storage or (settings.storage and resolve_url(settings.storage, "optuna.storage"))
        self.owns_storage = self.url is None
        if self.url is None:
            assert ctx.out_dir is not None
            self.url = default_storage(ctx.out_dir)
        self.shared = not self.owns_storage
        self.trials: dict[int, optuna.trial.Trial] = {}
        self.reported: dict[int, int] = {}          # trial number -> last round reported to the pruner
        self.prune = settings.pruner != "none" and ctx.objective.n == 1
        self.study: optuna.Study | None = None
        self.storage: RDBStorage | None = None
        self.heartbeat: Heartbeat | None = None

    @classmethod
    def parse_settings(cls, table: Mapping[str, Any], *, dim: int, n_objectives: int,
                       rounds: int) -> OptunaSettings:
        return parse_optuna(table, n_objectives)

    # ----- opening --------------------------------------------------------------------------------------
    def start(self, points: Sequence[Mapping[str, Any]]) -> None:
        self._open(points)

    def _open(self, start_points: Sequence[Mapping[str, Any]] = ()) -> optuna.Study:
        if self.study is None:
            optuna.logging.set_verbosity(optuna.logging.WARNING if log.isEnabledFor(logging.DEBUG)
                                         else optuna.logging.ERROR)
            ctx = self.ctx
            assert self.url is not None
            retry = RetrySameParams(ctx.space, ctx.base)
            self.study, self.storage = _open(
                ctx.name, self.settings, self.url, ctx.objective.directions, ctx.objective.describe(),
                ctx.space.names, ctx.fingerprint, ctx.base.rounds, ctx.seed,
                liar=ctx.workers > 1 or self.shared or self.batch_size() > 1, shared=self.shared,
                start_points=start_points, retry=retry)
            if self.owns_storage:
                n = fail_orphans(self.study, retry)
                if n:
                    log.warning("re-queued %d trial(s) left running by an interrupted run", n)
            if self.settings.heartbeat_interval > 0:
                self.heartbeat = Heartbeat(self.storage, ctx.name, self.settings.heartbeat_interval)
        return self.study

    def batch_size(self) -> int:
        return max(self.settings.batch_size, self.ctx.workers)

    # ----- ask / tell -----------------------------------------------------------------------------------
    def ask(self, n: int) -> list[Candidate]:
        study = self._open()
        fail_stale_trials(study)
        out = []
        for _ in range(max(n, 1)):
            done, active = budget_used(study)
            waiting = bool(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
            if done + active >= self.settings.n_trials and not waiting:
                break
            with warnings.catch_warnings():
                # Optuna warns that heartbeats belong to Study.optimize; this searcher records them itself
                warnings.filterwarnings("ignore", message="Heartbeat of storage", category=UserWarning)
                trial = study.ask()
            if self._surplus(study, trial.number):
                trial.set_user_attr(SURPLUS_ATTR, True)
                study.tell(trial, state=TrialState.FAIL)
                break
            params = self.ctx.space.suggest(trial, self.ctx.base)
            self.trials[trial.number] = trial
            if self.heartbeat is not None:
                self.heartbeat.add(trial.number)
            out.append(Candidate(params, trial=trial.number, token=trial.number,
                                 start=bool(trial.user_attrs.get("start_point"))))
        return out

    def _surplus(self, study: optuna.Study, number: int) -> bool:
        """Another worker already started the last trial of the budget (a race): skip this one."""
        before = [t for t in study.get_trials(deepcopy=False) if t.number < number]
        used = sum(1 for t in before if counted(t) or t.state in (TrialState.RUNNING, TrialState.WAITING))
        return used >= self.settings.n_trials

    def record(self, candidate: Candidate, rows: Sequence[Mapping[str, Any]]) -> None:
        """Store the candidate's rows in its trial: the last in ``qsfl_row``, lower rungs in ``qsfl_rung_rows``."""
        trial = self.trials[int(candidate.token)]
        if len(rows) > 1:
            trial.set_user_attr(RUNG_ROWS_ATTR, json.dumps([dict(r) for r in rows[:-1]]))
        if rows:
            trial.set_user_attr(ROW_ATTR, json.dumps(dict(rows[-1])))

    def tell(self, candidates: Sequence[Candidate], evaluations: Sequence[Evaluation]) -> None:
        study = self._open()
        for cand, ev in zip(candidates, evaluations):
            trial = self.trials.pop(int(cand.token))
            self.reported.pop(trial.number, None)
            self._store(trial, ev)
            if ev.state == "failed":
                trial.set_user_attr(FAIL_ATTR, ev.reason)
                log.info("trial %d failed: %s", trial.number, ev.reason)
                study.tell(trial, state=TrialState.FAIL)
            elif ev.state == "pruned" or ev.rounds < self.ctx.base.rounds:
                study.tell(trial, state=TrialState.PRUNED)
            else:
                study.tell(trial, list(ev.fitness) if len(ev.fitness) > 1 else ev.fitness[0])
            if self.heartbeat is not None:
                self.heartbeat.remove(trial.number)

    def _store(self, trial: optuna.trial.Trial, ev: Evaluation) -> None:
        trial.set_user_attr("params_evaluated", ev.params)
        if ev.repair:
            trial.set_user_attr("repair", ev.repair)
        for name in METRICS:
            value = ev.metrics.get(name, math.nan)
            if isinstance(value, float) and math.isfinite(value):
                trial.set_user_attr(f"metric_{name}", value)
        trial.set_user_attr("rounds", int(ev.rounds))

    def report_rung(self, candidate: Candidate, ev: Evaluation) -> None:
        """[fidelity]: the fitness at a rung as the intermediate value at step = rounds (single objective)."""
        if self.ctx.objective.n == 1 and ev.ok:
            self.trials[int(candidate.token)].report(float(ev.fitness[0]), int(ev.rounds))

    def prune_stages(self, rounds: int) -> list[int]:
        if not self.prune:
            return []
        return list(range(self.settings.prune_every, rounds, self.settings.prune_every))

    def should_prune(self, candidate: Candidate, curve: Sequence[tuple[int, float]]) -> bool:
        trial = self.trials[int(candidate.token)]
        maximise = self.ctx.objective.directions[0] == "maximize"
        reported = False
        last = self.reported.get(trial.number, -1)
        for rnd, acc in curve:
            if acc != acc or rnd <= last:    # a stage re-simulated from round 0 repeats earlier rounds
                continue
            last = rnd
            # Optuna's pruners read intermediate values in the study's direction
            trial.report(float(acc) if maximise else 1.0 - float(acc), int(rnd))
            reported = True
        self.reported[trial.number] = last
        return reported and trial.should_prune()

    def rows(self) -> list[dict[str, Any]]:
        return rows_from_study(self._open())

    def state(self) -> dict[str, Any]:
        return {}

    def restore(self, state: Any) -> None:
        """The storage is the checkpoint: trials left running are re-queued when the study is opened."""

    def finished(self) -> bool:
        study = self._open()
        done, active = budget_used(study)
        waiting = bool(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
        return done >= self.settings.n_trials or (done + active >= self.settings.n_trials and not waiting)

    def expected_evaluations(self) -> int:
        return self.settings.n_trials

    def progress(self) -> tuple[int, int | None]:
        done, _ = budget_used(self._open())
        return done, self.settings.n_trials

    def best_values(self) -> list[float] | None:
        """The best value so far (single objective), None when there is none."""
        study = self._open()
        if self.ctx.objective.n != 1:
            return None
        try:
            return [float(study.best_value)]
        except ValueError:
            return None

    def close(self) -> None:
        if self.heartbeat is not None:
            self.heartbeat.close()
            self.heartbeat = None

