"""TOML study spec -> validated, frozen objects. Unknown keys are errors naming the key and the valid keys.

Layout (see ``studies/*.toml`` and docs/tuning.md)::

    [study]      name, engine = "ga" | "optuna", seeds = [0], eval_seeds = [100, 101], search_seed = 0
    [base]       a SimConfig table (with [base.strategy]); the strategy defaults to qsfl
    [space.<p>]  low, high, type, log, step, key    (+ [space] constraint = "repair" | "penalty")
    [objective]  weights | formula | objectives, direction(s), constraint, penalty
    [ga]         population, generations, cxpb, mutpb, crossover, mutation, eta, ...
    [optuna]     n_trials, sampler, pruner, storage, ...
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qsfl.config import SimConfig, load_toml, parse_assignments
from qsfl.errors import (
    ConfigError,
    check_bool,
    check_choice,
    check_range,
    check_table,
    reject_unknown,
)
from tuning.objective import Objective, build_objective
from tuning.space import SearchSpace, build_space
from tuning.workers import check_cluster

ENGINES = ("ga", "optuna")
SECTIONS = ("study", "base", "space", "objective", "ga", "optuna")
STUDY_KEYS = ("name", "engine", "seeds", "eval_seeds", "search_seed", "description", "save_histories", "workers",
              "cluster")
CROSSOVERS = ("sbx", "blend")
MUTATIONS = ("polynomial", "gaussian")
SAMPLERS = ("tpe", "cmaes", "nsga2", "random", "ga")
PRUNERS = ("none", "median", "hyperband")


@dataclass(frozen=True)
class StudyInfo:
    """The ``[study]`` table."""

    name: str
    engine: str = "ga"
    seeds: tuple[int, ...] = (0,)
    eval_seeds: tuple[int, ...] = (100, 101, 102)
    search_seed: int = 0
    description: str = ""
    save_histories: bool = True
    workers: int = 1              # default for --workers
    cluster: str | None = None    # default for --cluster: "local:N" or a Dask scheduler address


@dataclass(frozen=True)
class GASettings:
    """The ``[ga]`` table; genes live in [0, 1], so eta/sigma are in gene units."""

    population: int = 10
    generations: int = 5
    cxpb: float = 0.7
    mutpb: float = 0.3
    crossover: str = "sbx"
    mutation: str = "polynomial"
    eta: float = 15.0             # SBX crowding degree
    mut_eta: float = 20.0         # polynomial mutation crowding degree
    indpb: float | None = None    # per-gene mutation probability; None -> 1 / dimension
    sigma: float = 0.1            # gaussian mutation std (gene units)
    blend_alpha: float = 0.5
    tournament_size: int = 3
    elitism: int = 1
    nsga2: bool | None = None     # None -> True exactly when there are several objectives
    hof_size: int = 5


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
    heartbeat_interval: int = 10        # seconds; 0 disables heartbeats (stale trials then stay RUNNING)
    grace_period: int | None = None     # seconds; None -> 3 * heartbeat_interval


@dataclass(frozen=True)
class StudySpec:
    """A validated study spec; ``raw`` is the TOML dict as run (after --set overrides)."""

    study: StudyInfo
    base: SimConfig
    space: SearchSpace
    objective: Objective
    ga: GASettings
    optuna: OptunaSettings
    raw: Mapping[str, Any]

    @property
    def name(self) -> str:
        return self.study.name


def _check_keys(where: str, table: Any, valid: tuple[str, ...]) -> dict[str, Any]:
    reject_unknown(where, check_table(where, table), valid)
    return dict(table)


def _seed_list(where: str, value: Any, *, allow_empty: bool = False) -> tuple[int, ...]:
    if not isinstance(value, list) or (not value and not allow_empty):
        raise ConfigError(f"{where}: expected a {'' if allow_empty else 'non-empty '}list of seeds (integers >= 0), "
                          f"got {value!r}")
    for i, s in enumerate(value):
        check_range(f"{where}[{i}]", s, 0, 2**63 - 1, integer=True)
    if len(set(value)) != len(value):
        raise ConfigError(f"{where}: seeds must be distinct, got {value!r}")
    return tuple(value)


def _study(table: Any, default_name: str) -> StudyInfo:
    t = _check_keys("study", table, STUDY_KEYS)
    name = t.get("name", default_name)
    if not isinstance(name, str) or not name.strip() or "/" in name:
        raise ConfigError(f"study.name: expected a non-empty name without '/', got {name!r}")
    engine = t.get("engine", "ga")
    check_choice("study.engine", engine, ENGINES)
    seeds = _seed_list("study.seeds", t.get("seeds", [0]))
    eval_seeds = _seed_list("study.eval_seeds", t.get("eval_seeds", [100, 101, 102]), allow_empty=True)
    overlap = sorted(set(seeds) & set(eval_seeds))
    if overlap:
        raise ConfigError(f"study.eval_seeds: {overlap} also in study.seeds; re-evaluation seeds must not be "
                          f"used by the search")
    search_seed = t.get("search_seed", 0)
    check_range("study.search_seed", search_seed, 0, 2**32 - 1, integer=True)
    description = t.get("description", "")
    if not isinstance(description, str):
        raise ConfigError(f"study.description: expected a string, got {description!r}")
    save = t.get("save_histories", True)
    check_bool("study.save_histories", save)
    workers = t.get("workers", 1)
    check_range("study.workers", workers, 1, None, integer=True)
    cluster = t.get("cluster")
    if cluster is not None:
        check_cluster("study.cluster", cluster)
    return StudyInfo(name=name, engine=engine, seeds=seeds, eval_seeds=eval_seeds, search_seed=search_seed,
                     description=description, save_histories=save, workers=workers, cluster=cluster)


def parse_base(table: Any) -> SimConfig:
    """The spec's [base] table as a validated SimConfig ([base.strategy] defaults to name = "qsfl")."""
    if not isinstance(table, Mapping):
        raise ConfigError(f"base: expected a table of SimConfig fields, got {table!r}")
    data = copy.deepcopy(dict(table))
    strategy = data.get("strategy", {})
    if isinstance(strategy, Mapping):
        data["strategy"] = {"name": "qsfl", **strategy}
    try:
        return SimConfig.from_dict(data)
    except ConfigError as exc:
        raise ConfigError(f"base.{exc}") from None
    except TypeError as exc:  # e.g. a wrongly typed nested table
        raise ConfigError(f"base: {exc}") from None


