"""Diverging runs stop early: ``qsfl.simulate`` ends a run whose training loss is NaN/inf or above
``divergence_loss`` with ``History.status == "diverged"`` and a reason naming the round, keeps the rows of
the rounds before it, and the tuning objective turns such a run into a failed evaluation with that reason.
(Diverging trials inside whole studies: tests/e2e/test_reliability_studies.py.)"""

from __future__ import annotations

import math
import re

import pytest

import qsfl
from qsfl.config import SimConfig, StrategyConfig
from qsfl_cli import main

ROUND = re.compile(r"at round (\d+)")


def diverging(**changes) -> SimConfig:
    """mlp on digits with lr = 50: the loss explodes in the first local epoch."""
    base = dict(dataset="digits", model="mlp", clients=4, rounds=6, batch_size=20, seed=0, lr=50.0,
                strategy=StrategyConfig(name="qsfl", ns=2, k=2))
    base.update(changes)
    return SimConfig(**base)


def stopped_round(history: qsfl.History) -> int:
    match = ROUND.search(history.reason or "")
    assert match, f"reason does not name the round: {history.reason!r}"
    return int(match.group(1))


@pytest.mark.parametrize("engine", ["batched", "sequential"])
def test_lr_50_stops_early_as_diverged_naming_the_round(engine):
    cfg = diverging(engine=engine)
    h = qsfl.simulate(cfg)
    assert h.status == "diverged" and h.diverged
    r = stopped_round(h)
    assert r < cfg.rounds                        # stopped early
    assert len(h.df) == r                        # exactly the rounds before the diverging one are kept
    assert "divergence_loss" in h.reason or "NaN" in h.reason
    s = h.summary
    assert s["status"] == "diverged" and s["reason"] == h.reason and s["rounds_run"] == r


def test_non_finite_loss_is_named_as_such():
    h = qsfl.simulate(diverging(lr=1e30, strategy=StrategyConfig(name="fedavg")))
    assert h.status == "diverged"
    assert h.reason.startswith("NaN/inf training loss at round ")


def test_divergence_after_some_rounds_keeps_the_earlier_rows():
    # One client (so its loss is the round's train_loss) with heavy momentum: the loss creeps up round after
    # round. A threshold between a round's loss and the highest loss before it must stop the run exactly there.
    cfg = diverging(clients=1, lr=0.5, momentum=0.95, rounds=6, strategy=StrategyConfig(name="fedavg"))
    losses = qsfl.simulate(cfg).df["train_loss"].tolist()
    rises = [r for r in range(1, len(losses)) if losses[r] > max(losses[:r]) * 1.001]
    assert rises, f"no round's loss rises above all earlier ones: {losses}"
    r = rises[0]
    threshold = (losses[r] + max(losses[:r])) / 2
    h = qsfl.simulate(cfg.replace(divergence_loss=threshold))
    assert h.status == "diverged" and stopped_round(h) == r and len(h.df) == r
    assert h.df["train_loss"].tolist() == pytest.approx(losses[:r])
    assert f"> divergence_loss {threshold:g} at round {r}" in h.reason


def test_a_sane_run_is_complete_and_a_lower_threshold_stops_it():
    cfg = diverging(lr=0.05, rounds=2)
    h = qsfl.simulate(cfg)
    assert h.status == "complete" and h.reason is None and len(h.df) == 2
    # the same run with a threshold below its first loss stops at round 0
    h0 = qsfl.simulate(cfg.replace(divergence_loss=1e-6))
    assert h0.status == "diverged" and stopped_round(h0) == 0 and h0.df.empty


def test_diverged_history_round_trips_through_save(tmp_path):
    h = qsfl.simulate(diverging())
    back = qsfl.History.load(h.save(tmp_path / "h"))
    assert back.status == "diverged" and back.reason == h.reason


def test_cli_prints_the_divergence(tmp_path, capsys):
    rc = main(["simulate", "--dataset", "digits", "--model", "mlp", "--clients", "4", "--rounds", "3",
               "--lr", "50", "--out", str(tmp_path / "o"), "--quiet"])
    out = capsys.readouterr().out
    assert rc == 0                                # a diverged run is a result, not a usage error
    assert "diverged (" in out and "at round 0" in out and "Traceback" not in out


def test_objective_records_a_diverged_seed_as_failed_with_the_reason():
    from tuning.objective import run_seed

    res = run_seed(diverging())
    assert res.status == "failed"
    assert res.reason.startswith("diverged: ") and ROUND.search(res.reason)
    assert all(math.isnan(v) for v in res.metrics.values())
