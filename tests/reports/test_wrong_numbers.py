"""Issue 22 regressions: every number a reader sees about a configuration comes from its full-rounds row; a
study of another strategy is baselined and compared with that strategy; compare's statistics respect n and the
metrics' ranges; the smaller items (progress total, resume of a finished study, read-only figure data, headings).

Each test here failed on the code before the fix (ce41173)."""

from __future__ import annotations

import math
import re
import tomllib
from pathlib import Path

import pandas as pd
import pytest
from helpers import run_qsfl

from qsfl.config import SimConfig, dump_toml
from qsfl.errors import ConfigError

loads = tomllib.loads

# ----- a study directory written by hand: two rung rows and one full-rounds row of the same config ----------------
SPEC = {"study": {"name": "hand", "engine": "ga", "seeds": [0, 1], "eval_seeds": [100, 101, 102]},
        "base": {"dataset": "digits", "model": "mlp", "clients": 6, "rounds": 30, "target_accuracy": 0.85},
        "space": {"beta": {"low": 0.0, "high": 1.0}, "p": {"low": 0.05, "high": 1.0}},
        "objective": {"formula": "uplink_bytes_to_target / 1e6", "direction": "minimize"},
        "fidelity": {"min_rounds": 4, "eta": 3}}


def _row(trial: int, rounds: int, rung: int, fitness: float, acc: float, mb: float, beta: float = 0.3,
         p: float = 0.1, individual: str = "aaa") -> dict:
    return {"study": "hand", "engine": "ga", "generation": 0, "trial": trial, "individual": individual,
            "param_beta": beta, "param_p": p, "repair": "", "seeds": "0,1", "rounds": rounds, "rung": rung,
            "metric_final_accuracy": acc, "metric_best_accuracy": acc, "metric_uplink_mb": mb,
            "metric_uplink_bytes": mb * 1e6, "metric_compression_ratio": 10.0,
            "metric_rounds_to_target": 20.0 if rounds == 30 else math.nan,
            "metric_uplink_bytes_to_target": mb * 0.8e6 if rounds == 30 else math.nan,
            "fitness": fitness, "state": "complete", "reason": "", "duration_s": 1.0, "simulated_rounds": rounds,
            "simulation": individual, "finished_at": f"2026-01-01T00:00:0{trial}+00:00", "per_seed": "[]"}


@pytest.fixture
def hand_study(tmp_path: Path) -> Path:
    out = tmp_path / "hand"
    out.mkdir()
    (out / "spec.toml").write_text(dump_toml(SPEC))
    rows = [_row(0, 4, 0, 0.03, 0.29, 0.029), _row(1, 4, 0, 0.01, 0.20, 0.010, beta=0.9, individual="bbb"),
            _row(2, 12, 1, 0.09, 0.65, 0.088), _row(3, 30, 2, 0.1688, 0.8858, 0.2202)]
    pd.DataFrame(rows).to_csv(out / "trials.csv", index=False)
    best = {"study": "hand", "objectives": ["minimize uplink_bytes_to_target / 1e6"], "directions": ["minimize"],
            "best": [{"individual": "aaa", "trial": 3, "generation": 0, "params": {"beta": 0.3, "p": 0.1},
                      "fitness": [0.1688], "metrics": {"final_accuracy": 0.8858, "uplink_mb": 0.2202}, "repair": ""}]}
    (out / "best.toml").write_text(dump_toml(best))
    return out


def test_load_study_trials_is_the_full_rounds_view(hand_study: Path):
    from tuning.results import load_study

    r = load_study(hand_study)
    assert list(r.trials["trial"]) == [3] and r.full_rounds == 30
    assert len(r.all_trials) == 4 and r.rung_rows == 3
    assert list(r.complete()["rounds"]) == [30]


def test_best_table_shows_the_full_rounds_row_of_best_toml(hand_study: Path):
    from reports.study import load_report_study
    from reports.tables import best_table, facts, top_trials

    study = load_report_study(hand_study)
    row = best_table(study).iloc[0]
    assert row["final acc."] == pytest.approx(0.8858) and row["uplink MB"] == pytest.approx(0.2202)
    assert row["rounds to target"] == 20.0 and row["search fitness"] == "0.1688"
    top = top_trials(study)
    assert list(top["trial"]) == [3]          # the 4-round rows (fitness 0.01, 0.03) are not "top evaluations"
    said = dict(facts(study))["evaluations"]
    assert "1 at the full 30 rounds, 3 at lower [fidelity] rungs (4, 12 rounds)" in said


