"""A grid study's report: every number in its tables and figures recomputed here from the trials rows it comes from
(the per-seed values in ``per_seed``), and ``qsfl report`` on a grid directory."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from tuning.spec import parse_spec

GRID = {
    "study": {"name": "rg", "engine": "grid", "seeds": [0, 1, 2]},
    "base": {"dataset": "digits", "model": "logreg", "rounds": 5, "batch_size": 20, "target_accuracy": 0.75},
    "metrics": {"oscillation_warmup": 1, "oscillation_threshold": 0.5},
    "grid": {"factors": {"clients": [4, 8]}, "arms": {"FedAvg": {"name": "fedavg"}, "QSFL": {"name": "qsfl"}}},
}


@pytest.fixture(scope="module")
def grid_dir(tmp_path_factory):
    from tuning.study import run_study

    out = tmp_path_factory.mktemp("rg") / "out"
    run_study(parse_spec(GRID), out)
    return out


def by_hand(out, clients, arm, metric):
    """The per-seed values of one grid point straight from the trials rows' per_seed JSON (NaN ones dropped)."""
    df = pd.read_csv(out / "trials.csv")
    row = df[(df["param_clients"] == clients) & (df["param_arm"] == arm)].iloc[0]
    values = [s["metrics"][metric] for s in json.loads(row["per_seed"])]
    return row, [float(v) for v in values if v is not None and not math.isnan(float(v))]


def t_interval(values):
    v = np.asarray(values, dtype=float)
    half = stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v))
    return v.mean(), v.mean() - half, v.mean() + half


def test_per_seed_values_average_to_the_trials_table(grid_dir):
    from tuning.results import load_study

    r = load_study(grid_dir)
    long = r.per_seed()
    assert len(long) == 4 * 3 and r.is_grid
    assert r.grid_factors() == [("clients", [4, 8]), ("arm", ["FedAvg", "QSFL"])]
    for metric in ("final_accuracy", "uplink_mb", "oscillation"):
        means = long.groupby("trial")[f"metric_{metric}"].mean()
        np.testing.assert_allclose(means.to_numpy(), r.trials.set_index("trial").loc[means.index,
                                                                                   f"metric_{metric}"].to_numpy())


def test_level_summary_and_tables_are_the_means_and_t_intervals_of_the_rows(grid_dir):
    from reports.grid import GRID_METRICS, level_summary, level_tables, metric_cell
    from tuning.results import load_study

    r = load_study(grid_dir)
    for metric, _, bounds in GRID_METRICS:
        summary = level_summary(r, "clients", metric, bounds=bounds)
        assert summary["series"].tolist() == ["FedAvg", "FedAvg", "QSFL", "QSFL"]
        for _, s in summary.iterrows():
            _, values = by_hand(grid_dir, int(s["level"]), s["series"], metric)
            assert s["n"] == len(values) and s["seeds"] == 3
            if not values:
                assert math.isnan(s["mean"])
                continue
            assert s["mean"] == pytest.approx(np.mean(values))
            if len(values) >= 3 and np.std(values) > 0:
                _, lo, hi = t_interval(values)
                lo_b, hi_b = bounds[0], (5.0 if bounds[1] is None else bounds[1])
                assert (s["low"], s["high"]) == pytest.approx((max(lo, lo_b), min(hi, hi_b)))
            else:
                assert s["low"] == s["high"] or math.isnan(s["low"])
    tables = dict(level_tables(r))
    assert list(tables) == ["clients = 4", "clients = 8"]
    for clients in (4, 8):
        table = tables[f"clients = {clients}"].set_index("configuration")
        for arm in ("FedAvg", "QSFL"):
            for metric, title, bounds in GRID_METRICS:
                s = level_summary(r, "clients", metric, bounds=bounds)
                s = s[(s["level"] == clients) & (s["series"] == arm)].iloc[0]
                assert table.loc[arm, title] == metric_cell(s["mean"], s["low"], s["high"], s["n"], s["seeds"])
            _, accs = by_hand(grid_dir, clients, arm, "final_accuracy")
            assert table.loc[arm, "final test accuracy"].startswith(f"{np.mean(accs):.4g}")


def test_the_metric_figures_draw_those_means_and_the_curves_those_runs(grid_dir):
    from reports import grid, plots
    from tuning.results import load_study

    r = load_study(grid_dir)
    summary = grid.level_summary(r, "clients", "final_accuracy", bounds=(0.0, 1.0))
    fig = plots.grid_metric(summary, xlabel="clients", ylabel="final test accuracy")
    lines = {line.get_label(): line for line in fig.axes[0].lines}
    for arm in ("FedAvg", "QSFL"):
        assert list(lines[arm].get_xdata()) == [4, 8]
        expected = [np.mean(by_hand(grid_dir, c, arm, "final_accuracy")[1]) for c in (4, 8)]
        np.testing.assert_allclose(lines[arm].get_ydata(), expected)
    curves = grid.level_curves(r, "clients")
    assert list(curves) == [4, 8] and list(curves[4]) == ["FedAvg", "QSFL"]
    row, _ = by_hand(grid_dir, 8, "QSFL", "final_accuracy")
    stored = json.loads(row["per_seed"])
    for frame, seed in zip(curves[8]["QSFL"], stored):
        assert frame["test_accuracy"].tolist() == seed["curve"]["test_accuracy"]
        assert frame["cum_uplink_bytes"].tolist() == seed["curve"]["cum_uplink_bytes"]
    # the accuracy-vs-uplink figure's line is the mean over seeds of those curves
    fig = plots.accuracy_vs_uplink(curves[8], log_x=True)
    line = next(ln for ln in fig.axes[0].lines if ln.get_label().startswith("QSFL"))
    np.testing.assert_allclose(line.get_ydata(), np.mean([s["curve"]["test_accuracy"] for s in stored], axis=0))
    np.testing.assert_allclose(line.get_xdata(), np.mean([s["curve"]["cum_uplink_bytes"] for s in stored], axis=0)
                               / 1e6)


def test_qsfl_report_on_a_grid_study(grid_dir):
    from reports.grid import level_tables
    from reports.report import write_report
    from tuning.results import load_study

    path = write_report(grid_dir)
    text = path.read_text()
    md = (grid_dir / "report.md").read_text()
    assert "QSFL grid study report" in text and "Results per level" in text and "Best configurations" not in text
    for name in ("grid_final_accuracy_vs_clients", "grid_oscillation_vs_clients", "grid_slowdown_vs_clients",
                 "grid_uplink_mb_vs_clients", "grid_uplink_clients_4", "grid_uplink_clients_8"):
        assert (grid_dir / "figures" / f"{name}.png").is_file(), name
        assert f"figures/{name}.png" in md
    for title, table in level_tables(load_study(grid_dir)):
        assert f"### {title}" in md
        for cell in table.to_numpy().ravel():
            assert str(cell).split(" [")[0] in text and str(cell) in md
