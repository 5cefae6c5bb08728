"""Best GA config vs the authors' defaults vs random search with the same number of evaluations, on the
quickstart problem, each re-evaluated on seeds the search never used (the spec's ``study.eval_seeds``).

Prints the fitness of each on the fresh seeds, their metrics, and the ratio of uplink bytes at equal
accuracy (uplink bytes spent until the target accuracy is first reached, defaults / tuned). For a comparison of
every searcher at equal wall time see benchmarks/search.py.

    python benchmarks/tuning.py                                   # runs the GA study, then random search
    python benchmarks/tuning.py --study-dir out/quickstart        # reuse a finished GA study
    python benchmarks/tuning.py --quick                           # a tiny smoke run
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qsfl.config import load_toml
from tuning.evaluate import Point
from tuning.spec import load_spec
from tuning.study import baseline_point, evaluate_on_seeds, run_study
from tuning.trials import read_trials
from tuning.workers import make_workers


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", type=Path, default=Path("studies/quickstart.toml"))
    ap.add_argument("--study-dir", type=Path, help="a finished GA study of --spec to reuse")
    ap.add_argument("--out", type=Path, default=Path("out/benchmark_tuning"))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--random-seed", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="6 rounds, 2 generations of 4: a smoke run")
    args = ap.parse_args(argv)

    sets = ["base.rounds=6", "ga.population=4", "ga.generations=2", "study.seeds=[0]",
            "study.eval_seeds=[100]"] if args.quick else []
    spec = load_spec(args.spec, sets)
    if not spec.study.eval_seeds:
        print("error: the spec has no study.eval_seeds to re-evaluate on", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    if args.study_dir is None:
        args.study_dir = args.out / "ga"
        if (args.study_dir / "best.toml").is_file():
            print(f"reusing the GA study in {args.study_dir}")
        else:
            print(f"running the GA study {spec.name} -> {args.study_dir} ...")
            run_study(spec, args.study_dir, workers=args.workers, quiet=True)
    ga_time = time.perf_counter() - t0
    ga_rows = read_trials(args.study_dir)
    n = 0 if ga_rows is None else len(ga_rows)
    ga_best = load_toml(args.study_dir / "best.toml")["best"][0]

    t1 = time.perf_counter()
    print(f"random search with the same budget ({n} evaluations) ...")
    rnd_spec = load_spec(args.spec, sets + ["study.engine=\"random\"", f"random.n_trials={n}",
                                            f"study.search_seed={args.random_seed}"])
    rnd = run_study(rnd_spec, args.out / "random", workers=args.workers, quiet=True)
    rnd_best = rnd.best[0] if rnd.best else {}
    rnd_time = time.perf_counter() - t1

    print(f"re-evaluating on fresh seeds {list(spec.study.eval_seeds)} ...")
    points = {"GA best": Point(dict(ga_best["params"])), "random-search best": Point(dict(rnd_best.get("params", {}))),
              "authors' defaults": baseline_point(spec)}
    with make_workers(args.workers, base=spec.base) as pool:
        fresh = {label: evaluate_on_seeds(spec, pt, spec.study.eval_seeds, pool) for label, pt in points.items()
                 if pt.params}

    print()
    print(f"problem: {spec.name}; objective: {'; '.join(spec.objective.describe())}")
    print(f"search: {n} evaluations each on seeds {list(spec.study.seeds)}; GA {ga_time:.0f} s, random {rnd_time:.0f} s")
    head = f"{'':20}{'fitness (fresh)':>16}{'final acc':>11}{'uplink MB':>11}{'MB to target':>14}{'rounds to tgt':>15}"
    print(head)
    for label, ev in fresh.items():
        m = ev.metrics
        fit = ev.fitness[0] if ev.ok else math.nan
        print(f"{label:20}{fit:>16.4f}{m['final_accuracy']:>11.4f}{m['uplink_mb']:>11.4f}"
              f"{m['uplink_bytes_to_target'] / 1e6:>14.4f}{m['rounds_to_target']:>15.2f}")
    base_btt = fresh["authors' defaults"].metrics["uplink_bytes_to_target"]
    target = spec.base.target_accuracy
    for label in ("GA best", "random-search best"):
        if label not in fresh:
            continue
        btt = fresh[label].metrics["uplink_bytes_to_target"]
        ratio = base_btt / btt if btt and math.isfinite(btt) and math.isfinite(base_btt) else math.nan
        print(f"uplink bytes to reach {target:.0%} accuracy, defaults / {label}: {ratio:.2f}x"
              + ("  (NaN: some fresh seed never reached the target)" if math.isnan(ratio) else ""))
    print(f"GA best params: {ga_best['params']}")
    print(f"random best params: {rnd_best.get('params')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