def test_search_figures_use_full_rounds_rows_and_say_so(hand_study: Path):
    from reports import figures
    from reports.study import load_report_study

    study = load_report_study(hand_study)
    seen: list[tuple[str, str, object]] = []
    figures._search_figures(study, lambda name, section, caption, draw: seen.append((name, caption, draw)))
    pareto = next(c for n, c, _ in seen if n == "pareto_front")
    assert "full 30 rounds only (1 of 4 rows" in pareto
    history = next(d for n, _, d in seen if n.startswith("optimization_history"))
    assert len(history.args[0]) == 1      # functools.partial(plots.optimization_history, trials, ...)


# ----- a study of another strategy -------------------------------------------------------------------------------
TOPK_SPEC = """
[study]
name = "topk"
engine = "ga"
seeds = [0]
eval_seeds = [100, 101, 102]
[base]
dataset = "digits"
model = "logreg"
clients = 4
rounds = 3
batch_size = 50
target_accuracy = 0.5
[base.strategy]
name = "topk"
[space.p]
low = 0.02
high = 1.0
[objective]
formula = "uplink_bytes_to_target / 1e6"
direction = "minimize"
[ga]
population = 4
generations = 1
"""


def test_baseline_of_a_topk_study_is_topk_with_its_own_defaults():
    from tuning.spec import parse_spec
    from tuning.study import baseline_params, baseline_point, defaults_label

    spec = parse_spec(loads(TOPK_SPEC))
    point = baseline_point(spec)
    config = spec.base.with_overrides(point.overrides or {})
    assert config.strategy.name == "topk" and config.strategy.p == 0.4
    assert baseline_params(spec) == {"p": 0.4} and spec.space.defaults(spec.base) == {"p": 0.4}
    assert defaults_label(spec) == "topk with its own defaults"


def test_a_foreign_parameter_fails_before_the_first_simulation():
    from tuning.spec import parse_spec

    with pytest.raises(ConfigError, match=r"space.k: 'k' is not a parameter of strategy 'topk'.*its parameters: p"):
        parse_spec(loads(TOPK_SPEC + "[space.k]\nlow = 1\nhigh = 4\n"))


def test_topk_study_runs_and_compare_runs_topk_with_the_tuned_p(tmp_path: Path):
    spec = tmp_path / "topk.toml"
    spec.write_text(TOPK_SPEC)
    out = tmp_path / "out"
    res = run_qsfl("tune", str(spec), "--out", str(out), "--workers", "1", "-q")
    assert res.returncode == 0, res.stderr
    assert (out / "report.html").is_file() and "read-only" not in res.stderr
    res = run_qsfl("compare", str(out), "--top", "1", "--workers", "1", "-q")
    assert res.returncode == 0, res.stderr
    assert "topk-tuned-1" in res.stdout and "topk-default" in res.stdout
    from tuning.results import load_study, read_compare

    compare = read_compare(out)
    assert compare is not None and compare.defaults == "topk-default"
    assert compare.description("topk-tuned-1").startswith("topk: p=")
    p = float(load_study(out).best[0]["params"]["p"])
    runs = compare.runs[compare.runs["label"] == "topk-tuned-1"]
    import qsfl
    for _, run in runs.iterrows():
        direct = qsfl.simulate(SimConfig.from_dict({**compare.plan["base"], "seed": int(run["seed"]),
                                                    "strategy": {"name": "topk", "p": p}}))
        assert direct.summary["total_uplink_bytes"] == pytest.approx(float(run["uplink_bytes"]), rel=0, abs=0)


# ----- compare's statistics ------------------------------------------------------------------------------------
def test_intervals_need_three_values_and_stay_in_range():
    from reports import stats

    mean, lo, hi = stats.mean_ci([0.2, 3.0])                     # n = 2: no interval (t would span -15 .. 18)
    assert mean == 1.6 and math.isnan(lo) and math.isnan(hi)
    mean, lo, hi = stats.mean_ci([0.01, 0.02, 0.9], bounds=(0.0, math.inf))
    assert lo == 0.0 < mean < hi                                   # clipped at zero: no negative MB
    mean, lo, hi = stats.mean_ci([0.99, 0.995, 0.999], bounds=(0.0, 1.0))
    assert hi <= 1.0


def test_no_test_statistic_on_quantities_that_do_not_vary():
    from reports import stats

    bytes_a = [1_181_000.0, 1_181_002.0, 1_181_001.0]          # deterministic up to a few header bytes
    bytes_b = [220_200.0, 220_201.0, 220_200.0]
    res = stats.compare_means(bytes_a, bytes_b, method="t")
    assert res.method == "exact" and math.isnan(res.statistic) and math.isnan(res.p_value)
    assert res.diff == pytest.approx(960_800.67, rel=1e-6)


