"""qsfl compare's statistics, per-client fairness and choice of configs, on hand-computed cases."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import assert_interrupted_cleanly, interrupt_at

from qsfl import fairness
from qsfl.config import dump_toml
from qsfl.errors import ConfigError
from reports import stats

T_975_2 = 4.302652729749462   # Student t quantile, 0.975, 2 degrees of freedom


# ----- confidence intervals and tests ----------------------------------------------------------------------
def test_mean_ci_t_interval_by_hand():
    mean, lo, hi = stats.mean_ci([1.0, 2.0, 3.0], method="t")   # s = 1, n = 3
    half = T_975_2 / math.sqrt(3)
    assert mean == 2.0 and lo == pytest.approx(2 - half) and hi == pytest.approx(2 + half)
    assert stats.mean_ci([5.0], method="t")[0] == 5.0 and math.isnan(stats.mean_ci([5.0])[1])
    assert all(math.isnan(v) for v in stats.mean_ci([]))
    assert stats.mean_ci([1.0, float("nan"), 3.0], method="t")[0] == 2.0          # non-finite values dropped


def test_mean_ci_bootstrap_is_seeded_and_inside_the_range():
    a = stats.mean_ci([1.0, 2.0, 3.0, 4.0], method="bootstrap", seed=3)
    assert a == stats.mean_ci([1.0, 2.0, 3.0, 4.0], method="bootstrap", seed=3)
    assert 1.0 <= a[1] < a[0] == 2.5 < a[2] <= 4.0


def test_welch_by_hand():
    a, b = [0.80, 0.82, 0.84], [0.70, 0.75, 0.71]
    # means 0.82 and 0.72, variances 0.0004 and 0.0007: se = sqrt(0.0011 / 3), t = 0.1 / se,
    # df = (0.0011/3)^2 / ((0.0004/3)^2/2 + (0.0007/3)^2/2) = 3.7231
    t, se, df = stats._welch_t(np.array(a), np.array(b))
    assert se == pytest.approx(math.sqrt(0.0011 / 3)) and t == pytest.approx(0.1 / se) and df == pytest.approx(3.72308, 1e-4)
    res = stats.compare_means(a, b, method="t")
    assert res.method == "welch" and res.diff == pytest.approx(0.1) and res.statistic == pytest.approx(t)
    from scipy.stats import ttest_ind
    assert res.p_value == pytest.approx(ttest_ind(a, b, equal_var=False).pvalue, rel=1e-9) == pytest.approx(0.0078004,
                                                                                                          rel=1e-4)
    assert res.low < 0.1 < res.high


def test_bootstrap_test_without_scipy(monkeypatch):
    monkeypatch.setattr(stats, "have_scipy", lambda: False)
    a, b = [0.80, 0.82, 0.84, 0.81], [0.70, 0.75, 0.71, 0.72]
    res = stats.compare_means(a, b)                                  # auto -> bootstrap without scipy
    assert res.method == "bootstrap" and res == stats.compare_means(a, b)          # seeded
    assert res.p_value < 0.1 and res.low < res.diff < res.high
    same = stats.compare_means([0.5, 0.6, 0.7, 0.55], [0.52, 0.58, 0.69, 0.57])
    assert same.p_value > 0.5
    _, lo, hi = stats.mean_ci([1.0, 2.0, 3.0])          # bootstrap: inside the data's range (t would give -0.48)
    assert 1.0 <= lo < 2.0 < hi <= 3.0


def test_tests_need_two_values_and_some_spread():
    one = stats.compare_means([0.8], [0.7, 0.6])
    assert one.diff == pytest.approx(0.15) and math.isnan(one.p_value)
    flat = stats.compare_means([2.0, 2.0], [1.0, 1.0])
    assert flat.diff == 1.0 and math.isnan(flat.p_value)
    rounding = stats.compare_means([0.1 + 0.2, 0.3], [0.5, 0.5])       # differ by float rounding only
    assert math.isnan(rounding.p_value)
    with pytest.raises(ValueError, match="method"):
        stats.compare_means([1, 2], [3, 4], method="anova")


# ----- fairness -----------------------------------------------------------------------------------------------
def test_participation_by_hand():
    df = pd.DataFrame({"sampled_clients": [[0, 1], [1, 2], [0, 1, 2]], "qualified_clients": [[0], [2], [0, 2]]})
    t = fairness.participation(df, 4)
    assert t["sampled"].tolist() == [2, 3, 2, 0] and t["qualified"].tolist() == [2, 0, 2, 0]
    assert t["not_qualified"].tolist() == [0, 3, 0, 0]


def test_client_accuracy_by_hand():
    counts = fairness.label_counts(np.array([0, 0, 1, 1, 0, 2]), [np.array([0, 1]), np.array([2, 4]), np.array([5])],
                                   3)
    assert counts.tolist() == [[2, 0, 0], [1, 1, 0], [0, 0, 1]]
    acc = fairness.client_accuracy(counts, np.array([1.0, 0.5, math.nan]))    # class 2 has no test sample
    assert acc[0] == 1.0 and acc[1] == 0.75 and math.isnan(acc[2])


def test_class_accuracy_of_a_model():
    model = torch.nn.Linear(2, 3, bias=False)
    weights = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.0, 0.0])   # logits (x0, x1, 0)
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [2.0, 3.0]])
    y = torch.tensor([0, 1, 1, 0])                           # predictions 0, 1, 0, 1
    acc = fairness.class_accuracy(model, weights, x, y, 3)
    assert acc[0] == 0.5 and acc[1] == 0.5 and math.isnan(acc[2])


def test_client_table_of_a_real_run():
    from qsfl.config import SimConfig
    from qsfl.sim import Simulation

    sim = Simulation(SimConfig(dataset="digits", model="logreg", clients=5, rounds=2, batch_size=50, seed=0,
                               partition="dirichlet", partition_options={"alpha": 0.3}))
    h = sim.run()
    table = fairness.client_table(sim, h.df, sim.final_weights)
    assert table["client"].tolist() == list(range(5)) and table["samples"].sum() == len(sim.dataset.y_train)
    assert (table["sampled"] == 2).all() and table["qualified"].sum() == h.df["n_qualified"].sum()
    # the sample-weighted mean of per-client accuracies is the accuracy on the training label mix
    acc = fairness.class_accuracy(sim.model, sim.final_weights, sim.x_test, sim.y_test, sim.dataset.num_classes)
    mix = np.bincount(sim.dataset.y_train.numpy(), minlength=10) / len(sim.dataset.y_train)
    weighted = float(np.average(table["accuracy"], weights=table["samples"]))
    assert weighted == pytest.approx(float(np.nansum(mix * acc) / mix[np.isfinite(acc)].sum()))
    s = fairness.summarise(table)
    assert s["accuracy_min"] <= s["accuracy_p10"] <= s["accuracy_mean"] <= s["accuracy_max"]


# ----- which configs ------------------------------------------------------------------------------------------
def test_spread_along_front_by_hand():
    from tuning.compare import spread_along_front

    line = [[i, 10 - i] for i in range(11)]
    assert spread_along_front(line, 3) == [0, 5, 10]
    assert spread_along_front(line, 2) == [0, 10]
    assert spread_along_front(line, 1) == [0]
    assert spread_along_front(line[:2], 5) == [0, 1]
    # a cluster at one end does not attract the picks: the far point and the ends are chosen
    pts = [[0, 10], [0.1, 9.9], [0.2, 9.8], [5, 5], [10, 0]]
    assert spread_along_front(pts, 3) == [0, 3, 4]


def test_top_picks_points_spread_along_a_pareto_front(tmp_path):
    from test_reports import build_study_dir

    from tuning.compare import tuned_configs
    from tuning.results import load_study

    out = build_study_dir(tmp_path / "out")
    spec = __import__("tomllib").loads((out / "spec.toml").read_text())
    spec["objective"] = {"objectives": ["final_accuracy", "uplink_mb"]}
    (out / "spec.toml").write_text(dump_toml(spec))
    front = [{"params": {"beta": 0.1 * i, "k": 4, "ns": 2, "p": 0.1}, "fitness": [0.5 + 0.04 * i, 0.1 * i]}
             for i in range(1, 8)]          # better accuracy costs more uplink, best accuracy first
    (out / "best.toml").write_text(dump_toml({"best": front, "directions": ["maximize", "minimize"]}))
    study = load_study(out)
    configs = tuned_configs(out, study.base_config(), top=3, configs_file=None, spec=study.spec)
    assert [round(p["beta"], 1) for _, p in configs.values()] == [0.1, 0.4, 0.7]


def test_compare_top_0_is_an_error(tmp_path):
    from tuning.compare import plan_comparison

    with pytest.raises(ConfigError, match=r"--top: 0 is out of range; allowed \[1, inf"):
        plan_comparison(tmp_path, top=0)


def test_compare_tables_have_intervals_tests_and_fairness(tmp_path):
    from test_reports import build_study_dir

    from qsfl_cli import compare_study

    out = build_study_dir(tmp_path / "out")
    compare_study(out, top=1, seeds=[5, 6, 7], rounds=2)
    summary = pd.read_csv(out / "compare.csv")
    runs = pd.read_csv(out / "compare" / "runs.csv")
    acc = runs.loc[runs["label"] == "qsfl-tuned-1", "final_accuracy"].to_numpy()
    row = summary[summary["label"] == "qsfl-tuned-1"].iloc[0]
    mean, lo, hi = stats.mean_ci(acc)
    assert (row["final_accuracy_mean"], row["final_accuracy_ci_low"], row["final_accuracy_ci_high"]) == \
        pytest.approx((mean, lo, hi))
    tests = pd.read_csv(out / "compare_tests.csv")
    assert len(tests) == 5 * 3 and set(tests["baseline"]) == {"fedavg", "topk", "qj-only", "scss-only", "qsfl-default"}
    t = tests[(tests["baseline"] == "fedavg") & (tests["metric"] == "final_accuracy")].iloc[0]
    base = runs.loc[runs["label"] == "fedavg", "final_accuracy"].to_numpy()
    assert t["p_value"] == pytest.approx(stats.compare_means(acc, base).p_value, nan_ok=True)
    fair = pd.read_csv(out / "compare_fairness.csv")
    assert list(fair["label"]) == list(summary["label"]) and (fair["runs"] == 3).all()
    clients = pd.read_csv(out / "compare" / "qsfl-tuned-1" / "seed5" / "clients.csv")
    assert list(clients.columns) == list(fairness.COLUMNS) and len(clients) == 8
    md = (out / "compare.md").read_text()
    assert "## Tuned vs baselines" in md and "## Per-client accuracy and uploads" in md and "Welch" in md
    assert "## Verdict" in md and "qsfl-tuned-1 is " in md


@pytest.mark.slow
@pytest.mark.parametrize("moment", ["importing", "pool-start", "running"])
def test_ctrl_c_stops_compare_with_workers_within_a_second(tmp_path, moment):
    """Ctrl-C (SIGINT to the whole process group, as a terminal sends it) with --workers 2 while torch is being
    imported, while the pool starts (its forkserver held by a test hook, so the signal lands before any worker
    exists: before the fix it was lost), and while the workers simulate: one line, no traceback of any process,
    exit within a second or two, every process gone."""
    from test_reports import build_study_dir

    out = build_study_dir(tmp_path / "out")
    argv = ("compare", str(out), "--top", "1", "--workers", "2", "--rounds", "200",
            "--seeds", ",".join(str(k) for k in range(5, 45)))            # minutes of work
    running = lambda: any((out / "compare").glob("*/seed*"))             # a run finished: the pool works
    result = interrupt_at(argv, running if moment == "running" else moment, tmp_path)
    assert_interrupted_cleanly(result)
    if moment != "importing":
        assert result["kids"], "expected the pool's processes (forkserver, resource tracker, workers)"
    assert not (out / "compare" / "runs.csv").exists()


def test_reports_compare_reads_without_simulating(tmp_path):
    """write_compare only reads compare/: with runs.csv and plan.toml copied, it rebuilds the same tables."""
    from test_reports import build_study_dir

    from qsfl_cli import compare_study
    from reports.compare import write_compare

    out = build_study_dir(tmp_path / "out")
    compare_study(out, top=1, seeds=[5], rounds=1)
    before = (out / "compare.csv").read_text()
    (out / "compare.csv").unlink()
    write_compare(out)
    assert (out / "compare.csv").read_text() == before
    shutil.rmtree(out / "compare")
    with pytest.raises(ConfigError, match="no comparison yet"):
        write_compare(out)
