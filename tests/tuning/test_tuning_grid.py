"""Grid studies (``study.engine = "grid"``): factors over any config key crossed or zipped with labelled strategy
arms, times the seeds, through the one study loop; errors before the first simulation; rows equal plain
``qsfl.simulate`` runs; a stopped grid resumes without a lost or repeated row (the kill -9 test is in
test_reliability_studies.py)."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pandas as pd
import pytest
from helpers import REPO, run_qsfl, without_timing

from qsfl.errors import ConfigError
from tuning.objective import oscillation
from tuning.spec import parse_spec

ARMS = {"FedAvg": {"name": "fedavg"}, "QJ-only": {"name": "qsfl", "use_scss": False},
        "SCSS-only": {"name": "qsfl", "use_qj": False}, "QSFL": {"name": "qsfl"}}

GRID = {
    "study": {"name": "g", "engine": "grid", "seeds": [0, 1]},
    "base": {"dataset": "digits", "model": "logreg", "rounds": 4, "batch_size": 20, "target_accuracy": 0.7},
    "metrics": {"oscillation_warmup": 1},
    "grid": {"factors": {"clients": [4, 6]}, "arms": ARMS},
}


def grid(**changes) -> dict:
    raw = copy.deepcopy(GRID)
    for key, value in changes.items():
        section, _, name = key.partition("__")
        if value is None:
            raw[section].pop(name)
        else:
            raw[section][name] = value
    return raw


def test_points_are_the_product_of_the_factors_with_the_arms_varying_fastest():
    spec = parse_spec(grid(grid__factors={"clients": [4, 6], "partition_options": {"alpha": [0.5, 1.0]}}) | {
        "base": {**GRID["base"], "partition": "dirichlet"}})
    points = spec.space.points()
    assert len(points) == 2 * 2 * 4
    assert points[:5] == [{"clients": 4, "partition_options.alpha": 0.5, "arm": a} for a in ARMS] + \
        [{"clients": 4, "partition_options.alpha": 1.0, "arm": "FedAvg"}]
    assert spec.space.names == ["clients", "partition_options.alpha", "arm"]
    # an arm replaces the whole strategy table; the factors are dotted overrides of the base
    config = spec.base.with_overrides(spec.space.overrides(points[1]))
    assert config.strategy.name == "qsfl" and not config.strategy.use_scss and config.clients == 4
    assert config.partition_options["alpha"] == 0.5
    assert spec.metrics.slowdown and spec.metrics.curves and not spec.validation.enabled
    assert spec.study.max_seeds == 2 and not spec.study.start_defaults    # no racing, no start points


def test_zip_mode_takes_the_ith_level_of_every_factor():
    spec = parse_spec(grid(grid__mode="zip", grid__factors={"clients": [4, 6], "lr": [0.1, 0.05]},
                           grid__arms={"QSFL": {"name": "qsfl"}, "topk": {"name": "topk", "p": 0.1}}))
    assert spec.space.points() == [{"clients": 4, "lr": 0.1, "arm": "QSFL"}, {"clients": 6, "lr": 0.05, "arm": "topk"}]


@pytest.mark.parametrize(("change", "message"), [
    ({"grid__factors": {"clientz": [4]}}, "grid.factors.clientz[0] (arm FedAvg): 4: clientz: unknown key"),
    ({"grid__factors": {"clients": [4, 0]}}, "grid.factors.clients[1] (arm FedAvg): 0: clients: 0 is out of range"),
    ({"grid__factors": {"clients": 4}}, "grid.factors.clients: expected a non-empty list of levels"),
    ({"grid__factors": {"clients": [4, 4]}}, "grid.factors.clients: [4, 4] repeats a level"),
    ({"grid__factors": {"strategy.ns": [2, 3]}}, "grid.factors.strategy.ns[0] (arm FedAvg)"),
    ({"grid__factors": {"partition_options.alpha": [0.5]}}, "grid.factors.partition_options.alpha[0]"),
    ({"grid__arms": {"bad": {"use_qj": False}}}, "grid.arms.bad.name: missing"),
    ({"grid__arms": {"bad": {"name": "fedavg", "p": 0.1}}}, "grid.arms.bad: strategy.p"),
    ({"grid__arms": {"bad": {"name": "qsfl", "ns": 0}}}, "grid.arms.bad: strategy.ns: 0 is out of range"),
    ({"grid__mode": "zip"}, "grid.mode: 'zip' needs every factor with the same number of levels; got clients: 2, "
                            "arm: 4"),
    ({"grid__mode": "cross"}, "grid.mode: unknown value 'cross'"),
    ({"grid__factors": {}, "grid__arms": {}}, "grid: no factors"),
    ({"grid__factors": {"clients": [2]}, "grid__arms": {"QSFL": {"name": "qsfl", "k": 3}}},
     "grid.factors.clients[0] (arm QSFL): 2: strategy.k: 3 is out of range; allowed [1, 2]"),
    ({"grid__factors": {"clients": [2, 6], "strategy.k": [3]}, "grid__arms": {"QSFL": {"name": "qsfl"}}},
     "grid: the point {'clients': 2, 'strategy.k': 3, 'arm': 'QSFL'} is not a valid config: strategy.k: 3 is out "
     "of range"),
    ({"study__start_defaults": True}, "study.start_defaults: not for a grid study"),
    ({"study__max_seeds": 3}, "study.max_seeds: 3 is out of range; allowed [2, 2]"),
])
def test_bad_factors_and_arms_are_one_config_error_naming_them(change, message):
    with pytest.raises(ConfigError) as err:
        parse_spec(grid(**change))
    assert message in str(err.value), str(err.value)


@pytest.mark.parametrize("section", ["space", "fidelity", "validation"])
def test_a_grid_has_none_of_the_search_sections(section):
    raw = grid()
    raw[section] = {"p": {"low": 0.1, "high": 0.5}} if section == "space" else {"min_rounds": 2}
    with pytest.raises(ConfigError, match=rf"^{section}: not for a grid study"):
        parse_spec(raw)
    raw = grid()
    raw.pop("grid")
    with pytest.raises(ConfigError, match=r"^grid: missing section"):
        parse_spec(raw)


def test_a_bad_factor_key_on_the_command_line_exits_2_with_one_line_and_writes_nothing(tmp_path):
    from qsfl.io import dump_toml

    spec = tmp_path / "bad.toml"
    spec.write_text(dump_toml(grid(grid__factors={"clients": [4, 6], "local_epochz": [1, 2]})))
    out = tmp_path / "out"
    proc = run_qsfl("tune", str(spec), "--out", str(out), "--no-report")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: grid.factors.local_epochz[0]"), proc.stderr
    assert not out.exists()
    # a level that only fails when simulated (more segments than parameters) is caught before the first simulation
    spec.write_text(dump_toml(grid(grid__factors={"strategy.ns": [2, 10 ** 7]},
                                   grid__arms={"QSFL": {"name": "qsfl"}}) | {
        "base": {**GRID["base"], "clients": 4}}))
    proc = run_qsfl("tune", str(spec), "--out", str(out), "--no-report")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "grid: the point {'strategy.ns': 10000000, 'arm': 'QSFL'} cannot be simulated" in proc.stderr
    assert not (out / "trials.csv").exists()


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """The tiny grid (2 client counts x 4 arms x 2 seeds) run to the end in this process."""
    from tuning.study import run_study

    out = tmp_path_factory.mktemp("grid") / "out"
    run_study(parse_spec(GRID), out)
    return out


def test_a_grid_study_writes_one_row_per_point_with_per_seed_metrics(finished):
    df = pd.read_parquet(finished / "trials.parquet")
    assert len(df) == 8 and df["engine"].eq("grid").all() and df["state"].eq("complete").all()
    assert df["param_clients"].tolist() == [4] * 4 + [6] * 4 and df["param_arm"].tolist() == list(ARMS) * 2
    assert df["param_clients"].dtype == "int64" and df["n_seeds"].eq(2).all()
    for _, row in df.iterrows():
        seeds = json.loads(row["per_seed"])
        assert [s["seed"] for s in seeds] == [0, 1]
        assert row["metric_final_accuracy"] == pytest.approx(sum(s["metrics"]["final_accuracy"] for s in seeds) / 2)
        assert all(len(s["curve"]["test_accuracy"]) == 4 for s in seeds)
    # nothing to choose: no baseline, no validation, no best.toml; the FedAvg arm is every point's reference
    assert not (finished / "baseline.toml").exists() and not (finished / "best.toml").exists()
    assert df.loc[df["param_arm"] == "FedAvg", "metric_slowdown"].eq(1.0).all()
    summary = json.loads((finished / "summary.json").read_text())
    assert summary["engine"] == "grid" and summary["evaluations"] == 8
    assert summary["simulated_rounds"] == df["simulated_rounds"].sum() == 8 * 2 * 4   # references shared with FedAvg


def test_two_grid_points_resimulated_with_qsfl_simulate_give_the_same_metrics(finished):
    import qsfl

    spec = parse_spec(GRID)
    df = pd.read_parquet(finished / "trials.parquet")
    for i in (2, 7):          # SCSS-only with 4 clients, QSFL with 6 clients
        row = df.iloc[i]
        point = {"clients": int(row["param_clients"]), "arm": row["param_arm"]}
        for stored in json.loads(row["per_seed"]):
            config = spec.base.with_overrides({**spec.space.overrides(point), "seed": stored["seed"]})
            history = qsfl.simulate(config)
            fedavg = qsfl.simulate(config.with_overrides({"strategy": {"name": "fedavg"}})).summary
            s, m = history.summary, stored["metrics"]
            assert m["final_accuracy"] == pytest.approx(s["final_accuracy"], abs=1e-6)
            assert m["uplink_bytes"] == s["total_uplink_bytes"]
            rtt = s["rounds_to_target"]
            assert (math.isnan(m["rounds_to_target"]) and rtt is None) or m["rounds_to_target"] == rtt
            curve = list(zip(history.df["round"], history.df["test_accuracy"]))
            assert m["oscillation"] == oscillation(curve, warmup=1)
            expected = rtt / fedavg["rounds_to_target"] if rtt and fedavg["rounds_to_target"] else math.nan
            assert (math.isnan(expected) and math.isnan(m["slowdown"])) or m["slowdown"] == pytest.approx(expected)
            assert stored["curve"]["cum_uplink_bytes"] == [float(v) for v in history.df["cum_uplink_bytes"]]


def test_a_grid_stopped_after_a_batch_resumes_to_the_same_table(finished, tmp_path):
    from tuning.study import run_study

    spec = parse_spec(grid(grid__batch_size=3))
    out = tmp_path / "out"
    run_study(spec, out, stop_after=0)            # the first batch of 3 points only
    first = pd.read_parquet(out / "trials.parquet")
    assert len(first) == 3
    run_study(spec, out, resume=True)
    final = pd.read_parquet(out / "trials.parquet")
    assert final["trial"].tolist() == list(range(8))
    kept = final.set_index("trial").loc[first["trial"]].reset_index()[first.columns]
    pd.testing.assert_frame_equal(kept, first)                        # not re-run: timestamps unchanged
    cols = [c for c in final.columns if c not in ("duration_s", "finished_at", "per_seed", "simulated_rounds")]
    reference = pd.read_parquet(finished / "trials.parquet")
    pd.testing.assert_frame_equal(without_timing(final)[cols], without_timing(reference)[cols])


def test_the_shipped_paper_grid_parses_to_20_points_on_5_seeds():
    from tuning.spec import load_spec

    spec = load_spec(REPO / "studies" / "paper_clients.toml")
    points = spec.space.points()
    assert len(points) == 20 and len(spec.study.seeds) == 5 and spec.base.rounds == 60
    assert {p["clients"] for p in points} == {10, 20, 30, 40, 50}
    assert [p["arm"] for p in points[:4]] == ["FedAvg", "QJ-only", "SCSS-only", "QSFL"]
    assert spec.base.dataset == "digits" and spec.base.partition == "iid"