def _ga(table: Any, dim: int, n_objectives: int) -> GASettings:
    fields = GASettings.__dataclass_fields__
    t = _check_keys("ga", table, tuple(fields))
    s = GASettings(**t)
    check_range("ga.population", s.population, 2, None, integer=True)
    check_range("ga.generations", s.generations, 0, None, integer=True)
    check_range("ga.cxpb", s.cxpb, 0.0, 1.0)
    check_range("ga.mutpb", s.mutpb, 0.0, 1.0)
    check_choice("ga.crossover", s.crossover, CROSSOVERS)
    check_choice("ga.mutation", s.mutation, MUTATIONS)
    check_range("ga.eta", s.eta, 0.0, None, lo_open=True)
    check_range("ga.mut_eta", s.mut_eta, 0.0, None, lo_open=True)
    if s.indpb is not None:
        check_range("ga.indpb", s.indpb, 0.0, 1.0)
    check_range("ga.sigma", s.sigma, 0.0, None, lo_open=True)
    check_range("ga.blend_alpha", s.blend_alpha, 0.0, None)
    check_range("ga.tournament_size", s.tournament_size, 1, None, integer=True)
    check_range("ga.elitism", s.elitism, 0, s.population - 1, integer=True)
    check_range("ga.hof_size", s.hof_size, 1, None, integer=True)
    if s.nsga2 is not None:
        check_bool("ga.nsga2", s.nsga2)
        if not s.nsga2 and n_objectives > 1:
            raise ConfigError(f"ga.nsga2: false, but the objective has {n_objectives} objectives; allowed: true "
                              f"(several objectives need NSGA-II), or one objective")
    nsga2 = (n_objectives > 1) if s.nsga2 is None else s.nsga2
    return GASettings(**{**s.__dict__, "nsga2": nsga2})


