"""TOML study spec -> validated, frozen objects. Unknown keys are errors naming the key and the valid keys.

Layout (see ``studies/*.toml`` and docs/tuning.md)::

    [study]      name, engine = "ga" | "optuna" | "random" | "grid", seeds, eval_seeds, search_seed,
                 population_batch, start_defaults, [[study.start]], time_budget_s, ...
    [base]       a SimConfig table (with [base.strategy]); the strategy defaults to qsfl
    [space.<p>]  low, high, type, log, step, key    (+ [space] constraint = "repair" | "penalty")
    [objective]  weights | formula | objectives, direction(s), constraint, penalty
    [fidelity]   min_rounds, eta, batch (successive halving over rounds; absent = off)
    [metrics]    oscillation_warmup, oscillation_threshold, slowdown, curves (tuning.objective.MetricSettings)
    [ga] [optuna] [random] [grid]   each searcher's own table (tuning/search/<name>.py); a grid study has
                 [grid] instead of [space], [fidelity] and [validation], and [objective] is optional
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
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
from tuning.objective import MetricSettings, Objective, build_objective, parse_metric_settings
from tuning.search import searchers
from tuning.search.fidelity import FidelitySettings, parse_fidelity
from tuning.search.grid import build_grid_space, parse_grid_settings
from tuning.space import SearchSpace, build_space
from tuning.validation import VALIDATION_KEYS, ValidationSettings, auto_seeds, parse_validation
from tuning.workers import check_cluster

BASE_SECTIONS = ("study", "base", "space", "objective")
# the test seeds of `qsfl compare` and the benchmarks when a spec names none: five, so a t interval means something
DEFAULT_EVAL_SEEDS = (100, 101, 102, 103, 104)
FIRST_RACE_SEED = 300         # racing's extra seeds: the smallest from here that are not search or test seeds
DEFAULT_MAX_SEEDS = 3         # racing on by default: incumbents are confirmed on at least three seeds
# a grid's fitness column when its spec has no [objective] (there is nothing to choose; written into spec.toml)
GRID_OBJECTIVE = {"formula": "final_accuracy", "direction": "maximize"}
STUDY_KEYS = ("name", "engine", "seeds", "eval_seeds", "search_seed", "description", "save_histories", "workers",
              "population_batch", "start_defaults", "start", "time_budget_s", "cluster", "max_seeds", "incumbents")
# keys that may change when a study is resumed (a longer run, another storage URL, more workers, a cluster)
RESUMABLE_STUDY_KEYS = ("description", "eval_seeds", "save_histories", "workers", "time_budget_s", "cluster")


def sections() -> tuple[str, ...]:
    """Every section a spec may have: the study's own and one per registered searcher."""
    return BASE_SECTIONS + tuple(cls.section for cls in searchers().values()) + ("fidelity", "validation", "metrics")


@dataclass(frozen=True)
class StudyInfo:
    """The ``[study]`` table."""

    name: str
    engine: str = "ga"
    seeds: tuple[int, ...] = (0,)
    eval_seeds: tuple[int, ...] = DEFAULT_EVAL_SEEDS
    search_seed: int = 0
    description: str = ""
    save_histories: bool = True
    workers: int = 1              # default for --workers
    population_batch: bool = True  # lockstep simulation of a batch's configs (qsfl.simulate_many)
    start_defaults: bool = True    # evaluate the authors' defaults first (in the GA's first population)
    start: tuple[Mapping[str, Any], ...] = ()   # further start points ([[study.start]] tables)
    time_budget_s: float | None = None           # stop asking new points after this much compute time
    max_seeds: int = 0            # racing: a point entering the incumbents is simulated on up to this many seeds
    incumbents: int = 3           # racing: how many incumbents a challenger must beat (the best, on shared seeds)
    cluster: str | None = None    # default for --cluster: "local:N" or a Dask scheduler address

    @property
    def race_seeds(self) -> tuple[int, ...]:
        """The seeds a point can be raced on: ``seeds``, then automatic extra seeds up to ``max_seeds``."""
        extra = max(self.max_seeds - len(self.seeds), 0)
        return (*self.seeds, *auto_seeds(self.seeds, self.eval_seeds, n=extra, first=FIRST_RACE_SEED))


