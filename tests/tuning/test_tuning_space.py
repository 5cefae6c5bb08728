"""Search space: gene decoding, integer/log params, the NS <= K repair, and spec validation errors."""

from __future__ import annotations

import copy
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qsfl.config import SimConfig, StrategyConfig
from qsfl.errors import ConfigError
from tuning.space import Param, build_space, effective_k
from tuning.spec import parse_spec

BASE = SimConfig(dataset="digits", model="mlp", clients=10, rounds=3, strategy=StrategyConfig(name="qsfl"))

SPEC = {
    "study": {"name": "t", "seeds": [0]},
    "base": {"dataset": "digits", "model": "mlp", "clients": 10, "rounds": 3},
    "space": {"beta": {"low": 0.0, "high": 1.0}, "k": {"low": 1, "high": 10}, "ns": {"low": 1, "high": 8},
              "p": {"low": 0.05, "high": 1.0}},
    "objective": {"formula": "final_accuracy - 0.1 * uplink_fraction", "direction": "maximize"},
    "ga": {"population": 4, "generations": 2},
}


@given(st.floats(0, 1), st.integers(1, 5), st.integers(0, 30))
@settings(max_examples=200, deadline=None)
def test_int_decode_in_bounds_and_encode_roundtrip(g, low, width):
    p = Param("ns", "strategy.ns", low, low + width, type="int")
    v = p.decode(g)
    assert isinstance(v, int) and low <= v <= low + width
    assert p.decode(p.encode(v)) == v


@given(st.floats(0, 1))
@settings(max_examples=100, deadline=None)
def test_log_and_step_decode(g):
    lr = Param("lr", "lr", 0.001, 1.0, log=True)
    v = lr.decode(g)
    assert 0.001 <= v <= 1.0
    assert lr.decode(lr.encode(v)) == pytest.approx(v, rel=1e-9)
    ep = Param("local_epochs", "local_epochs", 1, 8, type="int", log=True)
    assert 1 <= ep.decode(g) <= 8
    stepped = Param("beta", "strategy.beta", 0.0, 1.0, step=0.1)
    assert round(stepped.decode(g) * 10) == pytest.approx(stepped.decode(g) * 10)


def test_integers_equally_likely():
    p = Param("k", "strategy.k", 1, 4, type="int")
    counts = {v: 0 for v in range(1, 5)}
    for i in range(1000):
        counts[p.decode((i + 0.5) / 1000)] += 1
    assert set(counts.values()) == {250}


def test_repair_clamps_ns_to_k_and_records_it():
    space = build_space(copy.deepcopy(SPEC["space"]), BASE)
    params, note, penalty = space.repair({"beta": 0.5, "k": 3, "ns": 7, "p": 0.5}, BASE)
    assert params["ns"] == 3 and note == "ns 7->3" and penalty == ""
    params, note, _ = space.repair({"beta": 0.5, "k": 5, "ns": 5, "p": 0.5}, BASE)
    assert params["ns"] == 5 and note == ""


def test_penalty_mode_refuses_to_simulate():
    space = build_space({**copy.deepcopy(SPEC["space"]), "constraint": "penalty"}, BASE)
    params, note, penalty = space.repair({"beta": 0.5, "k": 2, "ns": 7, "p": 0.5}, BASE)
    assert params["ns"] == 7 and note == "" and "ns <= k" in penalty


def test_effective_k_from_alpha_and_cohort():
    assert effective_k({"alpha": 0.7}, BASE) == 7
    assert effective_k({"k": 10}, BASE.replace(client_fraction=0.5)) == 5
    assert effective_k({}, BASE) == math.ceil(0.7 * 10)


def test_valid_spec_parses():
    spec = parse_spec(copy.deepcopy(SPEC))
    assert spec.space.names == ["beta", "k", "ns", "p"]
    assert spec.base.strategy.name == "qsfl"
    assert spec.objective.directions == ("maximize",)


def _with(path: str, value):
    raw = copy.deepcopy(SPEC)
    node = raw
    parts = path.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    if value is _DELETE:
        del node[parts[-1]]
    else:
        node[parts[-1]] = value
    return raw


