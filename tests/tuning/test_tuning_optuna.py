"""Optuna search: a re-run on the same storage continues the numbering and repeats no finished trial;
trials left RUNNING by a killed run are re-queued; failures are FAIL with a reason; pruning is recorded."""

from __future__ import annotations

import json

import optuna
import pandas as pd
import pytest
from test_tuning_cli import TINY

from qsfl_cli import main

OPTUNA = TINY + """
[optuna]
n_trials = 3
sampler = "random"
"""


@pytest.fixture
def spec_path(tmp_path):
    path = tmp_path / "tiny_optuna.toml"
    path.write_text(OPTUNA.replace('engine = "ga"', 'engine = "optuna"'))
    return path


def _study(out):
    return optuna.load_study(study_name="tiny", storage=f"sqlite:///{out / 'study.db'}")


def test_rerun_continues_trial_numbering_without_repeating(spec_path, tmp_path):
    out = tmp_path / "out"
    assert main(["tune", str(spec_path), "--out", str(out), "--no-report", "--quiet"]) == 0
    first = pd.read_parquet(out / "trials.parquet")
    assert first["trial"].tolist() == [0, 1, 2] and set(first["generation"]) == {-1}
    # the same budget again: nothing to do, nothing re-run
    assert main(["tune", str(spec_path), "--out", str(out), "--no-report", "--quiet", "--resume"]) == 0
    assert len(_study(out).trials) == 3
    assert main(["tune", str(spec_path), "--out", str(out), "--no-report", "--quiet", "--resume",
                 "--set", "optuna.n_trials=5"]) == 0
    study = _study(out)
    assert [t.number for t in study.trials] == [0, 1, 2, 3, 4]
    df = pd.read_parquet(out / "trials.parquet")
    assert df["trial"].tolist() == [0, 1, 2, 3, 4]
    pd.testing.assert_frame_equal(df.iloc[:3].reset_index(drop=True), first)   # finished rows untouched
    assert df["individual"].is_unique    # the resumed sampler does not re-propose the first trials' params
    assert study.user_attrs["qsfl_fingerprint"]


@pytest.mark.parametrize("k,ns", [(4, 3), (2, 5)])
def test_orphaned_running_trial_is_requeued_with_its_params(spec_path, tmp_path, k, ns):
    """A trial left RUNNING whose ns was asked outside this space (range [1, 6] whatever k: an older version, a
    user's own ask) is re-queued with this space's distributions: re-asking it raises no Optuna warning, and an
    ns above k is re-run as the repair evaluates it (ns = k)."""
    import warnings

    from optuna.distributions import IntDistribution

    out = tmp_path / "out"
    assert main(["tune", str(spec_path), "--out", str(out), "--no-report", "--quiet",
                 "--set", "optuna.n_trials=2"]) == 0
    study = _study(out)
    study.enqueue_trial({"beta": 0.25, "k": k, "ns": ns, "p": 0.5})
    orphan = study.ask()   # as if a process died while running this trial
    params = {"beta": orphan.suggest_float("beta", 0.0, 1.0), "k": orphan.suggest_int("k", 1, 6),
              "ns": orphan.suggest_int("ns", 1, 6), "p": orphan.suggest_float("p", 0.05, 1.0)}
    assert params == {"beta": 0.25, "k": k, "ns": ns, "p": 0.5}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["tune", str(spec_path), "--out", str(out), "--no-report", "--quiet", "--resume"]) == 0
    assert not [w for w in caught if "parameter" in str(w.message).lower()], [str(w.message) for w in caught]
    study = _study(out)
    states = [t.state.name for t in study.trials]
    assert states[2] == "FAIL" and states.count("COMPLETE") == 3
    retried = study.trials[3]
    assert retried.system_attrs.get("failed_trial") == 2
    assert retried.params == {**params, "ns": min(ns, k)}                 # the values evaluated
    assert retried.distributions["ns"] == IntDistribution(1, k)           # what this space asks for that k
    df = pd.read_parquet(out / "trials.parquet")
    assert df["trial"].tolist() == [0, 1, 3]    # the orphan is no evaluation; its retry is
    assert df["param_ns"].iloc[2] == min(ns, k) and df["param_k"].iloc[2] == k


