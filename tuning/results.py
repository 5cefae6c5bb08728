"""The public read API of a study output directory (docs/study_output.md).

Everything outside ``tuning`` that reads a study (``reports``, notebooks) goes through this module: the spec as
run, the trials table, the GA logbook, ``best.toml``, ``baseline.toml``, the comparison written by
``qsfl compare`` and the sessions that ran the study. Objective texts and directions come from the files
(the spec's ``[objective]``, else ``best.toml`` / ``baseline.toml``), never from guesses on column names.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from qsfl.config import SimConfig, load_toml
from qsfl.errors import ConfigError
from qsfl.history import History
from tuning.objective import METRICS, RUN_METRICS, Metric, Objective, SeedResult, build_objective, combine, dominates
from tuning.search.fidelity import rung_correlations
from tuning.search.grid import ARM, parse_grid_settings
from tuning.spec import DEFAULT_EVAL_SEEDS, parse_base
from tuning.trials import read_trials as _read_trials

__all__ = ["COMPARE_DIR", "METRICS", "CompareResults", "Metric", "StudyResults", "best_digest", "check_study_dir",
           "defaults_name", "defaults_verdict", "load_histories", "load_study", "metric_direction", "missing_files",
           "read_compare", "read_trials", "simulation_keys"]

TRIALS_FILES = ("trials.parquet", "trials.csv")
VALIDATION_FIELDS = ("answer", "verdict", "validation_seeds", "defaults_validation_fitness",
                     "defaults_validation_seeds")
REQUIRED = ("spec.toml",)
COMPARE_DIR = "compare"
ENVIRONMENT_FILE = "environment.json"


def metric_direction(name: str) -> str:
    """``maximize`` or ``minimize`` for a metric name of the trials table (``metric_`` prefix optional)."""
    key = name.removeprefix("metric_")
    if key not in METRICS:
        raise ConfigError(f"metric: unknown value {key!r}; valid: {', '.join(METRICS)}")
    return METRICS[key].direction


# ----- the directory -------------------------------------------------------------------------------
def missing_files(out_dir: str | Path) -> list[str]:
    """Names of the files a study output must have that ``out_dir`` lacks."""
    d = Path(out_dir)
    missing = [f for f in REQUIRED if not (d / f).is_file()]
    if not any((d / f).is_file() for f in TRIALS_FILES):
        missing.append(" or ".join(TRIALS_FILES))
    return missing


def check_study_dir(out_dir: str | Path) -> Path:
    """Raise ConfigError naming the missing files unless ``out_dir`` is a study output directory."""
    d = Path(out_dir)
    if not d.is_dir():
        raise ConfigError(f"{d}: no such directory (expected the --out directory of `qsfl tune`)")
    missing = missing_files(d)
    if missing:
        raise ConfigError(f"{d}: not a study output directory; missing {', '.join(missing)}")
    return d


def read_trials(out_dir: str | Path) -> pd.DataFrame:
    """The trials table (parquet preferred, CSV otherwise); ConfigError if there is none."""
    df = _read_trials(out_dir)
    if df is None:
        raise ConfigError(f"{out_dir}: missing {' or '.join(TRIALS_FILES)}")
    return df


def _fitness_columns(trials: pd.DataFrame, n: int | None) -> list[str]:
    if n is not None:
        return ["fitness"] if n == 1 else [f"fitness_{i}" for i in range(n)]
    if "fitness" in trials.columns:
        return ["fitness"]
    cols = [c for c in trials.columns if c.startswith("fitness_") and c[len("fitness_"):].isdigit()]
    return sorted(cols, key=lambda c: int(c.split("_")[1]))


def _objectives(spec: Mapping[str, Any], best: Mapping[str, Any], baseline: Mapping[str, Any] | None
                ) -> tuple[list[str], list[str]]:
    """(formula texts, directions) from the spec's [objective], else from best.toml / baseline.toml."""
    table = spec.get("objective")
    if table is not None:
        try:
            objective = build_objective(table)
            return [f.text for f in objective.formulas], list(objective.directions)
        except ConfigError:
            pass  # a spec of an older format: the written files still say what was optimised
    for doc in (best, baseline or {}):
        described, directions = doc.get("objectives"), doc.get("directions")
        if isinstance(described, list) and isinstance(directions, list) and len(described) == len(directions):
            texts = [str(t).split(" ", 1)[1] if str(t).split(" ", 1)[0] in ("maximize", "minimize") else str(t)
                     for t in described]
            return texts, [str(d) for d in directions]
    return [], []


