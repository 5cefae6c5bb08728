"""Communication benchmark: FedAvg, top-k, QJ-only, SCSS-only and QSFL (authors' defaults) on non-IID data.

For each dataset and strategy, over several seeds: final accuracy, compression ratio vs FedAvg, and the
cumulative uplink bytes needed to reach the target accuracy, as a ratio against FedAvg measured in the
same run (same seeds, same partitions, same rounds).

    python benchmarks/communication.py                 # digits + mnist1d, 3 seeds
    python benchmarks/communication.py --quick         # digits only, 2 seeds, fewer rounds

The authors' released code (docs/faithfulness.md): ``--variant authors_code`` adds QSFL with
``variant="authors_code"``; ``--variant authors_code+training`` also trains as their experiments did (Adam,
10 local epochs, batch 2, per-batch mean loss); ``--switch NAME ...`` (or ``--switch all``) adds QSFL with that
one option set to the authors' value and every other at this project's default.

    python benchmarks/communication.py --datasets digits --variant authors_code --switch all
"""

from __future__ import annotations

import argparse
import math
import time

import pandas as pd

import qsfl
from qsfl import SimConfig, StrategyConfig
from qsfl.authors_code import AUTHORS_EXPERIMENT_TRAINING, SWITCHES

STRATEGIES = {
    "fedavg": StrategyConfig(name="fedavg"),
    "topk(p=0.1)": StrategyConfig(name="topk", p=0.1),
    "QJ-only": StrategyConfig(name="qsfl", use_scss=False),
    "SCSS-only": StrategyConfig(name="qsfl", use_qj=False),
    "QSFL": StrategyConfig(name="qsfl"),   # authors' defaults: beta 0.9, alpha 0.7, ns 6, p 0.4
}

CASES = {
    "digits": dict(dataset="digits", model="mlp", rounds=40, lr=0.1, batch_size=10, target_accuracy=0.85),
    # cnn1d on non-IID mnist1d stays near 60 % after 60 FedAvg rounds, so its target is lower
    "mnist1d": dict(dataset="mnist1d", model="cnn1d", rounds=60, lr=0.05, batch_size=32, target_accuracy=0.5),
}


def authors_rows(variants: list[str], switches: list[str]) -> dict[str, tuple[StrategyConfig, dict]]:
    """label -> (strategy, SimConfig changes) for the authors' variant and each switch alone."""
    rows: dict[str, tuple[StrategyConfig, dict]] = {}
    for variant in variants:
        training = dict(AUTHORS_EXPERIMENT_TRAINING) if variant.endswith("+training") else {}
        rows[f"QSFL {variant}"] = (StrategyConfig(name="qsfl", variant="authors_code"), training)
    for name in switches:
        rows[f"QSFL +{name}={SWITCHES[name][1]}"] = (StrategyConfig(name="qsfl", **{name: SWITCHES[name][1]}), {})
    return rows


def run_case(name: str, seeds: list[int], rounds: int | None, target: float | None,
             strategies: dict[str, tuple[StrategyConfig, dict]] | None = None) -> pd.DataFrame:
    """All strategies on one dataset over ``seeds``; one row per (strategy, seed)."""
    base = dict(CASES[name])
    if rounds:
        base["rounds"] = rounds
    if target is not None:
        base["target_accuracy"] = target
    if strategies is None:
        strategies = {label: (strategy, {}) for label, strategy in STRATEGIES.items()}
    rows = []
    for label, (strategy, changes) in strategies.items():
        for seed in seeds:
            cfg = SimConfig(partition="dirichlet", partition_options={"alpha": 0.5}, clients=20, seed=seed,
                            strategy=strategy, **{**base, **changes})
            start = time.perf_counter()
            s = qsfl.simulate(cfg).summary
            rows.append({"dataset": name, "target": cfg.target_accuracy, "strategy": label, "seed": seed, "final_accuracy": s["final_accuracy"],
                         "best_accuracy": s["best_accuracy"], "uplink_mb": s["total_uplink_bytes"] / 1e6,
                         "compression_ratio": s["compression_ratio"],
                         "uplink_mb_to_target": (s["uplink_bytes_to_target"] / 1e6
                                                 if s["uplink_bytes_to_target"] is not None else math.nan),
                         "rounds_to_target": s["rounds_to_target"], "seconds": time.perf_counter() - start})
            r = rows[-1]
            print(f"  {name:8s} {label:30s} seed {seed}: acc {r['final_accuracy']:.3f}, "
                  f"uplink {r['uplink_mb']:.2f} MB, to target {r['uplink_mb_to_target']:.3f} MB, "
                  f"{r['seconds']:.1f} s", flush=True)
    return pd.DataFrame(rows)


