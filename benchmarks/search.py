"""The judge of tuning: does the answer of a study hold on seeds it never saw?

For every task, searcher (with and without ``[fidelity]``), budget (B and 2B) and search seed, one study runs as a
user would run it (racing and validation on, their defaults); its answer (best.toml's first entry: a tuned
configuration, or the defaults when validation found nothing better) and the strategy's defaults are then simulated
on the task's test seeds (``study.eval_seeds``, five, never used by the study), and the answer's fitness there is
compared with the defaults'.

Tasks: ``quickstart`` (studies/quickstart.toml: digits IID, two search seeds), ``noniid`` (studies/noniid_digits.toml:
digits over a Dirichlet(0.5) partition, ONE search seed), ``poor`` (studies/poor_defaults.toml: a learning rate far
too small, searched along with QSFL's four parameters: the defaults never reach the target). Budget B: 40 points
(GA: population 8, 4 generations after the first; Optuna TPE / GP and random search: 40 trials asked 8 at a time),
2B: 80. ``+fid`` adds ``[fidelity]`` (rungs at about a ninth and a third of the rounds, eta 3, hedged brackets).

Printed per task: each (searcher, budget) row's mean and std over search seeds of the answer's fitness on the test
seeds, the ratio of the defaults' test fitness to it (lower fitness is better: > 1 means better than the
defaults), how many studies returned the defaults, how many answers were worse than 1.25x better than the defaults
without returning them (FAIL), and the simulated rounds; then the verdicts of issue 23:

1. every task and search seed: the answer of GA, TPE and GP is >= 1.25x better than the defaults on the test seeds,
   or the study returned the defaults;
2. every searcher: mean test fitness at 2B no worse than at B (within 5 %);
3. noniid: the GA with ``[fidelity]`` within 1.15x of the full-fidelity GA's mean test fitness with at most 0.4 of
   its simulated rounds.

Studies run in ``--jobs`` processes (default 2), each with one torch thread and ``--workers 1``; results do not
depend on either. ``OUT/results.json`` has one record per study, ``OUT/tables.md`` the printed tables.

    python benchmarks/search.py                               # everything (about an hour on 2 idle cores)
    python benchmarks/search.py --tasks noniid --searchers ga ga+fid
    python benchmarks/search.py --quick                       # a smoke run: tiny budgets, one seed
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import math
import multiprocessing
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REPO = Path(__file__).resolve().parents[1]
TASKS = {"quickstart": REPO / "studies" / "quickstart.toml",
         "noniid": REPO / "studies" / "noniid_digits.toml",
         "poor": REPO / "studies" / "poor_defaults.toml"}
SEARCHERS = ("ga", "ga+fid", "tpe", "tpe+fid", "gp", "gp+fid", "random", "random+fid")
JUDGED = ("ga", "tpe", "gp")          # verdict 1 names these (with and without fidelity)
POINTS = 40                           # budget B in points; 2B = 80
BATCH = 8


def study_raw(task: str, searcher: str, budget: int, seed: int, quick: bool) -> dict[str, Any]:
    """The spec of one study as a TOML dict: the task's spec with the searcher, budget and search seed."""
    from qsfl.config import load_toml

    raw = copy.deepcopy(load_toml(TASKS[task]))
    raw.pop("fidelity", None)
    for section in ("ga", "optuna", "random"):
        raw.pop(section, None)
    study = raw.setdefault("study", {})
    study.update({"search_seed": seed, "save_histories": False, "workers": 1})
    base = raw["base"]
    points = POINTS * budget
    if quick:
        base["rounds"], base["clients"] = 6, 8
        for name in ("k", "ns"):
            raw["space"][name]["high"] = min(int(raw["space"][name]["high"]), 8)
        study["seeds"], study["eval_seeds"] = study["seeds"][:1], study["eval_seeds"][:2]
        points = 8 * budget
    name, _, fid = searcher.partition("+")
    batch = min(BATCH, points)
    if name == "ga":
        study["engine"] = "ga"
        raw["ga"] = {"population": batch, "generations": max(1, points // batch - 1)}
    elif name in ("tpe", "gp"):
        study["engine"] = "optuna"
        raw["optuna"] = {"sampler": name, "n_trials": points, "batch_size": batch, "n_startup_trials": batch,
                         "heartbeat_interval": 0}
    else:
        study["engine"] = "random"
        raw["random"] = {"n_trials": points, "batch_size": batch}
    if fid:
        rounds, every = int(base["rounds"]), int(base.get("eval_every", 1))
        first = max(every, math.ceil(math.ceil(rounds / 9) / every) * every)
        raw["fidelity"] = {"min_rounds": min(first, rounds - 1), "eta": 3}
    return raw


def fresh_fitness(raw: dict[str, Any], answer: dict[str, Any] | None,
                  seeds: list[int] | None = None) -> dict[str, Any]:
    """The fitness of ``answer`` (a best.toml entry; None: the defaults) on the spec's test seeds (or ``seeds``)."""
    from tuning.evaluate import Point
    from tuning.spec import parse_spec
    from tuning.study import baseline_point, evaluate_on_seeds

    spec = parse_spec(raw)
    if answer is None or answer.get("defaults"):
        point = baseline_point(spec)
    else:
        point = Point(dict(answer["params"]))
    ev = evaluate_on_seeds(spec, point, list(seeds) if seeds is not None else list(spec.study.eval_seeds))
    return {"fitness": float(ev.fitness[0]) if ev.ok else math.inf, "state": ev.state,
            "reached": int(sum(r.metrics.get("target_reached", 0) == 1.0 for r in ev.per_seed)),
            "seeds": list(ev.seeds)}


def run_one(job: dict[str, Any]) -> dict[str, Any]:
    """One study and its answer on the test seeds (a worker's task: one torch thread)."""
    import torch

    torch.set_num_threads(1)
    from qsfl.config import load_toml
    from tuning.spec import parse_spec
    from tuning.study import run_study

    out = Path(job["out"])
    raw = job["raw"]
    start = time.perf_counter()
    result = run_study(parse_spec(raw), out, workers=1, quiet=True)
    wall = time.perf_counter() - start
    best = load_toml(out / "best.toml")
    answer = best["best"][0] if best.get("best") else None
    fresh = fresh_fitness(raw, answer)
    return {**{k: job[k] for k in ("task", "searcher", "budget", "seed")}, "wall_s": wall,
            "evaluations": result.evaluations, "simulated_rounds": result.simulated_rounds,
            "answer": best.get("answer", "tuned"), "verdict": best.get("verdict", ""),
            "params": answer.get("params") if answer else None,
            "search_fitness": answer.get("fitness", [math.nan])[0] if answer else math.nan,
            "validation_fitness": (answer.get("validation_fitness") or [math.nan])[0] if answer else math.nan,
            "validation_seeds": len(answer.get("validation_seeds", [])) if answer else 0,
            "validation_checks": [e.get("validation_check", "") for e in best.get("best", [])],
            "fresh": fresh}


MORE_TEST_SEEDS = list(range(110, 130))   # --more-test-seeds: 20 more fresh seeds, in groups of five


def more_test_job(job: dict[str, Any]) -> dict[str, Any]:
    """An answer (or the defaults: params None) on MORE_TEST_SEEDS: its fitness on each group of five."""
    import torch

    torch.set_num_threads(1)
    answer = None if job["params"] is None else {"params": job["params"]}
    groups = [MORE_TEST_SEEDS[i:i + 5] for i in range(0, len(MORE_TEST_SEEDS), 5)]
    return {"key": job["key"], "groups": [fresh_fitness(job["raw"], answer, g)["fitness"] for g in groups]}


def more_test(pool: Any, records: list[dict[str, Any]], quick: bool) -> dict[str, list[float]]:
    """Every distinct answer (and each task's defaults) on four more groups of five fresh seeds (110-129): does a
    failure on the test seeds belong to the answer or to those five seeds?"""
    jobs: dict[str, dict[str, Any]] = {}
    for r in records:
        params = None if r["answer"] == "defaults" else r["params"]
        key = r["task"] + ":" + json.dumps(params, sort_keys=True)
        jobs.setdefault(key, {"key": key, "params": params, "raw": study_raw(r["task"], "ga", 1, 0, quick)})
    return {res["key"]: res["groups"] for res in pool.map(more_test_job, jobs.values())}


def more_test_lines(records: list[dict[str, Any]], groups: dict[str, list[float]]) -> list[str]:
    """Verdict 1 again on each group of five more fresh seeds: how many answers fail there."""
    lines = []
    n = len(next(iter(groups.values()))) if groups else 0
    for g in range(n):
        bad = []
        for r in records:
            if r["searcher"].split("+")[0] not in JUDGED or r["answer"] == "defaults":
                continue
            mine = groups[r["task"] + ":" + json.dumps(r["params"], sort_keys=True)][g]
            base = groups[r["task"] + ":" + json.dumps(None)][g]
            if not base / mine >= 1.25:
                bad.append(f"{r['task']}/{r['searcher']}/{r['budget']}B/seed {r['seed']}: {base / mine:.2f}x")
        seeds = MORE_TEST_SEEDS[5 * g:5 * g + 5]
        lines.append(f"1'. on fresh seeds {seeds[0]}-{seeds[-1]} instead of the test seeds: {len(bad)} of "
                     f"{sum(r['searcher'].split('+')[0] in JUDGED for r in records)} studies fail"
                     + (" (" + "; ".join(bad) + ")" if bad else ""))
    return lines


def defaults_job(job: dict[str, Any]) -> dict[str, Any]:
    """The defaults of a task on its test seeds."""
    import torch

    torch.set_num_threads(1)
    return {"task": job["task"], "fresh": fresh_fitness(job["raw"], None)}


def _mean(xs: list[float]) -> float:
    return statistics.fmean(xs) if xs else math.nan


def _std(xs: list[float]) -> float:
    return statistics.stdev(xs) if len(xs) > 1 else 0.0


def tables(records: list[dict[str, Any]], defaults: dict[str, float]) -> tuple[str, list[str], bool]:
    """The markdown tables per task, the verdict lines, and whether every verdict holds."""
    lines: list[str] = []
    verdicts: list[str] = []
    ok = True
    for task in dict.fromkeys(r["task"] for r in records):
        base = defaults[task]
        lines += [f"### {task} (defaults on the test seeds: {base:.4g})", "",
                  "| searcher | budget | test fitness (mean ± std) | defaults / answer | returned defaults | FAIL | "
                  "simulated rounds | wall s |", "|---|---|---|---|---|---|---|---|"]
        for searcher in dict.fromkeys(r["searcher"] for r in records if r["task"] == task):
            for budget in sorted({r["budget"] for r in records if r["task"] == task and r["searcher"] == searcher}):
                rs = [r for r in records if r["task"] == task and r["searcher"] == searcher and r["budget"] == budget]
                fits = [r["fresh"]["fitness"] for r in rs]
                returned = sum(r["answer"] == "defaults" for r in rs)
                fails = sum(r["answer"] != "defaults" and not base / r["fresh"]["fitness"] >= 1.25 for r in rs)
                lines.append(f"| {searcher} | {budget}B | {_mean(fits):.4g} ± {_std(fits):.3g} | "
                             f"{base / _mean(fits):.2f}x | {returned}/{len(rs)} | {fails} | "
                             f"{_mean([r['simulated_rounds'] for r in rs]):.0f} | {_mean([r['wall_s'] for r in rs]):.1f} |")
        lines.append("")
    # 1. answers of the judged searchers: >= 1.25x better than the defaults, or the defaults
    bad = [r for r in records if r["searcher"].split("+")[0] in JUDGED and r["answer"] != "defaults"
           and not defaults[r["task"]] / r["fresh"]["fitness"] >= 1.25]
    ok &= not bad
    verdicts.append(f"1. answers of GA/TPE/GP >= 1.25x better than the defaults on the test seeds or the defaults: "
                    f"{'HOLDS' if not bad else 'FAILS'} ({len(bad)} of "
                    f"{sum(r['searcher'].split('+')[0] in JUDGED for r in records)} studies fail"
                    + "".join(f"; {r['task']}/{r['searcher']}/{r['budget']}B/seed {r['seed']}: "
                              f"{defaults[r['task']] / r['fresh']['fitness']:.2f}x" for r in bad) + ")")
    # 2. 2B no worse than B (within 5 %)
    worse = []
    for task in dict.fromkeys(r["task"] for r in records):
        for searcher in dict.fromkeys(r["searcher"] for r in records):
            m = {b: _mean([r["fresh"]["fitness"] for r in records if r["task"] == task and r["searcher"] == searcher
                           and r["budget"] == b]) for b in (1, 2)}
            if all(math.isfinite(v) for v in m.values()) and m[2] > 1.05 * m[1]:
                worse.append(f"{task}/{searcher}: {m[1]:.4g} -> {m[2]:.4g}")
    ok &= not worse
    verdicts.append("2. mean test fitness at 2B no worse than at B (5 %): " + ("HOLDS" if not worse else
                                                                              "FAILS (" + "; ".join(worse) + ")"))
    # 3. noniid: GA with fidelity vs the full GA
    for budget in (1, 2):
        full = [r for r in records if r["task"] == "noniid" and r["searcher"] == "ga" and r["budget"] == budget]
        fid = [r for r in records if r["task"] == "noniid" and r["searcher"] == "ga+fid" and r["budget"] == budget]
        if full and fid:
            q = _mean([r["fresh"]["fitness"] for r in fid]) / _mean([r["fresh"]["fitness"] for r in full])
            cost = _mean([r["simulated_rounds"] for r in fid]) / _mean([r["simulated_rounds"] for r in full])
            holds = q <= 1.15 and cost <= 0.4
            ok &= holds
            verdicts.append(f"3. noniid {budget}B: GA+fidelity / GA test fitness {q:.2f} (<= 1.15), simulated rounds "
                            f"{cost:.2f} (<= 0.4): {'HOLDS' if holds else 'FAILS'}")
    return "\n".join(lines), verdicts, ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--searchers", nargs="+", default=list(SEARCHERS), choices=list(SEARCHERS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--budgets", nargs="+", type=int, default=[1, 2], choices=[1, 2])
    parser.add_argument("--jobs", type=int, default=2, help="studies run at once (one process each)")
    parser.add_argument("--out", type=Path, default=REPO / "out" / "bench_search")
    parser.add_argument("--quick", action="store_true", help="tiny budgets and rounds, one seed: a smoke run")
    parser.add_argument("--more-test-seeds", action="store_true",
                        help="also judge every answer on four more groups of five fresh seeds (110-129)")
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.budgets = args.seeds[:1], args.budgets[:1]
    args.out.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()[0]
    jobs = [{"task": t, "searcher": s, "budget": b, "seed": seed, "raw": study_raw(t, s, b, seed, args.quick),
             "out": str(args.out / "studies" / f"{t}_{s.replace('+', '_')}_{b}B_{seed}")}
            for t in args.tasks for b in args.budgets for s in args.searchers for seed in args.seeds]
    done_path = args.out / "results.json"
    previous = json.loads(done_path.read_text()) if done_path.is_file() else {"records": [], "defaults": {}}
    key = lambda r: (r["task"], r["searcher"], r["budget"], r["seed"])
    known = {key(r): r for r in previous["records"]}
    todo = [j for j in jobs if key(j) not in known or args.quick]
    for j in todo:
        import shutil
        shutil.rmtree(j["out"], ignore_errors=True)
    start = time.perf_counter()
    ctx = multiprocessing.get_context("spawn")
    defaults: dict[str, float] = {} if args.quick else dict(previous["defaults"])
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=ctx) as pool:
        need = [{"task": t, "raw": study_raw(t, "ga", 1, 0, args.quick)} for t in args.tasks if t not in defaults]
        for res in pool.map(defaults_job, need):
            defaults[res["task"]] = res["fresh"]["fitness"]
        for i, rec in enumerate(pool.map(run_one, todo), 1):
            known[key(rec)] = rec
            print(f"[{i}/{len(todo)}] {rec['task']} {rec['searcher']} {rec['budget']}B seed {rec['seed']}: test "
                  f"{rec['fresh']['fitness']:.4g} (defaults {defaults[rec['task']]:.4g}), answer {rec['answer']}, "
                  f"{rec['wall_s']:.0f} s", flush=True)
            done_path.write_text(json.dumps({"records": list(known.values()), "defaults": defaults}, indent=1,
                                            default=str))
        records = [known[key(j)] for j in jobs]
        if args.more_test_seeds:
            more = more_test(pool, records, args.quick)
    text, verdicts, ok = tables(records, defaults)
    if args.more_test_seeds:
        verdicts += more_test_lines(records, more)
    header = (f"benchmarks/search.py, {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPUs, "
              f"load {load:.2f} at start, {args.jobs} studies at once, one torch thread each, "
              f"{time.perf_counter() - start:.0f} s")
    report = "\n".join([header, "", text, *verdicts, ""])
    print(report)
    (args.out / "tables.md").write_text(report)
    return 0 if ok or args.quick else 1


if __name__ == "__main__":
    raise SystemExit(main())
