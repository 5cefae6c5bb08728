"""The metrics a figure needs: ``oscillation`` (accuracy drops after a warm-up) and ``slowdown`` (rounds to the
target over FedAvg's on the same seed and setting), on hand-computed accuracy curves and through a study's
Evaluator against plain ``qsfl.simulate`` runs."""

from __future__ import annotations

import math

import pytest

from qsfl.errors import ConfigError
from tuning.objective import (
    METRICS,
    RUN_METRICS,
    SeedResult,
    build_objective,
    combine,
    oscillation,
    parse_metric_settings,
    with_slowdown,
)

# 0-based rounds 0..29 evaluated, accuracy 0.80 except four one-round dips (the drop from the round before, in
# accuracy points): round 5: 3.0 (inside a warm-up of 20: never counted), round 21: 2.0, round 24: 0.5, round 27: 1.5;
# each dip recovers the next round (a rise, never counted)
DIPS = {5: 0.77, 21: 0.78, 24: 0.795, 27: 0.785}
CURVE = [(r, DIPS.get(r, 0.80)) for r in range(30)]


def test_oscillation_counts_drops_beyond_the_threshold_after_the_warm_up():
    assert oscillation(CURVE) == 2                               # rounds 21 and 27 (defaults: 20 rounds, 1 point)
    assert oscillation(CURVE, warmup=0) == 3                     # round 5 too
    assert oscillation(CURVE, warmup=22) == 1                    # only round 27
    assert oscillation(CURVE, warmup=20, threshold=0.4) == 3     # round 24's half point too
    assert oscillation(CURVE, warmup=20, threshold=1.6) == 1     # only round 21's two points
    assert oscillation(CURVE, warmup=30) == 0
    assert oscillation([(r, 0.9) for r in range(40)]) == 0       # a flat curve never oscillates
    assert oscillation([]) == 0


def test_oscillation_compares_with_the_previous_evaluated_round():
    # eval_every = 2: rounds 1, 3, ... are NaN; round 22 is compared with round 20, not with the NaN round 21
    curve = [(r, 0.8 if r % 2 == 0 else math.nan) for r in range(30)]
    curve[22] = (22, 0.75)
    assert oscillation(curve) == 1     # 0.80 -> 0.75 at round 22; the rise back at 24 is not a drop
    curve[21] = (21, 0.70)             # an evaluated round 21 below both: 20 -> 21 drops, 21 -> 22 rises
    assert oscillation(curve) == 1


def seed(rtt: float | None, *, status: str = "complete", rounds: int = 30) -> SeedResult:
    metrics = {m: 0.5 for m in RUN_METRICS}
    metrics["rounds_to_target"] = math.nan if rtt is None else float(rtt)
    metrics["slowdown"] = math.nan
    return SeedResult(0, status, "", metrics, 1.0, rounds=rounds, fedavg_uplink_bytes=3000.0)


def test_slowdown_is_the_ratio_of_rounds_to_target_and_nan_when_either_misses():
    assert with_slowdown(seed(12), seed(8)).metrics["slowdown"] == 1.5
    assert with_slowdown(seed(8), seed(8)).metrics["slowdown"] == 1.0
    assert math.isnan(with_slowdown(seed(None), seed(8)).metrics["slowdown"])     # the run misses the target
    assert math.isnan(with_slowdown(seed(12), seed(None)).metrics["slowdown"])    # FedAvg misses it
    assert math.isnan(with_slowdown(seed(12), seed(8, status="failed")).metrics["slowdown"])
    raw = seed(12)
    with_slowdown(raw, seed(8))
    assert math.isnan(raw.metrics["slowdown"])         # a copy: the cached result stays raw


def test_slowdown_stand_ins_in_the_fitness_and_nan_in_the_table():
    obj = build_objective({"objectives": ["slowdown"]})
    assert METRICS["slowdown"].direction == "minimize" and METRICS["oscillation"].direction == "minimize"
    reached = combine({}, [0], [with_slowdown(seed(12), seed(8))], obj, rounds=30)
    assert reached.fitness == (1.5,) and reached.metrics["slowdown"] == 1.5
    missed = combine({}, [0], [with_slowdown(seed(None), seed(10))], obj, rounds=30)
    assert math.isnan(missed.metrics["slowdown"]) and missed.fitness == (31 / 10,)      # (rounds + 1) / FedAvg's
    both = combine({}, [0], [with_slowdown(seed(None), seed(None))], obj, rounds=30)
    assert both.fitness == (1.0,)                                                       # (rounds + 1) / (rounds + 1)
    # the mean over seeds is NaN when one seed misses, as for rounds_to_target
    two = combine({}, [0, 1], [with_slowdown(seed(12), seed(8)), with_slowdown(seed(None), seed(8))], obj, rounds=30)
    assert math.isnan(two.metrics["slowdown"]) and two.fitness == pytest.approx(((1.5 + 31 / 8) / 2,))