@dataclass(frozen=True)
class StudySpec:
    """A validated study spec; ``raw`` is the TOML dict as run (after --set overrides)."""

    study: StudyInfo
    base: SimConfig
    space: SearchSpace
    objective: Objective
    settings: Mapping[str, Any]           # searcher name -> its parsed [section] settings
    fidelity: FidelitySettings | None
    raw: Mapping[str, Any]
    fingerprint: str = ""
    validation: ValidationSettings = field(default_factory=ValidationSettings)
    metrics: MetricSettings = field(default_factory=MetricSettings)

    @property
    def name(self) -> str:
        return self.study.name

    @property
    def searcher_settings(self) -> Any:
        """The settings of the study's own searcher (``study.engine``)."""
        return self.settings[self.study.engine]

    @property
    def ga(self) -> Any:
        return self.settings["ga"]

    @property
    def optuna(self) -> Any:
        return self.settings["optuna"]


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
    check_choice("study.engine", engine, tuple(searchers()))
    grid = engine == "grid"   # a grid runs every point on study.seeds: no racing, no start points
    seeds = _seed_list("study.seeds", t.get("seeds", [0]))
    eval_seeds = _seed_list("study.eval_seeds", t.get("eval_seeds", list(DEFAULT_EVAL_SEEDS)), allow_empty=True)
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
    batch = t.get("population_batch", True)
    check_bool("study.population_batch", batch)
    start_defaults = t.get("start_defaults", not grid)
    check_bool("study.start_defaults", start_defaults)
    start = t.get("start", [])
    if not isinstance(start, list) or not all(isinstance(p, Mapping) for p in start):
        raise ConfigError(f"study.start: expected [[study.start]] tables of searched params, got {start!r}")
    if grid and (start_defaults or start):
        raise ConfigError(f"study.{'start_defaults' if start_defaults else 'start'}: not for a grid study "
                          "(study.engine = \"grid\" evaluates exactly its [grid] points); allowed: false / none")
    budget = t.get("time_budget_s")
    if budget is not None:
        check_range("study.time_budget_s", budget, 0.0, None, lo_open=True)
    cluster = t.get("cluster")
    if cluster is not None:
        check_cluster("study.cluster", cluster)
    max_seeds = t.get("max_seeds", len(seeds) if grid else max(DEFAULT_MAX_SEEDS, len(seeds)))
    check_range("study.max_seeds", max_seeds, len(seeds), len(seeds) if grid else 64, integer=True)
    incumbents = t.get("incumbents", 3)
    check_range("study.incumbents", incumbents, 1, None, integer=True)
    return StudyInfo(name=name, engine=engine, seeds=seeds, eval_seeds=eval_seeds, search_seed=search_seed,
                     max_seeds=int(max_seeds), incumbents=int(incumbents),
                     description=description, save_histories=save, workers=workers, population_batch=batch,
                     start_defaults=start_defaults, start=tuple(dict(p) for p in start),
                     time_budget_s=float(budget) if budget is not None else None, cluster=cluster)


def _start_points(study: StudyInfo, space: SearchSpace, base: SimConfig) -> None:
    """Every [[study.start]] point names searched params with values inside their bounds."""
    for i, point in enumerate(study.start):
        where = f"study.start[{i}]"
        reject_unknown(where, point, space.names, what="param")
        for p in space.params:
            if p.name in point:
                p.check_value(f"{where}.{p.name}", point[p.name])


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


