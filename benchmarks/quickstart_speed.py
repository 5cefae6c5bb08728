"""Quickstart speed: wall time of a whole simulation (digits, mlp, 20 clients, 30 rounds, qsfl defaults).

Measured after imports and a warm-up run (dataset loaded and cached, kernels JIT-compiled), batched vs
sequential engine, runs interleaved, median of ``--repeats``. The time is split into local training
(engine.train), the strategy (qualification + SCSS + aggregation), evaluation and the rest of the round
loop, by timing wrappers this script installs around those calls (the simulator is not modified).

    python benchmarks/quickstart_speed.py                # 3 repeats, 1 thread
    python benchmarks/quickstart_speed.py --threads 2 --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict
from contextlib import contextmanager

import qsfl
import qsfl.sim
from qsfl import SimConfig, StrategyConfig
from qsfl.engine.threads import configure_threads

CONFIG = SimConfig(dataset="digits", model="mlp", clients=20, rounds=30, strategy=StrategyConfig(name="qsfl"))
TARGET_S = 2.0


@contextmanager
def component_timers(totals: dict[str, float]):
    """Accumulate seconds spent in engine.train, strategy.aggregate and evaluate into ``totals``."""
    original_evaluate, original_init = qsfl.sim.evaluate, qsfl.sim.Simulation.__init__

    def timed(name, fn):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                totals[name] += time.perf_counter() - start
        return wrapper

    def init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        self.engine.train = timed("train", self.engine.train)
        self.strategy.aggregate = timed("strategy", self.strategy.aggregate)

    qsfl.sim.evaluate = timed("evaluate", original_evaluate)
    qsfl.sim.Simulation.__init__ = init
    try:
        yield
    finally:
        qsfl.sim.evaluate, qsfl.sim.Simulation.__init__ = original_evaluate, original_init


def run(engine: str) -> dict[str, float]:
    """One timed simulation: total wall seconds and the per-component split."""
    totals: dict[str, float] = defaultdict(float)
    with component_timers(totals):
        start = time.perf_counter()
        history = qsfl.simulate(CONFIG.replace(engine=engine))
        totals["total"] = time.perf_counter() - start
    totals["other"] = totals["total"] - totals["train"] - totals["strategy"] - totals["evaluate"]
    totals["final_accuracy"] = history.summary["final_accuracy"]
    return dict(totals)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    configure_threads(args.threads)
    for engine in ("batched", "sequential"):          # warm-up: dataset cache, kernels, first-call costs
        qsfl.simulate(CONFIG.replace(engine=engine, rounds=2))
    results: dict[str, list[dict[str, float]]] = {"batched": [], "sequential": []}
    for _ in range(args.repeats):
        for engine in results:
            results[engine].append(run(engine))
    print(f"quickstart: digits, mlp, 20 clients, 30 rounds, qsfl defaults; {args.threads} thread(s), "
          f"median of {args.repeats}")
    print("| engine | total s | local training s | strategy s | evaluation s | other s | final accuracy |")
    print("|---|---|---|---|---|---|---|")
    med = {}
    for engine, runs in results.items():
        med[engine] = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        m = med[engine]
        print(f"| {engine} | {m['total']:.3f} | {m['train']:.3f} | {m['strategy']:.3f} | {m['evaluate']:.3f} | "
              f"{m['other']:.3f} | {m['final_accuracy']:.3f} |")
    total = med["batched"]["total"]
    print(f"\nbatched total {total:.3f} s ({'meets' if total < TARGET_S else 'misses'} the {TARGET_S:.0f} s target); "
          f"sequential/batched = {med['sequential']['total'] / total:.1f}x")


if __name__ == "__main__":
    main()