def test_metric_settings_defaults_and_errors():
    s = parse_metric_settings(None)
    assert (s.oscillation_warmup, s.oscillation_threshold, s.slowdown, s.curves) == (20, 1.0, False, False)
    assert parse_metric_settings({}, slowdown=True, curves=True).slowdown
    assert not parse_metric_settings({"slowdown": False}, slowdown=True).slowdown
    for table, where in (({"oscillation_warmup": -1}, "metrics.oscillation_warmup"),
                         ({"oscillation_warmup": 2.5}, "metrics.oscillation_warmup"),
                         ({"oscillation_threshold": -0.1}, "metrics.oscillation_threshold"),
                         ({"slowdown": "yes"}, "metrics.slowdown"),
                         ({"warmup": 3}, "metrics.warmup")):
        with pytest.raises(ConfigError, match=where):
            parse_metric_settings(table)


SPEC = {
    "study": {"name": "m", "engine": "random", "seeds": [0, 1], "eval_seeds": []},
    "base": {"dataset": "digits", "model": "logreg", "clients": 4, "rounds": 8, "batch_size": 20,
             "target_accuracy": 0.8, "lr": 0.1},
    "space": {"p": {"low": 0.05, "high": 0.6}},
    "objective": {"formula": "slowdown", "direction": "minimize"},
    "metrics": {"oscillation_warmup": 2, "oscillation_threshold": 0.5},
    "random": {"n_trials": 2},
}


def test_the_evaluator_computes_both_metrics_as_plain_simulations_do():
    """slowdown = rounds to target / FedAvg's on the same seed (both from qsfl.simulate); oscillation from the
    History's accuracy curve with the spec's warm-up and threshold."""
    import qsfl
    from tuning.evaluate import Evaluator, Point
    from tuning.spec import parse_spec

    spec = parse_spec(SPEC)
    assert spec.metrics.slowdown            # the objective uses slowdown: computed without being asked
    (ev,) = Evaluator(spec).evaluate([Point({"p": 0.5})], 8)
    assert ev.ok
    for result in ev.per_seed:
        config = spec.base.with_overrides({"strategy.p": 0.5, "seed": result.seed})
        run = qsfl.simulate(config).summary
        fedavg = qsfl.simulate(config.with_overrides({"strategy": {"name": "fedavg"}}))
        assert run["rounds_to_target"] is not None and fedavg.summary["rounds_to_target"] is not None
        assert result.metrics["slowdown"] == pytest.approx(run["rounds_to_target"]
                                                           / fedavg.summary["rounds_to_target"])
        assert result.fedavg_rounds_to_target == fedavg.summary["rounds_to_target"]
        df = qsfl.simulate(config).df
        assert result.metrics["oscillation"] == oscillation(list(zip(df["round"], df["test_accuracy"])), 2, 0.5)
    assert [r.metrics["slowdown"] for r in ev.per_seed] == [6 / 3, 5 / 2]    # seen in the Histories by hand
    assert [r.metrics["oscillation"] for r in ev.per_seed] == [0, 2]          # seed 1: 0.869 -> 0.850 -> 0.833
    # without slowdown in the objective (and not asked for) no reference is simulated: slowdown stays NaN
    plain = parse_spec({**SPEC, "objective": {"formula": "final_accuracy", "direction": "maximize"}})
    (ev2,) = Evaluator(plain).evaluate([Point({"p": 0.5})], 8)
    assert math.isnan(ev2.metrics["slowdown"]) and ev2.simulated_rounds == 16
    assert ev.simulated_rounds == 32                     # the two FedAvg references counted once each


def test_an_objective_on_slowdown_with_slowdown_switched_off_is_an_error():
    from tuning.spec import parse_spec

    with pytest.raises(ConfigError, match="metrics.slowdown"):
        parse_spec({**SPEC, "metrics": {"slowdown": False}})