_DELETE = object()


@pytest.mark.parametrize("path, value, fragment", [
    ("study.bogus", 1, "study.bogus: unknown key; valid keys: study.name"),
    ("ga.popsize", 4, "ga.popsize: unknown key; valid keys: ga.population"),
    ("space.beta.lo", 0.0, "space.beta.lo: unknown key; valid keys: space.beta.low"),
    ("space.beta.low", 0.9, None),
    ("space.beta", {"low": 0.6, "high": 0.1}, "space.beta: low 0.6 > high 0.1; need low <= high"),
    ("space.beta.high", 2.0, "space.beta.high: 2.0 is out of range; allowed [0.0, 1.0]"),
    ("space.k.high", 11, "space.k.high: 11 is out of range; allowed [1, 10]"),
    ("space.ns.high", 0, "space.ns.high: 0 is out of range; allowed [1, inf]"),
    ("space.p.low", 0.0, "space.p.low: 0.0 is out of range; allowed (0.0, 1.0]"),
    ("space.gamma", {"low": 0, "high": 1}, "space.gamma: unknown parameter 'gamma'; valid: beta, k"),
    ("space.ns.type", "float", "space.ns.type: ns is an integer parameter"),
    ("space.lr", {"low": 0.0, "high": 1.0, "log": True}, "space.lr.low: 0.0 is out of range"),
    ("ga.population", 1, "ga.population: 1 is out of range; allowed [2, inf]"),
    ("ga.crossover", "uniform", "ga.crossover: unknown value 'uniform'; valid: sbx, blend"),
    ("ga.cxpb", 1.5, "ga.cxpb: 1.5 is out of range"),
    ("optuna.sampler", "grid", "optuna.sampler: unknown value 'grid'; valid: tpe, gp, cmaes, nsga2, random, ga"),
    ("optuna.pruner", "asha", "optuna.pruner: unknown value 'asha'; valid: none, median, hyperband"),
    ("study.engine", "ray", "study.engine: unknown value 'ray'; valid: ga, grid, optuna, random"),
    ("study.seeds", [], "study.seeds: expected a non-empty list"),
    ("study.eval_seeds", [0, 5], "study.eval_seeds: [0] also in study.seeds"),
    ("base.clients", 0, "base.clients: 0 is out of range"),
    ("base.strategy", {"name": "fedavg"}, "space.beta: 'beta' is not a parameter of strategy 'fedavg'"),
    ("base.nonsense", 1, "base.nonsense: unknown key"),
    ("objective.formula", "__import__('os').system('true')", "objective.formula: call of"),
    ("objective.direction", "up", "objective.direction: unknown value 'up'; valid: maximize, minimize"),
    ("objective.weights", {"accuracy": 1.0}, None),
    ("extra", {}, "extra: unknown section; valid sections: study, base, space, objective, ga, grid, optuna"),
    ("space", _DELETE, "space: missing section"),
])
def test_bad_spec_names_the_key(path, value, fragment):
    raw = _with(path, value)
    if path == "objective.weights":
        del raw["objective"]["formula"]
        fragment = "objective.weights.accuracy: unknown metric; valid metrics: final_accuracy"
    if path == "space.beta.low":
        raw["space"]["beta"]["high"] = 0.5
        fragment = "space.beta: low 0.9 > high 0.5; need low <= high"
    with pytest.raises(ConfigError) as err:
        parse_spec(raw)
    assert fragment in str(err.value)


def test_multi_objective_rules():
    raw = copy.deepcopy(SPEC)
    raw["objective"] = {"objectives": ["final_accuracy", "uplink_mb"]}
    spec = parse_spec(raw)
    assert spec.objective.directions == ("maximize", "minimize") and spec.ga.nsga2
    raw["optuna"] = {"pruner": "median"}
    with pytest.raises(ConfigError, match="optuna.pruner: 'median' needs a single objective"):
        parse_spec(raw)
    raw["optuna"] = {}
    raw["ga"]["nsga2"] = False
    with pytest.raises(ConfigError, match="ga.nsga2: false"):
        parse_spec(raw)