def simulation_keys(trials: pd.DataFrame) -> pd.Series:
    """One key per row; rows with the same key are the same simulation.

    Uses the table's ``simulation`` column when tuning wrote one; otherwise two complete rows are the same
    simulation when they ran the same seeds and got exactly the same value of every metric (bytes and
    accuracies to the last bit: distinct simulations practically never agree on all of them, while points that
    simulate identically, e.g. p values giving the same entries per segment, always do).
    """
    if "simulation" in trials.columns:
        return trials["simulation"].astype(str)
    metric_cols = sorted(c for c in trials.columns if c.startswith("metric_") and not c.endswith("_std"))
    done = trials["state"] == "complete" if "state" in trials.columns else pd.Series(True, index=trials.index)
    keys = []
    for (i, row), ok in zip(trials.iterrows(), done):
        if not ok:
            keys.append(f"row-{i}")  # failed/pruned rows are never merged
            continue
        values = [str(row.get("seeds", ""))] + [repr(float(row[c])) for c in metric_cols]
        keys.append(hashlib.sha1("|".join(values).encode()).hexdigest()[:12])
    return pd.Series(keys, index=trials.index, dtype=object)


def best_digest(best: Sequence[Mapping[str, Any]]) -> str:
    """A short hash of the params of best.toml's entries, in order (tells whether the best set changed)."""
    canon = json.dumps([{k: _canon(v) for k, v in sorted(dict(e.get("params", {})).items())} for e in best],
                       sort_keys=True)
    return hashlib.sha1(canon.encode()).hexdigest()[:12]


def _canon(v: Any) -> Any:
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        f = float(v)
        return int(f) if f.is_integer() else f
    return v


