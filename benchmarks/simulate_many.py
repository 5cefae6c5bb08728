"""simulate_many vs separate simulate calls: a GA generation of 10 QSFL configs (digits, mlp, 20 clients,
30 rounds) run in lockstep by ``qsfl.simulate_many`` against 10 ``qsfl.simulate`` calls in the same process.

Both after a warm-up (dataset cached, kernels and the engine's trace built), one torch thread, runs
interleaved, median of ``--repeats``. Checks that every History of the batch has the same bytes and
selections as its own simulate, and prints the time ratio (issue 10's target: simulate_many <= 1/4).

    python benchmarks/simulate_many.py                   # the measurement
    python benchmarks/simulate_many.py --quick           # a correctness smoke run (3 configs, 3 rounds)
    python benchmarks/simulate_many.py --breakdown       # also where the time goes (steps, aggregation, ...)
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


def breakdown(configs: list[SimConfig]) -> None:
    """Where each run's time goes: the SGD steps, the rest of training (minibatch plan, data gather, layout), the
    aggregation and the evaluation, summed over rounds (one instrumented run of each; the wrappers add a little)."""
    import qsfl.engine.batched as batched
    import qsfl.sim as sim

    spent: dict[str, float] = {}

    def timing(owner: object, name: str, label: str) -> None:
        original = getattr(owner, name)

        def timed_call(*args: object, **kwargs: object) -> object:
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                spent[label] = spent.get(label, 0.0) + time.perf_counter() - start
        setattr(owner, name, timed_call)

    timing(batched._LinearStep, "sgd_", "SGD steps")
    timing(batched.BatchedEngine, "train", "training")
    timing(sim, "_aggregate", "aggregation")
    timing(sim._Run, "finish_round", "evaluation and bookkeeping")
    print("\n| seconds | simulate_many | separate |\n|---|---:|---:|")
    rows = {}
    for run, fn in (("many", lambda: qsfl.simulate_many(configs)), ("separate", lambda: [qsfl.simulate(c) for c in configs])):
        spent.clear()
        total, _ = timed(fn)
        parts = dict(spent)
        parts["training other than the steps"] = parts.pop("training") - parts["SGD steps"]
        parts["total"] = total
        rows[run] = parts
    for label in ("SGD steps", "training other than the steps", "aggregation", "evaluation and bookkeeping",
                  "total"):
        print(f"| {label} | {rows['many'][label]:.2f} | {rows['separate'][label]:.2f} |")
    print(f"\nthe lockstep SGD steps alone are {rows['many']['SGD steps'] / rows['separate']['total']:.2f} of the "
          f"separate runs' total")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=BASE.rounds)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="3 configs, 3 rounds, 1 repeat (a smoke run)")
    parser.add_argument("--breakdown", action="store_true", help="also time the parts of one run of each")
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
    if args.breakdown:
        breakdown(configs)


if __name__ == "__main__":
    main()