def parse_spec(raw: Mapping[str, Any], default_name: str = "study") -> StudySpec:
    """Validate a spec dict (as read from TOML) into a StudySpec."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"spec: expected a table, got {type(raw).__name__}")
    reject_unknown("", raw, sections(), what="section")
    study = _study(raw.get("study", {}), default_name)
    grid = study.engine == "grid"
    if grid:
        _check_grid_sections(raw)
        raw = {**raw, "objective": raw.get("objective", GRID_OBJECTIVE)}   # spec.toml says what fitness means
    for key in ("base",) if grid else ("base", "space", "objective"):
        if key not in raw:
            raise ConfigError(f"{key}: missing section; a study spec needs [base], [space.<param>] and [objective]"
                              + (" (a grid study: [base] and [grid])" if grid else ""))
    base = parse_base(raw["base"])
    space = build_grid_space(parse_grid_settings(raw["grid"]), base) if grid else build_space(raw["space"], base)
    _start_points(study, space, base)
    objective = build_objective(raw["objective"])
    settings = {name: cls.parse_settings(raw.get(cls.section, {}), dim=space.dim, n_objectives=objective.n,
                                         rounds=base.rounds)
                for name, cls in searchers().items()}
    fidelity = parse_fidelity(raw["fidelity"], base.rounds, base.eval_every) if "fidelity" in raw else None
    if fidelity is not None and study.engine == "optuna" and settings["optuna"].pruner != "none":
        raise ConfigError(f"optuna.pruner: {settings['optuna'].pruner!r} and [fidelity] both stop evaluations "
                          f"early; allowed with [fidelity]: none")
    validation = parse_validation(raw.get("validation"), study.race_seeds, study.eval_seeds) if not grid \
        else ValidationSettings(enabled=False)
    metrics = parse_metric_settings(raw.get("metrics"), slowdown=grid or "slowdown" in objective.names, curves=grid)
    if "slowdown" in objective.names and not metrics.slowdown:
        raise ConfigError("metrics.slowdown: false, but the objective uses slowdown (it needs the FedAvg reference "
                          "runs); allowed with this objective: true")
    spec = StudySpec(study=study, base=base, space=space, objective=objective, settings=settings,
                     fidelity=fidelity, raw=copy.deepcopy(dict(raw)), validation=validation, metrics=metrics)
    return StudySpec(**{**spec.__dict__, "fingerprint": _fingerprint(spec.raw)})


def _check_grid_sections(raw: Mapping[str, Any]) -> None:
    """A grid study has [grid] and none of the search's sections (its points are the grid's; nothing to choose)."""
    if "grid" not in raw:
        raise ConfigError("grid: missing section; study.engine = \"grid\" needs [grid.factors] and/or [grid.arms]")
    for key, why in (("space", "its points are the [grid] factors"), ("fidelity", "every point runs base.rounds"),
                     ("validation", "there is nothing to choose")):
        if key in raw:
            raise ConfigError(f"{key}: not for a grid study (study.engine = \"grid\"): {why}; remove [{key}]")


def set_spec_value(raw: dict[str, Any], key: str, value: Any) -> None:
    """Set ``raw[a][b][c] = value`` for ``--set a.b.c=value`` (validation happens in parse_spec)."""
    parts = key.split(".")
    if not key or any(not p for p in parts):
        raise ConfigError(f"--set {key!r}: expected section.key=value, e.g. ga.population=4 or base.rounds=3")
    reject_unknown("", [parts[0]], sections(), what="section", owner=f"in --set {key}")
    node = raw
    for part in parts[:-1]:
        nxt = node.setdefault(part, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"--set {key}: {part!r} is not a table")
        node = nxt
    node[parts[-1]] = value


DATA_PATH_OPTIONS = ("path", "train_path", "test_path")


def resolve_data_paths(raw: Mapping[str, Any], spec_dir: Path) -> None:
    """Make the relative dataset paths of ``[base.dataset_options]`` relative to the spec's directory (in place),
    so a spec finds its data from any working directory."""
    base = raw.get("base")
    options = base.get("dataset_options") if isinstance(base, Mapping) else None
    if not isinstance(options, dict):
        return
    for key in DATA_PATH_OPTIONS:
        value = options.get(key)
        if isinstance(value, str) and value and not Path(value).expanduser().is_absolute():
            options[key] = str(spec_dir.absolute() / value)


def load_spec(path: str | Path, overrides: list[str] | None = None) -> StudySpec:
    """Read and validate a TOML study spec, applying ``--set key=value`` overrides first."""
    path = Path(path)
    raw = load_toml(path)
    if not raw:
        raise ConfigError(f"{path}: empty study spec; it needs [base], [space.<param>] and [objective]")
    resolve_data_paths(raw, path.parent)   # before --set: a path typed on the command line is relative to the cwd
    for key, value in parse_assignments(overrides or []).items():
        set_spec_value(raw, key, value)
    return parse_spec(raw, default_name=path.stem)


def _fingerprint(raw: Mapping[str, Any]) -> str:
    """A hash of what determines a study's results (used to refuse resuming a changed spec)."""
    # a longer run (more generations / trials), another storage URL, more workers may resume the same study
    skip: dict[str, tuple[str, ...]] = {"study": RESUMABLE_STUDY_KEYS, "validation": VALIDATION_KEYS}
    for cls in searchers().values():
        skip[cls.section] = cls.resumable_keys
    data = {section: ({k: v for k, v in table.items() if k not in skip[section]}
                      if section in skip and isinstance(table, Mapping) else table)
            for section, table in raw.items()}
    return hashlib.sha1(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def spec_fingerprint(spec: StudySpec) -> str:
    """The spec's fingerprint (see :func:`_fingerprint`)."""
    return spec.fingerprint or _fingerprint(spec.raw)