# ----- the study -----------------------------------------------------------------------------------
@dataclass
class StudyResults:
    """Everything a study wrote under its output directory (missing optional parts are empty)."""

    out_dir: Path
    spec: dict[str, Any]
    all_trials: pd.DataFrame
    objectives: list[str] = field(default_factory=list)
    directions: list[str] = field(default_factory=list)
    fitness_columns: list[str] = field(default_factory=list)
    logbook: pd.DataFrame | None = None
    best: list[dict[str, Any]] = field(default_factory=list)
    baseline: dict[str, Any] | None = None
    sessions: list[dict[str, Any]] = field(default_factory=list)
    validation: dict[str, Any] = field(default_factory=dict)   # best.toml's answer, verdict, validation_seeds, ...

    @property
    def full_rounds(self) -> int | None:
        """The study's rounds (``base.rounds``): the fidelity of every number shown about a configuration."""
        base = self.spec.get("base")
        if isinstance(base, dict) and isinstance(base.get("rounds"), int):
            return int(base["rounds"])
        if "rounds" in self.all_trials.columns and len(self.all_trials):
            return int(pd.to_numeric(self.all_trials["rounds"], errors="coerce").max())
        return None

    @property
    def trials(self) -> pd.DataFrame:
        """The full-rounds view: the rows evaluated at the study's rounds (every row without ``[fidelity]``).

        Rows of lower ``[fidelity]`` rungs are left out: their metrics are those of a shorter run and their fitness
        a projection, so a table or figure about configurations must not show them. ``all_trials`` has every row
        (with ``rounds`` and ``rung`` columns) for what is about the search itself (counts, time, rungs)."""
        t, full = self.all_trials, self.full_rounds
        if full is None or "rounds" not in t.columns:
            return t
        return t[pd.to_numeric(t["rounds"], errors="coerce") == full]

    def rung_correlations(self) -> dict[int, tuple[float, int]]:
        """With ``[fidelity]``: per lower rung (its rounds), the Spearman rank correlation between a point's fitness
        there and at full rounds, and the number of points that reached both (empty without lower rungs)."""
        full = self.full_rounds
        if not self.rung_rows or full is None or not self.fitness_columns:
            return {}
        rungs = sorted({int(r) for r in pd.to_numeric(self.all_trials["rounds"], errors="coerce").dropna()})
        rows = self.all_trials.rename(columns={self.fitness_columns[0]: "fitness"}).to_dict("records")
        sign = 1.0 if self.maximize and self.maximize[0] else -1.0
        return rung_correlations(rows, rungs, full, sign)

    @property
    def rung_rows(self) -> int:
        """How many rows of the trials table are lower-rung evaluations (left out of :attr:`trials`)."""
        return len(self.all_trials) - len(self.trials)

    @property
    def name(self) -> str:
        """The study name from the spec, else the directory name."""
        study = self.spec.get("study")
        name = study.get("name") if isinstance(study, dict) else None
        return str(name or self.out_dir.name)

    @property
    def engine(self) -> str:
        """``ga`` or ``optuna`` (from the trials table, else the spec)."""
        if "engine" in self.all_trials.columns and len(self.all_trials):
            return str(self.all_trials["engine"].iloc[0])
        study = self.spec.get("study")
        return str(study.get("engine", "ga")) if isinstance(study, dict) else "ga"

    @property
    def strategy(self) -> str:
        """The tuned strategy (baseline.toml's, else the spec's ``[base.strategy]``, else qsfl)."""
        if self.baseline and self.baseline.get("strategy"):
            return str(self.baseline["strategy"])
        base = self.spec.get("base")
        table = base.get("strategy") if isinstance(base, dict) else None
        return str(table.get("name", "qsfl")) if isinstance(table, dict) else "qsfl"

    @property
    def defaults_name(self) -> str:
        """What the baseline is called in tables: "authors' defaults" (QSFL) or "<strategy> defaults"."""
        return defaults_name(self.strategy)

    @property
    def maximize(self) -> list[bool]:
        """Per fitness column: True when larger is better."""
        return [d == "maximize" for d in self.directions]

    @property
    def param_columns(self) -> list[str]:
        """The ``param_*`` columns of the trials table."""
        return [c for c in self.all_trials.columns if c.startswith("param_")]

    @property
    def metric_columns(self) -> list[str]:
        """The ``metric_<name>`` columns (not the ``_std`` ones) of the trials table, in METRICS order."""
        return [f"metric_{m}" for m in METRICS if f"metric_{m}" in self.all_trials.columns]

    def objective_label(self, j: int) -> str:
        """What fitness column ``j`` is: its formula (a metric name for plain objectives)."""
        if j < len(self.objectives):
            return self.objectives[j]
        return self.fitness_columns[j] if j < len(self.fitness_columns) else f"fitness_{j}"

    def describe_objectives(self) -> list[str]:
        """['maximize final_accuracy - 0.05 * uplink_fraction', ...]."""
        return [f"{d} {t}" for t, d in zip(self.objectives, self.directions)]

    def base_config(self) -> SimConfig:
        """The study's base SimConfig (spec.toml's [base], parsed as tuning does)."""
        if not isinstance(self.spec.get("base"), dict):
            raise ConfigError(f"{self.out_dir / 'spec.toml'}: no [base] table")
        try:
            return parse_base(self.spec["base"])
        except ConfigError as exc:
            raise ConfigError(f"{self.out_dir / 'spec.toml'}: {exc}") from None

    def search_seeds(self) -> list[int]:
        """Seeds the study simulated: the spec's study.seeds, every seed in the trials table and the validation
        seeds (a comparison must use none of them)."""
        study = self.spec.get("study", {}) if isinstance(self.spec.get("study"), dict) else {}
        used = {int(s) for s in study.get("seeds", [0])} | {int(s) for s in self.validation.get("validation_seeds", [])}
        if "seeds" in self.all_trials.columns:
            for cell in self.all_trials["seeds"].dropna().astype(str):
                used.update(int(s) for s in re.split(r"[,;]", cell) if s.strip().lstrip("-").isdigit())
        return sorted(used)

    def spec_seeds(self) -> tuple[list[int], list[int]]:
        """(study.seeds, study.eval_seeds) as declared (tuning's defaults [0] and [100, ..., 104])."""
        study = self.spec.get("study", {}) if isinstance(self.spec.get("study"), dict) else {}
        return [int(s) for s in study.get("seeds", [0])], [int(s) for s in study.get("eval_seeds", DEFAULT_EVAL_SEEDS)]

    def complete(self) -> pd.DataFrame:
        """Full-rounds rows with state ``complete`` (all full-rounds rows when the table has no state column)."""
        t = self.trials
        return t[t["state"] == "complete"] if "state" in t.columns else t

    # ----- grid studies ---------------------------------------------------------------------------------
    @property
    def is_grid(self) -> bool:
        """Is this a grid study (``study.engine = "grid"``)?"""
        return self.engine == "grid"

    def grid_factors(self) -> list[tuple[str, list[Any]]]:
        """A grid study's factors in the order its points vary (slowest first): ``(name, levels)`` per factor, the
        arms last as ``("arm", labels)``; the names are those of the ``param_<name>`` columns. [] for a search."""
        if not self.is_grid or not isinstance(self.spec.get("grid"), dict):
            return []
        settings = parse_grid_settings(self.spec["grid"])
        out = [(key, list(levels)) for key, levels in settings.factors]
        if settings.arms:
            out.append((ARM, [label for label, _ in settings.arms]))
        return out

    def per_seed(self) -> pd.DataFrame:
        """One row per (trials row, seed) of the full-rounds view: ``trial``, the ``param_*`` columns, ``seed``,
        ``status`` and one ``metric_<name>`` column per metric: the values each seed's simulation had (the trials
        table's ``per_seed`` JSON), whose means over seeds are the table's ``metric_<name>``."""
        rows = []
        params = self.param_columns
        for _, row in self.trials.iterrows():
            for seed in _seed_dicts(row):
                out = {"trial": int(row["trial"]), **{p: row[p] for p in params}, "seed": int(seed["seed"]),
                       "status": str(seed.get("status", ""))}
                metrics = seed.get("metrics", {})
                out.update({f"metric_{m}": _num(metrics.get(m)) for m in RUN_METRICS})
                rows.append(out)
        columns = ["trial", *params, "seed", "status", *(f"metric_{m}" for m in RUN_METRICS)]
        return pd.DataFrame(rows, columns=columns)

    def curves(self) -> pd.DataFrame:
        """One row per (trials row, seed, evaluated round) where the study kept curves (``[metrics] curves``, on in
        grid studies): ``trial``, the ``param_*`` columns, ``seed``, ``round`` (0-based), ``test_accuracy``,
        ``cum_uplink_bytes``."""
        frames = []
        params = self.param_columns
        for _, row in self.trials.iterrows():
            for seed in _seed_dicts(row):
                curve = seed.get("curve") or {}
                if not curve:
                    continue
                frame = pd.DataFrame({k: curve.get(k, []) for k in ("round", "test_accuracy", "cum_uplink_bytes")})
                frame.insert(0, "seed", int(seed["seed"]))
                for p in reversed(params):
                    frame.insert(0, p, row[p])
                frame.insert(0, "trial", int(row["trial"]))
                frames.append(frame)
        if not frames:
            return pd.DataFrame(columns=["trial", *params, "seed", "round", "test_accuracy", "cum_uplink_bytes"])
        out = pd.concat(frames, ignore_index=True)
        out["round"] = out["round"].astype("int64")
        return out


