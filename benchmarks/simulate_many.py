"""simulate_many vs separate simulate calls: a GA generation of 10 QSFL configs (digits, mlp, 20 clients,
30 rounds) run in lockstep by ``qsfl.simulate_many`` against 10 ``qsfl.simulate`` calls in the same process.

Both after a warm-up (dataset cached, kernels and the engine's trace built), one torch thread, runs
interleaved, median of ``--repeats``. Checks that every History of the batch has the same bytes and
selections as its own simulate, and prints the time ratio (issue 10's target: simulate_many <= 1/4).

    python benchmarks/simulate_many.py                   # the measurement
    python benchmarks/simulate_many.py --quick           # a correctness smoke run (3 configs, 3 rounds)
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import qsfl
from qsfl import SimConfig, StrategyConfig
from qsfl.engine.threads import configure_threads

BASE = SimConfig(dataset="digits", model="mlp", clients=20, rounds=30, strategy=StrategyConfig(name="qsfl"))
TARGET_RATIO = 0.25
EXACT = ["qualified_clients", "segment_coverage", "uplink_bytes", "downlink_bytes", "cum_uplink_bytes"]


def generation(size: int, seed: int = 0) -> list[SimConfig]:
    """``size`` QSFL configs spread over the search space (beta, k, ns <= k, p), like one GA generation."""
    rng = np.random.default_rng(seed)
    configs = []
    for _ in range(size):
        k = int(rng.integers(2, BASE.clients + 1))
        strategy = StrategyConfig(name="qsfl", beta=float(rng.uniform(0, 1)), k=k,
                                  ns=int(rng.integers(1, k + 1)), p=float(rng.uniform(0.05, 1.0)))
        configs.append(BASE.replace(strategy=strategy))
    return configs


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=BASE.rounds)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="3 configs, 3 rounds, 1 repeat (a smoke run)")
    args = parser.parse_args()
    if args.quick:
        args.configs, args.rounds, args.repeats = 3, 3, 1
    configure_threads(args.threads)
    configs = [c.replace(rounds=args.rounds) for c in generation(args.configs)]
    qsfl.simulate_many(configs[:2])   # warm-up: dataset cache, engine trace, first-call costs
    qsfl.simulate(configs[0].replace(rounds=1))
    batched, separate = [], []
    for _ in range(args.repeats):
        t_many, many = timed(lambda: qsfl.simulate_many(configs))
        t_sep, alone = timed(lambda: [qsfl.simulate(c) for c in configs])
        batched.append(t_many)
        separate.append(t_sep)
    for a, b in zip(many, alone):
        for col in EXACT:
            if a.df[col].tolist() != b.df[col].tolist():
                raise SystemExit(f"simulate_many differs from simulate in {col}")
        if not np.allclose(a.df["test_accuracy"], b.df["test_accuracy"], atol=1e-5, equal_nan=True):
            raise SystemExit("simulate_many's accuracy differs from simulate's")
    m_many, m_sep = statistics.median(batched), statistics.median(separate)
    ratio = m_many / m_sep
    print(f"{args.configs} QSFL configs, digits, mlp, {BASE.clients} clients, {args.rounds} rounds; "
          f"{args.threads} thread(s), median of {args.repeats}; Histories equal (bytes, selections exact)")
    print("| run | wall s |")
    print("|---|---|")
    print(f"| simulate_many (lockstep) | {m_many:.3f} |")
    print(f"| {args.configs} x simulate | {m_sep:.3f} |")
    verdict = "meets" if ratio <= TARGET_RATIO else "misses"
    print(f"\nsimulate_many / separate = {ratio:.3f} ({verdict} the <= {TARGET_RATIO} target)")


if __name__ == "__main__":
    main()
