"""Search v2 (issue 10): the Searcher interface and its registry, random search, start points, rounds as a
fidelity (rungs, promotion, the low-rung ranking, the GA's rung-aware selection), the simulation key and the
simulation cache, lockstep batches, and resume equal to an uninterrupted run for every searcher."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
import pandas as pd
import pytest
from test_tuning_cli import TINY

from qsfl.config import SimConfig, StrategyConfig
from qsfl.errors import ConfigError
from tuning.evaluate import Evaluator, Point
from tuning.objective import (
    Evaluation,
    SeedResult,
    build_objective,
    combine,
    project_accuracy,
    project_to_target,
)
from tuning.search import REGISTRY, Candidate, Searcher, register, searchers
from tuning.search.fidelity import promote, rung_rounds
from tuning.search.ga import GACore, GASettings, Individual, fitness_class, sel_nsga2_by_rounds
from tuning.simkey import simulation_key
from tuning.spec import parse_spec
from tuning.study import run_study

DROP = ["duration_s", "finished_at", "per_seed"]


def spec_of(text: str = TINY, **sets: Any):
    """A parsed spec from TOML text plus dotted overrides."""
    import tomllib

    from tuning.spec import set_spec_value

    raw = tomllib.loads(text)
    for key, value in sets.items():
        set_spec_value(raw, key.replace("__", "."), value)
    return parse_spec(raw)


def table(out) -> pd.DataFrame:
    return pd.read_parquet(out / "trials.parquet")


def ev_of(fitness: Sequence[float], state: str = "complete", rounds: int = 3) -> Evaluation:
    return Evaluation({}, "x", [0], state, "", {}, {}, tuple(fitness), 0.0, rounds=rounds)


# ----- the registry: adding a searcher is one class --------------------------------------------------------
@dataclass(frozen=True)
class GridSettings:
    n: int = 2


class GridSearcher(Searcher):
    """A test searcher: the first n points of a fixed grid, one per ask."""

    name = "grid_test"
    section = "grid_test"
    settings_type = GridSettings

    def __init__(self, settings: GridSettings, ctx) -> None:
        super().__init__(settings, ctx)
        self.asked = 0
        self.told: list[float] = []

    @classmethod
    def parse_settings(cls, table: Mapping[str, Any], *, dim: int, n_objectives: int, rounds: int) -> GridSettings:
        return GridSettings(**dict(table))

    def ask(self, n: int) -> list[Candidate]:
        if self.asked >= self.settings.n:
            return []
        self.asked += 1
        return [Candidate(self.ctx.space.decode([self.asked / (self.settings.n + 1)] * self.ctx.space.dim))]

    def tell(self, candidates, evaluations) -> None:
        self.told += [ev.fitness[0] for ev in evaluations]

    def state(self) -> dict[str, Any]:
        return {"asked": self.asked}

    def restore(self, state: dict[str, Any]) -> None:
        self.asked = state["asked"]

    def finished(self) -> bool:
        return self.asked >= self.settings.n


@pytest.fixture
def grid_searcher():
    register(GridSearcher)
    yield GridSearcher
    REGISTRY.pop("grid_test")


def test_every_searcher_is_registered_and_has_a_spec_section():
    found = searchers()
    assert {"ga", "optuna", "random"} <= set(found)
    spec = spec_of()
    assert {"ga", "optuna", "random"} <= set(spec.settings)


def test_a_registered_searcher_runs_a_study_through_the_one_loop(grid_searcher, tmp_path):
    spec = spec_of(TINY + "\n[grid_test]\nn = 2\n", study__engine="grid_test", study__start_defaults=False)
    result = run_study(spec, tmp_path / "out")
    df = table(tmp_path / "out")
    assert len(df) == 2 and set(df["engine"]) == {"grid_test"} and df["trial"].tolist() == [0, 1]
    assert result.evaluations == 2 and (tmp_path / "out" / "checkpoint.pkl").is_file()


# ----- random search --------------------------------------------------------------------------------------
def test_random_search_starts_from_the_defaults_and_resumes_like_an_uninterrupted_run(tmp_path):
    spec = spec_of(study__engine="random", random__n_trials=5, random__batch_size=2)
    run_study(spec, tmp_path / "full")
    run_study(spec, tmp_path / "part", stop_after=0)          # one batch of 2, then stop
    assert len(table(tmp_path / "part")) == 2
    run_study(spec, tmp_path / "part", resume=True)
    full, part = table(tmp_path / "full"), table(tmp_path / "part")
    pd.testing.assert_frame_equal(full.drop(columns=DROP), part.drop(columns=DROP))
    first = full.iloc[0]
    assert (first["param_beta"], first["param_k"], first["param_p"]) == (0.9, 5, 0.4)   # defaults: K = ceil(.7*6)
    assert first["param_ns"] == 5 and first["repair"] == ""    # the start point is proposed repaired (NS <= K)
    assert len(full) == 5 and full["individual"].is_unique


def test_resume_on_a_folder_without_a_study_is_an_error(tmp_path):
    spec = spec_of(study__engine="random", random__n_trials=2)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="holds no study"):
        run_study(spec, tmp_path / "empty", resume=True)
    with pytest.raises(ConfigError, match="holds no study"):
        run_study(spec, tmp_path / "missing", resume=True)


def test_unusable_base_config_fails_before_any_output(tmp_path):
    spec = spec_of(base__dataset="mnist", base__model="mlp")
    with pytest.raises(ConfigError, match=r"^base \(seed 0\): dataset_options.path: required"):
        run_study(spec, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_space_bound_the_simulator_refuses_fails_before_simulating(tmp_path):
    # logreg on digits has 650 parameters: NS = 700 segments cannot exist
    spec = spec_of(base__model="logreg", space__ns__high=700, space__k__high=6)
    with pytest.raises(ConfigError, match=r"space.ns.high: 700 cannot be simulated: strategy.ns"):
        run_study(spec, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ----- start points -----------------------------------------------------------------------------------------
def test_the_ga_puts_the_defaults_and_listed_starts_in_its_first_population(tmp_path):
    text = TINY + "\n[[study.start]]\nbeta = 0.25\nk = 6\nns = 3\np = 0.5\n"
    spec = spec_of(text, ga__generations=0)
    run_study(spec, tmp_path / "out")
    df = table(tmp_path / "out")
    gen0 = df[df["generation"] == 0]
    params = [tuple(r) for r in gen0[["param_beta", "param_k", "param_ns", "param_p"]].itertuples(index=False)]
    assert params[0] == (0.9, 5, 5, 0.4) and params[1] == (0.25, 6, 3, 0.5)
    assert len(gen0) == 4


def test_a_start_point_outside_the_space_is_a_spec_error():
    with pytest.raises(ConfigError, match=r"study.start\[0\].p: 2.0 is out of range"):
        spec_of(TINY + "\n[[study.start]]\np = 2.0\n")
    with pytest.raises(ConfigError, match=r"study.start\[0\].gamma: unknown param"):
        spec_of(TINY + "\n[[study.start]]\ngamma = 1\n")


def test_optuna_enqueues_the_defaults_once_and_stores_the_evaluated_params(tmp_path):
    spec = spec_of(study__engine="optuna", optuna__n_trials=4, optuna__sampler="random")
    run_study(spec, tmp_path / "out")
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path / 'out' / 'study.db'}")
    trials = study.trials
    assert trials[0].params == {"beta": 0.9, "k": 5, "ns": 5, "p": 0.4}            # defaults, repaired NS
    assert all(t.params["ns"] <= t.params["k"] for t in trials)                    # never an invalid NS stored
    assert all(t.params == t.user_attrs["params_evaluated"] for t in trials)
    for t in trials:                                                               # metrics as numeric attrs
        assert isinstance(t.user_attrs["metric_final_accuracy"], float)
        assert t.user_attrs["metric_final_accuracy"] == pytest.approx(
            json.loads(t.user_attrs["qsfl_row"])["metric_final_accuracy"])


# ----- rungs, promotion, the low-rung ranking --------------------------------------------------------------
@pytest.mark.parametrize("min_rounds, eta, rounds, expected", [
    (4, 3, 30, [4, 12, 30]), (1, 2, 8, [1, 2, 4, 8]), (5, 3, 15, [5, 15]), (2, 3, 3, [2, 3])])
def test_rung_rounds(min_rounds, eta, rounds, expected):
    assert rung_rounds(min_rounds, eta, rounds) == expected


def test_promote_keeps_the_best_third_and_never_a_failed_point():
    evs = [ev_of([0.5]), ev_of([0.9]), ev_of([0.7]), ev_of([-1e9], "failed"), ev_of([0.8]), ev_of([0.1]),
           ev_of([0.6])]
    assert promote(evs, 3, (1.0,)) == [False, True, False, False, True, False, False]     # floor(7/3) = 2 slots
    assert promote(evs, 3, (-1.0,)) == [True, False, False, False, False, True, False]    # minimised: 0.1, 0.5
    assert promote(evs[:2], 3, (1.0,)) == [False, True]                                    # at least 1
    assert promote([ev_of([1.0], "failed"), ev_of([2.0], "failed")], 2, (1.0,)) == [False, False]


def test_promote_with_two_objectives_keeps_the_first_front():
    # maximise accuracy, minimise bytes: (0.9, 5) and (0.8, 1) are the front; (0.7, 6) is dominated
    evs = [ev_of([0.7, 6.0]), ev_of([0.9, 5.0]), ev_of([0.8, 1.0]), ev_of([0.5, 9.0])]
    assert promote(evs, 2, (1.0, -1.0)) == [False, True, True, False]


def test_projection_to_the_target_hand_computed():
    # accuracy 0.2 at round 0, best 0.5 at round 2 -> +0.15 per round; 0.8 needs 2 more rounds after round 3
    curve = [(0, 0.2), (1, 0.4), (2, 0.5), (3, 0.45)]
    p = project_to_target(curve, cum_uplink=400.0, rounds_run=4, target=0.8, full_rounds=30)
    assert p["rounds_to_target"] == pytest.approx(5.0)
    assert p["uplink_bytes_to_target"] == pytest.approx(400.0 + 100.0 * 1.0)
    flat = project_to_target([(0, 0.3), (1, 0.3)], cum_uplink=50.0, rounds_run=2, target=0.8, full_rounds=30)
    assert flat["rounds_to_target"] == 300.0 and flat["uplink_bytes_to_target"] == pytest.approx(50 + 25 * 298)


def test_accuracy_projection_hand_computed():
    # first 0.2 at round 0, best 0.5 at round 2: +0.15 per round; round 29 of 30 -> 0.5 + 0.15 * 27 > 1 -> 1.0
    curve = [(0, 0.2), (1, 0.4), (2, 0.5), (3, 0.45)]
    assert project_accuracy(curve, 30) == {"final_accuracy": 1.0, "best_accuracy": 1.0}
    # +0.01 per round from round 0 to 3: 0.33 + 0.01 * (9 - 3) = 0.39 at round 9 of 10
    slow = project_accuracy([(0, 0.30), (3, 0.33)], 10)
    assert slow["final_accuracy"] == pytest.approx(0.39)
    flat = project_accuracy([(0, 0.3), (1, 0.25)], 30)            # not rising: the best so far
    assert flat["final_accuracy"] == pytest.approx(0.3)


def test_low_rung_constraint_on_final_accuracy_uses_the_projection():
    objective = build_objective({"formula": "uplink_bytes_to_target / 1e6", "direction": "minimize",
                                 "constraint": "final_accuracy >= 0.88", "penalty": 10.0})
    metrics = {"final_accuracy": 0.6, "best_accuracy": 0.6, "uplink_bytes": 4e5, "uplink_mb": 0.4,
               "uplink_fraction": 0.1, "compression_ratio": 10.0, "rounds_to_target": math.nan,
               "uplink_bytes_to_target": math.nan, "target_reached": 0.0}
    learning = SeedResult(0, "complete", "", metrics, 0.0, 4, fedavg_uplink_bytes=4e6,
                          projection={"rounds_to_target": 12.0, "uplink_bytes_to_target": 1.2e6,
                                      "final_accuracy": 0.95, "best_accuracy": 0.95})
    stalled = SeedResult(0, "complete", "", metrics, 0.0, 4, fedavg_uplink_bytes=4e6,
                         projection={"rounds_to_target": 12.0, "uplink_bytes_to_target": 1.2e6,
                                     "final_accuracy": 0.7, "best_accuracy": 0.7})
    assert combine({}, [0], [learning], objective, rounds=4, full_rounds=30).fitness[0] == pytest.approx(1.2)
    assert combine({}, [0], [stalled], objective, rounds=4, full_rounds=30).fitness[0] == pytest.approx(1.2 + 1.8)
    # at full rounds the measured final accuracy counts: 0.6 misses 0.88 by 0.28
    full = combine({}, [0], [learning], objective, rounds=30, full_rounds=30)
    assert full.fitness[0] == pytest.approx(4e6 / 30 * 31 / 1e6 + 2.8)


def test_low_rung_fitness_uses_the_projection_and_the_full_rung_the_documented_stand_in():
    objective = build_objective({"formula": "uplink_bytes_to_target / 1e6", "direction": "minimize"})
    metrics = {"final_accuracy": 0.5, "best_accuracy": 0.5, "uplink_bytes": 4e5, "uplink_mb": 0.4,
               "uplink_fraction": 0.1, "compression_ratio": 10.0, "rounds_to_target": math.nan,
               "uplink_bytes_to_target": math.nan, "target_reached": 0.0}
    r = SeedResult(0, "complete", "", metrics, 0.0, 4, fedavg_uplink_bytes=4e6,
                   projection={"rounds_to_target": 12.0, "uplink_bytes_to_target": 1.2e6})
    low = combine({}, [0], [r], objective, rounds=4, full_rounds=30)
    assert low.fitness[0] == pytest.approx(1.2)
    full = combine({}, [0], [r], objective, rounds=30, full_rounds=30)
    assert full.fitness[0] == pytest.approx(4e6 / 30 * 31 / 1e6)


@pytest.mark.slow
def test_low_rung_ranking_puts_a_clearly_better_config_above_a_clearly_worse_one():
    # bytes to 85 % after 3 of 30 rounds: neither config is there yet; lr 0.1 learns, lr 0.0005 barely moves
    spec = spec_of(TINY.replace("rounds = 3", "rounds = 30"), objective__formula="uplink_bytes_to_target / 1e6",
                   objective__direction="minimize")
    ev = Evaluator(spec)
    good = Point({"beta": 0.9, "k": 5, "ns": 5, "p": 0.4}, overrides={"strategy.k": 5, "strategy.ns": 5, "lr": 0.1})
    bad = Point({"beta": 0.9, "k": 5, "ns": 5, "p": 0.4, "lr": 0.0005},
                overrides={"strategy.k": 5, "strategy.ns": 5, "lr": 0.0005})
    g, b = ev.evaluate([good, bad], rounds=3)
    assert g.ok and b.ok and math.isnan(g.metrics["rounds_to_target"]) and math.isnan(b.metrics["rounds_to_target"])
    assert g.fitness[0] < b.fitness[0]                     # minimised: the good config ranks first
    assert promote([b, g], 2, spec.objective.weights) == [False, True]


# ----- the GA compares individuals at equal rounds only -----------------------------------------------------
def _ind(fit, rounds, weights=(1.0,)):
    ind = Individual([0.5], fitness_class(weights))
    ind.fitness.values = tuple(fit)
    ind.rounds = rounds
    return ind


def test_rung_aware_tournament_prefers_more_rounds_then_fitness():
    import operator

    from deap import tools

    a, b, c = _ind([0.1], 30), _ind([0.9], 10), _ind([0.5], 30)
    assert sorted([a, b, c], key=operator.attrgetter("rank")) == [b, a, c]    # 10 rounds lose to 30, then 0.1 < 0.5
    m = _ind([0.9], 30, (-1.0,)), _ind([0.2], 30, (-1.0,)), _ind([0.01], 10, (-1.0,))
    assert max(m, key=operator.attrgetter("rank")) is m[1]                      # minimised: 0.2 wins at 30 rounds
    picks = tools.selTournament([a, b], 50, tournsize=2, fit_attr="rank")
    assert all(p is a for p in picks if p is not b) and sum(p is b for p in picks) < 50   # b wins only alone


def test_nsga2_selection_fills_from_the_most_rounds_first():
    w = (1.0, -1.0)
    full = [_ind([0.5, 5.0], 30, w), _ind([0.4, 6.0], 30, w)]
    low = [_ind([0.99, 0.1], 10, w), _ind([0.98, 0.2], 10, w), _ind([0.1, 9.0], 10, w)]
    chosen = sel_nsga2_by_rounds(low + full, 3)
    assert full[0] in chosen and full[1] in chosen and len(chosen) == 3
    assert chosen[2] in low[:2]                   # the low level's front, not the dominated point


def test_ga_core_hall_of_fame_and_statistics_take_full_rounds_only():
    core = GACore(1, (1.0,), GASettings(population=4, generations=1), seed=0, full_rounds=30)
    pending = core.ask()
    state = core.tell([((0.9,), True, 10), ((0.2,), True, 30), ((0.4,), True, 30), ((0.99,), True, 10)])
    assert [ind.fitness.values[0] for ind in state.hof] == [0.4, 0.2]
    assert state.logbook[-1]["max_0"] == 0.4 and len(pending) == 4


# ----- fidelity studies end to end -------------------------------------------------------------------------
FIDELITY = TINY.replace("rounds = 3", "rounds = 6") + "\n[fidelity]\nmin_rounds = 2\neta = 3\n"


def test_ga_with_fidelity_writes_rungs_and_costs_fewer_rounds(tmp_path):
    spec = spec_of(FIDELITY, ga__population=6, ga__generations=1, study__max_seeds=1)   # fidelity alone: no racing
    result = run_study(spec, tmp_path / "out")
    df = table(tmp_path / "out")
    assert set(df["rounds"]) == {2, 6} and set(df["rung"]) == {0, 1}
    defaults = (df["param_beta"] == 0.9) & (df["param_k"] == 5) & (df["param_ns"] == 5) & (df["param_p"] == 0.4)
    assert sorted(df[defaults]["rounds"]) == [2, 6]        # the start point always goes on to full rounds
    for _, rows in df.groupby("generation"):
        n0 = (rows["rung"] == 0).sum()
        won = rows[(rows["rung"] == 1) & ~defaults[rows.index]]
        assert len(won) <= math.ceil(n0 / 3)                 # the best third goes on (known points are not rows)
        rung0 = rows[rows["rung"] == 0]
        for _, row in won.iterrows():                        # each promoted point won its rung
            mine = rung0[rung0["individual"] == row["individual"]]["fitness"]
            if len(mine):
                assert (rung0["fitness"] > mine.iloc[0]).sum() < math.ceil(n0 / 3)
    assert result.simulated_rounds == int(df["simulated_rounds"].sum())
    assert result.simulated_rounds < 6 * len(df[df["rung"] == 0])      # less than every point at full rounds
    best = pd.read_csv(tmp_path / "out" / "trials.csv")
    from qsfl.config import load_toml

    for b in load_toml(tmp_path / "out" / "best.toml")["best"]:   # best configs are full-rounds evaluations
        if b.get("defaults"):                                     # validation returned the defaults: baseline.toml's
            assert b["trial"] == -1 and (tmp_path / "out" / "baseline.toml").is_file()
            continue
        assert (best[(best["individual"] == b["individual"])]["rounds"] == 6).any()
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["simulated_rounds"] == result.simulated_rounds and summary["fidelity"]["rungs"] == [2, 6]
    assert summary["wall_time_s"] > 0


def test_ga_with_fidelity_resumed_equals_an_uninterrupted_run(tmp_path):
    spec = spec_of(FIDELITY, ga__population=6, ga__generations=2)
    run_study(spec, tmp_path / "full")
    run_study(spec, tmp_path / "part", stop_after=0)
    run_study(spec, tmp_path / "part", resume=True)
    drop = DROP + ["simulated_rounds"]     # a promoted point re-simulates its lower rung after a crash
    pd.testing.assert_frame_equal(table(tmp_path / "full").drop(columns=drop), table(tmp_path / "part").drop(columns=drop))
    for name in ("logbook.csv", "best.toml"):
        assert (tmp_path / "full" / name).read_text() == (tmp_path / "part" / name).read_text()


@pytest.mark.parametrize("kill_at", [4, 7])     # inside rung 0, inside rung 1 of generation 0
def test_a_batch_killed_mid_rung_is_replayed_not_run_again(tmp_path, monkeypatch, kill_at):
    from tuning.trials import TrialsTable

    spec = spec_of(FIDELITY, ga__population=6, ga__generations=1)
    run_study(spec, tmp_path / "full")
    real = TrialsTable.append
    count = {"n": 0}

    def dying(self, row):
        real(self, row)
        count["n"] += 1
        if count["n"] == kill_at:
            raise KeyboardInterrupt            # as if killed right after this row was written

    monkeypatch.setattr(TrialsTable, "append", dying)
    with pytest.raises(KeyboardInterrupt):
        run_study(spec, tmp_path / "out")
    monkeypatch.undo()
    before = table(tmp_path / "out")
    assert len(before) == kill_at
    run_study(spec, tmp_path / "out", resume=True)
    after = table(tmp_path / "out")
    pd.testing.assert_frame_equal(after.iloc[:kill_at], before)          # untouched, timestamps included
    drop = DROP + ["simulated_rounds"]
    pd.testing.assert_frame_equal(after.drop(columns=drop), table(tmp_path / "full").drop(columns=drop))


def test_optuna_with_fidelity_tells_stopped_points_as_pruned_with_their_rung_value(tmp_path):
    spec = spec_of(FIDELITY, study__engine="optuna", optuna__n_trials=6, optuna__sampler="tpe",
                   fidelity__batch=3)
    run_study(spec, tmp_path / "out")
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path / 'out' / 'study.db'}")
    df = table(tmp_path / "out")
    states = [t.state.name for t in study.trials]
    assert len(states) == 6 and states[0] == "COMPLETE"          # trial 0: the defaults, a start point, always on
    assert states[:3].count("COMPLETE") in (1, 2) and states[3:].count("COMPLETE") == 1   # brackets of 3: 1 promoted
    for t in study.trials:
        assert list(t.intermediate_values) == [2]                               # its rung-0 fitness
        rows = df[df["trial"] == t.number]
        assert sorted(rows["rounds"]) == ([2] if t.state.name == "PRUNED" else [2, 6])
        assert t.intermediate_values[2] == pytest.approx(rows[rows["rounds"] == 2]["fitness"].iloc[0])


# ----- the simulation key and the cache -----------------------------------------------------------------------
def test_p_values_with_the_same_entries_per_segment_are_one_simulation():
    import qsfl

    base = SimConfig(dataset="digits", model="logreg", clients=4, rounds=2, batch_size=50,
                     strategy=StrategyConfig(name="qsfl", ns=4, k=4))
    n = 650                                       # logreg on digits: segments of 163, 163, 162, 162
    a, b = (base.with_overrides({"strategy.p": p}) for p in (0.1, 0.104))   # ceil(p*163)=17, ceil(p*162)=17
    c = base.with_overrides({"strategy.p": 0.11})                          # 18 entries
    assert simulation_key(a, n) == simulation_key(b, n) != simulation_key(c, n)
    ha, hb = qsfl.simulate(a), qsfl.simulate(b)
    pd.testing.assert_frame_equal(ha.df.drop(columns=["wall_time_s"]), hb.df.drop(columns=["wall_time_s"]))


def test_alpha_and_k_giving_the_same_k_and_beta_with_every_client_qualified_are_one_simulation():
    import qsfl

    base = SimConfig(dataset="digits", model="logreg", clients=4, rounds=2, batch_size=50,
                     strategy=StrategyConfig(name="qsfl", ns=2))
    n = 650
    assert simulation_key(base.with_overrides({"strategy.alpha": 0.5}), n) == \
        simulation_key(base.with_overrides({"strategy.k": 2}), n)
    all_in = [base.with_overrides({"strategy.k": 4, "strategy.beta": beta}) for beta in (0.1, 0.9)]
    assert simulation_key(all_in[0], n) == simulation_key(all_in[1], n)
    h0, h1 = (qsfl.simulate(c) for c in all_in)
    pd.testing.assert_frame_equal(h0.df.drop(columns=["wall_time_s"]), h1.df.drop(columns=["wall_time_s"]))
    some = [base.with_overrides({"strategy.k": 2, "strategy.beta": beta}) for beta in (0.1, 0.9)]
    assert simulation_key(some[0], n) != simulation_key(some[1], n)
    seeds = [base.replace(seed=s) for s in (0, 1)]
    assert simulation_key(seeds[0], n) == simulation_key(seeds[1], n)       # the cache adds seed and rounds


def test_unknown_strategy_options_keep_the_raw_table_in_the_key(monkeypatch):
    import tuning.simkey as simkey

    base = SimConfig(dataset="digits", model="logreg", clients=4, strategy=StrategyConfig(name="qsfl", ns=4))
    monkeypatch.setattr(simkey, "KNOWN_FIELDS", simkey.KNOWN_FIELDS - {"p"})
    a, b = (base.with_overrides({"strategy.p": p}) for p in (0.1, 0.104))
    assert simulation_key(a, 650) != simulation_key(b, 650)


def test_identical_simulations_are_simulated_once_and_batches_equal_single_runs(tmp_path):
    spec = spec_of()
    points = [Point({"beta": 0.5, "k": 6, "ns": 3, "p": 0.4}), Point({"beta": 0.1, "k": 6, "ns": 3, "p": 0.4}),
              Point({"beta": 0.3, "k": 2, "ns": 2, "p": 0.9})]
    batched = Evaluator(spec).evaluate(points, 3)
    single = Evaluator(spec, population_batch=False).evaluate(points, 3)
    assert batched[0].simulation == batched[1].simulation != batched[2].simulation       # K = C: beta unused
    assert [e.simulated_rounds for e in batched] == [3, 0, 3]                             # one seed, 3 rounds
    for a, b in zip(batched, single):
        assert a.fitness == pytest.approx(b.fitness, abs=1e-6)
        assert a.metrics["uplink_bytes"] == b.metrics["uplink_bytes"]


def test_an_evaluation_continued_from_a_lower_rung_equals_a_direct_one():
    spec = spec_of(TINY.replace("rounds = 3", "rounds = 6"))
    pts = [Point({"beta": 0.5, "k": 4, "ns": 3, "p": 0.4}), Point({"beta": 0.2, "k": 3, "ns": 2, "p": 0.2})]
    staged = Evaluator(spec)
    staged.evaluate(pts, 2, keep_states=True)
    continued = staged.evaluate(pts, 6)
    direct = Evaluator(spec).evaluate(pts, 6)
    def same(x: dict, y: dict) -> bool:      # bit for bit, NaN equal to NaN
        return x.keys() == y.keys() and all(x[k] == y[k] or (x[k] != x[k] and y[k] != y[k]) for k in x)

    for a, b in zip(continued, direct):
        assert same(a.metrics, b.metrics) and a.fitness == b.fitness
        assert all(same(r.metrics, q.metrics) for r, q in zip(a.per_seed, b.per_seed))
    assert [e.simulated_rounds for e in continued] == [4, 4]            # only the rounds after the lower rung


# ----- progress and summary -----------------------------------------------------------------------------------
def test_progress_lines_go_to_study_log_and_stderr(tmp_path, capsys):
    spec = spec_of(ga__generations=1)
    run_study(spec, tmp_path / "out")
    log = (tmp_path / "out" / "study.log").read_text().splitlines()
    evals = [line for line in log if " evaluation " in line]
    gens = [line for line in log if " generation " in line]
    assert len(evals) == len(table(tmp_path / "out")) and len(gens) == 2
    assert all(line[:4].isdigit() and line[4] == "-" for line in evals + gens)          # timestamped
    assert "best " in gens[-1] and "ETA" in evals[0] and "/" in evals[0].split("evaluation ")[1].split(":")[0]
    assert capsys.readouterr().err.count(" evaluation ") == len(evals)
    run_study(spec_of(ga__generations=0), tmp_path / "quiet", quiet=True)
    assert " evaluation " not in capsys.readouterr().err


def test_pareto_progress_shows_the_front_size(tmp_path):
    text = TINY.replace('formula = "final_accuracy - 0.5 * uplink_fraction"\ndirection = "maximize"',
                        'objectives = ["final_accuracy", "uplink_mb"]')
    run_study(spec_of(text, ga__generations=0), tmp_path / "out")
    lines = (tmp_path / "out" / "study.log").read_text().splitlines()
    assert all("Pareto front" in line for line in lines if " evaluation " in line)