def _seed_dicts(row: pd.Series) -> list[dict[str, Any]]:
    """The ``per_seed`` JSON of a trials row ([] when absent or empty)."""
    text = row.get("per_seed", "")
    if not isinstance(text, str) or not text:
        return []
    return [d for d in json.loads(text) if isinstance(d, dict)]


def _num(v: Any) -> float:
    return math.nan if v is None else float(v)


def _read_best(out_dir: Path) -> dict[str, Any]:
    path = out_dir / "best.toml"
    if not path.is_file():
        return {}
    doc = load_toml(path)
    if not isinstance(doc.get("best", []), list):
        raise ConfigError(f"{path}: expected [[best]] tables")
    return doc


def _read_sessions(out_dir: Path) -> list[dict[str, Any]]:
    path = out_dir / ENVIRONMENT_FILE
    if not path.is_file():
        return []
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: unreadable ({exc})") from None
    return list(data.get("sessions", [])) if isinstance(data, dict) else []


def load_study(out_dir: str | Path) -> StudyResults:
    """Read a study output directory; ConfigError naming the missing files if it is not one.

    ``.trials`` is the full-rounds view (lower ``[fidelity]`` rungs left out); ``.all_trials`` has every row."""
    d = check_study_dir(out_dir)
    spec = load_toml(d / "spec.toml")
    trials = read_trials(d)
    best_doc = _read_best(d)
    baseline = load_toml(d / "baseline.toml") if (d / "baseline.toml").is_file() else None
    objectives, directions = _objectives(spec, best_doc, baseline)
    fcols = _fitness_columns(trials, len(directions) or None)
    if not directions and fcols:
        raise ConfigError(f"{d}: cannot tell the objective's direction: spec.toml's [objective] is unreadable "
                          "and there is no best.toml or baseline.toml with `directions`")
    logbook = pd.read_csv(d / "logbook.csv") if (d / "logbook.csv").is_file() else None
    return StudyResults(out_dir=d, spec=spec, all_trials=trials, objectives=objectives, directions=directions,
                        fitness_columns=fcols, logbook=logbook, best=list(best_doc.get("best", [])),
                        baseline=baseline, sessions=_read_sessions(d),
                        validation={k: best_doc[k] for k in VALIDATION_FIELDS if k in best_doc})


