"""Whole QSFL rounds, batched vs sequential engine (issue 10): digits, mlp, 50 clients, QSFL defaults.

The same simulation with ``engine = "batched"`` and ``engine = "sequential"``, after a warm-up of each (dataset
cached, kernels built), runs interleaved, one torch thread. The time per round is the History's
``wall_time_s`` (training, the strategy's selection and compression, aggregation and evaluation: the whole
round), median over rounds and repeats. Checks that both engines select the same clients and bill the same
bytes in every round, and prints sequential / batched (issue 10's target: at least 10x).

    python benchmarks/qsfl_rounds.py                  # 10 rounds, 3 repeats
    python benchmarks/qsfl_rounds.py --quick          # 2 rounds, 1 repeat (a smoke run)
"""

from __future__ import annotations

import argparse
import os
import statistics

from qsfl import SimConfig, StrategyConfig, simulate
from qsfl.engine.threads import configure_threads

TARGET = 10.0
EXACT = ["qualified_clients", "segment_coverage", "uplink_bytes", "downlink_bytes"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.repeats = 2, 1
    configure_threads(1)
    base = SimConfig(dataset="digits", model="mlp", clients=args.clients, rounds=args.rounds,
                     strategy=StrategyConfig(name="qsfl"))
    engines = ("batched", "sequential")
    for engine in engines:                                   # warm-up
        simulate(base.replace(engine=engine, rounds=1))
    per_round: dict[str, list[float]] = {e: [] for e in engines}
    histories = {}
    for _ in range(args.repeats):
        for engine in engines:
            h = simulate(base.replace(engine=engine))
            per_round[engine] += [float(x) for x in h.df["wall_time_s"]]
            histories[engine] = h.df
    same = all(histories["batched"][c].astype(str).tolist() == histories["sequential"][c].astype(str).tolist()
               for c in EXACT)
    med = {e: statistics.median(v) for e, v in per_round.items()}
    ratio = med["sequential"] / med["batched"]
    print(f"QSFL defaults, digits, mlp, {args.clients} clients, {args.rounds} rounds x {args.repeats} repeats; "
          f"1 thread; load average {os.getloadavg()[0]:.1f}")
    print("| engine | median s / round |\n|---|---|")
    for e in engines:
        print(f"| {e} | {med[e]:.4f} |")
    print(f"\nselections and bytes identical in every round: {same}")
    print(f"sequential / batched = {ratio:.1f}x ({'meets' if ratio >= TARGET else 'misses'} the >= {TARGET:.0f}x target)")
    if not same:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
