"""params -> SimConfig -> simulate (one run per seed) -> metrics (mean/std over seeds) -> fitness.

Fitness is declared in the spec, never ``eval``-ed: either weights per named metric, or a formula parsed
with :mod:`ast` against a whitelist (metric names, numbers, ``+ - * / **``, unary minus, ``min``, ``max``,
``abs``), or several such objectives (a tuple, for NSGA-II). An optional constraint (``"final_accuracy >=
0.9"``, same whitelist plus one comparison) subtracts ``penalty * violation`` from every objective (adds it
for minimised ones).

Metrics that may be undefined for a run use a documented stand-in *inside the fitness only* (the trials
table keeps NaN): ``rounds_to_target`` not reached counts as ``rounds + 1``; ``uplink_bytes_to_target`` not
reached counts as the bytes FedAvg would send in ``rounds + 1`` rounds; ``slowdown`` undefined counts as the run's
``rounds_to_target`` (with its stand-in) over the FedAvg reference's (``rounds + 1`` when it never reached the
target). ``oscillation`` and ``slowdown`` are defined at :func:`oscillation` and :func:`with_slowdown`. A failed
evaluation (diverged run, exception, penalised constraint) gets the worst fitness (:data:`WORST`, signed by
direction).

**Low rungs** (``[fidelity]``: an evaluation after ``r`` of the study's ``R`` rounds). Metrics that exist only
once the target accuracy is reached would make every low-rung point equal. Below ``R`` a seed that has not yet
reached the target is ranked by its *projection* (:func:`project_to_target`): the accuracy curve is extended
linearly through its first and its best evaluated round, the round where that line meets the target is its
projected ``rounds_to_target`` (at least ``r + 1``, at most ``10 R``; ``10 R`` when accuracy has not risen), and
its projected ``uplink_bytes_to_target`` is the uplink bytes so far plus the mean bytes per round times the
projected remaining rounds. Faster learning and fewer bytes per round both rank better. A seed that reached the
target within ``r`` rounds has its exact value, the same as in a full run. ``final_accuracy`` and
``best_accuracy`` (e.g. in a constraint such as ``final_accuracy >= 0.88``) are end-of-run values too: below ``R``
they are projected along the same line to round ``R`` (:func:`project_accuracy`: never below the best accuracy so
far, at most 1), so that a run still learning is not penalised for not being there after ``r`` rounds.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import itertools
import json
import math
import operator
import time
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from qsfl.config import SimConfig
from qsfl.errors import ConfigError, check_bool, check_range, check_table, reject_unknown

DIRECTIONS = ("maximize", "minimize")
WORST = 1e9  # fitness of a failed evaluation (negated for maximised objectives); finite so NSGA-II works


LOW_RUNG_CAP = 10   # a projection never goes beyond this many times the study's rounds
PROJECTED_ACCURACIES = ("final_accuracy", "best_accuracy")   # at a low rung: the projection, not round r's value


@dataclass(frozen=True)
class Metric:
    """A named metric of one run, whether larger is better, and whether the study summary prints it."""

    name: str
    direction: str
    description: str
    summary: bool = False


METRICS: dict[str, Metric] = {m.name: m for m in (
    Metric("final_accuracy", "maximize", "test accuracy after the last round", summary=True),
    Metric("best_accuracy", "maximize", "best test accuracy over the evaluated rounds", summary=True),
    Metric("uplink_bytes", "minimize", "total uplink bytes of the run"),
    Metric("uplink_mb", "minimize", "total uplink bytes / 1e6", summary=True),
    Metric("uplink_fraction", "minimize", "uplink bytes / FedAvg's uplink bytes on the same cohorts"),
    Metric("compression_ratio", "maximize", "FedAvg's uplink bytes / the run's uplink bytes", summary=True),
    Metric("rounds_to_target", "minimize", "rounds run until test accuracy >= target (NaN if never)", summary=True),
    Metric("uplink_bytes_to_target", "minimize", "cumulative uplink bytes when the target was reached"),
    Metric("target_reached", "maximize", "1 if the target accuracy was reached, else 0"),
    Metric("oscillation", "minimize", "evaluated rounds after the warm-up where test accuracy fell by more than the "
                                      "threshold from the previous evaluated round"),
    Metric("slowdown", "minimize", "rounds_to_target / FedAvg's rounds_to_target on the same seed and setting "
                                   "(NaN if either never reaches the target, or without a FedAvg reference)"),
    Metric("constraint_violation", "minimize", "how far the spec's constraint is violated (0 if met)"),
)}

RUN_METRICS = [m for m in METRICS if m != "constraint_violation"]
SUMMARY_METRICS = tuple(m for m, info in METRICS.items() if info.summary)
REFERENCE_METRICS = ("slowdown",)   # need a FedAvg reference run per seed and setting (MetricSettings.slowdown)


@dataclass(frozen=True)
class MetricSettings:
    """The spec's ``[metrics]`` table: how :func:`oscillation` counts, whether ``slowdown`` is computed (one FedAvg
    reference simulation per seed and setting, cached like every simulation) and whether each seed's per-round
    accuracy / cumulative uplink curve is kept in the trials table's ``per_seed`` (grid studies' figures)."""

    oscillation_warmup: int = 20          # rounds (the first ``warmup`` rounds are not counted)
    oscillation_threshold: float = 1.0    # accuracy points (1.0 = a drop of more than 0.01 in accuracy)
    slowdown: bool = False
    curves: bool = False


METRICS_KEYS = ("oscillation_warmup", "oscillation_threshold", "slowdown", "curves")


def parse_metric_settings(table: Any, *, slowdown: bool = False, curves: bool = False) -> MetricSettings:
    """Validate the ``[metrics]`` table; ``slowdown`` / ``curves``: the defaults where the table does not say."""
    t = dict(check_table("metrics", {} if table is None else table))
    reject_unknown("metrics", t, METRICS_KEYS)
    warmup = t.get("oscillation_warmup", MetricSettings.oscillation_warmup)
    check_range("metrics.oscillation_warmup", warmup, 0, None, integer=True)
    threshold = t.get("oscillation_threshold", MetricSettings.oscillation_threshold)
    check_range("metrics.oscillation_threshold", threshold, 0.0, 100.0)
    want_slowdown = t.get("slowdown", slowdown)
    check_bool("metrics.slowdown", want_slowdown)
    want_curves = t.get("curves", curves)
    check_bool("metrics.curves", want_curves)
    return MetricSettings(int(warmup), float(threshold), bool(want_slowdown), bool(want_curves))


def oscillation(curve: Sequence[tuple[int, float]], warmup: int = MetricSettings.oscillation_warmup,
                threshold: float = MetricSettings.oscillation_threshold) -> float:
    """How many evaluated rounds with 0-based index ``t >= warmup`` (rounds after the first ``warmup``) have a test
    accuracy more than ``threshold`` accuracy points below the previous evaluated round's (``curve``: [(round index,
    accuracy)] in round order; NaN accuracies, i.e. rounds not evaluated, are skipped)."""
    points = [(int(r), float(a)) for r, a in curve if a == a]
    drop = threshold / 100.0
    return float(sum(1 for (_, prev), (r, acc) in itertools.pairwise(points) if r >= warmup and prev - acc > drop))


class StopRun(Exception):
    """Raised from an ``on_round`` hook to stop a simulation on purpose (it passes through :func:`run_seed`)."""


# ----- safe formulas ---------------------------------------------------------------------------------
_BINOPS: dict[type, Callable[[float, float], float]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.Pow: operator.pow}
_UNARY: dict[type, Callable[[float], float]] = {ast.USub: operator.neg, ast.UAdd: operator.pos}
_FUNCS: dict[str, Callable[..., float]] = {"min": min, "max": max, "abs": abs}
_COMPARE = {ast.GtE: ">=", ast.Gt: ">", ast.LtE: "<=", ast.Lt: "<"}


def _safe_div(a: float, b: float) -> float:
    if b == 0:
        return math.copysign(math.inf, a) if a else math.nan
    return a / b


def _safe_pow(a: float, b: float) -> float:
    try:
        result = a ** b
    except (OverflowError, ZeroDivisionError):
        return math.inf
    return result if isinstance(result, float | int) else math.nan


class Formula:
    """An arithmetic expression over metric names, parsed with ast and evaluated by walking the tree."""

    def __init__(self, text: str, names: Iterable[str], where: str = "objective.formula") -> None:
        if not isinstance(text, str) or not text.strip():
            raise ConfigError(f"{where}: expected a non-empty formula string, got {text!r}")
        self.text = text
        self.where = where
        self.allowed = sorted(names)
        try:
            tree = ast.parse(text.strip(), mode="eval")
        except SyntaxError as exc:
            raise ConfigError(f"{where}: invalid formula {text!r}: {exc.msg}") from None
        self.tree = tree.body
        self.names: set[str] = set()
        self._check(self.tree)

    def _reject(self, node: ast.AST, what: str) -> None:
        raise ConfigError(f"{self.where}: {what} is not allowed in {self.text!r}; allowed: metric names "
                          f"({', '.join(self.allowed)}), numbers, + - * / **, min(), max(), abs()")

    def _check(self, node: ast.AST) -> None:
        if isinstance(node, ast.BinOp):
            if type(node.op) not in _BINOPS:
                self._reject(node, f"operator {type(node.op).__name__}")
            self._check(node.left)
            self._check(node.right)
        elif isinstance(node, ast.UnaryOp):
            if type(node.op) not in _UNARY:
                self._reject(node, f"operator {type(node.op).__name__}")
            self._check(node.operand)
        elif isinstance(node, ast.Constant):
            if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
                self._reject(node, f"constant {node.value!r}")
        elif isinstance(node, ast.Name):
            if node.id not in self.allowed:
                self._reject(node, f"name {node.id!r}")
            self.names.add(node.id)
        elif isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name) or node.func.id not in _FUNCS:
                self._reject(node, f"call of {ast.unparse(node.func)!r}")
            name = node.func.id if isinstance(node.func, ast.Name) else ""
            if node.keywords or not node.args or any(isinstance(a, ast.Starred) for a in node.args):
                self._reject(node, f"this call form of {name}()")
            if name == "abs" and len(node.args) != 1:
                self._reject(node, "abs() with more than one argument")
            for arg in node.args:
                self._check(arg)
        else:
            self._reject(node, f"{type(node).__name__} ({ast.unparse(node)!r})")

    def __call__(self, values: Mapping[str, float]) -> float:
        """Evaluate with metric values (division by zero gives inf/NaN, never an exception)."""
        return float(self._eval(self.tree, values))

    def _eval(self, node: ast.AST, v: Mapping[str, float]) -> float:
        if isinstance(node, ast.BinOp):
            a, b = self._eval(node.left, v), self._eval(node.right, v)
            if isinstance(node.op, ast.Div):
                return _safe_div(a, b)
            if isinstance(node.op, ast.Pow):
                return _safe_pow(a, b)
            return _BINOPS[type(node.op)](a, b)
        if isinstance(node, ast.UnaryOp):
            return _UNARY[type(node.op)](self._eval(node.operand, v))
        if isinstance(node, ast.Constant):
            return float(node.value)  # type: ignore[arg-type]  # _check admits numeric constants only
        if isinstance(node, ast.Name):
            return float(v[node.id])
        if isinstance(node, ast.Call):
            assert isinstance(node.func, ast.Name)   # _check admits calls of whitelisted names only
            return float(_FUNCS[node.func.id](*(self._eval(a, v) for a in node.args)))
        raise AssertionError(f"unchecked node {node!r}")  # _check guarantees this is unreachable


class Constraint:
    """``lhs OP rhs`` with OP in >=, >, <=, <; violation = how far it is from holding (0 if it holds)."""

    def __init__(self, text: str, names: Iterable[str], where: str = "objective.constraint") -> None:
        if not isinstance(text, str):
            raise ConfigError(f"{where}: expected a string such as \"final_accuracy >= 0.9\", got {text!r}")
        try:
            tree = ast.parse(text.strip(), mode="eval").body
        except SyntaxError as exc:
            raise ConfigError(f"{where}: invalid constraint {text!r}: {exc.msg}") from None
        if not isinstance(tree, ast.Compare) or len(tree.ops) != 1 or type(tree.ops[0]) not in _COMPARE:
            raise ConfigError(f"{where}: expected one comparison with >=, >, <= or <, e.g. "
                              f"\"final_accuracy >= 0.9\", got {text!r}")
        self.text = text
        self.op = _COMPARE[type(tree.ops[0])]
        self.lhs = Formula(ast.unparse(tree.left), names, where)
        self.rhs = Formula(ast.unparse(tree.comparators[0]), names, where)

    def violation(self, values: Mapping[str, float]) -> float:
        """0 when satisfied, else the (positive) gap; NaN inputs count as violated by 1."""
        lhs, rhs = self.lhs(values), self.rhs(values)
        gap = rhs - lhs if self.op in (">=", ">") else lhs - rhs
        if not math.isfinite(gap):
            return 1.0 if math.isnan(gap) else (0.0 if gap < 0 else 1.0)
        if self.op in (">", "<") and gap == 0:
            return 1e-12
        return max(0.0, gap)


@dataclass(frozen=True)
class Objective:
    """The fitness of a study: one or more formulas with directions, an optional penalised constraint."""

    formulas: tuple[Formula, ...]
    directions: tuple[str, ...]
    constraint: Constraint | None = None
    penalty: float = 100.0

    @property
    def n(self) -> int:
        return len(self.formulas)

    @property
    def weights(self) -> tuple[float, ...]:
        """DEAP weights: +1 to maximise, -1 to minimise."""
        return tuple(1.0 if d == "maximize" else -1.0 for d in self.directions)

    def worst(self) -> tuple[float, ...]:
        """The fitness of a failed evaluation."""
        return tuple(-WORST if d == "maximize" else WORST for d in self.directions)

    def violation(self, values: Mapping[str, float]) -> float:
        return self.constraint.violation(values) if self.constraint is not None else 0.0

    def fitness(self, values: Mapping[str, float]) -> tuple[float, ...]:
        """Fitness tuple from fitness-ready metric values (non-finite results become the worst value)."""
        viol = self.violation(values)
        out = []
        for formula, direction, worst in zip(self.formulas, self.directions, self.worst()):
            f = formula(values)
            f = f - self.penalty * viol if direction == "maximize" else f + self.penalty * viol
            out.append(f if math.isfinite(f) else worst)
        return tuple(out)

    @property
    def names(self) -> set[str]:
        """The metric names the formulas and the constraint use."""
        out = {n for f in self.formulas for n in f.names}
        if self.constraint is not None:
            out |= self.constraint.lhs.names | self.constraint.rhs.names
        return out

    def describe(self) -> list[str]:
        """Human-readable objectives, e.g. ['maximize final_accuracy - 0.05 * uplink_fraction']."""
        return [f"{d} {f.text}" for f, d in zip(self.formulas, self.directions)]


OBJECTIVE_KEYS = ("weights", "formula", "objectives", "direction", "directions", "constraint", "penalty")


def build_objective(table: Any) -> Objective:
    """Validate the ``[objective]`` table (exactly one of weights, formula, objectives)."""
    reject_unknown("objective", check_table("objective", table), OBJECTIVE_KEYS)
    given = [k for k in ("weights", "formula", "objectives") if k in table]
    if len(given) != 1:
        raise ConfigError("objective: give exactly one of objective.weights (a table metric = weight), "
                          "objective.formula (a string) or objective.objectives (a list of metric names or "
                          f"formulas); got {', '.join(given) or 'none'}")
    names = list(METRICS)
    if "weights" in table:
        weights = table["weights"]
        if not isinstance(weights, Mapping) or not weights:
            raise ConfigError("objective.weights: expected a table such as {final_accuracy = 1.0, "
                              "uplink_fraction = -0.05}")
        reject_unknown("objective.weights", weights, names, what="metric", qualify=False)
        for name, w in weights.items():
            if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w):
                raise ConfigError(f"objective.weights.{name}: expected a finite number, got {w!r}")
        text = " + ".join(f"({float(w)!r}) * {name}" for name, w in weights.items())
        texts = [text]
    elif "formula" in table:
        texts = [table["formula"]]
    else:
        texts = table["objectives"]
        if not isinstance(texts, list) or not texts:
            raise ConfigError("objective.objectives: expected a non-empty list of metric names or formulas, "
                              "e.g. [\"final_accuracy\", \"uplink_mb\"]")
    formulas = tuple(Formula(t, names, f"objective.{given[0]}") for t in texts)
    if "directions" in table and "direction" in table:
        raise ConfigError("objective.direction: give direction (one objective) or directions (a list), not both")
    if "directions" in table:
        dirs = table["directions"]
        if not isinstance(dirs, list) or len(dirs) != len(formulas):
            raise ConfigError(f"objective.directions: expected a list of {len(formulas)} of "
                              f"{', '.join(DIRECTIONS)}, got {dirs!r}")
    elif "direction" in table:
        dirs = [table["direction"]] * len(formulas)
    else:
        dirs = []
        for text in texts:
            if isinstance(text, str) and text.strip() in METRICS:
                dirs.append(METRICS[text.strip()].direction)
            elif given[0] == "weights":
                dirs.append("maximize")
            else:
                raise ConfigError(f"objective.direction: required for the formula {text!r}; "
                                  f"allowed: {', '.join(DIRECTIONS)}")
    for _i, d in enumerate(dirs):
        if d not in DIRECTIONS:
            raise ConfigError(f"objective.direction{'s' if len(dirs) > 1 else ''}: unknown value {d!r}; "
                              f"valid: {', '.join(DIRECTIONS)}")
    constraint = Constraint(table["constraint"], names) if "constraint" in table else None
    penalty = table.get("penalty", 100.0)
    if isinstance(penalty, bool) or not isinstance(penalty, (int, float)) or not math.isfinite(penalty) \
            or penalty < 0:
        raise ConfigError(f"objective.penalty: {penalty!r} is out of range; allowed [0, inf)")
    return Objective(formulas=formulas, directions=tuple(dirs), constraint=constraint, penalty=float(penalty))


# ----- one simulation per seed ------------------------------------------------------------------------
@dataclass
class SeedResult:
    """The outcome of one simulation: status, reason, raw metrics (NaN where undefined), duration."""

    seed: int
    status: str                      # "complete" | "failed"
    reason: str
    metrics: dict[str, float]
    duration_s: float
    rounds: int = 0
    fedavg_uplink_bytes: float = math.nan
    projection: dict[str, float] = field(default_factory=dict)   # low-rung stand-ins (see module doc)
    fedavg_rounds_to_target: float = math.nan   # the FedAvg reference's, when slowdown is computed (else NaN)
    curve: dict[str, list[float]] = field(default_factory=dict)   # MetricSettings.curves: see CURVE_KEYS

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"seed": self.seed, "status": self.status, "reason": self.reason,
                               "metrics": self.metrics, "duration_s": self.duration_s, "rounds": self.rounds,
                               "fedavg_uplink_bytes": self.fedavg_uplink_bytes}
        if self.projection:
            out["projection"] = self.projection
        if self.fedavg_rounds_to_target == self.fedavg_rounds_to_target:   # not NaN
            out["fedavg_rounds_to_target"] = self.fedavg_rounds_to_target
        if self.curve:
            out["curve"] = self.curve
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SeedResult:
        return cls(seed=int(d["seed"]), status=str(d["status"]), reason=str(d["reason"]),
                   metrics={k: _float(v) for k, v in d["metrics"].items()}, duration_s=float(d["duration_s"]),
                   rounds=int(d.get("rounds", 0)), fedavg_uplink_bytes=_float(d.get("fedavg_uplink_bytes")),
                   projection={k: float(v) for k, v in d.get("projection", {}).items()},
                   fedavg_rounds_to_target=_float(d.get("fedavg_rounds_to_target")),
                   curve={k: [_float(x) for x in v] for k, v in d.get("curve", {}).items()})


CURVE_KEYS = ("round", "test_accuracy", "cum_uplink_bytes")   # a SeedResult's curve: evaluated rounds, 0-based


def _float(v: Any) -> float:
    """A JSON number (None, as NaN may be written, -> NaN)."""
    return math.nan if v is None else float(v)


def summary_metrics(summary: Mapping[str, Any]) -> dict[str, float]:
    """Metrics of one run from a History summary (NaN where undefined)."""
    up = float(summary["total_uplink_bytes"])
    fed = float(summary["fedavg_uplink_bytes"])
    rtt = summary.get("rounds_to_target")
    btt = summary.get("uplink_bytes_to_target")
    return {
        "final_accuracy": float(summary["final_accuracy"]),
        "best_accuracy": float(summary["best_accuracy"]),
        "uplink_bytes": up,
        "uplink_mb": up / 1e6,
        "uplink_fraction": up / fed if fed else math.nan,
        "compression_ratio": float(summary["compression_ratio"]),
        "rounds_to_target": float(rtt) if rtt is not None else math.nan,
        "uplink_bytes_to_target": float(btt) if btt is not None else math.nan,
        "target_reached": 1.0 if rtt is not None else 0.0,
    }


def _trend(accuracy: Sequence[tuple[int, float]]) -> tuple[int, float, float] | None:
    """(round, accuracy) of the best evaluated round and the accuracy gained per round since the first one,
    or None when accuracy has not risen (``accuracy``: [(round index, accuracy)], NaN rounds skipped)."""
    points = [(r, a) for r, a in accuracy if a == a]
    if not points:
        return None
    r0, a0 = points[0]
    rb, ab = max(points, key=lambda p: (p[1], -p[0]))
    if rb > r0 and ab > a0:
        return rb, ab, (ab - a0) / (rb - r0)
    return None


def project_to_target(accuracy: Sequence[tuple[int, float]], cum_uplink: float, rounds_run: int, target: float,
                      full_rounds: int) -> dict[str, float]:
    """Projected ``rounds_to_target`` / ``uplink_bytes_to_target`` of a run that has not reached ``target`` after
    ``rounds_run`` rounds (``accuracy``: [(round index, accuracy)] of the evaluated rounds); see the module doc."""
    cap = float(LOW_RUNG_CAP * max(full_rounds, rounds_run))
    est = cap
    trend = _trend(accuracy)
    if trend is not None:
        rb, ab, slope = trend
        est = (rb + 1) + (target - ab) / slope
    est = min(max(est, float(rounds_run + 1)), cap)
    per_round = cum_uplink / rounds_run if rounds_run else 0.0
    return {"rounds_to_target": est, "uplink_bytes_to_target": cum_uplink + per_round * (est - rounds_run)}


def project_accuracy(accuracy: Sequence[tuple[int, float]], full_rounds: int) -> dict[str, float]:
    """Projected ``final_accuracy`` and ``best_accuracy`` after ``full_rounds`` rounds of a run evaluated on fewer:
    the same line as :func:`project_to_target` (through the first and the best evaluated round) at the last
    round, never below the best accuracy so far, at most 1; the best so far when accuracy has not risen."""
    best = max((a for _, a in accuracy if a == a), default=math.nan)
    trend = _trend(accuracy)
    if trend is not None:
        rb, ab, slope = trend
        best = min(1.0, max(best, ab + slope * (full_rounds - 1 - rb)))
    return {"final_accuracy": best, "best_accuracy": best}


def run_metrics(history: Any, settings: MetricSettings | None = None) -> dict[str, float]:
    """Every metric of one complete History that needs no other run: :func:`summary_metrics` plus ``oscillation``
    (``slowdown`` stays NaN: it needs the FedAvg reference, :func:`with_slowdown`)."""
    settings = settings or MetricSettings()
    df = history.df
    curve = list(zip(df["round"].astype(int), df["test_accuracy"].astype(float)))
    return {**summary_metrics(history.summary),
            "oscillation": oscillation(curve, settings.oscillation_warmup, settings.oscillation_threshold),
            "slowdown": math.nan}


def history_curve(history: Any) -> dict[str, list[float]]:
    """The evaluated rounds of a History as lists (:data:`CURVE_KEYS`)."""
    ev = history.df.dropna(subset=["test_accuracy"])
    return {key: [float(v) for v in ev[key]] for key in CURVE_KEYS}


def history_result(history: Any, seed: int, duration: float, full_rounds: int,
                   settings: MetricSettings | None = None) -> SeedResult:
    """The SeedResult of a (possibly partial: fewer than ``full_rounds`` rounds) History."""
    settings = settings or MetricSettings()
    summary = history.summary
    rounds = int(summary.get("rounds_run", len(history.df)))
    nan_metrics = {m: math.nan for m in RUN_METRICS}
    curve_lists = history_curve(history) if settings.curves else {}
    if summary["status"] != "complete":
        return SeedResult(seed, "failed", f"diverged: {summary['reason']}", nan_metrics, duration, rounds,
                          float(summary["fedavg_uplink_bytes"]), curve=curve_lists)
    metrics = run_metrics(history, settings)
    projection: dict[str, float] = {}
    if rounds < full_rounds:
        df = history.df
        curve = list(zip(df["round"].astype(int), df["test_accuracy"].astype(float)))
        projection = project_accuracy(curve, full_rounds)
        if math.isnan(metrics["rounds_to_target"]):
            projection.update(project_to_target(curve, float(summary["total_uplink_bytes"]), rounds,
                                                float(summary["target_accuracy"]), full_rounds))
    return SeedResult(seed, "complete", "", metrics, duration, rounds, float(summary["fedavg_uplink_bytes"]),
                      projection, curve=curve_lists)


def with_slowdown(result: SeedResult, reference: SeedResult) -> SeedResult:
    """``result`` with its ``slowdown``: its rounds_to_target / the FedAvg ``reference``'s (same seed and setting);
    NaN when either did not reach the target (or the reference failed). A copy: cached results stay raw."""
    ref = reference.metrics.get("rounds_to_target", math.nan) if reference.status == "complete" else math.nan
    metrics = dict(result.metrics)
    if result.status == "complete":
        metrics["slowdown"] = metrics.get("rounds_to_target", math.nan) / ref if ref == ref else math.nan
    return dataclasses.replace(result, metrics=metrics, fedavg_rounds_to_target=float(ref))


def failure_result(config: SimConfig, exc: BaseException, duration: float) -> SeedResult:
    """A failed SeedResult naming the exception and where it was raised."""
    where = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
    at = f" (at {where.filename.rsplit('/', 1)[-1]}:{where.lineno})" if where else ""
    return SeedResult(config.seed, "failed", f"{type(exc).__name__}: {exc}{at}",
                      {m: math.nan for m in RUN_METRICS}, duration, 0)


def run_seed(config: SimConfig, on_round: Callable[[dict[str, Any]], None] | None = None) -> SeedResult:
    """Simulate ``config`` once; a diverged run or an exception gives a failed SeedResult with the reason."""
    from qsfl.sim import simulate

    start = time.perf_counter()
    try:
        history = simulate(config, on_round=on_round)
    except (KeyboardInterrupt, MemoryError, StopRun):
        raise
    except Exception as exc:  # noqa: BLE001 - a failing simulation is a failed evaluation, not a failed study
        return failure_result(config, exc, time.perf_counter() - start)
    return history_result(history, config.seed, time.perf_counter() - start, config.rounds)


def fitness_inputs(result: SeedResult, rounds: int, full_rounds: int | None = None) -> dict[str, float]:
    """A complete seed's metrics with the documented stand-ins for undefined values (see module doc): the
    low-rung projection when ``rounds < full_rounds``, else the full-run stand-ins."""
    values = dict(result.metrics)
    if full_rounds is not None and rounds < full_rounds:
        for name, value in result.projection.items():
            # end-of-run accuracies are always projected; the to-target metrics only where undefined
            if name in PROJECTED_ACCURACIES or math.isnan(values[name]):
                values[name] = value
    if math.isnan(values["rounds_to_target"]):
        values["rounds_to_target"] = float(rounds + 1)
    if math.isnan(values["uplink_bytes_to_target"]):
        per_round = result.fedavg_uplink_bytes / max(rounds, 1)
        values["uplink_bytes_to_target"] = per_round * (rounds + 1)
    if math.isnan(values.get("slowdown", math.nan)):   # both sides with the rounds_to_target stand-in
        ref = result.fedavg_rounds_to_target
        values["slowdown"] = values["rounds_to_target"] / (ref if ref == ref else float(rounds + 1))
    return values


# ----- one evaluation = all seeds of one point ----------------------------------------------------------
@dataclass
class Evaluation:
    """One evaluated point: params, per-seed results, mean/std metrics, fitness, state."""

    params: dict[str, Any]
    individual: str
    seeds: list[int]
    state: str                                   # complete | failed | pruned
    reason: str
    metrics: dict[str, float]
    metrics_std: dict[str, float]
    fitness: tuple[float, ...]
    duration_s: float
    repair: str = ""
    per_seed: list[SeedResult] = field(default_factory=list)
    rounds: int = 0                  # the fidelity: rounds simulated for this evaluation (0 = not simulated)
    rung: int = 0                    # successive-halving rung (0 without [fidelity])
    simulation: str = ""             # canonical simulation key (points with the same key simulate identically)
    simulated_rounds: int = 0        # rounds newly simulated for this row, all seeds (0 when cached)
    new_rows: int = 0                # trials rows written for it in the batch that produced it
    curve: list[tuple[int, float]] = field(default_factory=list)   # first seed's accuracy per round (pruners)

    @property
    def ok(self) -> bool:
        return self.state == "complete"


def params_id(params: Mapping[str, Any]) -> str:
    """Stable id of a point: a hash of its params (identical configs share it)."""
    canon = json.dumps({k: _canon(v) for k, v in sorted(params.items())}, sort_keys=True)
    return hashlib.sha1(canon.encode()).hexdigest()[:12]


def _canon(v: Any) -> Any:
    if isinstance(v, (float, np.floating)):
        return float(repr(float(v))) if not float(v).is_integer() else float(v)
    if isinstance(v, (np.integer,)):
        return int(v)
    return v


def combine(params: Mapping[str, Any], seeds: Sequence[int], results: Sequence[SeedResult], objective: Objective,
            rounds: int, repair: str = "", full_rounds: int | None = None) -> Evaluation:
    """Mean/std over seeds and the fitness after ``rounds`` rounds (low-rung stand-ins when ``rounds <
    full_rounds``); any failed seed fails the evaluation (its reason is kept)."""
    pid = params_id(params)
    duration = float(sum(r.duration_s for r in results))
    failed = [r for r in results if r.status != "complete"]
    if failed:
        nan = {m: math.nan for m in METRICS}
        reason = "; ".join(f"seed {r.seed}: {r.reason}" for r in failed)
        return Evaluation(dict(params), pid, list(seeds), "failed", reason, nan, dict(nan), objective.worst(),
                          duration, repair, list(results), rounds=rounds)
    names = RUN_METRICS
    table = np.array([[r.metrics.get(m, math.nan) for m in names] for r in results], dtype=float)
    mean = dict(zip(names, (float(x) for x in table.mean(axis=0))))
    std = dict(zip(names, (float(x) for x in table.std(axis=0))))
    inputs = [fitness_inputs(r, rounds, full_rounds) for r in results]
    fit_values = {m: float(np.mean([i.get(m, math.nan) for i in inputs])) for m in names}
    viol = objective.violation(fit_values)
    fit_values["constraint_violation"] = viol
    mean["constraint_violation"], std["constraint_violation"] = viol, 0.0
    return Evaluation(dict(params), pid, list(seeds), "complete", "", mean, std, objective.fitness(fit_values),
                      duration, repair, list(results), rounds=rounds)


def failed_evaluation(params: Mapping[str, Any], seeds: Sequence[int], reason: str, objective: Objective,
                      repair: str = "", state: str = "failed") -> Evaluation:
    """An evaluation that was not (fully) simulated: constraint penalty, or a pruned Optuna trial."""
    nan = {m: math.nan for m in METRICS}
    return Evaluation(dict(params), params_id(params), list(seeds), state, reason, nan, dict(nan),
                      objective.worst(), 0.0, repair, [])


def dominates(a: Sequence[float], b: Sequence[float], signs: Sequence[float]) -> bool:
    """Pareto dominance: ``a`` is at least as good as ``b`` in every objective and better in one (``signs``: +1
    maximise, -1 minimise)."""
    better = False
    for x, y, s in zip(a, b, signs):
        if s * x < s * y:
            return False
        if s * x > s * y:
            better = True
    return better