def test_paired_compare_by_hand():
    from reports import stats

    a, b = [0.20, 0.25, 0.22, 0.30, 0.18], [0.47, 0.50, 0.45, 0.52, 0.46]
    d = [x - y for x, y in zip(a, b)]                               # -0.27 -0.25 -0.23 -0.22 -0.28
    res = stats.paired_compare(a, b)
    mean = sum(d) / 5
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / 4)
    from scipy.stats import ttest_rel
    assert res.diff == pytest.approx(mean) and res.statistic == pytest.approx(mean / (sd / math.sqrt(5)))
    assert res.p_value == pytest.approx(ttest_rel(a, b).pvalue, rel=1e-9)
    assert res.high < 0
    few = stats.paired_compare(a[:2], b[:2])
    assert math.isnan(few.low) and math.isnan(few.p_value)


def _compare_dir(tmp_path: Path, tuned: list[float], defaults: list[float], fedavg: list[float],
                 reached: list[bool]) -> Path:
    """A compare/ directory written by hand: the objective is uplink MB to the target."""
    out = tmp_path / "cmp"
    (out / "compare").mkdir(parents=True)
    rows = []
    for label, values, hits in (("qsfl-tuned-1", tuned, reached), ("qsfl-default", defaults, [True] * len(tuned)),
                                ("fedavg", fedavg, [True] * len(tuned))):
        for i, (v, hit) in enumerate(zip(values, hits)):
            rows.append({"label": label, "kind": "tuned" if "tuned" in label else "baseline", "seed": 100 + i,
                         "status": "complete", "reason": "", "final_accuracy": 0.9, "best_accuracy": 0.9,
                         "uplink_bytes": v * 2e6, "uplink_mb": v * 2, "uplink_fraction": v * 2 / 23.0,
                         "compression_ratio": 23.0 / (v * 2), "rounds_to_target": 15.0 if hit else math.nan,
                         "uplink_bytes_to_target": v * 1e6 if hit else math.nan, "target_reached": float(hit),
                         "target_accuracy": 0.85, "rounds_run": 30, "fedavg_uplink_bytes": 23e6,
                         "wall_time_s": 1.0})
    pd.DataFrame(rows).to_csv(out / "compare" / "runs.csv", index=False)
    plan = {"seeds": [100 + i for i in range(len(tuned))], "source": "configs", "best_digest": "",
            "defaults": "qsfl-default", "base": {"dataset": "digits", "model": "mlp", "clients": 20, "rounds": 30},
            "objective": {"formula": "uplink_bytes_to_target / 1e6", "direction": "minimize",
                          "constraint": "final_accuracy >= 0.88", "penalty": 10.0},
            "config": [{"label": "qsfl-tuned-1", "kind": "tuned", "setting": "qsfl: p=0.1", "params": {"p": 0.1}},
                       {"label": "qsfl-default", "kind": "baseline", "setting": "QSFL, authors' defaults"},
                       {"label": "fedavg", "kind": "baseline", "setting": "FedAvg"}]}
    (out / "compare" / "plan.toml").write_text(dump_toml(plan))
    return out


def test_compare_reports_the_objective_and_a_verdict(tmp_path: Path):
    from reports.compare import display_table, summarise, verdicts
    from tuning.results import read_compare

    out = _compare_dir(tmp_path, [0.20, 0.25, 0.22, 0.30, 0.18], [0.47, 0.50, 0.45, 0.52, 0.46],
                       [8.7, 8.9, 8.5, 8.8, 8.6], [True] * 5)
    compare = read_compare(out)
    assert compare is not None
    summary = summarise(compare)
    tuned = summary.set_index("label").loc["qsfl-tuned-1"]
    assert tuned["objective_0_mean"] == pytest.approx(0.23) and tuned["reached"] == 5
    assert tuned["objective_0_study"] == pytest.approx(0.23)       # linear objective: the same either way
    shown = display_table(summary, ["minimize uplink_bytes_to_target / 1e6"]).set_index("config")
    assert shown.loc["qsfl-tuned-1", "objective: minimize uplink_bytes_to_target / 1e6"].startswith("0.23 [")
    said = verdicts(compare, summary)
    assert said[0].startswith("qsfl-tuned-1 is better than qsfl-default")
    assert said[1].startswith("qsfl-tuned-1 is better than fedavg")
    assert not any(s.startswith("WARNING") for s in said)
    for cell in shown.loc[:, shown.columns.str.contains("MB")].to_numpy().ravel():
        assert not re.search(r"\[-", str(cell))                     # no negative MB interval


def test_compare_warns_when_the_tuned_config_misses_the_target(tmp_path: Path):
    from reports.compare import summarise, verdicts
    from tuning.results import read_compare

    out = _compare_dir(tmp_path, [0.20, 0.25], [0.47, 0.50], [8.7, 8.9], [False, False])
    compare = read_compare(out)
    assert compare is not None
    said = verdicts(compare, summarise(compare))
    assert any("too few seeds" in s for s in said)
    assert "WARNING: qsfl-tuned-1 reached the target accuracy 0.85 on only 0 of 2 fresh seeds" in "\n".join(said)


