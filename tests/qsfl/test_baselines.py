"""The compression baselines (randk, qsgd, signsgd, stc): hand-computed bytes and compression, error feedback,
reproducible randomness, and runs in the simulator."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

import qsfl
from qsfl.comm import Ledger, qsgd_bits, qsgd_message, sign_message, ternary_message
from qsfl.config import SimConfig, StrategyConfig
from qsfl.engine.common import CohortResult
from qsfl.errors import ConfigError
from qsfl.sim import Simulation, simulate_many
from qsfl.strategies import QSGD, STC, RandK, SignSGD
from qsfl.strategies.qsgd import quantise
from qsfl.strategies.randk import random_k_mask
from qsfl.strategies.randomness import uniform


def cohort(updates, samples=None):
    w = torch.as_tensor(updates, dtype=torch.float32)
    return CohortResult(w, np.ones(len(w)), np.ones(len(w), dtype=np.int64) if samples is None else np.asarray(samples))


def run(strategy, updates, t=0, ids=None, g=None):
    ids = np.arange(len(updates)) if ids is None else np.asarray(ids)
    g = torch.zeros(len(updates[0])) if g is None else g
    led = Ledger()
    new, _ = strategy.aggregate(t, g, None, ids, cohort(updates), led)
    return new, led.close_round()


# ----- message sizes -----------------------------------------------------------------------------------------
def test_message_sizes_by_hand():
    # QSGD, s = 4: a sign bit + ceil(log2 5) = 3 level bits = 4 bits x 10 entries = 5 B, + norm 4 B + header 12 B
    assert qsgd_bits(4) == 4 and qsgd_message(10, 4).total == 12 + 4 + 5
    assert qsgd_bits(1) == 2 and qsgd_message(9610, 16).total == 12 + 4 + math.ceil(9610 * 6 / 8)
    # signSGD: 10 sign bits = 2 B + scale 4 B + header 12 B
    assert sign_message(10).total == 18 and sign_message(9610).total == 12 + 4 + 1202
    # STC: 2 of 10 -> positions: 8 B of int32 or a 2-byte bitmap -> 2; 1 byte of signs; mu 4 B
    assert ternary_message(2, 10).total == 12 + 4 + 1 + 2
    assert ternary_message(2, 10, "int32").total == 12 + 4 + 1 + 8
    assert ternary_message(97, 9610).total == 12 + 4 + 13 + 4 * 97     # int32 (388 B) beats the 1202-byte bitmap
    assert ternary_message(10, 10).total == 12 + 4 + 2                  # every entry: no positions


# ----- randk ---------------------------------------------------------------------------------------------------
def randk(**kw):
    return RandK(SimConfig(clients=8, seed=3, strategy=StrategyConfig(name="randk", **kw)), 10)


def test_randk_sends_k_random_entries_reproducibly():
    updates = np.arange(1, 41, dtype=np.float32).reshape(4, 10)
    new, row = run(randk(p=0.3), updates, t=2)
    # k = 3 of 10: 3 values + a 2-byte bitmap (smaller than 12 B of int32) + 12 B header, per client
    assert row["uplink_bytes"] == 4 * (12 + 12 + 2) and row["uplink_messages"] == 4
    mask = random_k_mask(3, 2, np.arange(4), 10, 3)
    assert (mask.sum(axis=1) == 3).all() and len({tuple(m) for m in mask}) > 1     # clients draw differently
    torch.testing.assert_close(new, torch.as_tensor((updates * mask).mean(axis=0)))
    # the same (seed, round, client) draws the same entries whoever else is in the call
    assert np.array_equal(random_k_mask(3, 2, np.array([2]), 10, 3)[0], mask[2])
    assert not np.array_equal(random_k_mask(3, 3, np.arange(4), 10, 3), mask)


def test_randk_draws_every_entry_equally_often():
    mask = random_k_mask(0, 0, np.arange(20000), 10, 3)
    np.testing.assert_allclose(mask.mean(axis=0), 0.3, atol=0.015)


def test_randk_error_feedback_keeps_the_unsent_entries():
    s = randk(p=0.3, error_feedback=True)
    updates = np.ones((1, 10), dtype=np.float32)
    run(s, updates, ids=[5])
    sent = random_k_mask(3, 0, np.array([5]), 10, 3)[0]
    assert s.residuals.get(5).tolist() == [0.0 if m else 1.0 for m in sent]


# ----- qsgd ----------------------------------------------------------------------------------------------------
def test_qsgd_levels_and_unbiasedness():
    v = torch.tensor([[3.0, -4.0, 0.0, 0.0]])           # norm 5; s = 4: 4|v_i|/5 = 2.4, 3.2, 0, 0
    many = v.repeat(20000, 1)
    rand = torch.as_tensor(uniform(0, 2, 0, np.arange(20000), 4), dtype=torch.float32)
    q = quantise(many, 4, rand)
    assert set(q[:, 0].tolist()) == {2.5, 3.75} and set(q[:, 1].tolist()) == {-3.75, -5.0}   # 5 * l / 4
    assert (q[:, 2:] == 0).all()
    torch.testing.assert_close(q.mean(dim=0), v[0], atol=0.02, rtol=0)                       # unbiased
    np.testing.assert_allclose((q[:, 0] == 3.75).float().mean().item(), 0.4, atol=0.015)      # P(round up) = 0.4
    assert torch.equal(quantise(torch.zeros(2, 4), 4, rand[:2]), torch.zeros(2, 4))           # zero update


def test_qsgd_bytes_per_client():
    s = QSGD(SimConfig(strategy=StrategyConfig(name="qsgd", levels=4)), 10)
    new, row = run(s, np.random.default_rng(0).normal(size=(3, 10)).astype(np.float32))
    assert row["uplink_bytes"] == 3 * 21 and torch.isfinite(new).all()


# ----- signsgd -------------------------------------------------------------------------------------------------
def test_signsgd_with_error_feedback_by_hand():
    s = SignSGD(SimConfig(strategy=StrategyConfig(name="signsgd")), 4)
    new, row = run(s, [[1.0, -2.0, 3.0, 0.0]], ids=[7])
    # scale = (1 + 2 + 3 + 0) / 4 = 1.5; sign(0) is sent as +1
    torch.testing.assert_close(new, torch.tensor([1.5, -1.5, 1.5, 1.5]))
    torch.testing.assert_close(s.residuals.get(7), torch.tensor([-0.5, -0.5, 1.5, -1.5]))
    assert row["uplink_bytes"] == 12 + 4 + 1
    # next round: p = update + residual
    new, _ = run(s, [[0.5, 0.5, 0.5, 1.5]], ids=[7])
    torch.testing.assert_close(new, torch.tensor([0.5, 0.5, 0.5, 0.5]))   # p = [0, 0, 2, 0]: scale 0.5, all +
    torch.testing.assert_close(s.residuals.get(7), torch.tensor([-0.5, -0.5, 1.5, -0.5]))
    no_ef = SignSGD(SimConfig(strategy=StrategyConfig(name="signsgd", error_feedback=False)), 4)
    run(no_ef, [[1.0, -2.0, 3.0, 0.0]], ids=[7])
    assert no_ef.residuals.get(7) is None


# ----- stc -----------------------------------------------------------------------------------------------------
def test_stc_by_hand():
    s = STC(SimConfig(strategy=StrategyConfig(name="stc", p=0.2)), 10)
    update = [[3.0, -5.0, 1.0, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0, -0.5]]
    new, row = run(s, update, ids=[1])
    # k = 2: entries 1 (-5) and 0 (3); mu = 4
    assert new.tolist() == [4.0, -4.0] + [0.0] * 8
    assert s.residuals.get(1).tolist() == [-1.0, -1.0, 1.0, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0, -0.5]
    assert row["uplink_bytes"] == 12 + 4 + 1 + 2   # mu, 2 sign bits in 1 byte, a 2-byte bitmap


# ----- in the simulator ----------------------------------------------------------------------------------------
N = 9610


@pytest.mark.parametrize("table, per_client", [
    ({"name": "randk", "p": 0.1}, 12 + 4 * 961 + 1202),
    ({"name": "qsgd", "levels": 16}, 12 + 4 + math.ceil(N * 6 / 8)),
    ({"name": "signsgd"}, 12 + 4 + 1202),
    ({"name": "stc", "p": 0.01}, 12 + 4 + 13 + 4 * 97),
])
def test_baselines_in_the_simulator(small_config, table, per_client):
    cfg = SimConfig.from_dict({**small_config.to_dict(), "client_fraction": 0.75, "strategy": table})
    h = qsfl.simulate(cfg)
    assert h.df["uplink_bytes"].tolist() == [6 * per_client] * 3
    assert h.df["downlink_bytes"].tolist() == [6 * (12 + 4 * N)] * 3
    assert h.status == "complete" and h.summary["compression_ratio"] == pytest.approx((12 + 4 * N) / per_client)
    # resumable (residuals, counter-based randomness) and batchable
    sim = Simulation(cfg)
    sim.run(until=1)
    cont = Simulation.from_state(cfg, sim.state()).run()
    cols = [c for c in h.df.columns if c != "wall_time_s"]
    pd.testing.assert_frame_equal(cont.df[cols], h.df[cols], check_exact=True)
    [batched] = simulate_many([cfg])
    assert batched.df["uplink_bytes"].tolist() == h.df["uplink_bytes"].tolist()


@pytest.mark.parametrize("table, fragment", [
    ({"name": "qsgd", "levels": 0}, "strategy.levels: 0 is out of range; allowed [1, 65536]"),
    ({"name": "qsgd", "p": 0.5}, "strategy.p: unknown key of strategy 'qsgd'"),
    ({"name": "signsgd", "error_feedback": 1}, "strategy.error_feedback: expected true or false"),
    ({"name": "stc", "p": 0.0}, "strategy.p: 0.0 is out of range"),
    ({"name": "randk", "ns": 3}, "strategy.ns: unknown key of strategy 'randk'"),
])
def test_baseline_configs_are_validated(table, fragment):
    with pytest.raises(ConfigError) as err:
        SimConfig.from_dict({"strategy": table})
    assert fragment in str(err.value)
