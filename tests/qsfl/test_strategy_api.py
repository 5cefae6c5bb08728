"""Strategy API v2: per-strategy configs from one registry, configure_round/aggregate, metrics as columns."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

import qsfl
import qsfl.strategies.base as strategies_base
import qsfl.strategy_config as strategy_config
from qsfl.comm import Ledger
from qsfl.config import (
    STRATEGIES,
    FedAvgConfig,
    QSFLConfig,
    SimConfig,
    StrategyConfig,
    TopKConfig,
    load_config,
    strategy_names,
)
from qsfl.errors import ConfigError
from qsfl.sim import Simulation, simulate_many
from qsfl.strategies import RoundInfo, RoundPlan, Strategy, register_strategy, weighted_mean

N = 9610                       # digits mlp: 64*128 + 128 + 128*10 + 10 parameters
DENSE = 12 + 4 * N             # header + float32 values


@pytest.fixture
def base(small_config):
    return small_config.replace(client_fraction=0.75)   # 6 of 8 clients per round


# ----- today's bytes, unchanged (hand-computed; equal to the code before the Strategy API v2) -------------
def bitmap(size):
    return math.ceil(size / 8)


@pytest.mark.parametrize("strategy, up, meta", [
    (StrategyConfig(name="fedavg"), 6 * DENSE, 0),
    # k = ceil(0.1 * 9610) = 961 values + a 1202-byte bitmap (smaller than 961 int32 indices)
    (StrategyConfig(name="topk", p=0.1, error_feedback=True), 6 * (12 + 4 * 961 + bitmap(N)), 0),
    # 6 x QJ metadata (12 + 12); K = 3 senders; segments of 1602 or 1601 entries: 401 values + 201-byte bitmap
    (StrategyConfig(name="qsfl", k=3, ns=6, p=0.25), 6 * 24 + 3 * (12 + 4 * 401 + 201), 6 * 12),
    # authors' defaults: K = ceil(0.7 * 6) = 5; 641 values of a 1602/1601 segment + 201-byte bitmap
    (StrategyConfig(name="qsfl"), 6 * 24 + 5 * (12 + 4 * 641 + 201), 6 * 12),
    (StrategyConfig(name="qsfl", use_scss=False), 6 * 24 + 5 * DENSE, 6 * 12),      # QJ only: dense
    # SCSS only, int32 indices: segments of 2403/2402 entries -> 721 values + 721 indices, 6 senders
    (StrategyConfig(name="qsfl", use_qj=False, ns=4, p=0.3, index_encoding="int32"), 6 * (12 + 8 * 721), 0),
], ids=["fedavg", "topk", "qsfl", "qsfl-defaults", "qj-only", "scss-only"])
def test_bytes_per_round_are_unchanged_with_the_dense_downlink(base, strategy, up, meta):
    h = qsfl.simulate(base.replace(strategy=strategy))
    assert h.n_params == N
    assert h.df["uplink_bytes"].tolist() == [up] * 3
    assert h.df["uplink_meta_bytes"].tolist() == [meta] * 3
    assert h.df["downlink_bytes"].tolist() == [6 * DENSE] * 3          # the dense downlink, the default
    assert h.df["downlink_messages"].tolist() == [6] * 3
    assert h.df["cum_uplink_bytes"].tolist() == [up, 2 * up, 3 * up]


# ----- configs: one validated dataclass per strategy, from one registry ------------------------------------
def test_each_strategy_has_its_own_config_class():
    assert type(StrategyConfig()) is FedAvgConfig
    assert type(StrategyConfig(name="topk", p=0.2)) is TopKConfig
    cfg = StrategyConfig(name="qsfl", beta=0.5)
    assert type(cfg) is QSFLConfig and isinstance(cfg, StrategyConfig) and cfg.beta == 0.5
    assert QSFLConfig(ns=3) == StrategyConfig(name="qsfl", ns=3)
    assert STRATEGIES[:3] == ("fedavg", "topk", "qsfl") and set(STRATEGIES) <= set(strategy_names())
    assert SimConfig(strategy=TopKConfig(p=0.3)).to_dict()["strategy"] == {
        "name": "topk", "p": 0.3, "error_feedback": False, "index_encoding": "auto"}


@pytest.mark.parametrize("table, fragment", [
    ({"name": "fedavg", "ns": 6}, "strategy.ns: unknown key of strategy 'fedavg'; valid keys: strategy.name; "
                                  "'ns' is a key of strategy qsfl"),
    ({"name": "topk", "beta": 0.5}, "strategy.beta: unknown key of strategy 'topk'"),
    ({"name": "fedavg", "p": 0.5}, "'p' is a key of strategy topk, qsfl"),
    ({"name": "fedavg", "ns": 0}, "strategy.ns: 0 is out of range; allowed [1, inf]"),   # the value first
    ({"name": "qsfl", "gamma": 1}, "strategy.gamma: unknown key of strategy 'qsfl'; valid keys: strategy.name, "),
    ({"name": "fedsgd"}, "strategy.name: unknown value 'fedsgd'; valid: fedavg, topk, qsfl"),
])
def test_a_field_that_does_not_apply_is_an_error(table, fragment):
    with pytest.raises(ConfigError) as err:
        SimConfig.from_dict({"strategy": table})
    assert fragment in str(err.value)


def test_toml_strategy_table_and_dotted_overrides(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("clients = 6\n[strategy]\nname = 'fedavg'\nns = 4\n")
    with pytest.raises(ConfigError, match="strategy.ns: unknown key of strategy 'fedavg'"):
        load_config(path)
    path.write_text("clients = 6\n[strategy]\nname = 'qsfl'\nns = 4\n")
    cfg = load_config(path)
    assert cfg.strategy == QSFLConfig(ns=4)
    # switching the name keeps what applies (p for topk) and drops the rest (ns, beta, ...)
    topk = cfg.with_overrides({"strategy.p": 0.2}).with_overrides({"strategy.name": "topk"})
    assert topk.strategy == TopKConfig(p=0.2)
    assert cfg.with_overrides({"strategy.name": "fedavg"}).strategy == FedAvgConfig()
    with pytest.raises(ConfigError, match="strategy.ns: unknown key of strategy 'fedavg'"):
        cfg.with_overrides({"strategy.name": "fedavg", "strategy.ns": 3})
    with pytest.raises(ConfigError, match="strategy.gamma: unknown key; valid keys: strategy.name, "):
        cfg.with_overrides({"strategy.gamma": 3})


# ----- the Strategy ABC and a user's strategy --------------------------------------------------------------
@pytest.fixture
def registry(monkeypatch):
    """A private copy of the strategy registry (a test's registration does not leak)."""
    monkeypatch.setattr(strategy_config, "_CONFIGS", dict(strategy_config._CONFIGS))
    monkeypatch.setattr(strategies_base, "_STRATEGIES", dict(strategies_base._STRATEGIES))


def make_half_strategy():
    """A user's strategy: the lower half of the sampled ids train, each from its own start (global weights
    shifted by its id), the server averages their updates; a metric column counts the trainers."""
    from dataclasses import dataclass
    from typing import ClassVar

    @dataclass(frozen=True)
    class HalfConfig(StrategyConfig):
        name: str = "half"
        shift: float = 0.0
        strategy_name: ClassVar[str] = "half"

    class Half(Strategy):
        name = "half"
        config_class = HalfConfig

        def configure_round(self, round_index, global_weights, client_ids, ledger):
            ids = np.asarray(client_ids)[: max(1, len(client_ids) // 2)]
            starts = global_weights.unsqueeze(0) + self.scfg.shift * torch.as_tensor(
                ids, dtype=global_weights.dtype).unsqueeze(1)
            return RoundPlan(ids, starts, metrics={"n_trained": len(ids)})

        def aggregate(self, round_index, global_weights, last_global_update, client_ids, cohort, ledger):
            new = global_weights + weighted_mean(cohort.weights - global_weights, cohort.num_samples)
            return new, RoundInfo(qualified=[int(c) for c in client_ids], metrics={"round_parity": round_index % 2})

    return HalfConfig, Half


def test_a_registered_strategy_runs_with_its_own_plan_and_columns(base, registry, tmp_path):
    config_cls, half = make_half_strategy()
    register_strategy(half)
    assert "half" in strategy_names()
    cfg = SimConfig.from_dict({**base.to_dict(), "strategy": {"name": "half", "shift": 0.001}})
    assert type(cfg.strategy) is config_cls
    h = qsfl.simulate(cfg)
    assert h.df["n_trained"].tolist() == [3, 3, 3] and h.df["round_parity"].tolist() == [0, 1, 0]
    assert all(q == s[:3] for q, s in zip(h.df["qualified_clients"], h.df["sampled_clients"]))
    assert h.df["downlink_bytes"].tolist() == [0, 0, 0]          # this plan bills no downlink
    assert h.df["uplink_bytes"].tolist() == [0, 0, 0]
    h.save(tmp_path)
    back = qsfl.History.load(tmp_path)
    pd.testing.assert_frame_equal(back.df, h.df)
    # per-row start weights in a batch: each equals its own simulate
    other = cfg.with_overrides({"strategy.shift": 0.0})
    for got, alone in zip(simulate_many([cfg, other]), [qsfl.simulate(cfg), qsfl.simulate(other)]):
        np.testing.assert_allclose(got.df["test_accuracy"], alone.df["test_accuracy"], atol=1e-5)
    with pytest.raises(ValueError, match="already registered"):
        register_strategy(make_half_strategy()[1])


def test_the_strategy_base_is_abstract_and_checks_its_config(base):
    class NoAggregate(Strategy):
        name = "none"

    with pytest.raises(TypeError, match="abstract"):
        NoAggregate(base, 10)
    from qsfl.strategies import QSFL
    with pytest.raises(ConfigError, match="QSFL needs a QSFLConfig, got FedAvgConfig"):
        QSFL(base, 10)


def test_default_configure_round_is_the_dense_downlink(base):
    from qsfl.strategies import make_strategy
    strategy = make_strategy(base.replace(strategy=QSFLConfig()), 7)
    led = Ledger()
    g = torch.zeros(7)
    plan = strategy.configure_round(0, g, np.array([1, 4]), led)
    assert plan.client_ids.tolist() == [1, 4] and plan.start is g
    assert led.close_round()["downlink_bytes"] == 2 * (12 + 4 * 7)


def test_qsfl_reports_each_senders_segment_as_a_column(base):
    cfg = base.replace(strategy=QSFLConfig(k=3, ns=4))
    h = qsfl.simulate(cfg)
    for t, (qualified, segments) in enumerate(zip(h.df["qualified_clients"], h.df["segment_ids"])):
        assert segments == [(t + c) % 4 for c in qualified]
    sim = Simulation(cfg)
    sim.run(until=1)
    assert "segment_ids" in sim.state().rows[0]
