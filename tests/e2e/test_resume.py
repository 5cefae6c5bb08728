"""Resumable simulations: a run paused at round r and continued equals an uninterrupted run, bit for bit."""

import pickle

import pandas as pd
import pytest
import torch

from qsfl.config import StrategyConfig
from qsfl.errors import ConfigError
from qsfl.sim import Simulation
from qsfl.state import SimState

STRATEGIES = {
    "fedavg": StrategyConfig(name="fedavg"),
    "topk": StrategyConfig(name="topk", p=0.3, error_feedback=True),
    "qsfl": StrategyConfig(name="qsfl", k=3, ns=3, p=0.3, error_feedback=True),
}


def table(history):
    return history.df.drop(columns=["wall_time_s"])


def through_pickle(state):
    return pickle.loads(pickle.dumps(state))


@pytest.fixture
def resumable(small_config):
    return small_config.replace(rounds=5, client_fraction=0.75)


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_paused_and_continued_runs_equal_an_uninterrupted_run_bit_for_bit(resumable, name):
    cfg = resumable.replace(strategy=STRATEGIES[name])
    whole = Simulation(cfg)
    expected = whole.run()
    # a chain of pauses: each continuation starts from a pickled state in a fresh Simulation
    sim = Simulation(cfg)
    for pause in (1, 2, 4):
        partial = sim.run(until=pause)
        assert len(partial.df) == pause and sim.next_round == pause
        pd.testing.assert_frame_equal(table(partial), table(expected).iloc[:pause], check_exact=True)
        sim = Simulation.from_state(cfg, through_pickle(sim.state()))
    history = sim.run()
    pd.testing.assert_frame_equal(table(history), table(expected), check_exact=True)
    assert torch.equal(sim.final_weights, whole.final_weights)
    assert history.summary["total_uplink_bytes"] == expected.summary["total_uplink_bytes"]
    # pausing in place (same object) is the same thing
    same = Simulation(cfg)
    same.run(until=3)
    pd.testing.assert_frame_equal(table(same.run()), table(expected), check_exact=True)


def test_the_state_holds_the_strategy_residuals_and_the_sampler_position(resumable):
    cfg = resumable.replace(strategy=STRATEGIES["qsfl"])
    sim = Simulation(cfg)
    sim.run(until=2)
    state = sim.state()
    assert state.next_round == 2 and len(state.rows) == 2
    assert state.weights.device.type == "cpu" and state.last_update is not None
    assert state.strategy["residuals"]["matrix"].shape[1] == state.n_params
    assert state.cum_uplink_bytes == state.rows[-1]["cum_uplink_bytes"]
    # a snapshot: continuing the simulation does not change it, and it can be continued twice
    sim.run()
    assert state.next_round == 2 and len(state.rows) == 2
    a = Simulation.from_state(cfg, state).run()
    b = Simulation.from_state(cfg, state).run()
    pd.testing.assert_frame_equal(table(a), table(b), check_exact=True)


@pytest.mark.parametrize("name", ["fedavg", "qsfl"])
def test_continuing_with_more_rounds_equals_the_longer_run(small_config, name):
    cfg = small_config.replace(rounds=6, client_fraction=0.75, strategy=STRATEGIES[name])
    whole = Simulation(cfg)
    expected = whole.run()
    short = Simulation(cfg.replace(rounds=3))
    short.run()
    longer = Simulation.from_state(cfg, through_pickle(short.state()))
    history = longer.run()
    pd.testing.assert_frame_equal(table(history), table(expected), check_exact=True)
    assert torch.equal(longer.final_weights, whole.final_weights)
    assert history.config["rounds"] == 6


def test_a_shorter_config_evaluates_its_last_round_and_the_continuation_keeps_that_evaluation(small_config):
    cfg = small_config.replace(rounds=6, eval_every=4, strategy=STRATEGIES["qsfl"])
    expected = Simulation(cfg).run()
    assert expected.df["test_accuracy"].notna().tolist() == [False, False, False, True, False, True]
    short = Simulation(cfg.replace(rounds=3))
    assert short.run().df["test_accuracy"].notna().tolist() == [False, False, True]   # its last round
    history = Simulation.from_state(cfg, short.state()).run()
    assert history.df["test_accuracy"].notna().tolist() == [False, False, True, True, False, True]
    # the extra evaluation is the only difference
    pd.testing.assert_frame_equal(table(history).drop(index=2), table(expected).drop(index=2), check_exact=True)
    # pausing with until= instead does not evaluate the pause round: identical to the uninterrupted run
    paused = Simulation(cfg)
    assert paused.run(until=3).df["test_accuracy"].notna().tolist() == [False, False, False]
    pd.testing.assert_frame_equal(table(paused.run()), table(expected), check_exact=True)


def test_continuing_with_another_config_is_an_error(small_config):
    cfg = small_config.replace(strategy=STRATEGIES["qsfl"])
    sim = Simulation(cfg)
    sim.run(until=2)
    state = sim.state()
    other = cfg.replace(strategy=StrategyConfig(name="qsfl", k=3, ns=3, p=0.5, error_feedback=True))
    with pytest.raises(ConfigError, match=r"strategy: .* differs from the paused run's"):
        Simulation.from_state(other, state)
    with pytest.raises(ConfigError, match=r"lr: 0.2 differs from the paused run's 0.1"):
        Simulation.from_state(cfg.replace(lr=0.2), state)
    with pytest.raises(ConfigError, match=r"rounds: 1 is out of range; allowed \[2, inf\]"):
        Simulation.from_state(cfg.replace(rounds=1), state)


def test_a_diverged_state_stays_stopped(small_config):
    cfg = small_config.replace(lr=1e6, rounds=6)
    sim = Simulation(cfg)
    history = sim.run()
    assert history.status == "diverged"
    state = sim.state()
    assert state.status == "diverged"
    again = Simulation.from_state(cfg, state).run()
    assert again.status == "diverged" and again.reason == history.reason
    pd.testing.assert_frame_equal(table(again), table(history), check_exact=True)


def test_until_zero_and_past_the_end(small_config):
    sim = Simulation(small_config)
    assert len(sim.run(until=0).df) == 0
    state = sim.state()
    assert isinstance(state, SimState) and state.next_round == 0 and state.last_update is None
    assert len(sim.run(until=100).df) == small_config.rounds
    assert sim.state().next_round == small_config.rounds and sim.state().status == "running"   # may go on
