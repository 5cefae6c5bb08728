"""Communication benchmark: FedAvg, top-k, QJ-only, SCSS-only and QSFL (authors' defaults) on non-IID data, and
QSFL on heterogeneous edge devices (issue 12): fixed vs varied-count vs varied-size segmentation, with and without
the symmetric downlink compression (downlink_p = 0.4).

For each dataset and strategy, over several seeds: final accuracy, compression ratio vs FedAvg, the
cumulative uplink bytes needed to reach the target accuracy, as a ratio against FedAvg measured in the
same run (same seeds, same partitions, same rounds), the downlink and total (uplink + downlink) bytes, the total
bytes to the target as a ratio against FedAvg's, and the simulated time to the target under :data:`SYSTEM`
(every run has it: it changes no byte and no weight, only the time columns).

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
from qsfl.system import SystemConfig, Tier

STRATEGIES = {
    "fedavg": StrategyConfig(name="fedavg"),
    "topk(p=0.1)": StrategyConfig(name="topk", p=0.1),
    "QJ-only": StrategyConfig(name="qsfl", use_scss=False),
    "SCSS-only": StrategyConfig(name="qsfl", use_qj=False),
    "QSFL": StrategyConfig(name="qsfl"),   # authors' defaults: beta 0.9, alpha 0.7, ns 6, p 0.4
    # issue 12: dynamic segmentation (from the uplink bandwidth of SYSTEM) and the symmetric downlink compression
    "QSFL count": StrategyConfig(name="qsfl", segmentation="count"),
    "QSFL size": StrategyConfig(name="qsfl", segmentation="size"),
    "QSFL down0.4": StrategyConfig(name="qsfl", downlink_p=0.4),
    "QSFL count down0.4": StrategyConfig(name="qsfl", segmentation="count", downlink_p=0.4),
    "QSFL size down0.4": StrategyConfig(name="qsfl", segmentation="size", downlink_p=0.4),
}

# Heterogeneous edge devices: 90 % of the clients at the median (uplink 1 Mbit/s, downlink 4 Mbit/s), the slowest
# tenth 10x slower in both directions; every client computes 2000 training samples/s (so the bandwidth, not the
# compute, separates the devices). Tier membership is drawn from the run's seed.
SYSTEM = SystemConfig(source="tiers", uplink=1.25e5, downlink=5.0e5, compute=2000.0,
                      tiers=(Tier(share=0.9), Tier(share=0.1, uplink=1.25e4, downlink=5.0e4, compute=2000.0)))

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
                            system=SYSTEM, strategy=strategy, **{**base, **changes})
            start = time.perf_counter()
            history = qsfl.simulate(cfg)
            s = history.summary
            rows.append({"dataset": name, "target": cfg.target_accuracy, "strategy": label, "seed": seed, "final_accuracy": s["final_accuracy"],
                         "best_accuracy": s["best_accuracy"], "uplink_mb": s["total_uplink_bytes"] / 1e6,
                         "downlink_mb": s["total_downlink_bytes"] / 1e6,
                         "total_mb": (s["total_uplink_bytes"] + s["total_downlink_bytes"]) / 1e6,
                         "compression_ratio": s["compression_ratio"],
                         "uplink_mb_to_target": (s["uplink_bytes_to_target"] / 1e6
                                                 if s["uplink_bytes_to_target"] is not None else math.nan),
                         "total_mb_to_target": total_mb_to_target(history),
                         "time_to_target_s": s["time_to_target"] if s["time_to_target"] is not None else math.nan,
                         "simulated_s": s["simulated_time_s"],
                         "rounds_to_target": s["rounds_to_target"], "seconds": time.perf_counter() - start})
            r = rows[-1]
            print(f"  {name:8s} {label:30s} seed {seed}: acc {r['final_accuracy']:.3f}, "
                  f"uplink {r['uplink_mb']:.2f} MB, downlink {r['downlink_mb']:.2f} MB, to target "
                  f"{r['uplink_mb_to_target']:.3f} MB up, {r['total_mb_to_target']:.3f} MB total, "
                  f"{r['time_to_target_s']:.1f} simulated s; {r['seconds']:.1f} s", flush=True)
    return pd.DataFrame(rows)


def total_mb_to_target(history: qsfl.History) -> float:
    """Uplink + downlink MB until the first evaluation at or above the target accuracy (NaN if never)."""
    df = history.df
    reached = df[df["test_accuracy"] >= history.target_accuracy]
    if reached.empty:
        return math.nan
    first = reached.iloc[0]
    return float(first["cum_uplink_bytes"] + first["cum_downlink_bytes"]) / 1e6


def against_fedavg(df: pd.DataFrame, column: str) -> list[float]:
    """Per row: FedAvg's ``column`` in the same dataset and seed / the row's (NaN where either is missing)."""
    fed = df[df.strategy == "fedavg"].set_index(["dataset", "seed"])[column]
    return [fed.get((d, s), math.nan) / u if u == u and u > 0 else math.nan
            for d, s, u in zip(df.dataset, df.seed, df[column])]


def summarise(df: pd.DataFrame) -> pd.DataFrame:
    """Mean over seeds plus the uplink-to-target ratio against FedAvg of the same seeds."""
    df = df.copy()
    df["fedavg_to_target_ratio"] = against_fedavg(df, "uplink_mb_to_target")
    agg = df.groupby(["dataset", "strategy"], sort=False).agg(
        final_acc=("final_accuracy", "mean"), final_acc_std=("final_accuracy", "std"),
        compression=("compression_ratio", "mean"), uplink_mb=("uplink_mb", "mean"),
        mb_to_target=("uplink_mb_to_target", "mean"),
        reached=("uplink_mb_to_target", lambda s: f"{int(s.notna().sum())}/{len(s)}"),
        x_fewer_bytes_to_target=("fedavg_to_target_ratio", "mean"), seconds=("seconds", "mean"))
    return agg


def summarise_edge(df: pd.DataFrame) -> pd.DataFrame:
    """Downlink and total bytes, total bytes to the target against FedAvg's, simulated time (means over seeds)."""
    df = df.copy()
    df["total_ratio"] = against_fedavg(df, "total_mb_to_target")
    return df.groupby(["dataset", "strategy"], sort=False).agg(
        final_acc=("final_accuracy", "mean"), uplink_mb=("uplink_mb", "mean"), downlink_mb=("downlink_mb", "mean"),
        total_mb=("total_mb", "mean"), total_mb_to_target=("total_mb_to_target", "mean"),
        x_fewer_total_bytes_to_target=("total_ratio", "mean"),
        time_to_target_s=("time_to_target_s", "mean"),
        reached=("time_to_target_s", lambda s: f"{int(s.notna().sum())}/{len(s)}"),
        simulated_s=("simulated_s", "mean"))