# ----- histories -----------------------------------------------------------------------------------
def load_histories(root: str | Path) -> dict[str, History]:
    """Every History directory directly under ``root`` by directory name (unreadable ones skipped)."""
    out: dict[str, History] = {}
    root = Path(root)
    if not root.is_dir():
        return out
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        try:
            out[d.name] = History.load(d)
        except (ConfigError, OSError, ValueError, KeyError):
            continue
    return out


def _seed_key(name: str) -> tuple[int, str]:
    m = re.fullmatch(r"seed(\d+)", name)
    return (int(m.group(1)) if m else 1 << 62, name)


# ----- the comparison (qsfl compare) -------------------------------------------------------------------
@dataclass
class CompareResults:
    """What ``qsfl compare`` ran: one row per (label, seed) in ``runs``, and the plan it followed."""

    out_dir: Path
    runs: pd.DataFrame
    plan: dict[str, Any]
    stale: bool = False

    @property
    def labels(self) -> list[str]:
        """Labels in the order they were compared (tuned first, then the baselines)."""
        return [str(c["label"]) for c in self.plan.get("config", [])] or list(dict.fromkeys(self.runs["label"]))

    @property
    def seeds(self) -> list[int]:
        return [int(s) for s in self.plan.get("seeds", [])]

    @property
    def defaults(self) -> str:
        """The label of the tuned strategy's own defaults (``qsfl-default`` for QSFL)."""
        return str(self.plan.get("defaults", "qsfl-default"))

    def objective(self) -> Objective | None:
        """The study's objective (plan.toml's copy of spec.toml's ``[objective]``), or None without one."""
        table = self.plan.get("objective")
        if not table:
            return None
        try:
            return build_objective(table)
        except ConfigError:
            return None

    def objective_values(self) -> pd.DataFrame:
        """Per run (the rows of ``runs``): the study's fitness on that seed alone (``objective_<j>``, the study's
        stand-ins where the target was not reached, the constraint's penalty included; NaN for a failed run) and
        ``constraint_met`` (1/0). Empty columns without an objective."""
        objective = self.objective()
        out = pd.DataFrame(index=self.runs.index)
        if objective is None:
            return out
        rounds = int(self.plan.get("base", {}).get("rounds", 0)) or None
        values: list[list[float]] = []
        met: list[float] = []
        for _, row in self.runs.iterrows():
            ev = combine({}, [int(row["seed"])], [_seed_result(row, rounds)], objective,
                         rounds or int(row.get("rounds_run", 0) or 0))
            values.append([float(f) if ev.ok else math.nan for f in ev.fitness])
            met.append(float(ev.metrics["constraint_violation"] == 0) if ev.ok else math.nan)
        for j in range(objective.n):
            out[f"objective_{j}"] = [v[j] for v in values]
        out["constraint_met"] = met
        return out

    def study_fitness(self, label: str) -> list[float]:
        """The study's fitness of ``label`` over all its seeds, computed as the search computes it (metrics averaged
        over the seeds, then the formula and the constraint); NaN when any run failed or there is no objective."""
        objective = self.objective()
        if objective is None:
            return []
        rows = self.runs[self.runs["label"] == label]
        if not len(rows):
            return [math.nan] * objective.n
        rounds = int(self.plan.get("base", {}).get("rounds", 0)) or int(rows["rounds_run"].max())
        ev = combine({}, [int(s) for s in rows["seed"]], [_seed_result(r, rounds) for _, r in rows.iterrows()],
                     objective, rounds)
        return [float(f) if ev.ok else math.nan for f in ev.fitness]

    def study_of(self, label: str) -> str:
        """The study a tuned label comes from (``qsfl compare OUT --with OTHER``: OUT's or OTHER's name); ""."""
        return next((str(c.get("study", "")) for c in self.plan.get("config", []) if c["label"] == label), "")

    def defaults_for(self, label: str) -> str:
        """The label of the defaults of ``label``'s own study's strategy (``topk-default`` for a ``--with`` top-k
        study's tuned config, else :attr:`defaults`)."""
        study = self.study_of(label)
        return next((str(o["defaults"]) for o in self.plan.get("with", []) if study and o.get("study") == study),
                    self.defaults)

    @property
    def references(self) -> list[str]:
        """The labels every tuned configuration is judged against: the defaults of each compared study's strategy,
        FedAvg, and the first tuned configuration of each other compared study."""
        labels = self.labels
        refs = [self.defaults, *(str(o.get("defaults", "")) for o in self.plan.get("with", [])), "fedavg"]
        firsts: dict[str, str] = {}
        for label in labels:
            if self.kind(label) == "tuned":
                firsts.setdefault(self.study_of(label), label)
        return [lab for lab in dict.fromkeys(refs) if lab in labels] + \
            [lab for study, lab in firsts.items() if len(firsts) > 1]

    def kind(self, label: str) -> str:
        """``tuned`` or ``baseline``."""
        return next((str(c.get("kind", "")) for c in self.plan.get("config", []) if c["label"] == label), "")

    def description(self, label: str) -> str:
        """The label's setting in words (its params for tuned configs)."""
        return next((str(c.get("setting", "")) for c in self.plan.get("config", []) if c["label"] == label), "")

    def histories(self) -> dict[str, list[History]]:
        """label -> the Histories of the plan's seeds, in label order (missing or unreadable runs left out)."""
        root = self.out_dir / COMPARE_DIR
        seeds = set(self.seeds)
        out: dict[str, list[History]] = {}
        for label in self.labels:
            found = load_histories(root / label)
            runs = [found[k] for k in sorted(found, key=_seed_key)
                    if not seeds or int(found[k].config.get("seed", -1)) in seeds]
            if runs:
                out[label] = runs
        return out