# ----- the smaller items -------------------------------------------------------------------------------------------
def test_parallel_coordinates_of_one_parameter():
    from reports import plots

    df = pd.DataFrame({"param_p": [0.1, 0.2, 0.3], "fitness": [1.0, 2.0, 0.5], "state": "complete"})
    fig = plots.parallel_coordinates(df, fitness="fitness", maximize=False)
    assert fig.axes


def test_report_headings_are_unique(hand_study: Path):
    from reports.report import write_report

    path = write_report(hand_study)
    headings = re.findall(r"<h[23][^>]*>(.*?)</h[23]>", Path(path).read_text())
    assert len(headings) == len(set(headings)), headings


def test_progress_total_ends_equal_to_the_rows(tmp_path: Path):
    from helpers import spec_text

    from tuning.spec import parse_spec
    from tuning.study import run_study

    text = spec_text("prog", model="logreg", clients=4, rounds=4, batch_size=50, population=6, generations=2)
    spec = parse_spec(loads(text + "\n[fidelity]\nmin_rounds = 2\neta = 2\n"))
    out = tmp_path / "prog"
    result = run_study(spec, out)
    log = (out / "study.log").read_text().splitlines()
    assert any(re.search(r"evaluation \d+/~\d+", ln) for ln in log)       # a GA's count is an estimate: "~"
    last = re.search(r"generation 2/2: .* (\d+)/(\d+) so far", [ln for ln in log if "generation" in ln][-1])
    assert last is not None and int(last.group(1)) == int(last.group(2)) == result.evaluations


def test_resume_of_a_finished_study_says_so_and_rewrites_nothing(tmp_path: Path):
    from helpers import GA_SPEC, write_spec

    spec = write_spec(tmp_path, GA_SPEC, "done")
    out = tmp_path / "out"
    assert run_qsfl("tune", str(spec), "--out", str(out), "--workers", "1", "-q").returncode == 0
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.is_file()}
    res = run_qsfl("tune", str(spec), "--out", str(out), "--workers", "1", "--resume")
    assert res.returncode == 0, res.stderr
    assert "nothing to resume" in res.stderr and "report:" not in res.stdout
    after = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.is_file()}
    changed = {k for k in before if before[k] != after.get(k)} - {"environment.json", "study.log", "checkpoint.pkl"}
    assert not changed, changed


@pytest.mark.slow
def test_readme_quickstart_report_shows_the_numbers_of_best_toml(tmp_path: Path):
    """The README's quickstart (with its [fidelity]): every "Best configurations" row of report.md equals its
    best.toml entry (fitness, final accuracy, uplink MB), and the defaults' row equals baseline.toml."""
    import tomllib

    out = tmp_path / "quickstart"
    res = run_qsfl("tune", "studies/quickstart.toml", "--out", str(out), "-q")
    assert res.returncode == 0, res.stderr
    best = tomllib.loads((out / "best.toml").read_text())["best"]
    baseline = tomllib.loads((out / "baseline.toml").read_text())
    md = (out / "report.md").read_text()
    table = md.split("## Best configurations", 1)[1].split("\n\n")[1].splitlines()[2:]
    header = [c.strip() for c in md.split("## Best configurations", 1)[1].split("\n\n")[1].splitlines()[0]
              .strip("|").split("|")]
    col = {name: header.index(name) for name in ("search fitness", "validation fitness", "validation seeds",
                                                 "final acc.", "uplink MB")}
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in table]
    defaults_row = not any(e.get("defaults") for e in best)    # else the defaults are the answer, a ranked row
    assert len(cells) == len(best) + defaults_row
    for entry, row in zip(best, cells):
        assert float(row[col["search fitness"]]) == pytest.approx(entry["fitness"][0], rel=1e-3)
        assert float(row[col["validation fitness"]]) == pytest.approx(entry["validation_fitness"][0], rel=1e-3)
        assert int(row[col["validation seeds"]]) == len(entry["validation_seeds"])   # 8, or 32 once confirmed
        assert float(row[col["final acc."]]) == pytest.approx(entry["metrics"]["final_accuracy"], rel=1e-3)
        assert float(row[col["uplink MB"]]) == pytest.approx(entry["metrics"]["uplink_mb"], rel=1e-3)
    if defaults_row:
        assert cells[-1][0] == "authors' defaults"
        assert float(cells[-1][col["final acc."]]) == pytest.approx(baseline["metrics"]["final_accuracy"],
                                                                        rel=1e-3)
    validation = (out / "validation.csv").read_text()
    assert "answer" in validation and "per_seed_fitness" in validation
