"""Seeds as a resource (tuning/racing.py) and hedged fidelity brackets (tuning/search/fidelity.py), by hand and in a
study."""

from __future__ import annotations

import math
import tomllib
from pathlib import Path

import pandas as pd
import pytest
from helpers import GA_SPEC

from tuning.evaluate import Point
from tuning.objective import SeedResult, build_objective, combine
from tuning.racing import Race, on_seeds
from tuning.search.fidelity import (
    FidelitySettings,
    bracket_cost,
    choose_bracket,
    correlation_upper_bound,
    rung_correlations,
    trusted_brackets,
)

OBJ = build_objective({"formula": "uplink_mb", "direction": "minimize"})


def _seed(seed: int, mb: float) -> SeedResult:
    metrics = {"final_accuracy": 0.9, "best_accuracy": 0.9, "uplink_bytes": mb * 1e6, "uplink_mb": mb,
               "uplink_fraction": 0.1, "compression_ratio": 10.0, "rounds_to_target": 5.0,
               "uplink_bytes_to_target": mb * 1e6, "target_reached": 1.0}
    return SeedResult(seed, "complete", "", metrics, 0.1, rounds=10, fedavg_uplink_bytes=1e7)


def _ev(name: str, values: dict[int, float]):
    ev = combine({"p": name}, list(values), [_seed(s, v) for s, v in values.items()], OBJ, 10, full_rounds=10)
    ev.simulation = name
    return ev


def test_on_seeds_is_the_fitness_on_the_shared_seeds():
    ev = _ev("a", {0: 1.0, 300: 3.0, 301: 5.0})
    assert ev.fitness[0] == pytest.approx(3.0)
    assert on_seeds(ev, [0], OBJ, 10).fitness[0] == pytest.approx(1.0)
    assert on_seeds(ev, [0, 300], OBJ, 10).fitness[0] == pytest.approx(2.0)


def test_a_challenger_is_compared_with_the_incumbents_on_shared_seeds():
    race = Race([0, 300, 301], OBJ, 10, size=2)
    race.admit(_ev("inc1", {0: 1.0, 300: 1.0, 301: 1.0}))
    assert race.challenges(_ev("x", {0: 9.0}))            # the incumbents are not full yet: anyone challenges
    race.admit(_ev("inc2", {0: 2.0, 300: 2.0, 301: 2.0}))
    race.admit(_ev("short", {0: 0.1}))                     # not raced to every seed: never an incumbent
    assert [e.simulation for e in race.incumbents] == ["inc1", "inc2"]
    assert race.challenges(_ev("lucky", {0: 1.5}))         # beats inc2's 2.0 on seed 0
    assert not race.challenges(_ev("weak", {0: 2.5}))
    race.admit(_ev("best", {0: 0.5, 300: 0.5, 301: 0.5}))
    assert [e.simulation for e in race.incumbents] == ["best", "inc1"]


def test_race_doubles_the_seeds_and_stops_a_challenger_that_falls_behind():
    truth = {"good": {0: 1.0, 300: 1.0, 301: 1.0}, "lucky": {0: 0.2, 300: 9.0, 301: 9.0}}
    calls: list[tuple[list[str], list[int]]] = []

    def evaluate(points, seeds):
        calls.append(([p.params["p"] for p in points], list(seeds)))
        return [_ev(p.params["p"], {s: truth[p.params["p"]][s] for s in seeds}) for p in points]

    race = Race([0, 300, 301], OBJ, 10, size=1)
    race.admit(_ev("inc", {0: 1.5, 300: 1.5, 301: 1.5}))
    points = [Point({"p": "good"}), Point({"p": "lucky"})]
    out = race.run(points, [_ev("good", {0: 1.0}), _ev("lucky", {0: 0.2})], evaluate)
    # both beat the incumbent's 1.5 on seed 0: seeds 1 -> 2 together; lucky's two-seed mean 4.6 loses to the
    # incumbent's 1.5 on seeds 0 and 300, so it stops there; good goes on to 3 seeds and replaces the incumbent
    assert calls == [(["good", "lucky"], [0, 300]), (["good"], [0, 300, 301])]
    assert [len(e.seeds) for e in out] == [3, 2]
    assert out[1].fitness[0] == pytest.approx(4.6)
    assert [e.simulation for e in race.incumbents] == ["inc"]      # the batch enters at its end, by the caller
    for ev in out:
        race.admit(ev)
    assert [e.simulation for e in race.incumbents] == ["good"]


