"""The GA with ``[fidelity]`` against the full-fidelity GA (issue 10): the same spec and generations, with and
without successive halving over rounds, over several search seeds.

Each study runs serially in this process with one torch thread (population batching on, as by default). Its
best config is re-evaluated at full rounds on the spec's fresh ``eval_seeds``. Prints, per search seed and on
average, both studies' simulated rounds (the compute: every round of every simulation, baseline included),
wall time and fresh-seed fitness, and checks issue 10's claim: with ``[fidelity]`` the GA's fresh-seed best is
within 10 % of the full-fidelity GA's, with at most 1/3 of its simulated rounds.

    python benchmarks/fidelity.py                       # quickstart spec, search seeds 0 1 2, rungs 4/12/30
    python benchmarks/fidelity.py --quick               # a smoke run (6 rounds, 2 generations, 1 seed)
    python benchmarks/fidelity.py --spec studies/quickstart.toml --min-rounds 4 --eta 3 --seeds 0 1 2 3 4
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qsfl.config import load_toml
from tuning.evaluate import Point
from tuning.spec import StudySpec, parse_spec, set_spec_value
from tuning.study import evaluate_on_seeds, run_study

REPO = Path(__file__).resolve().parents[1]
WITHIN = 0.10          # fresh-seed fitness within 10 % of the full-fidelity GA's
ROUNDS_SHARE = 1 / 3   # with at most a third of its simulated rounds


def make_spec(path: Path, seed: int, fidelity: tuple[int, int] | None, quick: bool) -> StudySpec:
    """The spec at ``path`` with the search seed, serial, without saved histories; ``fidelity`` = (min_rounds,
    eta) or None for the full-fidelity GA."""
    raw = load_toml(path)
    raw.pop("fidelity", None)
    raw["study"] = {**raw.get("study", {}), "search_seed": seed, "save_histories": False, "workers": 1,
                    "engine": "ga"}
    if quick:
        raw["base"]["rounds"] = 6
        raw["ga"] = {**raw.get("ga", {}), "generations": 2, "population": 4}
        raw["study"]["eval_seeds"] = raw["study"]["eval_seeds"][:1]
    if fidelity is not None:
        set_spec_value(raw, "fidelity.min_rounds", fidelity[0])
        set_spec_value(raw, "fidelity.eta", fidelity[1])
    return parse_spec(raw, default_name=f"{path.stem}_{'fidelity' if fidelity else 'full'}_{seed}")


def run_one(path: Path, seed: int, fidelity: tuple[int, int] | None, out: Path, quick: bool) -> dict[str, Any]:
    """One GA study and the fresh-seed fitness of its best."""
    spec = make_spec(path, seed, fidelity, quick)
    folder = out / ("fidelity" if fidelity else "full") / f"seed{seed}"
    if folder.exists():
        import shutil

        shutil.rmtree(folder)
    t0 = time.perf_counter()
    result = run_study(spec, folder, quiet=True)
    wall = time.perf_counter() - t0
    baseline = load_toml(folder / "baseline.toml")
    record: dict[str, Any] = {"seed": seed, "fidelity": fidelity, "evaluations": result.evaluations,
                              "simulated_rounds": result.simulated_rounds + int(baseline.get("simulated_rounds", 0)),
                              "wall_s": wall, "best": math.nan, "fresh": math.nan, "params": None}
    if result.best:
        best = result.best[0]
        record["best"], record["params"] = float(best["fitness"][0]), dict(best["params"])
        ev = evaluate_on_seeds(spec, Point(dict(best["params"])), spec.study.eval_seeds)
        record["fresh"] = float(ev.fitness[0]) if ev.ok else math.nan
    return record


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", type=Path, default=REPO / "studies" / "quickstart.toml")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="search seeds (default 0 1 2)")
    ap.add_argument("--min-rounds", type=int, default=4)
    ap.add_argument("--eta", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("out/benchmark_fidelity"))
    ap.add_argument("--quick", action="store_true", help="a smoke run: 6 rounds, 2 generations of 4, 1 seed")
    args = ap.parse_args(argv)
    if args.quick:
        args.seeds, args.min_rounds = args.seeds[:1], 2
    import torch

    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    records = []
    for seed in args.seeds:
        for fidelity in (None, (args.min_rounds, args.eta)):
            rec = run_one(args.spec, seed, fidelity, args.out, args.quick)
            label = "GA + fidelity" if fidelity else "GA"
            print(f"search seed {seed} {label}: {rec['evaluations']} evaluations, {rec['simulated_rounds']} simulated "
                  f"rounds, {rec['wall_s']:.1f} s, best {rec['best']:.4g}, fresh {rec['fresh']:.4g}", flush=True)
            records.append(rec)
    print(f"\n{args.spec.name}; fidelity min_rounds {args.min_rounds}, eta {args.eta}; 1 torch thread; load average "
          f"{os.getloadavg()[0]:.1f}\n")
    print("| search seed | GA fresh fitness | GA + fidelity fresh fitness | fidelity / GA fitness | GA simulated rounds "
          "| GA + fidelity simulated rounds | rounds ratio | GA wall s | GA + fidelity wall s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    ratios, rounds = [], []
    for seed in args.seeds:
        full, fid = [r for r in records if r["seed"] == seed]
        ratio = fid["fresh"] / full["fresh"] if full["fresh"] else math.nan
        share = fid["simulated_rounds"] / full["simulated_rounds"]
        ratios.append(ratio)
        rounds.append(share)
        print(f"| {seed} | {full['fresh']:.4g} | {fid['fresh']:.4g} | {ratio:.3f} | {full['simulated_rounds']} | "
              f"{fid['simulated_rounds']} | {share:.3f} | {full['wall_s']:.1f} | {fid['wall_s']:.1f} |")
    fullmean = statistics.mean(r["fresh"] for r in records if not r["fidelity"])
    fidmean = statistics.mean(r["fresh"] for r in records if r["fidelity"])
    share = statistics.mean(rounds)
    ok = fidmean <= fullmean * (1 + WITHIN) and share <= ROUNDS_SHARE
    print(f"\nmean fresh fitness: GA {fullmean:.4g}, GA + fidelity {fidmean:.4g} (ratio {fidmean / fullmean:.3f}); "
          f"mean simulated-rounds share {share:.3f}")
    print(f"issue 10 claim (fitness within {WITHIN:.0%}, at most {ROUNDS_SHARE:.2f} of the rounds): "
          f"{'met' if ok else 'not met'}")
    (args.out / "results.json").write_text(json.dumps(records, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
