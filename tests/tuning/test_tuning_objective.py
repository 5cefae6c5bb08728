"""Objective: the ast-whitelisted formula parser, weights, constraints with penalty, mean/std over seeds."""

from __future__ import annotations

import math

import pytest

from qsfl.errors import ConfigError
from tuning.objective import (
    METRICS,
    WORST,
    Formula,
    SeedResult,
    build_objective,
    combine,
    params_id,
    summary_metrics,
)

NAMES = list(METRICS)


@pytest.mark.parametrize("text", [
    "__import__('os')",
    "__import__('os').system('echo hi')",
    "final_accuracy.__class__",
    "open('/etc/passwd')",
    "[x for x in ()]",
    "lambda: 1",
    "final_accuracy if 1 else 0",
    "'abc'",
    "True",
    "os",
    "final_accuracy and uplink_mb",
    "final_accuracy // 2",
    "final_accuracy % 2",
    "min(*[1, 2])",
    "max(a=1)",
    "abs(1, 2)",
    "final_accuracy[0]",
    "(yield)",
    "exec('1')",
    "eval('1')",
    "getattr(final_accuracy, 'real')",
    "f'{final_accuracy}'",
    "final_accuracy >= 1",
    "1; 2",
])
def test_formula_rejects_everything_outside_the_whitelist(text):
    with pytest.raises(ConfigError) as err:
        Formula(text, NAMES)
    assert "objective.formula" in str(err.value)


def test_formula_evaluates_without_eval():
    f = Formula("final_accuracy - 0.05 * uplink_fraction ** 2 + min(1, abs(-best_accuracy)) / 2", NAMES)
    v = {"final_accuracy": 0.9, "uplink_fraction": 0.5, "best_accuracy": 0.8}
    assert f(v) == pytest.approx(0.9 - 0.05 * 0.25 + 0.4)
    assert f.names == {"final_accuracy", "uplink_fraction", "best_accuracy"}
    assert math.isinf(Formula("1 / (final_accuracy - final_accuracy)", NAMES)({"final_accuracy": 0.5}))


def _result(seed, acc, up, rtt=None):
    summary = {"final_accuracy": acc, "best_accuracy": acc, "total_uplink_bytes": up, "fedavg_uplink_bytes": 1000.0,
               "compression_ratio": 1000.0 / up, "rounds_to_target": rtt,
               "uplink_bytes_to_target": None if rtt is None else up / 2}
    return SeedResult(seed, "complete", "", summary_metrics(summary), 1.0, rounds=10, fedavg_uplink_bytes=1000.0)


def test_weights_mean_std_and_fitness():
    obj = build_objective({"weights": {"final_accuracy": 1.0, "uplink_fraction": -0.5}})
    ev = combine({"beta": 0.5}, [0, 1], [_result(0, 0.8, 100.0), _result(1, 0.9, 300.0)], obj, rounds=10)
    assert ev.ok and ev.metrics["final_accuracy"] == pytest.approx(0.85)
    assert ev.metrics_std["final_accuracy"] == pytest.approx(0.05)
    assert ev.fitness[0] == pytest.approx(0.85 - 0.5 * 0.2)
    assert math.isnan(ev.metrics["rounds_to_target"])   # the table keeps NaN when the target is not reached


def test_constraint_penalty_and_stand_ins():
    obj = build_objective({"formula": "compression_ratio", "direction": "maximize",
                           "constraint": "final_accuracy >= 0.9", "penalty": 100})
    good = combine({}, [0], [_result(0, 0.95, 100.0)], obj, rounds=10)
    bad = combine({}, [0], [_result(0, 0.85, 10.0)], obj, rounds=10)
    assert good.fitness[0] == pytest.approx(10.0)
    assert bad.fitness[0] == pytest.approx(100.0 - 100 * 0.05)
    assert bad.metrics["constraint_violation"] == pytest.approx(0.05)
    rtt = build_objective({"objectives": ["rounds_to_target"]})
    assert combine({}, [0], [_result(0, 0.5, 10.0)], rtt, rounds=10).fitness[0] == 11.0   # not reached: rounds + 1
    assert combine({}, [0], [_result(0, 0.9, 10.0, rtt=4)], rtt, rounds=10).fitness[0] == 4.0


def test_failed_seed_fails_the_evaluation_with_worst_fitness():
    obj = build_objective({"objectives": ["final_accuracy", "uplink_mb"]})
    failed = SeedResult(1, "failed", "diverged: NaN/inf training loss at round 2", {}, 0.5)
    ev = combine({"p": 0.3}, [0, 1], [_result(0, 0.9, 100.0), failed], obj, rounds=10)
    assert ev.state == "failed" and "seed 1: diverged" in ev.reason
    assert ev.fitness == (-WORST, WORST)


def test_objective_spec_errors():
    with pytest.raises(ConfigError, match="exactly one of"):
        build_objective({"formula": "final_accuracy", "weights": {"final_accuracy": 1}})
    with pytest.raises(ConfigError, match="objective.direction: required"):
        build_objective({"formula": "final_accuracy - uplink_mb"})
    with pytest.raises(ConfigError, match="objective.constraint: expected one comparison"):
        build_objective({"formula": "final_accuracy", "direction": "maximize", "constraint": "final_accuracy"})
    with pytest.raises(ConfigError, match="objective.penalty"):
        build_objective({"formula": "final_accuracy", "direction": "maximize", "penalty": -1})
    with pytest.raises(ConfigError, match="objective.directions: expected a list of 2"):
        build_objective({"objectives": ["final_accuracy", "uplink_mb"], "directions": ["maximize"]})


def test_params_id_is_stable_and_order_free():
    assert params_id({"beta": 0.5, "k": 3}) == params_id({"k": 3, "beta": 0.5})
    assert params_id({"beta": 0.5, "k": 3}) != params_id({"beta": 0.5, "k": 4})