def test_replay_params_gives_the_spaces_distributions_and_the_evaluated_ns(spec_path):
    from optuna.distributions import FloatDistribution, IntDistribution

    from tuning.search.optuna import replay_params
    from tuning.spec import load_spec

    spec = load_spec(spec_path)      # beta [0, 1], k [1, 6], ns [1, 6] (at most K), p [0.05, 1]
    params, dists = replay_params(spec.space, spec.base, {"beta": 0.25, "k": 2, "ns": 5, "p": 0.5})
    assert params == {"beta": 0.25, "k": 2, "ns": 2, "p": 0.5}
    assert dists == {"beta": FloatDistribution(0.0, 1.0), "k": IntDistribution(1, 6), "ns": IntDistribution(1, 2),
                     "p": FloatDistribution(0.05, 1.0)}
    # a trial stopped while being asked: what was stored up to the first missing param (ns waits for k)
    assert replay_params(spec.space, spec.base, {"beta": 0.25, "ns": 1, "p": 0.5}) == (
        {"beta": 0.25}, {"beta": FloatDistribution(0.0, 1.0)})


def test_failed_trials_are_fail_with_reason(spec_path, tmp_path):
    spec_path.write_text(spec_path.read_text() + "\n[space.lr]\nlow = 200.0\nhigh = 400.0\n")
    out = tmp_path / "out"
    # every evaluation failed: the study exits non-zero (issue 13)
    assert main(["tune", str(spec_path), "--out", str(out), "--no-report", "--quiet",
                 "--set", "optuna.n_trials=2"]) == 1
    study = _study(out)
    assert [t.state.name for t in study.trials] == ["FAIL", "FAIL"]
    assert all("diverged" in t.user_attrs["fail_reason"] for t in study.trials)
    df = pd.read_parquet(out / "trials.parquet")
    assert df["state"].tolist() == ["failed", "failed"] and df["fitness"].isna().all()


def test_pruned_trials_are_rows_with_a_reason(spec_path, tmp_path):
    out = tmp_path / "out"
    assert main(["tune", str(spec_path), "--out", str(out), "--no-report", "--quiet",
                 "--set", "optuna.n_trials=6", "--set", "optuna.pruner=\"median\"",
                 "--set", "optuna.n_startup_trials=1", "--set", "optuna.warmup_rounds=0"]) == 0
    study = _study(out)
    df = pd.read_parquet(out / "trials.parquet")
    assert len(df) == 6
    pruned = [t for t in study.trials if t.state.name == "PRUNED"]
    assert len(pruned) == (df["state"] == "pruned").sum()
    for t in pruned:
        row = json.loads(t.user_attrs["qsfl_row"])
        assert row["reason"].startswith("pruned at round")
    assert all(t.intermediate_values for t in study.trials)


def test_multi_objective_optuna_writes_fitness_columns(spec_path, tmp_path):
    text = spec_path.read_text().replace('formula = "final_accuracy - 0.5 * uplink_fraction"\ndirection = "maximize"',
                                         'objectives = ["final_accuracy", "uplink_mb"]')
    spec_path.write_text(text.replace('sampler = "random"', 'sampler = "nsga2"\npopulation_size = 2'))
    out = tmp_path / "out"
    assert main(["tune", str(spec_path), "--out", str(out), "--no-report", "--quiet"]) == 0
    df = pd.read_parquet(out / "trials.parquet")
    assert {"fitness_0", "fitness_1"} <= set(df.columns) and "fitness" not in df.columns
    assert [d.name for d in _study(out).directions] == ["MAXIMIZE", "MINIMIZE"]


@pytest.mark.parametrize("sampler", ["tpe", "cmaes", "random"])
def test_every_single_objective_sampler_runs_a_tiny_study(sampler, tmp_path):
    path = tmp_path / f"tiny_{sampler}.toml"
    path.write_text(OPTUNA.replace('engine = "ga"', 'engine = "optuna"')
                    .replace('sampler = "random"', f'sampler = "{sampler}"'))
    out = tmp_path / "out"
    assert main(["tune", str(path), "--out", str(out), "--no-report", "--quiet"]) == 0
    df = pd.read_parquet(out / "trials.parquet")
    assert len(df) == 3 and set(df["state"]) <= {"complete", "failed"}


def test_a_worker_started_after_the_study_finished_gets_the_whole_table(spec_path, tmp_path):
    """The several-machines recipe (docs/postgres.md): any worker's --out holds the complete trials table, also one that
    joins when the budget is already used up (it runs nothing and rebuilds the table from the storage)."""
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    first, late = tmp_path / "first", tmp_path / "late"
    assert main(["tune", str(spec_path), "--out", str(first), "--storage", storage, "--no-report", "--quiet"]) == 0
    assert main(["tune", str(spec_path), "--out", str(late), "--storage", storage, "--no-report", "--quiet"]) == 0
    a, b = pd.read_parquet(first / "trials.parquet"), pd.read_parquet(late / "trials.parquet")
    assert len(a) == 3 and sorted(a["trial"]) == sorted(b["trial"])
    cols = [c for c in a.columns if c not in ("duration_s", "finished_at")]
    pd.testing.assert_frame_equal(a[cols].sort_values("trial").reset_index(drop=True),
                                  b[cols].sort_values("trial").reset_index(drop=True))