def _optuna(table: Any, n_objectives: int) -> OptunaSettings:
    fields = OptunaSettings.__dataclass_fields__
    t = _check_keys("optuna", table, tuple(fields))
    s = OptunaSettings(**t)
    check_range("optuna.n_trials", s.n_trials, 1, None, integer=True)
    check_choice("optuna.sampler", s.sampler, SAMPLERS)
    check_choice("optuna.pruner", s.pruner, PRUNERS)
    if s.storage is not None and (not isinstance(s.storage, str) or "://" not in s.storage):
        raise ConfigError(f"optuna.storage: expected a database URL such as sqlite:///study.db or "
                          f"postgresql://user@host/db, got {s.storage!r}")
    check_range("optuna.n_startup_trials", s.n_startup_trials, 0, None, integer=True)
    check_range("optuna.population_size", s.population_size, 2, None, integer=True)
    check_range("optuna.warmup_rounds", s.warmup_rounds, 0, None, integer=True)
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


def parse_spec(raw: Mapping[str, Any], default_name: str = "study") -> StudySpec:
    """Validate a spec dict (as read from TOML) into a StudySpec."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"spec: expected a table, got {type(raw).__name__}")
    reject_unknown("", raw, SECTIONS, what="section")
    for key in ("base", "space", "objective"):
        if key not in raw:
            raise ConfigError(f"{key}: missing section; a study spec needs [base], [space.<param>] and [objective]")
    study = _study(raw.get("study", {}), default_name)
    base = parse_base(raw["base"])
    space = build_space(raw["space"], base)
    objective = build_objective(raw["objective"])
    ga = _ga(raw.get("ga", {}), space.dim, objective.n)
    opt = _optuna(raw.get("optuna", {}), objective.n)
    return StudySpec(study=study, base=base, space=space, objective=objective, ga=ga, optuna=opt,
                     raw=copy.deepcopy(dict(raw)))


def set_spec_value(raw: dict[str, Any], key: str, value: Any) -> None:
    """Set ``raw[a][b][c] = value`` for ``--set a.b.c=value`` (validation happens in parse_spec)."""
    parts = key.split(".")
    if not key or any(not p for p in parts):
        raise ConfigError(f"--set {key!r}: expected section.key=value, e.g. ga.population=4 or base.rounds=3")
    reject_unknown("", [parts[0]], SECTIONS, what="section", owner=f"in --set {key}")
    node = raw
    for part in parts[:-1]:
        nxt = node.setdefault(part, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"--set {key}: {part!r} is not a table")
        node = nxt
    node[parts[-1]] = value


def load_spec(path: str | Path, overrides: list[str] | None = None) -> StudySpec:
    """Read and validate a TOML study spec, applying ``--set key=value`` overrides first."""
    path = Path(path)
    raw = load_toml(path)
    if not raw:
        raise ConfigError(f"{path}: empty study spec; it needs [base], [space.<param>] and [objective]")
    for key, value in parse_assignments(overrides or []).items():
        set_spec_value(raw, key, value)
    return parse_spec(raw, default_name=path.stem)


def spec_fingerprint(spec: StudySpec) -> str:
    """A hash of what determines a study's results (used to refuse resuming a changed spec)."""
    import hashlib
    import json

    # a longer run (more generations / trials) or another storage URL may resume the same study
    skip = {"study": ("description", "eval_seeds", "save_histories", "workers", "cluster"), "ga": ("generations",),
            "optuna": ("n_trials", "storage")}
    data = {section: ({k: v for k, v in table.items() if k not in skip[section]}
                      if section in skip and isinstance(table, Mapping) else table)
            for section, table in spec.raw.items()}
    return hashlib.sha1(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def indpb_for(settings: GASettings, dim: int) -> float:
    """The per-gene mutation probability (1 / dimension unless given)."""
    return settings.indpb if settings.indpb is not None else 1.0 / max(dim, 1)

