"""The report's accuracy-vs-total-bytes and accuracy-vs-simulated-time figures (issue 12)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from qsfl.config import QSFLConfig, SimConfig
from qsfl.sim import simulate_many
from qsfl.system import SystemConfig
from reports import plots
from reports.figures import _run_figures

BASE = SimConfig(dataset="digits", model="mlp", clients=4, rounds=3, batch_size=50, seed=0, eval_every=1)


@pytest.fixture(scope="module")
def runs():
    """Two labels, two seeds each, with a device model (so simulated time)."""
    timed = BASE.replace(system=SystemConfig(source="lognormal", uplink=1e4, downlink=4e4))
    out = {}
    for label, strategy in (("dense", QSFLConfig(k=2, ns=2)), ("down0.4", QSFLConfig(k=2, ns=2, downlink_p=0.4))):
        out[label] = [simulate_many([timed.replace(seed=s, strategy=strategy)])[0] for s in (0, 1)]
    return out


@pytest.mark.parametrize("kind", ["total", "time"])
def test_accuracy_against_total_bytes_and_simulated_time(runs, kind):
    draw = plots.accuracy_vs_total_bytes if kind == "total" else plots.accuracy_vs_time
    ax = draw(runs, target=0.5).axes[0]
    assert ax.get_xlabel() == ("cumulative uplink + downlink (MB)" if kind == "total" else "simulated time (s)")
    lines = [line for line in ax.get_lines() if not line.get_label().startswith("_")]   # not the target line
    assert [line.get_label() for line in lines] == ["dense (n=2)", "down0.4 (n=2)"]
    for line, histories in zip(lines, runs.values()):
        x, y = line.get_data()
        if kind == "total":
            want = np.mean([(h.df["cum_uplink_bytes"] + h.df["cum_downlink_bytes"]) / 1e6 for h in histories], axis=0)
        else:
            want = np.mean([h.df["cum_time_s"] for h in histories], axis=0)
        np.testing.assert_allclose(x, want)
        np.testing.assert_allclose(y, np.mean([h.df["test_accuracy"] for h in histories], axis=0))
    # the compressed downlink is the leftmost line at every round in bytes
    dense, compressed = (line.get_data()[0] for line in lines)
    if kind == "total":
        assert (compressed < dense).all()


def figure_names(runs) -> list[str]:
    names: list[str] = []
    study = SimpleNamespace(compare_runs=runs, histories={}, compare=None)
    _run_figures(study, lambda name, *args: names.append(name))
    return names


def test_the_report_draws_them_when_the_histories_have_the_columns(runs):
    names = figure_names(runs)
    assert {"convergence_total", "convergence_time"} <= set(names)
    untimed = {label: [simulate_many([BASE.replace(strategy=QSFLConfig(k=2, ns=2))])[0]] for label in ("a",)}
    names = figure_names(untimed)
    assert "convergence_total" in names and "convergence_time" not in names   # no system model: no time axis