def claims(df: pd.DataFrame) -> list[str]:
    """Issue 12's claims on digits, each with the measured numbers (per seed) and whether it holds."""
    digits = df[df.dataset == "digits"].copy()
    if digits.empty:
        return []
    digits["total_ratio"] = against_fedavg(digits, "total_mb_to_target")
    by = {label: rows.set_index("seed") for label, rows in digits.groupby("strategy")}
    out = []
    if "QSFL down0.4" in by and "fedavg" in by:
        ratios = by["QSFL down0.4"]["total_ratio"]
        down = by["QSFL down0.4"]["downlink_mb"] / by["fedavg"]["downlink_mb"]
        ok = bool((ratios >= 5).all())
        out.append(f"[{'holds' if ok else 'FAILS'}] QSFL down0.4 reaches the target with >= 5x fewer total bytes "
                   f"than FedAvg: {', '.join(f'{r:.2f}x' for r in ratios)} (per seed; its downlink is "
                   f"{', '.join(f'{1 / d:.2f}x' for d in down)} below FedAvg's)")
    for dense, variants in (("QSFL", ("QSFL count", "QSFL size")),
                            ("QSFL down0.4", ("QSFL count down0.4", "QSFL size down0.4"))):
        if dense not in by:
            continue
        fixed = by[dense]["time_to_target_s"]
        for label in (v for v in variants if v in by):
            mine = by[label]["time_to_target_s"]
            faster = bool((mine < fixed).all())
            out.append(f"[{'faster' if faster else 'NOT faster'}] {label} vs {dense} (fixed NS), simulated seconds "
                       f"to target per seed: {', '.join(f'{a:.2f} vs {b:.2f}' for a, b in zip(mine, fixed))}")
    return out


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
    print(f"\nHeterogeneous devices (qsfl.system): {SYSTEM.tiers[0].share:.0%} of the clients at uplink "
          f"{SYSTEM.uplink * 8 / 1e6:g} Mbit/s, downlink {SYSTEM.downlink * 8 / 1e6:g} Mbit/s; the slowest "
          f"{SYSTEM.tiers[1].share:.0%} 10x slower; {SYSTEM.compute:g} samples/s each. Time = simulated seconds.")
    print("x_fewer_total_bytes_to_target = FedAvg's uplink + downlink bytes to the target / this strategy's.\n")
    print(summarise_edge(df).round(3).to_string())
    lines = claims(df)
    if lines:
        print("\nIssue 12 on digits:")
        print("\n".join(f"  {line}" for line in lines))


if __name__ == "__main__":
    main()
