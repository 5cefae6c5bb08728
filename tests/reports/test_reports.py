"""Reports: figures from real Histories/trials tables, compare tables vs saved Histories, the HTML report.

The study directory used here is built from real simulations laid out in the documented study-output
format (docs/study_output.md), so these tests do not depend on the tuning package.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

import qsfl
from qsfl.config import SimConfig, dump_toml
from qsfl.errors import ConfigError
from qsfl.history import History
from reports import plots

BASE = {"dataset": "digits", "model": "mlp", "clients": 8, "rounds": 3, "batch_size": 20, "seed": 0,
        "target_accuracy": 0.5, "strategy": {"name": "qsfl"}}
POPULATION = [  # two GA generations of three individuals (the last repeats the first: same individual id)
    [{"beta": 0.9, "k": 6, "ns": 6, "p": 0.4}, {"beta": 0.2, "k": 3, "ns": 2, "p": 0.1},
     {"beta": 0.6, "k": 8, "ns": 4, "p": 0.8}],
    [{"beta": 0.7, "k": 5, "ns": 3, "p": 0.2}, {"beta": 0.4, "k": 7, "ns": 5, "p": 0.05},
     {"beta": 0.9, "k": 6, "ns": 6, "p": 0.4}],
]


def evaluate(params: dict[str, Any], seed: int = 0, rounds: int | None = None) -> History:
    """Simulate the base config with search params applied (as tuning's objective does)."""
    cfg = SimConfig.from_dict(BASE).with_overrides({f"strategy.{k}": v for k, v in params.items()})
    return qsfl.simulate(cfg.replace(seed=seed, rounds=rounds or cfg.rounds))


def fitness_of(h: History) -> float:
    """accuracy - 0.05 * uplink fraction of FedAvg."""
    s = h.summary
    return s["final_accuracy"] - 0.05 * s["total_uplink_bytes"] / s["fedavg_uplink_bytes"]


def trial_row(params: dict[str, Any], h: History, *, gen: int, trial: int, finished: dt.datetime) -> dict:
    """One row of the trials table in the documented columns."""
    s = h.summary
    metrics = {"final_accuracy": s["final_accuracy"], "best_accuracy": s["best_accuracy"],
               "uplink_bytes": float(s["total_uplink_bytes"]), "uplink_mb": s["total_uplink_bytes"] / 1e6,
               "compression_ratio": s["compression_ratio"],
               "rounds_to_target": float(s["rounds_to_target"] or np.nan),
               "uplink_bytes_to_target": float(s["uplink_bytes_to_target"] or np.nan)}
    return {"study": "test-study", "engine": "ga", "generation": gen, "trial": trial,
            "individual": hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12],
            **{f"param_{k}": v for k, v in params.items()}, "seeds": "0",
            **{f"metric_{k}": v for k, v in metrics.items()}, **{f"metric_{k}_std": 0.0 for k in metrics},
            "fitness": fitness_of(h), "state": "complete", "reason": "", "duration_s": s["wall_time_s"],
            "finished_at": finished.isoformat()}


def build_study_dir(out: Path) -> Path:
    """A GA study output directory made of real simulations, in the contract's file layout."""
    out.mkdir(parents=True, exist_ok=True)
    rows, logbook, cache = [], [], {}
    t = dt.datetime(2024, 5, 1, 12, 0, 0, tzinfo=dt.UTC)
    for gen, pop in enumerate(POPULATION):
        fits = []
        for params in pop:
            key = json.dumps(params, sort_keys=True)
            if key not in cache:
                cache[key] = evaluate(params)
            h = cache[key]
            t += dt.timedelta(seconds=max(h.summary["wall_time_s"], 0.5))
            rows.append(trial_row(params, h, gen=gen, trial=len(rows), finished=t))
            fits.append(rows[-1]["fitness"])
        logbook.append({"gen": gen, "nevals": len(pop), "min_0": min(fits), "mean_0": float(np.mean(fits)),
                        "max_0": max(fits), "std_0": float(np.std(fits))})
    trials = pd.DataFrame(rows)
    trials.to_parquet(out / "trials.parquet", index=False)
    trials.to_csv(out / "trials.csv", index=False)
    pd.DataFrame(logbook).to_csv(out / "logbook.csv", index=False)
    spec = {"study": {"name": "test-study", "engine": "ga", "seeds": [0], "eval_seeds": [5, 6]}, "base": BASE,
            "space": {"beta": {"low": 0.0, "high": 1.0}, "k": {"low": 1, "high": 8}, "ns": {"low": 1, "high": 8},
                      "p": {"low": 0.05, "high": 1.0}},
            "objective": {"formula": "final_accuracy - 0.05 * uplink_fraction", "direction": "maximize"},
            "ga": {"population": 3, "generations": 2}}
    (out / "spec.toml").write_text(dump_toml(spec))
    ranked = trials.sort_values("fitness", ascending=False).drop_duplicates("individual")
    best = [{"params": {k: _py(r[f"param_{k}"]) for k in POPULATION[0][0]}, "fitness": [float(r["fitness"])]}
            for _, r in ranked.head(2).iterrows()]
    (out / "best.toml").write_text(dump_toml({"best": best}))
    default = cache[json.dumps(POPULATION[0][0], sort_keys=True)]
    s = default.summary
    (out / "baseline.toml").write_text(dump_toml({
        "params": POPULATION[0][0], "fitness": [fitness_of(default)],
        "metrics": {"final_accuracy": s["final_accuracy"], "uplink_mb": s["total_uplink_bytes"] / 1e6,
                    "compression_ratio": s["compression_ratio"]}}))
    cache[json.dumps(best[0]["params"], sort_keys=True)].save(out / "histories" / "best")
    default.save(out / "histories" / "baseline")
    return out


