"""Tuned against tuned: ``qsfl compare OUT --with OTHER`` runs the best configs of several tuned studies of the same
setting (a QSFL study and a top-k study with the same budget) side by side with the untuned baselines, on seeds
none of the studies used, with the intervals and tests of a comparison, and tests them against each other."""

from __future__ import annotations

import copy

import pandas as pd
import pytest

from qsfl.errors import ConfigError
from qsfl.io import dump_toml, load_toml
from tuning.spec import parse_spec

QSFL = {
    "study": {"name": "tq", "engine": "random", "seeds": [0, 1], "eval_seeds": [100, 101, 102]},
    "base": {"dataset": "digits", "model": "logreg", "clients": 4, "rounds": 3, "batch_size": 20,
             "target_accuracy": 0.5},
    "space": {"p": {"low": 0.05, "high": 1.0}, "ns": {"low": 1, "high": 4}},
    "objective": {"formula": "uplink_bytes_to_target / 1e6", "direction": "minimize"},
    "validation": {"enabled": False},
    "random": {"n_trials": 3, "batch_size": 3},
}
TOPK = copy.deepcopy(QSFL)
TOPK["study"] = {**QSFL["study"], "name": "tk", "seeds": [2, 3]}
TOPK["base"]["strategy"] = {"name": "topk"}
TOPK["space"] = {"p": {"low": 0.02, "high": 1.0}}


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    from tuning.study import run_study

    root = tmp_path_factory.mktemp("tuned")
    for raw, name in ((QSFL, "q"), (TOPK, "t")):
        run_study(parse_spec(raw), root / name)
    return root / "q", root / "t"


def test_a_qsfl_study_and_a_topk_study_side_by_side(studies, tmp_path):
    import shutil

    from qsfl_cli import compare_study
    from tuning.compare import plan_comparison
    from tuning.results import load_study, read_compare

    q, t = studies
    out = tmp_path / "q"
    shutil.copytree(q, out)
    plan = plan_comparison(out, top=1, others=[t])
    assert list(plan.configs)[:2] == ["qsfl-tuned-1", "topk-tuned-1"] and "topk-default" in plan.configs
    assert plan.kinds["topk-tuned-1"] == "tuned" and plan.kinds["topk-default"] == "baseline"
    assert plan.studies == {"qsfl-tuned-1": "tq", "topk-tuned-1": "tk"}
    best_p = load_study(t).best[0]["params"]["p"]
    assert plan.configs["topk-tuned-1"].strategy.name == "topk" and plan.configs["topk-tuned-1"].strategy.p == best_p
    assert plan.configs["topk-default"].strategy.p == 0.4          # top-k's own default
    assert plan.seeds == [100, 101, 102]                            # neither study searched them
    with pytest.raises(ConfigError, match=r"--seeds: 2 were used by the search"):
        plan_comparison(out, top=1, others=[t], seeds=[2, 100, 101])

    compare_study(out, top=1, seeds=[100, 101, 102], others=[t])
    runs = pd.read_csv(out / "compare" / "runs.csv")
    assert set(runs["seed"]) == {100, 101, 102} and runs.groupby("label").size().eq(3).all()
    tests = pd.read_csv(out / "compare_tests.csv")
    pair = tests[(tests["tuned"] == "qsfl-tuned-1") & (tests["baseline"] == "topk-tuned-1")]
    assert set(pair["metric"]) == {"objective_0", "final_accuracy", "uplink_mb"}
    mine = runs.loc[runs["label"] == "qsfl-tuned-1", "uplink_mb"].mean()
    theirs = runs.loc[runs["label"] == "topk-tuned-1", "uplink_mb"].mean()
    assert pair[pair["metric"] == "uplink_mb"]["diff"].iloc[0] == pytest.approx(mine - theirs)
    md = (out / "compare.md").read_text()
    assert "qsfl-tuned-1 is " in md and "than topk-tuned-1" in md and "topk-tuned-1 is " in md
    compare = read_compare(out)
    assert compare is not None and not compare.stale and compare.study_of("topk-tuned-1") == "tk"
    assert compare.defaults_for("topk-tuned-1") == "topk-default"
    # the other study's best set changes (a resumed study): the comparison is stale
    best = load_toml(t / "best.toml")
    best["best"] = best["best"][::-1] + [{**best["best"][0], "params": {"p": 0.5}}]
    (t / "best.toml").write_text(dump_toml(best))
    assert read_compare(out).stale


def test_a_study_of_another_setting_is_refused(studies, tmp_path):
    from tuning.compare import plan_comparison
    from tuning.study import run_study

    q, _ = studies
    other = copy.deepcopy(TOPK)
    other["base"]["clients"] = 6
    run_study(parse_spec(other), tmp_path / "t6")
    with pytest.raises(ConfigError, match=r"^--with .*t6: its \[base\] differs in clients; "):
        plan_comparison(q, top=1, others=[tmp_path / "t6"])
    with pytest.raises(ConfigError, match="not a study output directory"):
        plan_comparison(q, top=1, others=[tmp_path / "nothing"])