def _seed_result(row: pd.Series, rounds: int | None) -> SeedResult:
    """A runs.csv row as the SeedResult the objective takes (failed unless its status is complete)."""
    ok = str(row.get("status", "complete")) == "complete"
    metrics = {m: float(row[m]) if m in row and pd.notna(row[m]) else math.nan for m in RUN_METRICS}
    fedavg = float(row.get("fedavg_uplink_bytes", math.nan))
    if math.isnan(fedavg) and metrics["uplink_fraction"] > 0:   # a runs.csv of an older version: from the ratio
        fedavg = metrics["uplink_bytes"] / metrics["uplink_fraction"]
    return SeedResult(seed=int(row["seed"]), status="complete" if ok else "failed", reason=str(row.get("reason", "")),
                      metrics=metrics, duration_s=0.0, rounds=int(rounds or row.get("rounds_run", 0) or 0),
                      fedavg_uplink_bytes=fedavg)


def read_compare(out_dir: str | Path) -> CompareResults | None:
    """The comparison of ``qsfl compare`` in ``out_dir`` (None when it has not run); ``stale`` is True when
    best.toml changed since (a resumed or extended study found other best configs)."""
    d = Path(out_dir)
    runs_path, plan_path = d / COMPARE_DIR / "runs.csv", d / COMPARE_DIR / "plan.toml"
    if not runs_path.is_file() or not plan_path.is_file():
        return None
    runs = pd.read_csv(runs_path, keep_default_na=False, na_values=[""])
    plan = load_toml(plan_path)
    stale = False
    if plan.get("source") == "best.toml":
        stale = plan.get("best_digest") != best_digest(_read_best(d).get("best", []))
    for other in plan.get("with", []):      # a --with study resumed or extended since: its best may have changed
        path = Path(str(other.get("dir", "")))
        if (path / "best.toml").is_file() and other.get("best_digest") != best_digest(_read_best(path).get("best", [])):
            stale = True
    return CompareResults(out_dir=d, runs=runs, plan=plan, stale=stale)


