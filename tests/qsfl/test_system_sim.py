"""Simulated time in a simulation: per-client bytes in the Ledger, round_time_s / cum_time_s, time_to_target."""

from __future__ import annotations

import math

import numpy as np
import pytest

import qsfl
from qsfl.comm import Ledger, dense_message, meta_message, sparse_message
from qsfl.config import SimConfig, load_config
from qsfl.errors import ConfigError
from qsfl.sim import Simulation, _Run, simulate_many
from qsfl.strategies.base import RoundInfo
from qsfl.strategies.topk import bill_sparse
from qsfl.strategy_config import StrategyConfig, strategy_names
from qsfl.system import SystemConfig, Tier

BASE = SimConfig(dataset="digits", model="mlp", clients=6, rounds=3, batch_size=20, seed=1, engine="batched")
N_PARAMS = 9610   # mlp 64-128-10 on digits


# ------------------------------------------------------------------------------------------ ledger

def test_ledger_bytes_by_client():
    led = Ledger()
    led.downlink(dense_message(10), clients=[3, 1])
    led.uplink(meta_message(), clients=np.array([1, 3]))
    led.uplink(sparse_message(2, 5, "int32"), count=1, clients=[3])
    led.uplink(meta_message(), count=2)                       # not attributed
    used = led.client_bytes()
    assert used.downlink == {3: 52, 1: 52}
    assert used.uplink == {1: 24, 3: 24 + 12 + 8 + 8}
    assert (used.unattributed_uplink, used.unattributed_downlink) == (48, 0)
    counts = led.close_round()
    assert counts["downlink_messages"] == 2 and counts["uplink_messages"] == 5
    assert counts["uplink_bytes"] == sum(used.uplink.values()) + used.unattributed_uplink
    assert led.client_bytes().uplink == {} and led.client_bytes().unattributed_uplink == 0
    with pytest.raises(ValueError, match="count 3 but 2 clients"):
        led.uplink(meta_message(), count=3, clients=[1, 2])


def test_bill_sparse_names_each_rows_client():
    named, anonymous = Ledger(), Ledger()
    counts, sizes = np.array([2, 5, 2, 0]), np.array([10, 10, 10, 7])
    bill_sparse(named, counts, sizes, "int32", clients=[7, 8, 9, 4])
    bill_sparse(anonymous, counts, sizes, "int32")
    assert named.close_round() == anonymous.close_round()
    fresh = Ledger()
    bill_sparse(fresh, counts, sizes, "int32", clients=[7, 8, 9, 4])
    want = {c: sparse_message(int(k), int(s), "int32").total for c, k, s in zip([7, 8, 9, 4], counts, sizes)}
    assert fresh.client_bytes().uplink == want


# ------------------------------------------------------------------------------- round time by hand

def test_fedavg_round_time_by_hand():
    system = SystemConfig(uplink=1.0e5, downlink=4.0e5, compute=50.0)
    cfg = BASE.replace(local_epochs=2, system=system, target_accuracy=0.3)
    sim = Simulation(cfg)
    history = sim.run()
    sizes = np.array([len(p) for p in sim.parts])
    message = dense_message(N_PARAMS).total
    want = message / 4.0e5 + 2 * sizes.max() / 50.0 + message / 1.0e5    # every client sampled; the largest is slowest
    np.testing.assert_allclose(history.df["round_time_s"], [want] * 3, rtol=1e-12)
    np.testing.assert_allclose(history.df["cum_time_s"], [want, 2 * want, 3 * want], rtol=1e-12)
    reached = history.df.index[history.df["test_accuracy"] >= 0.3][0]
    assert history.summary["time_to_target"] == pytest.approx((reached + 1) * want)
    assert history.summary["simulated_time_s"] == pytest.approx(3 * want)


def test_no_system_no_time():
    history = qsfl.simulate(BASE.replace(rounds=1))
    assert math.isnan(history.df["round_time_s"].iloc[0]) and math.isnan(history.df["cum_time_s"].iloc[0])
    assert history.summary["time_to_target"] is None and history.summary["simulated_time_s"] is None


def test_slow_tier_sets_the_pace_and_qsfl_unqualified_clients_upload_only_metadata(monkeypatch):
    """Record every round's bytes by client: they add up to the round's totals, and the round time is the
    slowest client's download + compute + upload."""
    seen = []
    original = _Run.round_time

    def spy(self, plan, cohort):
        seen.append((self.ledger.client_bytes(), dict(self.ledger._round), plan.client_ids.copy(),
                     np.asarray(cohort.num_samples).copy()))
        return original(self, plan, cohort)

    monkeypatch.setattr(_Run, "round_time", spy)
    system = SystemConfig(source="tiers", uplink=1e5, downlink=1e6, compute=100.0,
                          tiers=(Tier(share=0.5, scale=0.1), Tier(share=0.5)))
    cfg = BASE.replace(system=system, strategy=StrategyConfig(name="qsfl", k=3, ns=2, p=0.3))
    sim = Simulation(cfg)
    history = sim.run()
    prof = sim.federation.profiles
    for (used, totals, ids, n), row in zip(seen, history.df.itertuples()):
        assert sum(used.uplink.values()) == totals["uplink_bytes"]
        assert sum(used.downlink.values()) == totals["downlink_bytes"]
        unqualified = set(ids.tolist()) - set(row.qualified_clients)
        assert {used.uplink[c] for c in unqualified} == {meta_message().total}
        want = max(used.downlink[c] / prof.downlink[c] + n[i] / prof.compute[c] + used.uplink[c] / prof.uplink[c]
                   for i, c in enumerate(ids.tolist()))
        assert row.round_time_s == pytest.approx(want, rel=1e-12)
    assert sorted(set(prof.uplink)) == [1e4, 1e5]