def _py(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


# ----- fixtures --------------------------------------------------------------------------------------
@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Small models on a shared 2-core machine run 10x faster (and steadier) on one torch thread."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def runs(one_torch_thread) -> dict[str, list[History]]:
    """Small real runs: two labels over two seeds, one over one seed."""
    return {"qsfl-default": [evaluate({}, seed=0), evaluate({}, seed=1)],
            "qsfl-tuned-1": [evaluate({"beta": 0.5, "k": 4, "ns": 2, "p": 0.2}, seed=0),
                        evaluate({"beta": 0.5, "k": 4, "ns": 2, "p": 0.2}, seed=1)],
            "fedavg": [qsfl.simulate(SimConfig.from_dict({**BASE, "strategy": {"name": "fedavg"}}))]}


@pytest.fixture(scope="module")
def study_template(tmp_path_factory, one_torch_thread) -> Path:
    """A real study directory (built once)."""
    return build_study_dir(tmp_path_factory.mktemp("study") / "out")


@pytest.fixture
def study_dir(study_template, tmp_path) -> Path:
    """A private copy of the study directory for one test."""
    return Path(shutil.copytree(study_template, tmp_path / "out"))


@pytest.fixture(scope="module")
def compared(tmp_path_factory, study_template) -> Path:
    """The study directory after `compare --top 1 --seeds 5,6 --rounds 2`."""
    from qsfl_cli import compare_study

    out = Path(shutil.copytree(study_template, tmp_path_factory.mktemp("cmp") / "out"))
    compare_study(out, top=1, seeds=[5, 6], workers=1, rounds=2)
    return out


def series_labels(ax) -> list[str]:
    return [line.get_label() for line in ax.get_lines() if not line.get_label().startswith("_")]


# ----- figures ---------------------------------------------------------------------------------------
def test_accuracy_vs_uplink_one_line_and_band_per_label(runs):
    fig = plots.accuracy_vs_uplink(runs, log_x=True, target=0.5)
    ax = fig.axes[0]
    assert ax.get_xlabel().startswith("cumulative uplink (MB)")
    assert ax.get_ylabel() == "test accuracy"
    assert ax.get_xscale() == "log"
    assert series_labels(ax) == ["qsfl-default (n=2)", "qsfl-tuned-1 (n=2)", "fedavg"]
    assert len(ax.collections) == 2  # +-std bands only where there are several seeds
    x, y = ax.get_lines()[0].get_data()
    stats = plots.align_seeds(runs["qsfl-default"])
    np.testing.assert_allclose(y, [np.mean([h.df["test_accuracy"][r] for h in runs["qsfl-default"]]) for r in range(3)])
    np.testing.assert_allclose(x, stats["mb_mean"])


def test_accuracy_vs_round_minmax_band(runs):
    fig = plots.accuracy_vs_round(runs, band="minmax")
    ax = fig.axes[0]
    assert ax.get_xlabel() == "round" and ax.get_ylabel() == "test accuracy"
    assert len(series_labels(ax)) == 3
    band = ax.collections[0].get_paths()[0].vertices[:, 1]
    accs = np.array([h.df["test_accuracy"].to_numpy() for h in runs["qsfl-default"]])
    assert band.min() == pytest.approx(accs.min()) and band.max() == pytest.approx(accs.max())


def test_align_seeds_drops_rounds_missing_in_a_seed(runs):
    a, b = runs["qsfl-default"]
    stats = plots.align_seeds([a.df, b.df.iloc[:2]])
    assert list(stats["round"]) == [0, 1]


def test_uplink_breakdown_stacks_the_four_parts(runs):
    h = runs["qsfl-tuned-1"][0]
    fig = plots.uplink_breakdown(h)
    ax = fig.axes[0]
    assert ax.get_xlabel() == "round" and ax.get_ylabel().startswith("uplink per round (")
    assert len(ax.containers) == 4
    names = [c.get_label().split(" (")[0] for c in ax.containers]
    assert names == ["QJ metadata", "values", "indices", "headers"]
    unit_div = {"(B)": 1, "(kB)": 1e3, "(MB)": 1e6}[ax.get_ylabel().split()[-1]]
    tops = np.sum([[bar.get_height() for bar in c] for c in ax.containers], axis=0) * unit_div
    np.testing.assert_allclose(tops, h.df["uplink_bytes"], rtol=1e-9)


def test_uplink_composition_one_bar_per_label(runs):
    fig = plots.uplink_composition(runs)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == list(runs)
    assert len(ax.containers) == 4 and all(len(c) == 3 for c in ax.containers)


def test_selection_and_coverage_heatmaps(runs):
    h = runs["qsfl-tuned-1"][0]
    fig = plots.selection_heatmap(h)
    ax, bx = fig.axes[:2]
    assert ax.get_xlabel() == "round" and ax.get_ylabel() == "client"
    grid = ax.images[0].get_array()
    assert grid.shape == (8, 3)
    assert (grid == 2).sum() == h.df["n_qualified"].sum()
    rates = [bar.get_width() for bar in bx.patches]
    assert len(rates) == 8 and all(0 <= r <= 1 for r in rates)

    fig = plots.coverage_heatmap(h)
    ax = fig.axes[0]
    assert ax.get_ylabel() == "segment"
    cov = ax.images[0].get_array()
    assert cov.shape == (2, 3)
    np.testing.assert_array_equal(cov.sum(axis=0), h.df["n_qualified"])  # each qualified client sends one segment


def test_coverage_heatmap_without_scss_says_so(runs):
    fig = plots.coverage_heatmap(runs["fedavg"][0])
    assert "no SCSS" in fig.axes[0].texts[0].get_text()


def test_study_figures_from_a_real_trials_table(study_template):
    trials = pd.read_parquet(study_template / "trials.parquet")
    logbook = pd.read_csv(study_template / "logbook.csv")

    ax = plots.ga_fitness(logbook).axes[0]
    assert ax.get_xlabel() == "generation" and ax.get_ylabel() == "fitness"
    assert series_labels(ax) == ["max", "mean \u00b1 std", "min"]
    np.testing.assert_allclose(ax.get_lines()[0].get_ydata(), logbook["max_0"])

    ax = plots.optimization_history(trials).axes[0]
    assert ax.get_xlabel() == "evaluation (trial number)" and ax.get_ylabel() == "fitness"
    assert series_labels(ax) == ["best so far"]
    assert ax.get_lines()[0].get_ydata()[-1] == pytest.approx(trials["fitness"].max())
    assert len(ax.collections[0].get_offsets()) == len(trials)

    ax = plots.pareto_front(trials, marks={"qsfl-default": (0.01, 0.5)}).axes[0]
    assert ax.get_xlabel() == "uplink per run (MB)" and ax.get_ylabel() == "final test accuracy"
    front = plots.pareto_mask(trials["metric_uplink_mb"], trials["metric_final_accuracy"])
    assert len(ax.get_lines()[0].get_xdata()) == front.sum()
    assert len(ax.collections[0].get_offsets()) == (~front).sum()  # dominated, faint
    assert ax.collections[0].get_alpha() < 0.5

    fig = plots.param_importance(trials)
    ax = fig.axes[0]
    assert ax.get_xlabel().startswith("importance")
    assert sorted(t.get_text() for t in ax.get_yticklabels()) == ["beta", "k", "ns", "p"]
    assert sum(b.get_width() for b in ax.patches) == pytest.approx(1.0)

    fig = plots.param_scatter(trials)
    visible = [a for a in fig.axes if a.get_visible() and a.get_label() != "<colorbar>"]
    assert [a.get_xlabel() for a in visible] == ["beta", "k", "ns", "p"]
    assert all(len(a.collections[0].get_offsets()) == len(trials) for a in visible)

    ax = plots.parallel_coordinates(trials).axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["beta", "k", "ns", "p", "fitness"]
    polylines = [line for line in ax.get_lines() if len(line.get_xdata()) == 5]
    assert len(polylines) == len(trials) + 1  # one per evaluation + the best highlighted


def test_penalised_outliers_go_off_scale_on_the_worse_side_only():
    vals = [0.21, 0.22, 0.25, 0.3, 0.24, 0.23, 24.0]  # one penalised evaluation, minimised
    lo, hi = plots.robust_range(vals, maximize=False)
    assert lo < 0.21 and 0.3 < hi < 1.0
    assert plots.robust_range(vals, maximize=True) is None  # a far-off *best* value is never cut
    trials = pd.DataFrame({"trial": range(7), "fitness": vals, "state": "complete"})
    ax = plots.optimization_history(trials, maximize=False).axes[0]
    assert ax.get_ylim()[1] == pytest.approx(hi)
    assert "1 off scale" in ax.get_title(loc="right")
    assert len(ax.collections[-1].get_offsets()) == 1  # the grey edge marker


def test_pareto_mask():
    mask = plots.pareto_mask([1, 2, 3, 2, 1], [0.5, 0.8, 0.9, 0.7, 0.5])
    assert mask.tolist() == [True, True, True, False, True]


def test_importance_works_with_other_evaluators(study_template):
    from optuna.importance import PedAnovaImportanceEvaluator

    trials = pd.read_parquet(study_template / "trials.parquet")
    imp = plots.param_importances(trials, evaluator=PedAnovaImportanceEvaluator())
    assert set(imp) <= {"beta", "k", "ns", "p"}


def test_save_figure_writes_png_and_svg(runs, tmp_path):
    paths = plots.save_figure(plots.accuracy_vs_round(runs), tmp_path / "figs" / "conv")
    assert [p.name for p in paths] == ["conv.png", "conv.svg"]
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<svg" in paths[1].read_text()[:1000]
    assert not list((tmp_path / "figs").glob(".*tmp"))


# ----- compare ---------------------------------------------------------------------------------------
def test_compare_table_equals_recomputation_from_saved_histories(compared):
    table = pd.read_csv(compared / "compare.csv")
    assert list(table["label"]) == ["qsfl-tuned-1", "fedavg", "topk", "qj-only", "scss-only", "qsfl-default"]
    for _, row in table.iterrows():
        hs = [History.load(compared / "compare" / row["label"] / f"seed{s}") for s in (5, 6)]
        assert [h.config["seed"] for h in hs] == [5, 6] and all(h.config["rounds"] == 2 for h in hs)
        acc = [h.summary["final_accuracy"] for h in hs]
        mb = [h.summary["total_uplink_bytes"] / 1e6 for h in hs]
        ratio = [h.summary["compression_ratio"] for h in hs]
        assert row["final_accuracy_mean"] == pytest.approx(np.mean(acc))
        assert row["final_accuracy_std"] == pytest.approx(np.std(acc, ddof=1))
        assert row["uplink_mb_mean"] == pytest.approx(np.mean(mb))
        assert row["uplink_mb_std"] == pytest.approx(np.std(mb, ddof=1))
        assert row["compression_ratio_mean"] == pytest.approx(np.mean(ratio))
        reached = [h.summary["rounds_to_target"] for h in hs if h.summary["rounds_to_target"] is not None]
        assert row["reached"] == len(reached)
        if reached:
            assert row["rounds_to_target_mean"] == pytest.approx(np.mean(reached))


def test_compare_runs_the_right_configs(compared):
    def cfg(label):
        return History.load(compared / "compare" / label / "seed5").config["strategy"]
    best = dict(__import__("tomllib").loads((compared / "best.toml").read_text())["best"][0]["params"])
    tuned = cfg("qsfl-tuned-1")
    assert {k: tuned[k] for k in best} == best and tuned["name"] == "qsfl"
    assert cfg("fedavg")["name"] == "fedavg"
    assert cfg("topk")["name"] == "topk" and cfg("topk")["p"] == 0.1
    for label, qj, scss in (("qj-only", True, False), ("scss-only", False, True), ("qsfl-default", True, True)):
        s = cfg(label)
        assert (s["name"], s["use_qj"], s["use_scss"]) == ("qsfl", qj, scss)
        assert (s["beta"], s["alpha"], s["ns"], s["p"], s.get("k")) == (0.9, 0.7, 6, 0.4, None)


def test_compare_md_and_figure(compared):
    md = (compared / "compare.md").read_text()
    for label in ("qsfl-tuned-1", "fedavg", "topk", "qj-only", "scss-only", "qsfl-default"):
        assert f"| {label} |" in md
    assert "too few for a 95% interval" in md and "seeds 5, 6" in md
    assert (compared / "figures" / "compare_convergence.png").is_file()
    assert (compared / "figures" / "compare_convergence.svg").is_file()
    assert len(pd.read_csv(compared / "compare" / "runs.csv")) == 12


def test_compare_reuses_saved_runs(compared, tmp_path):
    from qsfl_cli import compare_study

    out = Path(shutil.copytree(compared, tmp_path / "out"))
    before = pd.read_csv(out / "compare.csv")
    compare_study(out, top=1, seeds=[5, 6], workers=1, rounds=2)
    runs = pd.read_csv(out / "compare" / "runs.csv")
    assert runs["reused"].all()
    pd.testing.assert_frame_equal(pd.read_csv(out / "compare.csv"), before)


def test_compare_refuses_search_seeds(study_dir):
    from qsfl_cli import compare_study

    with pytest.raises(ConfigError, match="used by the search"):
        compare_study(study_dir, seeds=[0, 7])


def test_default_seeds_skip_the_search_seeds():
    from tuning.compare import choose_seeds, parse_seeds

    assert choose_seeds(None, {0, 1, 3}) == [2, 4, 5, 6, 7]                  # five by default
    assert choose_seeds(None, {0}, preferred=[100, 101]) == [100, 101]
    assert choose_seeds(None, {0, 100}, preferred=[100, 101]) == [1, 2, 3, 4, 5]
    assert parse_seeds("100-102,7") == [100, 101, 102, 7]
    with pytest.raises(ConfigError, match="--seeds"):
        parse_seeds("1,x")


def test_compare_configs_file_and_base_file(tmp_path):
    from qsfl_cli import compare_study

    (tmp_path / "base.toml").write_text(dump_toml({**BASE, "rounds": 2}))
    (tmp_path / "configs.toml").write_text(
        '[[config]]\nlabel = "mine"\nparams = { beta = 0.3, k = 4, ns = 2, p = 0.25 }\n')
    out = tmp_path / "cmp"
    table = compare_study(out, configs_file=tmp_path / "configs.toml", base_file=tmp_path / "base.toml",
                          seeds=[3])
    assert next(iter(table["label"])) == "mine"
    s = History.load(out / "compare" / "mine" / "seed3").config["strategy"]
    assert (s["beta"], s["k"], s["ns"], s["p"]) == (0.3, 4, 2, 0.25)


@pytest.mark.parametrize("text, match", [
    ('[[config]]\nparams = { nope = 1 }\n', "nope"),
    ('[[config]]\nlabel = "fedavg"\nparams = { beta = 0.1 }\n', "label"),
    ('[[config]]\nlabel = "a"\n', "params"),
    ('x = 1\n', r"\[\[config\]\]"),
])
def test_bad_configs_file(tmp_path, text, match):
    from qsfl_cli import compare_study

    (tmp_path / "base.toml").write_text(dump_toml(BASE))
    (tmp_path / "c.toml").write_text(text)
    with pytest.raises(ConfigError, match=match):
        compare_study(tmp_path / "o", configs_file=tmp_path / "c.toml", base_file=tmp_path / "base.toml", seeds=[1])


def test_compare_without_base_names_what_is_missing(tmp_path):
    from qsfl_cli import compare_study

    with pytest.raises(ConfigError, match="spec.toml"):
        compare_study(tmp_path)


# ----- report ----------------------------------------------------------------------------------------
def test_report_html_is_self_contained_and_complete(compared):
    from reports.report import write_report

    path = write_report(compared)
    text = path.read_text()
    assert "http://" not in text and "https://" not in text
    assert "<link" not in text and "<script" not in text and "url(" not in text
    srcs = re.findall(r'src="([^"]*)"', text)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    figures = sorted(p.stem for p in (compared / "figures").glob("*.png") if not p.stem.startswith("compare_"))
    assert len(srcs) == len(figures) >= 12
    assert all((compared / "figures" / f"{name}.svg").is_file() for name in figures)
    # the comparison table with its numbers
    table = pd.read_csv(compared / "compare.csv")
    assert "Comparison with baselines" in text
    for _, row in table.iterrows():
        assert f"<td>{row['label']}</td>" in text
        if math.isnan(row["final_accuracy_ci_low"]):      # two seeds: too few for an interval, the mean alone
            assert f">{row['final_accuracy_mean']:.4f}<" in text and '[nan' not in text
        else:
            cell = (f"{row['final_accuracy_mean']:.4f}<br><span class=\"ci\">[{row['final_accuracy_ci_low']:.4f}, "
                    f"{row['final_accuracy_ci_high']:.4f}]</span>")
            assert cell in text
    # best configs, timing and the spec
    assert "Best configurations" in text and "authors&#x27; defaults" in text
    assert "wall clock" in text and "test-study" in text and "[base]" in text
    md = (compared / "report.md").read_text()
    assert "## Comparison with baselines" in md
    for name in figures:
        assert f"(figures/{name}.png)" in md


def test_report_of_a_study_still_running(study_dir):
    """Only spec + trials so far (no best.toml, logbook, histories): `qsfl report` still writes the report."""
    from qsfl_cli import main
    from reports.study import load_report_study

    for name in ("best.toml", "baseline.toml", "logbook.csv", "trials.parquet"):
        (study_dir / name).unlink()
    shutil.rmtree(study_dir / "histories")
    assert main(["report", str(study_dir), "--quiet"]) == 0
    text = (study_dir / "report.html").read_text()
    assert "Best configurations" in text
    assert len(load_report_study(study_dir).trials) == 6


def test_multi_objective_optuna_study_with_failed_and_pruned_rows(study_dir):
    """Two objectives, engine optuna, a pruned and a failed trial: every figure still builds sensibly."""
    from reports.figures import study_figures
    from reports.study import load_report_study as load_study
    from reports.tables import best_table

    trials = pd.read_parquet(study_dir / "trials.parquet")
    trials["engine"], trials["generation"] = "optuna", -1
    trials["fitness_0"], trials["fitness_1"] = trials["metric_final_accuracy"], trials["metric_uplink_mb"]
    trials = trials.drop(columns=["fitness"])
    bad = trials.iloc[[0, 1]].copy()
    bad["trial"] = [6, 7]
    bad["state"], bad["reason"] = ["pruned", "failed"], ["pruned at round 1", "diverged: loss is nan"]
    for col in [c for c in trials.columns if c.startswith(("metric_", "fitness_"))]:
        bad[col] = np.nan
    pd.concat([trials, bad], ignore_index=True).to_parquet(study_dir / "trials.parquet", index=False)
    (study_dir / "logbook.csv").unlink()
    spec = __import__("tomllib").loads((study_dir / "spec.toml").read_text())
    spec["study"]["engine"] = "optuna"
    spec["objective"] = {"objectives": ["final_accuracy", "uplink_mb"]}
    (study_dir / "spec.toml").write_text(dump_toml(spec))

    study = load_study(study_dir)
    figs = {f.name: f.figure for f in study_figures(study)}
    assert {"optimization_history_0", "optimization_history_1", "pareto_front", "param_importance"} <= set(figs)
    assert not any(name.startswith("ga_fitness") for name in figs)
    hist = figs["optimization_history_1"].axes[0]
    assert hist.get_ylabel() in ("fitness_1", "uplink_mb")  # the objective's text when tuning reads the spec
    assert hist.get_lines()[0].get_ydata()[-1] == pytest.approx(trials["metric_uplink_mb"].min())  # minimised
    assert len(figs["param_importance"].axes[0].get_legend().get_texts()) == 2
    assert len(best_table(study)) == 3  # best.toml's two + the authors' defaults


def test_not_a_study_dir_names_missing_files(tmp_path):
    from reports.report import write_report

    (tmp_path / "spec.toml").write_text('name = "x"\n')
    with pytest.raises(ConfigError) as err:
        write_report(tmp_path)
    assert "trials.parquet or trials.csv" in str(err.value) and "spec.toml" not in str(err.value).split("missing")[1]
    (tmp_path / "spec.toml").unlink()
    with pytest.raises(ConfigError, match=r"missing spec\.toml, trials\.parquet or trials\.csv"):
        write_report(tmp_path)
    with pytest.raises(ConfigError, match="no such directory"):
        write_report(tmp_path / "nope")


def test_study_timing_one_session():
    from reports.format import format_duration
    from reports.study import study_timing

    t = pd.DataFrame({"duration_s": [2.0, 3.0, 4.0], "state": ["complete", "complete", "failed"],
                      "finished_at": ["2024-01-01T00:00:02+00:00", "2024-01-01T00:00:05+00:00",
                                      "2024-01-01T00:01:00+00:00"]})
    out = study_timing(t)
    assert out["compute_s"] == 9.0 and out["wall_s"] == 60.0 and out["sessions"] == 1
    assert out["n_complete"] == 2 and out["n_failed"] == 1
    assert format_duration(3725) == "1 h 2 min 5 s"


def test_study_timing_after_resume_counts_computing_not_the_pause():
    """Two sessions a day apart: wall time is the two sessions' spans (10 s + 6 s), not a day."""
    from reports.study import study_timing

    t = pd.DataFrame({"duration_s": [4.0, 6.0, 2.0, 4.0],
                      "finished_at": ["2024-01-01T00:00:04+00:00", "2024-01-01T00:00:10+00:00",
                                      "2024-01-02T00:00:02+00:00", "2024-01-02T00:00:06+00:00"]})
    out = study_timing(t)
    assert out["sessions"] == 2 and out["wall_s"] == 16.0 and out["compute_s"] == 16.0
    # two parallel workers overlap in time: the session's span counts once
    t = pd.DataFrame({"duration_s": [10.0, 10.0], "finished_at": ["2024-01-01T00:00:10+00:00",
                                                                  "2024-01-01T00:00:11+00:00"]})
    out = study_timing(t)
    assert out["wall_s"] == 11.0 and out["compute_s"] == 20.0


def test_directions_and_objective_names_come_from_the_files(study_dir):
    """The spec's objective when readable, else best.toml's `objectives`/`directions`; never a name guess."""
    from tuning.results import load_study

    spec = __import__("tomllib").loads((study_dir / "spec.toml").read_text())
    study = load_study(study_dir)
    assert study.directions == ["maximize"] and study.objectives == ["final_accuracy - 0.05 * uplink_fraction"]
    # a metric whose name looks minimised ("uplink") declared maximised: the files win
    spec["objective"] = {"formula": "uplink_mb", "direction": "maximize"}
    (study_dir / "spec.toml").write_text(dump_toml(spec))
    assert load_study(study_dir).directions == ["maximize"]
    # an unreadable [objective]: best.toml says what was optimised
    spec["objective"] = {"formula": "no_such_metric"}
    (study_dir / "spec.toml").write_text(dump_toml(spec))
    best = __import__("tomllib").loads((study_dir / "best.toml").read_text())
    (study_dir / "best.toml").write_text(dump_toml({**best, "objectives": ["minimize uplink_fraction"],
                                                    "directions": ["minimize"]}))
    study = load_study(study_dir)
    assert study.directions == ["minimize"] and study.objectives == ["uplink_fraction"]
    (study_dir / "best.toml").unlink()
    (study_dir / "baseline.toml").unlink()
    with pytest.raises(ConfigError, match="direction"):
        load_study(study_dir)


# ----- CLI -------------------------------------------------------------------------------------------
def test_report_without_compare_uses_saved_histories(study_dir):
    from reports.report import write_report

    text = write_report(study_dir, formats=("png",)).read_text()
    assert (study_dir / "report.md").is_file()
    assert "Comparison with baselines" not in text
    assert "convergence_uplink" in " ".join(p.stem for p in (study_dir / "figures").glob("*.png"))
    assert text.count('src="data:image/png;base64,') >= 9
    assert "Inside one run: best, seed 0" in text  # the best config's history, not the baseline's


def test_cli_errors(study_dir, tmp_path, capsys):
    from qsfl_cli import main
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert main(["compare", str(study_dir), "--seeds", "0"]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "no such directory" in err and "used by the search" in err
    assert "Traceback" not in err


def test_cli_compare(study_dir, capsys):
    from qsfl_cli import main

    assert main(["compare", str(study_dir), "--top", "1", "--seeds", "9", "--rounds", "1", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "| qsfl-tuned-1 |" in out and "| qsfl-default |" in out
    assert (study_dir / "compare.csv").is_file()


@pytest.mark.slow
def test_compare_in_parallel_equals_serial(compared, tmp_path):
    """Two spawn workers (1 torch thread each) give the same table as the serial run."""
    from qsfl_cli import compare_study

    out = Path(shutil.copytree(compared, tmp_path / "out", ignore=shutil.ignore_patterns("compare")))
    table = compare_study(out, top=1, seeds=[5, 6], workers=2, rounds=2)
    serial = pd.read_csv(compared / "compare.csv")
    cols = ["final_accuracy_mean", "uplink_mb_mean", "compression_ratio_mean"]
    np.testing.assert_allclose(table[cols].to_numpy(), serial[cols].to_numpy(), rtol=1e-6)


# ----- reports stay right after resume and extension ---------------------------------------------------------
def test_best_table_lists_distinct_simulations(study_dir):
    """Two params that simulate identically (same seeds, every metric equal) share one row of the best table."""
    from reports.study import load_report_study
    from reports.tables import best_table

    trials = pd.read_parquet(study_dir / "trials.parquet")
    top = trials.sort_values("fitness", ascending=False).iloc[0]
    twin = top.copy()
    twin["param_p"], twin["trial"], twin["individual"] = top["param_p"] + 0.001, len(trials), "twin"
    pd.concat([trials, twin.to_frame().T.astype(trials.dtypes)], ignore_index=True).to_parquet(
        study_dir / "trials.parquet", index=False)
    best = __import__("tomllib").loads((study_dir / "best.toml").read_text())["best"]
    twin_params = {**best[0]["params"], "p": float(twin["param_p"])}
    best = [best[0], {"params": twin_params, "fitness": best[0]["fitness"]}, *best[1:]]
    (study_dir / "best.toml").write_text(dump_toml({"best": best}))
    table = best_table(load_report_study(study_dir))
    assert list(table["rank"]) == [1, 2, "authors' defaults"]       # 3 entries, 2 distinct simulations
    assert "same simulation: " in table["params"].iloc[0] and f"p={twin_params['p']:.4g}" in table["params"].iloc[0]


def test_simulation_keys_merge_only_identical_complete_rows():
    from tuning.results import simulation_keys

    t = pd.DataFrame({"seeds": ["0", "0", "1", "0"], "metric_final_accuracy": [0.5, 0.5, 0.5, 0.5],
                      "metric_uplink_mb": [1.0, 1.0, 1.0, 2.0], "state": ["complete"] * 4})
    keys = simulation_keys(t)
    assert keys[0] == keys[1] and len(set(keys)) == 3                # other seed, other bytes: distinct
    t.loc[1, "state"] = "failed"
    assert simulation_keys(t)[0] != simulation_keys(t)[1]
    assert simulation_keys(t.assign(simulation=["a", "a", "b", "b"])).tolist() == ["a", "a", "b", "b"]


def test_comparison_of_an_earlier_best_set_is_marked_stale(compared, tmp_path):
    from reports.report import write_report
    from tuning.results import read_compare

    out = Path(shutil.copytree(compared, tmp_path / "out"))
    assert read_compare(out).stale is False
    assert "STALE" not in write_report(out, formats=("png",)).read_text()
    best = __import__("tomllib").loads((out / "best.toml").read_text())
    best["best"][0]["params"]["p"] = 0.123                           # a resumed study found another best
    (out / "best.toml").write_text(dump_toml(best))
    assert read_compare(out).stale is True
    assert "STALE: best.toml changed since this comparison ran" in write_report(out, formats=("png",)).read_text()


def test_report_records_versions_and_hardware(study_dir):
    import platform

    import torch

    from qsfl.environment import describe, git_commit
    from reports.report import write_report

    env = describe()
    assert env["torch"] == torch.__version__ and env["python"] == platform.python_version()
    assert env["cpu_count"] >= 1 and "qsfl_tune" in env
    text = write_report(study_dir, formats=("png",)).read_text()
    assert f"torch {torch.__version__}" in text and f"Python {platform.python_version()}" in text
    commit = git_commit()
    assert commit is None or f"commit {commit}" in text
    assert f"{env['cpu_count']} CPUs" in text


def test_report_shows_the_sessions_that_ran_the_study(study_dir):
    from reports.report import write_report

    env = {"qsfl_tune": "0.1.0", "python": "3.11.7", "torch": "2.13.0", "cpu": "Test CPU", "cpu_count": 2,
           "git_commit": "abc123"}
    (study_dir / "environment.json").write_text(json.dumps({"sessions": [
        {"started": "2024-05-01T12:00:00+00:00", "finished": "2024-05-01T12:10:00+00:00", "status": "complete",
         "command": "qsfl tune s.toml", "environment": env},
        {"started": "2024-05-03T08:00:00+00:00", "finished": "2024-05-03T08:05:00+00:00", "status": "complete",
         "command": "qsfl tune s.toml --resume", "environment": {**env, "cpu": "Other CPU"}}]}))
    text = write_report(study_dir, formats=("png",)).read_text()
    assert "session 1" in text and "session 2" in text and "commit abc123" in text and "Other CPU" in text


def test_multi_objective_figures_name_their_metrics(study_dir):
    from reports.figures import study_figures
    from reports.study import load_report_study

    trials = pd.read_parquet(study_dir / "trials.parquet")
    trials["fitness_0"], trials["fitness_1"] = trials["metric_final_accuracy"], trials["metric_uplink_mb"]
    trials.drop(columns=["fitness"]).to_parquet(study_dir / "trials.parquet", index=False)
    spec = __import__("tomllib").loads((study_dir / "spec.toml").read_text())
    spec["objective"] = {"objectives": ["final_accuracy", "uplink_mb"]}
    (study_dir / "spec.toml").write_text(dump_toml(spec))
    logbook = pd.read_csv(study_dir / "logbook.csv")
    logbook["min_1"], logbook["mean_1"], logbook["max_1"], logbook["std_1"] = 1.0, 2.0, 3.0, 0.5
    logbook.to_csv(study_dir / "logbook.csv", index=False)
    entries = study_figures(load_report_study(study_dir))
    figs = {f.name: f for f in entries}
    texts = " ".join(f.caption + " " + " ".join(a.get_xlabel() + a.get_ylabel() + a.get_title()
                                                for a in f.figure.axes) for f in entries)
    assert "fitness_0" not in texts and "fitness_1" not in texts
    assert figs["optimization_history_1"].figure.axes[0].get_ylabel() == "uplink_mb"
    ax = figs["objective_front"].figure.axes[0]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("uplink_mb", "final_accuracy")
    assert "lower is better" in figs["ga_fitness_1"].figure.axes[0].get_title(loc="right")
    assert "higher is better" in figs["ga_fitness_0"].figure.axes[0].get_title(loc="right")


def test_ga_fitness_says_which_direction_is_better(study_template):
    logbook = pd.read_csv(study_template / "logbook.csv")
    assert "higher is better" in plots.ga_fitness(logbook, maximize=True).axes[0].get_title(loc="right")
    assert "lower is better" in plots.ga_fitness(logbook, maximize=False).axes[0].get_title(loc="right")


def test_overlapping_lines_stay_distinguishable(runs):
    """Two labels with the very same run (identical simulations) draw lines with different markers and dashes."""
    same = runs["qsfl-tuned-1"][0]
    for fig in (plots.accuracy_vs_round({"qsfl-tuned-1": [same], "qsfl-tuned-2": [same], "qsfl-default": [same]}),
                plots.accuracy_vs_uplink({"qsfl-tuned-1": [same], "qsfl-tuned-2": [same]})):
        lines = [line for line in fig.axes[0].get_lines() if not line.get_label().startswith("_")]
        styles = {(line.get_marker(), str(line.get_linestyle()), str(line.get_dashes() if hasattr(line, "get_dashes")
                                                                      else "")) for line in lines}
        assert len({line.get_marker() for line in lines}) == len(lines)
        assert len(styles) == len(lines)


def test_mean_over_seeds_only_with_several_seeds(runs):
    one = {"qsfl-default": runs["qsfl-default"][:1], "fedavg": runs["fedavg"]}
    assert "mean over seeds" not in plots.uplink_composition(one).axes[0].get_xlabel()
    assert "mean over seeds" in plots.uplink_composition(runs).axes[0].get_xlabel()
    assert plots.accuracy_vs_round(one).axes[0].get_title(loc="right") == ""
    assert "over seeds" in plots.accuracy_vs_round(runs).axes[0].get_title(loc="right")


def test_report_of_one_seed_does_not_say_mean_over_seeds(study_dir):
    from reports.report import write_report

    text = write_report(study_dir, formats=("png",)).read_text()
    assert "mean over" not in text and "Metrics and search fitness are the search&#x27;s own (seed 0)" in text
    spec = __import__("tomllib").loads((study_dir / "spec.toml").read_text())
    spec["study"]["seeds"] = [0, 1]
    (study_dir / "spec.toml").write_text(dump_toml(spec))
    assert "mean over its 2 seeds 0, 1" in write_report(study_dir, formats=("png",)).read_text()


@pytest.mark.parametrize("best, baseline, directions, says", [
    ([[0.8]], [0.7], ["maximize"], False),
    ([[0.6], [0.5]], [0.7], ["maximize"], True),
    ([[0.7]], [0.7], ["maximize"], True),                       # a tie is not better
    ([[3.0]], [2.0], ["minimize"], True),
    ([[1.0]], [2.0], ["minimize"], False),
    ([[0.9, 5.0], [0.8, 1.0]], [0.85, 3.0], ["maximize", "minimize"], True),    # nobody dominates the defaults
    ([[0.9, 2.0], [0.8, 1.0]], [0.85, 3.0], ["maximize", "minimize"], False),   # (0.9, 2.0) dominates
])
def test_defaults_verdict(best, baseline, directions, says):
    from tuning.results import defaults_verdict

    verdict = defaults_verdict([{"fitness": f} for f in best], {"fitness": baseline, "state": "complete"},
                               directions)
    assert (verdict is not None) == says


def test_report_says_when_the_defaults_were_not_beaten(study_dir):
    from reports.report import write_report

    baseline = __import__("tomllib").loads((study_dir / "baseline.toml").read_text())
    baseline["fitness"] = [10.0]                                 # the defaults' fitness beats every trial
    (study_dir / "baseline.toml").write_text(dump_toml(baseline))
    assert "did not beat the defaults" in write_report(study_dir, formats=("png",)).read_text()


def test_reports_metric_names_are_tunings():
    """One list of metric names: every metric the reports show or test is one of tuning's METRICS."""
    from reports import compare
    from reports.tables import METRIC_DISPLAY
    from tuning.results import METRICS

    names = [n for n, _, _ in METRIC_DISPLAY] + list(compare.METRICS) + list(compare.TESTED)
    assert set(names) <= set(METRICS), set(names) - set(METRICS)
