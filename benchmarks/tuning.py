"""Best GA config vs the authors' defaults vs random search with the same number of evaluations, on the
quickstart problem, each re-evaluated on seeds the search never used (the spec's ``study.eval_seeds``).

Prints the fitness of each on the fresh seeds, their metrics, and the ratio of uplink bytes at equal
accuracy (uplink bytes spent until the target accuracy is first reached, defaults / tuned).

    python benchmarks/tuning.py                                   # runs the GA study, then random search
    python benchmarks/tuning.py --study-dir out/quickstart        # reuse a finished GA study
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qsfl.config import load_toml
from tuning.evaluate import Evaluator, Point, make_map, run_task
from tuning.objective import Evaluation, SeedResult, combine
from tuning.space import baseline_overrides
from tuning.spec import StudySpec, load_spec
from tuning.study import baseline_params, best_entries, run_study
from tuning.trials import TrialsTable, read_trials


def random_search(spec: StudySpec, n: int, out: Path, mapper, seed: int) -> dict:
    """``n`` uniform random points of the space (same seeds and budget as the GA); returns the best entry."""
    rng = random.Random(seed)
    table = TrialsTable(out, spec.space.names, spec.objective.n, {p.name: p.type for p in spec.space.params})
    evaluator = Evaluator(spec, table, mapper, engine="random")
    points: list[Point] = []
    seen: set[str] = set()
    while len(points) < n:
        pt = evaluator.point(spec.space.decode([rng.random() for _ in range(spec.space.dim)]))
        if pt.id not in seen:
            seen.add(pt.id)
            points.append(pt)
    evaluator.evaluate_points(points, generation=0)
    best = best_entries(table.rows, spec, limit=1)
    return best[0] if best else {}


def reevaluate(spec: StudySpec, overrides: dict, params: dict, mapper) -> Evaluation:
    """Simulate one config on the spec's eval_seeds; mean/std metrics and fitness on those seeds."""
    seeds = list(spec.study.eval_seeds)
    tasks = [(spec.base.with_overrides({**overrides, "seed": s}).to_dict(),) for s in seeds]
    results = [SeedResult.from_dict(r) for r in mapper.imap(run_task, tasks)]
    return combine(params, seeds, results, spec.objective, spec.base.rounds)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", type=Path, default=Path("studies/quickstart.toml"))
    ap.add_argument("--study-dir", type=Path, help="a finished GA study of --spec to reuse")
    ap.add_argument("--out", type=Path, default=Path("out/benchmark_tuning"))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--random-seed", type=int, default=1)
    args = ap.parse_args(argv)

    spec = load_spec(args.spec)
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
            run_study(spec, args.study_dir, workers=args.workers)
    ga_time = time.perf_counter() - t0
    ga_rows = read_trials(args.study_dir)
    n = len(ga_rows)
    ga_best = load_toml(args.study_dir / "best.toml")["best"][0]

    mapper = make_map(args.workers, spec.base)
    try:
        t1 = time.perf_counter()
        print(f"random search with the same budget ({n} evaluations) ...")
        rnd_best = random_search(spec, n, args.out / "random", mapper, args.random_seed)
        rnd_time = time.perf_counter() - t1

        print(f"re-evaluating on fresh seeds {list(spec.study.eval_seeds)} ...")
        configs = {
            "GA best": (spec.space.overrides(ga_best["params"]), ga_best["params"]),
            "random-search best": (spec.space.overrides(rnd_best["params"]), rnd_best["params"]),
        }
        bp = baseline_params(spec)
        others = {p.key: bp[p.name] for p in spec.space.params if p.name not in ("beta", "alpha", "k", "ns", "p")}
        configs["authors' defaults"] = ({**baseline_overrides(spec.base), **others}, bp)
        fresh = {label: reevaluate(spec, ov, params, mapper) for label, (ov, params) in configs.items()}
    finally:
        mapper.close()

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
        btt = fresh[label].metrics["uplink_bytes_to_target"]
        ratio = base_btt / btt if btt and math.isfinite(btt) and math.isfinite(base_btt) else math.nan
        print(f"uplink bytes to reach {target:.0%} accuracy, defaults / {label}: {ratio:.2f}x"
              + ("  (NaN: some fresh seed never reached the target)" if math.isnan(ratio) else ""))
    print(f"GA best params: {ga_best['params']}")
    print(f"random best params: {rnd_best.get('params')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