def test_bracket_cost_and_the_hedging_order():
    rungs = [4, 12, 30]
    # 10 points at 4 rounds, 3 go on to 12 (8 more each), 1 to 30 (18 more): 40 + 24 + 18
    assert bracket_cost(rungs, 0, 10, 3) == 82
    assert bracket_cost(rungs, 1, 10, 3) == 10 * 12 + 3 * 18
    history: list[int] = []
    for _ in range(6):
        history.append(choose_bracket(rungs, 10, 3, history, [0, 1]))
    # weights 1/82 : 1/174 = 0.68 : 0.32: bracket 0 about twice as often, starting with the most aggressive
    assert history == [0, 1, 0, 0, 1, 0]
    assert choose_bracket(rungs, 10, 3, history, []) == 2        # no rung trusted: full rounds only


def test_rung_correlations_by_hand_and_the_untrusted_rung():
    rows = []
    for k, (low, full) in enumerate([(1.0, 1.0), (2.0, 3.0), (3.0, 2.0), (4.0, 4.0), (5.0, 5.0)]):
        rows.append({"individual": f"i{k}", "rounds": 4, "state": "complete", "fitness": low})
        rows.append({"individual": f"i{k}", "rounds": 30, "state": "complete", "fitness": full})
    rows.append({"individual": "i9", "rounds": 12, "state": "complete", "fitness": 1.0})
    corr = rung_correlations(rows, [4, 12, 30], 30, -1.0)
    assert corr[4] == (pytest.approx(0.9), 5)                   # Spearman: 1 - 6 * 2 / (5 * 24)
    assert math.isnan(corr[12][0]) and corr[12][1] == 0
    # upper bound: tanh(atanh(0.9) + 1.2816 * 1.03 / sqrt(2)) = tanh(1.4722 + 0.9334) = 0.9838
    assert correlation_upper_bound(0.9, 5) == pytest.approx(0.9838, abs=1e-4)
    settings = FidelitySettings(min_rounds=4, min_correlation=0.95, min_pairs=5)
    assert trusted_brackets(settings, [4, 12, 30], corr) == [0, 1]   # 0.9 from 5 pairs does not show < 0.95
    # reversed full-rounds ranking: rho = -0.9, bound tanh(-1.4722 + 0.9334) = -0.492 < 0.5: rung 4 starts none
    flipped = {4: (-0.9, 5), 12: (float("nan"), 0)}
    assert correlation_upper_bound(-0.9, 5) == pytest.approx(-0.492, abs=1e-3)
    assert trusted_brackets(FidelitySettings(min_rounds=4), [4, 12, 30], flipped) == [1]
    assert trusted_brackets(FidelitySettings(min_rounds=4, min_pairs=6), [4, 12, 30], flipped) == [0, 1]
    assert trusted_brackets(FidelitySettings(min_rounds=4, hedge=False), [4, 12, 30], corr) == [0]


def test_a_raced_study_keeps_every_seed_in_its_rows(tmp_path: Path):
    from tuning.spec import parse_spec
    from tuning.study import run_study

    raw = tomllib.loads(GA_SPEC.format(name="race"))
    raw["study"]["max_seeds"] = 3
    raw["validation"] = {"enabled": False}
    spec = parse_spec(raw)
    assert spec.study.race_seeds == (0, 300, 301)
    out = tmp_path / "race"
    run_study(spec, out)
    df = pd.read_parquet(out / "trials.parquet")
    raced = df[df["n_seeds"] == 3]
    assert len(raced) >= 3 and set(df["n_seeds"]) <= {1, 2, 3}
    assert (raced["seeds"] == "0,300,301").all()
    assert all(len(__import__("json").loads(p)) == 3 for p in raced["per_seed"])
    again = tmp_path / "again"
    run_study(parse_spec(raw), again)                          # reproducible, racing included
    cols = ["trial", "individual", "seeds", "n_seeds", "fitness"]
    pd.testing.assert_frame_equal(df[cols], pd.read_parquet(again / "trials.parquet")[cols])
