"""Symmetric downlink compression (qsfl ``downlink_p`` < 1): per-client copies, exact downlink bytes."""

import numpy as np
import pandas as pd
import pytest
import torch

import qsfl
from qsfl.comm import Ledger
from qsfl.config import QSFLConfig, SimConfig, StrategyConfig
from qsfl.engine.common import CohortResult
from qsfl.errors import ConfigError
from qsfl.sim import Simulation, simulate_many
from qsfl.strategies import QSFL

# n = 10, NS = 2: segments [0, 5) and [5, 10); downlink_p = 0.4 -> ceil(2.0) = 2 entries of a 5-entry segment:
# 12 header + 2 x 4 values + a 1-byte bitmap (smaller than 2 int32 indices) = 21 bytes per client
MSG = 12 + 8 + 1


def strategy(**kw):
    return QSFL(SimConfig(clients=4, strategy=QSFLConfig(ns=2, downlink_p=0.4, **kw)), 10)


def test_each_client_receives_the_top_p_of_its_segment_of_the_change_since_its_last_sync():
    s = strategy()
    led = Ledger()
    w0 = torch.zeros(10)
    plan = s.configure_round(0, w0, np.array([0, 1]), led)   # no change yet: copies stay w0
    assert torch.equal(plan.start, torch.zeros(2, 10))
    assert led.close_round()["downlink_bytes"] == 2 * MSG
    g1 = torch.tensor([1.0, -5.0, 2.0, 0.5, 3.0, 0.1, -4.0, 0.2, 6.0, -0.3])
    plan = s.configure_round(1, g1, np.array([0, 1]), led)
    # client 0 -> segment (1 + 0) mod 2 = 1: its two largest changes are at 8 (6.0) and 6 (-4.0)
    # client 1 -> segment 0: at 1 (-5.0) and 4 (3.0)
    expected = torch.zeros(2, 10)
    expected[0, [6, 8]] = torch.tensor([-4.0, 6.0])
    expected[1, [1, 4]] = torch.tensor([-5.0, 3.0])
    assert torch.equal(plan.start, expected)
    row = led.close_round()
    assert (row["downlink_bytes"], row["downlink_messages"], row["cum_downlink_bytes"]) == (2 * MSG, 2, 4 * MSG)
    # round 2, client 0 -> segment 0 of g1 - copy: 1 and 4 again; its copy keeps 6 and 8 (the unsent change stays)
    plan = s.configure_round(2, g1, np.array([0]), Ledger())
    assert plan.start[0].tolist() == [0.0, -5.0, 0.0, 0.0, 3.0, 0.0, -4.0, 0.0, 6.0, 0.0]
    assert torch.equal(s.copies.get(1), expected[1])


def test_updates_are_taken_from_each_clients_own_start():
    s = strategy(use_qj=False, p=1.0)
    s.configure_round(0, torch.zeros(10), np.array([0, 1]), Ledger())   # w_0 = 0: the clients' first copies
    g = torch.arange(10, dtype=torch.float32)
    plan = s.configure_round(3, g, np.array([0, 1]), Ledger())
    assert not torch.equal(plan.start[0], g)             # the copies lag behind the global model
    cohort = CohortResult(plan.start + 1.0, np.ones(2), np.ones(2, dtype=np.int64))
    new, info = s.aggregate(3, g, None, plan.client_ids, cohort, Ledger())
    torch.testing.assert_close(new, g + 1.0)              # d_i = w_i - copy_i = 1 everywhere
    assert info.segment_coverage == [1, 1]


def test_a_simulation_bills_the_compressed_downlink_exactly(small_config):
    cfg = small_config.replace(client_fraction=0.75, strategy=QSFLConfig(downlink_p=0.4))
    h = qsfl.simulate(cfg)
    # 6 sampled clients; segments of 1602/1601 entries: 641 values + a 201-byte bitmap; dense is 12 + 4 * 9610
    assert h.df["downlink_bytes"].tolist() == [6 * (12 + 4 * 641 + 201)] * 3
    assert h.df["downlink_messages"].tolist() == [6] * 3
    dense = qsfl.simulate(cfg.replace(strategy=QSFLConfig()))
    assert dense.df["downlink_bytes"].iloc[0] / h.df["downlink_bytes"].iloc[0] > 5
    assert h.summary["final_accuracy"] > 0.3


def test_downlink_compression_resumes_bit_for_bit_and_batches(small_config):
    cfg = small_config.replace(rounds=4, client_fraction=0.5,
                               strategy=QSFLConfig(k=2, ns=3, p=0.5, downlink_p=0.3, error_feedback=True))
    whole = Simulation(cfg)
    expected = whole.run()
    sim = Simulation(cfg)
    sim.run(until=2)
    state = sim.state()
    assert state.strategy["copies"]["matrix"] is not None and state.strategy["initial"] is not None
    cont = Simulation.from_state(cfg, state)
    history = cont.run()
    cols = [c for c in expected.df.columns if c != "wall_time_s"]
    pd.testing.assert_frame_equal(history.df[cols], expected.df[cols], check_exact=True)
    assert torch.equal(cont.final_weights, whole.final_weights)
    other = cfg.replace(strategy=QSFLConfig(k=3, ns=2, p=0.4))
    for got, want in zip(simulate_many([cfg, other]), [expected, qsfl.simulate(other)]):
        assert got.df["downlink_bytes"].tolist() == want.df["downlink_bytes"].tolist()
        assert got.df["qualified_clients"].tolist() == want.df["qualified_clients"].tolist()
        np.testing.assert_allclose(got.df["test_accuracy"], want.df["test_accuracy"], atol=1e-5)


@pytest.mark.parametrize("table, fragment", [
    ({"name": "qsfl", "downlink_p": 0.0}, "strategy.downlink_p: 0.0 is out of range; allowed (0.0, 1.0]"),
    ({"name": "fedavg", "downlink_p": 0.5}, "strategy.downlink_p: unknown key of strategy 'fedavg'"),
])
def test_downlink_p_is_validated(table, fragment):
    with pytest.raises(ConfigError) as err:
        SimConfig.from_dict({"strategy": table})
    assert fragment in str(err.value)
    assert StrategyConfig(name="qsfl").downlink_p == 1.0   # the dense downlink is the default
