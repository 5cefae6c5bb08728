"""Quickstart speed: wall time of a whole simulation (digits, mlp, 20 clients, 30 rounds, qsfl defaults).

Measured after imports and a warm-up run (dataset loaded and cached, kernels JIT-compiled), batched vs
sequential engine, runs interleaved, median of ``--repeats``. The time is split into local training
(engine.train), the strategy (qualification + SCSS + aggregation), evaluation and the rest of the round
loop, by timing wrappers this script installs around those calls (the simulator is not modified).

    python benchmarks/quickstart_speed.py                # 3 repeats, 1 thread
    python benchmarks/quickstart_speed.py --threads 2 --repeats 5
    python benchmarks/quickstart_speed.py --startup      # CLI start-up: qsfl simulate --rounds 1 (cold, warm)
    python benchmarks/quickstart_speed.py --startup --quick

``--startup`` times whole processes instead: ``python -c "import torch"`` (the floor every run pays), then
``qsfl simulate --rounds 1`` on digits with an empty engine cache (cold: the batched engine checks its method
and runs its dry run, see qsfl/engine/cache.py) and then with the cache warm, each as a fresh process,
median of ``--repeats`` (``--quick``: one each). Target: a warm start under 2 s.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
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


def timed_process(args: list[str], env: dict[str, str]) -> float:
    """Wall seconds of one fresh Python process running ``args`` (which must succeed)."""
    start = time.perf_counter()
    subprocess.run([sys.executable, *args], env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def startup(repeats: int) -> None:
    """Start-up of ``qsfl simulate --rounds 1`` (digits): cold and warm engine cache, against importing torch."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "QSFL_CACHE_DIR": os.path.join(tmp, "cache"), "PYTHONPATH": root}
        cli = ["-m", "qsfl_cli", "simulate", "--rounds", "1", "--quiet", "--overwrite", "--out"]
        torch_s = [timed_process(["-c", "import torch"], env) for _ in range(repeats)]
        cold, warm = [], []
        for i in range(repeats):
            env["QSFL_CACHE_DIR"] = os.path.join(tmp, f"cache{i}")        # empty: a cold start
            cold.append(timed_process([*cli, os.path.join(tmp, "out")], env))
            warm.append(timed_process([*cli, os.path.join(tmp, "out")], env))
    print(f"CLI start-up, median of {repeats}: qsfl simulate --rounds 1 (digits, 20 clients, batched engine)")
    print("| process | wall s |")
    print("|---|---|")
    for name, times in (("python -c 'import torch'", torch_s), ("simulate, cold engine cache", cold),
                        ("simulate, warm engine cache", warm)):
        print(f"| {name} | {statistics.median(times):.2f} |")
    best = statistics.median(warm)
    print(f"\nwarm start {best:.2f} s ({'meets' if best < TARGET_S else 'misses'} the {TARGET_S:.0f} s target)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--startup", action="store_true", help="time CLI start-up instead (fresh processes)")
    parser.add_argument("--quick", action="store_true", help="--startup: one process of each kind")
    args = parser.parse_args()
    if args.startup:
        startup(1 if args.quick else args.repeats)
        return
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
