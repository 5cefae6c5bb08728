"""The numbers of docs/experiments.md, computed from the output of the paper's client-count study.

    qsfl tune studies/paper_clients.toml --out out/paper_clients
    python scripts/experiments.py out/paper_clients                              # print the doc's block
    python scripts/experiments.py out/paper_clients --figures docs/experiments   # and copy the report's figures

Prints the Markdown that stands between the ``<!-- experiments:begin -->`` and ``<!-- experiments:end -->`` markers
of docs/experiments.md: per client count C and arm the mean over seeds with its 95 % interval of oscillation,
slowdown and final accuracy, and the paper's three observations checked with paired comparisons over the shared
seeds (the same seed and C for both arms). tests/e2e/test_experiments_doc.py checks that the doc holds what a fresh run
prints (``-m slow``). Every number comes from the study's trials table (tuning.results); nothing is copied by hand.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from reports.format import fmt_num
from reports.grid import GRID_METRICS, level_summary, metric_cell
from reports.stats import paired_compare
from tuning.results import StudyResults, load_study

BEGIN, END = "<!-- experiments:begin -->", "<!-- experiments:end -->"
ARMS = ("FedAvg", "QJ-only", "SCSS-only", "QSFL")
FIGURES = ("grid_oscillation_vs_clients", "grid_slowdown_vs_clients", "grid_final_accuracy_vs_clients",
           "grid_uplink_mb_vs_clients", "grid_uplink_clients_10", "grid_uplink_clients_50")


def _g(v: float) -> str:
    """Three significant digits (the doc's precision)."""
    return fmt_num(float(v), 3)


def per_seed(r: StudyResults, arm: str, clients: int, metric: str) -> pd.Series:
    """``metric`` of one grid point by seed (NaN where undefined)."""
    long = r.per_seed()
    rows = long[(long["param_arm"] == arm) & (long["param_clients"] == clients)]
    return rows.set_index("seed")[f"metric_{metric}"].astype(float).sort_index()


def paired(r: StudyResults, a: str, b: str, clients: int, metric: str) -> tuple[float, float, float, int]:
    """(mean difference a - b, its 95 % paired-t interval, pairs) over the seeds where both are defined; the
    interval is the difference itself when it is the same on every seed."""
    x, y = per_seed(r, a, clients, metric), per_seed(r, b, clients, metric)
    shared = x.index.intersection(y.index)
    res = paired_compare(x.loc[shared].to_numpy(), y.loc[shared].to_numpy())
    n = int((np.isfinite(x.loc[shared]) & np.isfinite(y.loc[shared])).sum())
    return res.diff, res.low, res.high, n


def _interval(d: float, lo: float, hi: float) -> str:
    if lo == hi == d:
        return f"{d:+.3g} (the same on every seed)"
    return f"{d:+.3g} [{lo:+.3g}, {hi:+.3g}]" if lo == lo else f"{d:+.3g} (no interval)"


def metric_table(r: StudyResults, metric: str) -> str:
    """A Markdown table: one row per C, one column per arm, ``mean [95 % interval] (n/N)`` over seeds."""
    title, bounds = next((t, b) for m, t, b in GRID_METRICS if m == metric)
    s = level_summary(r, "clients", metric, bounds=bounds)
    levels = [int(v) for v in dict(r.grid_factors())["clients"]]
    lines = [f"| C | {' | '.join(ARMS)} |", "|---:|" + "---:|" * len(ARMS)]
    for c in levels:
        cells = []
        for arm in ARMS:
            row = s[(s["series"] == arm) & (s["level"] == c)].iloc[0]
            cells.append(metric_cell(row["mean"], row["low"], row["high"], int(row["n"]), int(row["seeds"])))
        lines.append(f"| {c} | " + " | ".join(cells) + " |")
    return f"**{title[0].upper() + title[1:]}**, mean over seeds [95 % interval]:\n\n" + "\n".join(lines)


def _where(levels: list[int], flags: list[bool]) -> str:
    chosen = [str(c) for c, f in zip(levels, flags) if f]
    return ", ".join(chosen) if chosen else "none"


def observations(r: StudyResults) -> list[str]:
    """The paper's three observations, each checked here in numbers."""
    levels = [int(v) for v in dict(r.grid_factors())["clients"]]
    out = []
    # 1. QJ's accuracy stops oscillating only above about 40 clients
    qj = [paired(r, "QJ-only", "FedAvg", c, "oscillation") for c in levels]
    more = [lo > 0 for _, lo, _, _ in qj]
    means = [float(per_seed(r, "QJ-only", c, "oscillation").mean()) for c in levels]
    peak = levels[int(np.argmax(means))]
    out.append("**QJ's oscillation against C** (paper: QJ stops oscillating only above about 40 clients). QJ-only's "
               "mean oscillation is " + ", ".join(f"{_g(m)} at C = {c}" for c, m in zip(levels, means))
               + f" (highest at C = {peak}); QJ-only minus FedAvg on the same seeds: "
               + "; ".join(f"C = {c}: {_interval(d, lo, hi)}" for c, (d, lo, hi, _) in zip(levels, qj))
               + f". QJ-only oscillates more than FedAvg (interval above 0) at C = {_where(levels, more)}; "
               + ("it never does here, so the paper's observation does not show on this task: QJ-only oscillates no "
                  "more than FedAvg itself, whose oscillation also varies with C."
                  if not any(more) else
                  "at the other client counts the intervals include 0."))
    # 2. SCSS is almost independent of C
    gaps = [paired(r, "SCSS-only", "FedAvg", c, "final_accuracy") for c in levels]
    slow = [float(per_seed(r, "SCSS-only", c, "slowdown").mean()) for c in levels]
    spread = max(d for d, *_ in gaps) - min(d for d, *_ in gaps)
    differs = [not (lo <= 0 <= hi) for _, lo, hi, _ in gaps]
    osc = [paired(r, "SCSS-only", "FedAvg", c, "oscillation") for c in levels]
    out.append("**SCSS against C** (paper: SCSS is almost independent of C). SCSS-only's final accuracy minus "
               "FedAvg's, in accuracy points: " + "; ".join(f"C = {c}: {_interval(100 * d, 100 * lo, 100 * hi)}"
                                                          for c, (d, lo, hi, _) in zip(levels, gaps))
               + f"; the mean gap moves by {_g(100 * spread)} points over C, and its interval excludes 0 at C = "
               + f"{_where(levels, differs)}. Its slowdown: " + ", ".join(_g(v) for v in slow)
               + f" at C = {', '.join(map(str, levels))}. Its oscillation minus FedAvg's: "
               + "; ".join(f"C = {c}: {_interval(d, lo, hi)}" for c, (d, lo, hi, _) in zip(levels, osc))
               + "; interval above 0 (more drops than FedAvg) at C = "
               + f"{_where(levels, [lo > 0 for _, lo, _, _ in osc])}.")
    # 3. QSFL converges more slowly than FedAvg, by how much
    s = level_summary(r, "clients", "slowdown").query("series == 'QSFL'")
    above = [lo > 1 for lo in s["low"]]
    below = [hi < 1 for hi in s["high"]]
    pooled = np.concatenate([per_seed(r, "QSFL", c, "slowdown").to_numpy() for c in levels])
    pooled = pooled[np.isfinite(pooled)]
    out.append("**QSFL's slowdown against FedAvg** (paper: QSFL converges more slowly than FedAvg, without a number). "
               "Rounds to the target / FedAvg's on the same seed: "
               + "; ".join(f"C = {c}: {metric_cell(m, lo, hi, int(n), int(k))}"
                           for c, m, lo, hi, n, k in zip(levels, s["mean"], s["low"], s["high"], s["n"], s["seeds"]))
               + f"; over all {len(pooled)} runs {_g(float(pooled.mean()))}. Slower than FedAvg (interval above 1) at "
               f"C = {_where(levels, above)}; faster (interval below 1) at C = {_where(levels, below)}.")
    return out


def block(r: StudyResults) -> str:
    """The Markdown between the doc's markers."""
    target = r.base_config().target_accuracy
    seeds = r.spec_seeds()[0]
    parts = [f"Study `{r.name}`: {len(r.trials)} grid points x {len(seeds)} seeds ({', '.join(map(str, seeds))}), "
             f"{r.full_rounds} rounds, target accuracy {target:g}.",
             metric_table(r, "oscillation"), metric_table(r, "slowdown"), metric_table(r, "final_accuracy"),
             *observations(r)]
    return "\n\n".join(parts)


def doc_block(text: str) -> str:
    """What docs/experiments.md holds between its markers."""
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    return text[start:end].strip()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out_dir", type=Path, help="the --out directory of `qsfl tune studies/paper_clients.toml`")
    p.add_argument("--figures", type=Path, help="copy the report's figures (qsfl report OUT) into this directory")
    args = p.parse_args(argv)
    r = load_study(args.out_dir)
    if not r.is_grid or "clients" not in dict(r.grid_factors()):
        print(f"error: {args.out_dir} is not a grid study over clients", file=sys.stderr)
        return 2
    print(block(r))
    if args.figures is not None:
        args.figures.mkdir(parents=True, exist_ok=True)
        for name in FIGURES:
            src = args.out_dir / "figures" / f"{name}.png"
            if not src.is_file():
                print(f"error: {src} is missing; run `qsfl report {args.out_dir}` first", file=sys.stderr)
                return 2
            shutil.copyfile(src, args.figures / src.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