def summarise(df: pd.DataFrame) -> pd.DataFrame:
    """Mean over seeds plus the uplink-to-target ratio against FedAvg of the same seeds."""
    fed = df[df.strategy == "fedavg"].set_index(["dataset", "seed"])["uplink_mb_to_target"]
    df = df.copy()
    df["fedavg_to_target_ratio"] = [fed.get((d, s), math.nan) / u if u == u and u > 0 else math.nan
                                    for d, s, u in zip(df.dataset, df.seed, df.uplink_mb_to_target)]
    agg = df.groupby(["dataset", "strategy"], sort=False).agg(
        final_acc=("final_accuracy", "mean"), final_acc_std=("final_accuracy", "std"),
        compression=("compression_ratio", "mean"), uplink_mb=("uplink_mb", "mean"),
        mb_to_target=("uplink_mb_to_target", "mean"),
        reached=("uplink_mb_to_target", lambda s: f"{int(s.notna().sum())}/{len(s)}"),
        x_fewer_bytes_to_target=("fedavg_to_target_ratio", "mean"), seconds=("seconds", "mean"))
    return agg


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=None, choices=list(CASES), help="default: all")
    parser.add_argument("--seeds", nargs="+", type=int, default=None, help="default: 0 1 2")
    parser.add_argument("--rounds", type=int, default=None, help="override the rounds of every case")
    parser.add_argument("--target", type=float, default=None, help="override every case's target accuracy")
    parser.add_argument("--quick", action="store_true",
                        help="digits only, seeds 0 1, 25 rounds (unless --datasets/--seeds/--rounds say otherwise)")
    parser.add_argument("--csv", help="also write the per-seed rows to this CSV")
    parser.add_argument("--variant", nargs="+", default=[], choices=["authors_code", "authors_code+training"],
                        help="add QSFL with variant=authors_code (+training: also the authors' local training)")
    parser.add_argument("--switch", nargs="+", default=[], choices=[*SWITCHES, "all"],
                        help="add QSFL with this one option at the authors' value (all: one row per option)")
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=list(STRATEGIES),
                        help="which of the usual strategies to run (fedavg is needed for the ratios)")
    args = parser.parse_args()
    if args.quick:
        args.datasets, args.seeds = args.datasets or ["digits"], args.seeds or [0, 1]
        args.rounds = args.rounds or 25
    args.datasets, args.seeds = args.datasets or list(CASES), args.seeds or [0, 1, 2]
    switches = list(SWITCHES) if "all" in args.switch else args.switch
    strategies = {label: (STRATEGIES[label], {}) for label in args.strategies}
    strategies.update(authors_rows(args.variant, switches))
    frames = [run_case(name, args.seeds, args.rounds, args.target, strategies) for name in args.datasets]
    df = pd.concat(frames, ignore_index=True)
    if args.csv:
        df.to_csv(args.csv, index=False)
    pd.set_option("display.width", 160)
    targets = ", ".join(f"{n} {CASES[n]['target_accuracy'] if args.target is None else args.target}"
                        for n in args.datasets)
    print(f"Dirichlet(0.5) non-IID, 20 clients, seeds {args.seeds}, target accuracy: {targets}")
    print("x_fewer_bytes_to_target = FedAvg's uplink bytes to reach the target / this strategy's (same seed);")
    print("NaN where the strategy (or FedAvg) did not reach the target in that seed.\n")
    print(summarise(df).round(3).to_string())


if __name__ == "__main__":
    main()