@pytest.mark.parametrize("name", strategy_names())
def test_every_strategy_names_the_client_of_every_byte(name):
    strategy = StrategyConfig(name=name, **({"k": 3, "ns": 2} if name == "qsfl" else {}))
    history = qsfl.simulate(BASE.replace(rounds=2, system=SystemConfig(), strategy=strategy))
    assert np.all(np.isfinite(history.df["round_time_s"])) and np.all(history.df["round_time_s"] > 0)


@pytest.mark.parametrize("options", [{"variant": "authors_code"}, {"base": "pretrained"}, {"upload": "all"}])
def test_the_authors_code_round_names_the_client_of_every_byte(options):
    strategy = StrategyConfig(name="qsfl", k=3, ns=2, **options)
    history = qsfl.simulate(BASE.replace(rounds=2, system=SystemConfig(), strategy=strategy))
    assert np.all(np.isfinite(history.df["round_time_s"])) and np.all(history.df["round_time_s"] > 0)
    plain = qsfl.simulate(BASE.replace(rounds=2, strategy=strategy))          # the same bytes without a system
    assert history.df["uplink_bytes"].tolist() == plain.df["uplink_bytes"].tolist()


def test_downlink_compression_shortens_downloads():
    system = SystemConfig(uplink=1e9, downlink=1e4, compute=1e9)          # the downlink is the bottleneck
    dense = qsfl.simulate(BASE.replace(rounds=2, system=system, strategy=StrategyConfig(name="qsfl", k=3, ns=6)))
    compressed = qsfl.simulate(BASE.replace(rounds=2, system=system,
                                            strategy=StrategyConfig(name="qsfl", k=3, ns=6, downlink_p=0.4)))
    assert compressed.df["round_time_s"].iloc[1] < 0.5 * dense.df["round_time_s"].iloc[1]


def test_a_strategy_that_bills_without_naming_clients_cannot_be_timed(monkeypatch):
    from qsfl.strategies.fedavg import FedAvg

    def anonymous(self, round_index, global_weights, last_global_update, client_ids, cohort, ledger):
        ledger.uplink(dense_message(self.n_params), count=len(client_ids))          # no clients named
        return global_weights, RoundInfo(qualified=[int(c) for c in client_ids])

    monkeypatch.setattr(FedAvg, "aggregate", anonymous)
    cfg = BASE.replace(rounds=1, system=SystemConfig(), strategy=StrategyConfig(name="fedavg"))
    with pytest.raises(ConfigError, match="without naming their clients"):
        qsfl.simulate(cfg)


# ------------------------------------------------------------------------------ resume, lockstep, config

def test_paused_and_continued_time_equals_uninterrupted():
    cfg = BASE.replace(rounds=4, system=SystemConfig(source="lognormal", sigma=1.0))
    whole = qsfl.simulate(cfg)
    first = Simulation(cfg)
    first.run(until=2)
    resumed = Simulation.from_state(cfg, first.state()).run()
    np.testing.assert_array_equal(resumed.df["cum_time_s"], whole.df["cum_time_s"])


def test_simulate_many_times_equal_simulate():
    system = SystemConfig(source="lognormal", sigma=0.5)
    configs = [BASE.replace(system=system, strategy=StrategyConfig(name="qsfl", k=3, ns=ns)) for ns in (2, 3)]
    for cfg, history in zip(configs, simulate_many(configs)):
        np.testing.assert_allclose(history.df["round_time_s"], qsfl.simulate(cfg).df["round_time_s"], rtol=1e-12)


def test_system_table_in_config(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('rounds = 2\n[system]\nsource = "tiers"\nuplink = 2e5\n'
                    '[[system.tiers]]\nshare = 0.1\nscale = 0.1\n[[system.tiers]]\nshare = 0.9\n')
    cfg = load_config(path)
    assert cfg.system == SystemConfig(source="tiers", uplink=2e5, tiers=(Tier(0.1, scale=0.1), Tier(0.9)))
    assert SimConfig.from_dict(cfg.to_dict()) == cfg
    assert "system" not in SimConfig().to_dict() and SimConfig.from_dict(SimConfig().to_dict()).system is None
    changed = SimConfig().with_overrides({"system.source": "lognormal", "system.sigma": 0.5})
    assert changed.system == SystemConfig(source="lognormal", sigma=0.5)
    assert SimConfig(system={"compute": 10.0}).system == SystemConfig(compute=10.0)
    with pytest.raises(ConfigError, match=r"system.speed: unknown key"):
        SimConfig().with_overrides({"system.speed": 1})
    with pytest.raises(ConfigError, match=r"system.uplink: -1 is out of range"):
        SimConfig.from_dict({"system": {"uplink": -1}})
    with pytest.raises(ConfigError, match="system: expected a table"):
        SimConfig(system="fast")


def test_missing_trace_fails_before_any_round(tmp_path):
    cfg = BASE.replace(system=SystemConfig(source="trace", trace=str(tmp_path / "none.csv")))
    with pytest.raises(ConfigError, match="no such file"):
        Simulation(cfg)
