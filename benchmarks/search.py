"""Which searcher wins at equal wall time: random search, the GA, the GA with ``[fidelity]``, TPE, and TPE with
the Hyperband pruner, on two tasks, over several search seeds.

Tasks: ``quickstart`` (studies/quickstart.toml: digits, MLP, 20 iid clients, 30 rounds) and ``noniid``
(studies/noniid_mnist1d.toml: mnist1d, cnn1d, 20 clients, Dirichlet 0.5, where the authors' defaults do not reach
the target). Every (task, searcher, search seed) is one study with the same wall-time budget
(``study.time_budget_s``; the searchers' own budgets are set large enough never to bind), run serially in this
process with one torch thread. Each study's best config and the authors' defaults are then re-evaluated on the
spec's fresh ``eval_seeds``.

Prints one table per task (mean and spread over search seeds of: the best fitness found within the budget — a
study finishes the batch it is in when the budget runs out, so what it found after the budget is not counted —,
that config's fitness on the fresh seeds, evaluations, simulated rounds, wall time) and draws best-fitness-so-far against wall time and
against simulated rounds (mean line, min-max band over search seeds) to ``OUT/search_<task>.png`` / ``.svg``.
Results go to ``OUT/results.json`` too (one record per study).

    python benchmarks/search.py                         # both tasks, 3 search seeds, 600 s per study
    python benchmarks/search.py --quick                 # a tiny smoke run (small budgets, 1 seed, few rounds)
    python benchmarks/search.py --task quickstart --budget-s 300 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import pandas as pd

from qsfl.config import load_toml
from tuning.evaluate import Point
from tuning.spec import StudySpec, parse_spec, set_spec_value
from tuning.study import baseline_point, evaluate_on_seeds, run_study

REPO = Path(__file__).resolve().parents[1]
TASKS = {"quickstart": REPO / "studies" / "quickstart.toml",
         "noniid": REPO / "studies" / "noniid_mnist1d.toml"}

# searcher -> spec overrides (budgets large: the wall-time budget ends every study)
SEARCHERS: dict[str, dict[str, Any]] = {
    "random": {"study.engine": "random", "random.n_trials": 100000, "random.batch_size": 10},
    "ga": {"study.engine": "ga", "ga.generations": 100000},
    "ga+fidelity": {"study.engine": "ga", "ga.generations": 100000, "fidelity.min_rounds": None, "fidelity.eta": 3},
    "tpe": {"study.engine": "optuna", "optuna.sampler": "tpe", "optuna.n_trials": 100000, "optuna.pruner": "none"},
    "tpe+hyperband": {"study.engine": "optuna", "optuna.sampler": "tpe", "optuna.n_trials": 100000,
                      "optuna.pruner": "hyperband", "optuna.prune_every": None},
}


def task_spec(path: Path, searcher: str, seed: int, budget_s: float, quick: bool) -> StudySpec:
    """The task's spec with the searcher's overrides, the search seed and the time budget."""
    raw = load_toml(path)
    raw.pop("fidelity", None)
    raw["study"] = {**raw.get("study", {}), "search_seed": seed, "time_budget_s": budget_s, "save_histories": False,
                    "workers": 1}
    if quick:
        raw["base"]["rounds"] = min(int(raw["base"]["rounds"]), 6)
        raw["base"]["clients"] = min(int(raw["base"]["clients"]), 8)
        for name in ("k", "ns"):
            if name in raw.get("space", {}):
                raw["space"][name]["high"] = min(int(raw["space"][name]["high"]), raw["base"]["clients"])
        raw["study"]["seeds"] = raw["study"]["seeds"][:1]
        raw["study"]["eval_seeds"] = raw["study"]["eval_seeds"][:1]
    rounds = int(raw["base"]["rounds"])
    eval_every = int(raw["base"].get("eval_every", 1))
    for key, value in SEARCHERS[searcher].items():
        if key == "fidelity.min_rounds":           # ceil(rounds / 9): three rungs with eta 3 (30: 4, 12, 30; 40: 5, 15, 40)
            value = max(eval_every, -(-math.ceil(rounds / 9) // eval_every) * eval_every)
        if key == "optuna.prune_every":            # a pruning decision every tenth of the run
            value = max(1, rounds // 10)
        set_spec_value(raw, key, value)
    return parse_spec(raw, default_name=f"{path.stem}_{searcher.replace('+', '_')}_{seed}")


def reevaluate(spec: StudySpec, point: Point) -> tuple[float, dict[str, float]]:
    """The point's fitness and metrics on the spec's eval_seeds (full rounds)."""
    ev = evaluate_on_seeds(spec, point, spec.study.eval_seeds)
    return (float(ev.fitness[0]) if ev.ok else math.nan), dict(ev.metrics)


def curves(df: pd.DataFrame, spec: StudySpec, started: dt.datetime, baseline_rounds: int) -> dict[str, list[float]]:
    """Best-so-far fitness of full-rounds rows against wall time since the study started and simulated rounds
    (rows in the order they finished)."""
    sign = spec.objective.weights[0]
    best = math.nan
    times, rounds, values = [], [], []
    simulated = baseline_rounds
    df = df.assign(_t=pd.to_datetime(df["finished_at"])).sort_values("_t", kind="stable")
    for _, row in df.iterrows():
        simulated += int(row.get("simulated_rounds", 0) or 0)
        full = int(row.get("rounds", spec.base.rounds) or spec.base.rounds) == spec.base.rounds
        better = math.isnan(best) or sign * row["fitness"] > sign * best
        if row["state"] == "complete" and full and math.isfinite(row["fitness"]) and better:
            best = float(row["fitness"])
        finished = dt.datetime.fromisoformat(str(row["finished_at"]))
        times.append((finished - started).total_seconds())
        rounds.append(float(simulated))
        values.append(best)
    return {"time": times, "rounds": rounds, "best": values}


def best_within(df: pd.DataFrame, spec: StudySpec, started: dt.datetime, budget_s: float) -> dict[str, Any] | None:
    """The best complete full-rounds row that finished within the budget (a study overshoots by up to one batch:
    comparing what each searcher had at the budget keeps the comparison at equal wall time)."""
    full = df[(df["state"] == "complete") & (df["rounds"] == spec.base.rounds) & df["fitness"].notna()]
    finished = pd.to_datetime(full["finished_at"])
    full = full[(finished - pd.Timestamp(started)).dt.total_seconds() <= budget_s]
    if full.empty:
        return None
    row = full.loc[full["fitness"].idxmax() if spec.objective.weights[0] > 0 else full["fitness"].idxmin()]
    return {"fitness": float(row["fitness"]), "params": {p: row[f"param_{p}"].item() if hasattr(row[f"param_{p}"], "item")
                                                         else row[f"param_{p}"] for p in spec.space.names}}


def run_one(task: str, searcher: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    spec = task_spec(TASKS[task], searcher, seed, args.budget_s, args.quick)
    out = args.out / task / searcher.replace("+", "_") / f"seed{seed}"
    if out.exists():
        import shutil

        shutil.rmtree(out)
    started = dt.datetime.now(dt.UTC)
    t0 = time.perf_counter()
    result = run_study(spec, out, quiet=True)
    wall = time.perf_counter() - t0
    df = pd.read_parquet(out / "trials.parquet")
    baseline = load_toml(out / "baseline.toml")
    record: dict[str, Any] = {"task": task, "searcher": searcher, "seed": seed, "evaluations": len(df),
                              "simulated_rounds": result.simulated_rounds + int(baseline.get("simulated_rounds", 0)),
                              "wall_s": wall, "best": math.nan, "fresh": math.nan, "best_params": None,
                              "curve": curves(df, spec, started, int(baseline.get("simulated_rounds", 0)))}
    if result.best:
        at_budget = best_within(df, spec, started, args.budget_s)
        record["within_budget"] = at_budget is not None
        best = at_budget or {"fitness": result.best[0]["fitness"][0], "params": result.best[0]["params"]}
        record["best"] = float(best["fitness"])
        record["best_params"] = best["params"]
        record["fresh"], record["fresh_metrics"] = reevaluate(spec, Point(dict(best["params"])))
    return record


def spread(values: list[float]) -> str:
    vals = [v for v in values if math.isfinite(v)]
    if not vals:
        return "n/a"
    if len(vals) == 1:
        return f"{vals[0]:.4g}"
    return f"{statistics.mean(vals):.4g} ± {statistics.stdev(vals):.2g}"


def print_table(task: str, records: list[dict[str, Any]], defaults_fresh: float, direction: str) -> None:
    print(f"\n## {task} (fitness: {direction}; mean ± std over search seeds)\n")
    print("| searcher | best at the budget (search seeds) | fresh eval_seeds | evaluations | simulated rounds | wall s |")
    print("|---|---:|---:|---:|---:|---:|")
    for searcher in SEARCHERS:
        rs = [r for r in records if r["searcher"] == searcher]
        if not rs:
            continue
        print(f"| {searcher} | {spread([r['best'] for r in rs])} | {spread([r['fresh'] for r in rs])} | "
              f"{spread([float(r['evaluations']) for r in rs])} | {spread([float(r['simulated_rounds']) for r in rs])} | "
              f"{spread([r['wall_s'] for r in rs])} |")
    print(f"| authors' defaults | | {defaults_fresh:.4g} | | | |")


def plot(task: str, records: list[dict[str, Any]], out: Path, direction: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for searcher in SEARCHERS:
        rs = [r for r in records if r["searcher"] == searcher and r["curve"]["best"]]
        if not rs:
            continue
        for ax, key, label in ((axes[0], "time", "wall time (s)"), (axes[1], "rounds", "simulated rounds")):
            end = max(max(r["curve"][key]) for r in rs)
            grid = np.linspace(0, end, 200)
            ys = []
            for r in rs:
                xs, bs = np.asarray(r["curve"][key]), np.asarray(r["curve"]["best"], dtype=float)
                idx = np.searchsorted(xs, grid, side="right") - 1      # step function: best so far at x
                ys.append(np.where(idx >= 0, bs[np.clip(idx, 0, None)], np.nan))
            arr = np.vstack(ys)
            with warnings.catch_warnings():   # before a searcher's first full-rounds result its curve is NaN
                warnings.simplefilter("ignore", RuntimeWarning)
                mean, lo, hi = np.nanmean(arr, axis=0), np.nanmin(arr, axis=0), np.nanmax(arr, axis=0)
            line, = ax.plot(grid, mean, label=searcher)
            ax.fill_between(grid, lo, hi, color=line.get_color(), alpha=0.15)
            ax.set_xlabel(label)
    better = "lower is better" if direction == "minimize" else "higher is better"
    axes[0].set_ylabel(f"best fitness so far ({better})")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{task}: mean over search seeds, band = min-max")
    fig.tight_layout()
    for ext in ("png", "svg"):
        fig.savefig(out / f"search_{task}.{ext}", dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", action="append", choices=sorted(TASKS), help="repeatable (default: both)")
    ap.add_argument("--searcher", action="append", choices=list(SEARCHERS), help="repeatable (default: all)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="search seeds (default 0 1 2)")
    ap.add_argument("--budget-s", type=float, default=600.0, help="wall-time budget of every study (default 600)")
    ap.add_argument("--out", type=Path, default=Path("out/benchmark_search"))
    ap.add_argument("--quick", action="store_true", help="tiny smoke run: 6 rounds, 8 clients, 1 seed, 20 s")
    args = ap.parse_args(argv)
    if args.quick:
        args.seeds = args.seeds[:1]
        args.budget_s = min(args.budget_s, 20.0)
    import torch

    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    tasks = args.task or list(TASKS)
    chosen = args.searcher or list(SEARCHERS)
    records: list[dict[str, Any]] = []
    for task in tasks:
        task_records = []
        for searcher in chosen:
            for seed in args.seeds:
                print(f"{task} / {searcher} / search seed {seed} ({args.budget_s:.0f} s) ...", flush=True)
                rec = run_one(task, searcher, seed, args)
                print(f"  {rec['evaluations']} evaluations, {rec['simulated_rounds']} simulated rounds, best "
                      f"{rec['best']:.4g}, fresh {rec['fresh']:.4g}", flush=True)
                task_records.append(rec)
        spec = task_spec(TASKS[task], chosen[0], args.seeds[0], args.budget_s, args.quick)
        defaults_fresh, _ = reevaluate(spec, baseline_point(spec))
        direction = spec.objective.directions[0]
        print_table(task, task_records, defaults_fresh, direction)
        plot(task, task_records, args.out, direction)
        for rec in task_records:
            rec["defaults_fresh"] = defaults_fresh
        records += task_records
    (args.out / "results.json").write_text(json.dumps(records, indent=1, default=str))
    print(f"\nfigures and results.json in {args.out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
