"""simulate_many: configs that differ only in strategy run in lockstep, each History equal to its own simulate."""

import numpy as np
import pandas as pd
import pytest
import torch

import qsfl
from qsfl.config import StrategyConfig
from qsfl.errors import ConfigError
from qsfl.sim import Simulation, simulate_many

EXACT = ["round", "n_sampled", "n_qualified", "sampled_clients", "qualified_clients", "segment_coverage",
         "uplink_bytes", "uplink_header_bytes", "uplink_value_bytes", "uplink_index_bytes", "uplink_meta_bytes",
         "uplink_messages", "downlink_bytes", "downlink_messages", "cum_uplink_bytes", "cum_downlink_bytes"]
CLOSE = ["test_accuracy", "test_loss", "train_loss"]

MIXED = [
    StrategyConfig(name="fedavg"),
    StrategyConfig(name="topk", p=0.2),
    StrategyConfig(name="topk", p=0.5, error_feedback=True),
    StrategyConfig(name="qsfl", beta=0.9, k=3, ns=3, p=0.3),
    StrategyConfig(name="qsfl", beta=0.2, alpha=0.5, ns=2, p=0.6, error_feedback=True),
    StrategyConfig(name="qsfl", beta=0.5, k=4, ns=5, p=0.1, selection="topk", relevance="weights"),
    StrategyConfig(name="qsfl", use_qj=False, ns=4, p=0.25, aggregate="official"),
    StrategyConfig(name="qsfl", use_scss=False, k=2),
]


def assert_same_run(got, want, got_weights=None, want_weights=None):
    assert got.status == want.status and got.reason == want.reason
    assert len(got.df) == len(want.df)
    pd.testing.assert_frame_equal(got.df[EXACT], want.df[EXACT], check_exact=True)
    pd.testing.assert_frame_equal(got.df[CLOSE], want.df[CLOSE], check_exact=False, atol=1e-5, rtol=0)
    if got_weights is not None:
        torch.testing.assert_close(got_weights, want_weights, atol=1e-5, rtol=0)


def alone(cfg):
    sim = Simulation(cfg)
    return sim.run(), sim.final_weights.cpu()


@pytest.fixture
def base(small_config):
    return small_config.replace(rounds=4, client_fraction=0.75)


def test_each_history_equals_its_own_simulate(base):
    configs = [base.replace(strategy=s) for s in MIXED]
    results = simulate_many(configs, return_states=True)
    assert len(results) == len(configs)
    for cfg, (history, state) in zip(configs, results):
        want, weights = alone(cfg)
        assert_same_run(history, want, state.weights, weights)
        assert history.config == cfg.to_dict()


def test_a_diverging_config_stops_and_the_others_go_on(base):
    # the same local training, but one config calls a mean loss above 1.0 a divergence
    configs = [base.replace(strategy=MIXED[3]), base.replace(strategy=MIXED[4], divergence_loss=1.0),
               base.replace(strategy=MIXED[0])]
    histories = simulate_many(configs)
    assert [h.status for h in histories] == ["complete", "diverged", "complete"]
    assert len(histories[1].df) < 4 and len(histories[0].df) == len(histories[2].df) == 4
    for cfg, history in zip(configs, histories):
        assert_same_run(history, alone(cfg)[0])


def test_configs_with_different_rounds_and_eval_every(base):
    configs = [base.replace(strategy=MIXED[3], rounds=2), base.replace(strategy=MIXED[4], rounds=5, eval_every=2),
               base.replace(strategy=MIXED[1], rounds=3)]
    histories = simulate_many(configs)
    assert [len(h.df) for h in histories] == [2, 5, 3]
    for cfg, history in zip(configs, histories):
        assert_same_run(history, alone(cfg)[0])


def test_continue_a_batch_from_states(base):
    configs = [base.replace(strategy=s) for s in (MIXED[2], MIXED[4], MIXED[5])]
    paused = simulate_many(configs, until=2, return_states=True)
    assert all(len(h.df) == 2 and s.next_round == 2 for h, s in paused)
    # one config starts fresh: it catches up to round 2 before the batch goes on in lockstep
    states = [paused[0][1], None, paused[2][1]]
    results = simulate_many(configs, states=states, return_states=True)
    for cfg, (history, state) in zip(configs, results):
        want, weights = alone(cfg)
        assert_same_run(history, want, state.weights, weights)
    # per-config stopping rounds
    mixed = simulate_many(configs, until=[1, None, 3])
    assert [len(h.df) for h in mixed] == [1, 4, 3]


def test_a_batch_state_continues_in_a_single_simulation_bit_for_bit(base):
    cfg = base.replace(strategy=MIXED[4])
    [(paused, state)] = simulate_many([cfg], until=2, return_states=True)
    assert len(paused.df) == 2
    sim = Simulation.from_state(cfg, state)
    full = sim.run()
    whole = Simulation(cfg)
    expected = whole.run()
    cols = [c for c in expected.df.columns if c != "wall_time_s"]
    pd.testing.assert_frame_equal(full.df[cols], expected.df[cols], check_exact=True)
    assert torch.equal(sim.final_weights, whole.final_weights)


def test_incompatible_configs_are_a_config_error(base):
    with pytest.raises(ConfigError, match=r"configs\[1\]\.lr: 0\.05 differs from configs\[0\]\.lr = 0\.1"):
        simulate_many([base, base.replace(lr=0.05)])
    with pytest.raises(ConfigError, match=r"configs\[2\]\.seed: 3 differs"):
        simulate_many([base, base, base.replace(seed=3)])
    assert simulate_many([]) == []


def test_public_entry_point_and_wall_time(base):
    histories = qsfl.simulate_many([base.replace(strategy=MIXED[0]), base.replace(strategy=MIXED[3])])
    assert all(np.all(h.df["wall_time_s"] > 0) for h in histories)