def nan_to_none(v: Any) -> Any:
    """NaN -> None (for TOML/JSON, which have no NaN-safe null)."""
    return None if isinstance(v, float) and math.isnan(v) else v


# ----- tuned vs the defaults -------------------------------------------------------------------------------
def defaults_name(strategy: str) -> str:
    """"authors' defaults" for QSFL, "<strategy> defaults" for any other strategy's own defaults."""
    return "authors' defaults" if strategy == "qsfl" else f"{strategy} defaults"


def defaults_verdict(best: Sequence[Mapping[str, Any]], baseline: Mapping[str, Any] | None,
                     directions: Sequence[str]) -> str | None:
    """A warning when the search found nothing better than the strategy's defaults, else None.

    One objective: the best fitness is worse than (or equal to) the defaults'. Several: no point of the front
    dominates the defaults (the defaults would sit on the front themselves).
    """
    if not baseline or baseline.get("state", "complete") != "complete" or not directions:
        return None
    name = defaults_name(str(baseline.get("strategy", "qsfl")))
    base = [float(f) for f in baseline.get("fitness", [])]
    if len(base) != len(directions) or not all(math.isfinite(f) for f in base):
        return None
    maximize = [d == "maximize" for d in directions]
    fronts = [[float(f) for f in b.get("fitness", [])] for b in best]
    fronts = [f for f in fronts if len(f) == len(base)]
    if not fronts:
        return f"no tuned configuration completed; the {name} are the only result"
    if len(base) == 1:
        top = max(f[0] for f in fronts) if maximize[0] else min(f[0] for f in fronts)
        if (top > base[0]) if maximize[0] else (top < base[0]):
            return None
        return (f"the best tuned fitness {top:.4g} is not better than the {name}' {base[0]:.4g} "
                f"({directions[0]}); the search did not beat the defaults on this budget")
    if any(dominates(f, base, [1.0 if m else -1.0 for m in maximize]) for f in fronts):
        return None
    return f"no tuned configuration dominates the {name}: they lie on (or beyond) the Pareto front"
