"""What a grid study's report shows (``study.engine = "grid"``): per factor level and arm, the mean over seeds of
each metric with its 95 % confidence interval, as tables and as figures against each numeric factor; and the
accuracy-vs-uplink curves of every level.

Every number comes from the trials table's per-seed values (:meth:`tuning.results.StudyResults.per_seed`, whose
means over seeds are the table's ``metric_<name>`` columns): a seed where a metric is undefined (``rounds_to_target``
and ``slowdown`` when the target was not reached) is left out of that metric's mean and interval, and ``n`` says how
many seeds remain. Intervals are :func:`reports.stats.mean_ci`'s (Student t, at least three seeds).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pandas as pd

from reports.format import fmt_num
from reports.stats import mean_ci
from tuning.results import StudyResults

ARM = "arm"
# (metric, axis label, the range its interval is clipped to; None: the study's rounds)
GRID_METRICS: tuple[tuple[str, str, tuple[float, float | None]], ...] = (
    ("final_accuracy", "final test accuracy", (0.0, 1.0)),
    ("uplink_mb", "uplink MB", (0.0, math.inf)),
    ("rounds_to_target", "rounds to target", (1.0, None)),
    ("oscillation", "oscillation (accuracy drops)", (0.0, None)),
    ("slowdown", "slowdown (rounds to target / FedAvg's)", (0.0, math.inf)),
)


def factors(results: StudyResults) -> list[tuple[str, list[Any]]]:
    """The grid's factors (name, levels), the arms last."""
    return results.grid_factors()


def numeric_factors(results: StudyResults) -> list[str]:
    """The factors whose levels are numbers (the x axes of the metric figures)."""
    return [name for name, levels in factors(results)
            if name != ARM and all(isinstance(v, int | float) and not isinstance(v, bool) for v in levels)]


def _bounds(results: StudyResults, bounds: tuple[float, float | None]) -> tuple[float, float]:
    lo, hi = bounds
    return lo, float(results.full_rounds or math.inf) if hi is None else hi


def series_label(key: dict[str, Any]) -> str:
    """A line's name: its arm's label, then ``factor=level`` for the other factors held fixed along it."""
    parts = [str(key[ARM])] if ARM in key else []
    parts += [f"{k}={fmt_num(v)}" for k, v in key.items() if k != ARM]
    return ", ".join(parts) or "all"


def _same(a: Any, b: Any) -> bool:
    """A level in the table equals the spec's (ints read back as int64, categorical levels as their names)."""
    if isinstance(b, bool) or isinstance(a, str) or isinstance(b, str):
        return str(a) == str(b)
    return bool(math.isclose(float(a), float(b), rel_tol=1e-12, abs_tol=1e-15))


def level_summary(results: StudyResults, factor: str, metric: str, *,
                  bounds: tuple[float, float | None] = (-math.inf, math.inf)) -> pd.DataFrame:
    """One row per (line, level of ``factor``): ``series`` (the arm and the other factors' levels), ``level``, ``n``
    (seeds where the metric is defined), ``mean``, ``low``, ``high`` (95 % interval, NaN under three seeds), in the
    grid's order."""
    long = results.per_seed()
    names = [name for name, _ in factors(results)]
    others = [n for n in names if n != factor]
    levels = dict(factors(results))
    col = f"metric_{metric}"
    rows = []
    keys: list[dict[str, Any]] = [{}]
    for name in others:   # every combination of the other factors, in the grid's order
        keys = [{**k, name: v} for k in keys for v in levels[name]]
    for key in keys:
        for level in levels[factor]:
            mask = pd.Series(True, index=long.index)
            for name, value in {**key, factor: level}.items():
                mask &= long[f"param_{name}"].map(lambda v, value=value: _same(v, value))
            values = pd.to_numeric(long.loc[mask, col], errors="coerce").dropna().to_numpy(dtype=float)
            if not mask.any():
                continue
            mean, low, high = mean_ci(values, bounds=_bounds(results, bounds))
            rows.append({"series": series_label(key), **{f"param_{k}": v for k, v in key.items()}, "level": level,
                         "n": len(values), "seeds": int(mask.sum()), "mean": mean, "low": low, "high": high})
    return pd.DataFrame(rows, columns=["series", *(f"param_{n}" for n in others), "level", "n", "seeds", "mean",
                                       "low", "high"])


def metric_cell(mean: float, low: float, high: float, n: int, seeds: int) -> str:
    """``mean [low, high]`` (the mean alone where every seed has the same value), with ``(n/seeds)`` when the metric
    is undefined on some seeds."""
    exact = low == high == mean    # the same on every seed (byte counts): no interval to show
    text = fmt_num(mean) + (f" [{fmt_num(low)}, {fmt_num(high)}]" if low == low and high == high and not exact else "")
    return text + (f" ({n}/{seeds})" if n < seeds else "")


def level_tables(results: StudyResults, metrics: Sequence[tuple[str, str, tuple[float, float | None]]] = GRID_METRICS
                 ) -> list[tuple[str, pd.DataFrame]]:
    """A table per level of each factor but the arms: one row per arm (and combination of the other factors), one
    column per metric, each cell ``mean [95 % interval]`` over seeds (``(n/seeds)`` where some seeds have no value)."""
    out = []
    for factor, levels in factors(results):
        if factor == ARM:
            continue
        summaries = {m: level_summary(results, factor, m, bounds=b) for m, _, b in metrics}
        for level in levels:
            table: dict[str, list[Any]] = {}
            for m, title, _ in metrics:
                s = summaries[m][summaries[m]["level"].map(lambda v, level=level: _same(v, level))]
                table.setdefault("configuration", list(s["series"]))
                table[title] = [metric_cell(r["mean"], r["low"], r["high"], int(r["n"]), int(r["seeds"]))
                                for _, r in s.iterrows()]
            out.append((f"{factor} = {fmt_num(level)}", pd.DataFrame(table)))
    if not out and any(f == ARM for f, _ in factors(results)):   # arms only: one table of the arms
        tables = {m: level_summary(results, ARM, m, bounds=b) for m, _, b in metrics}
        first = tables[metrics[0][0]]
        table = {"configuration": [str(v) for v in first["level"]]}
        for m, title, _ in metrics:
            table[title] = [metric_cell(r["mean"], r["low"], r["high"], int(r["n"]), int(r["seeds"]))
                            for _, r in tables[m].iterrows()]
        out.append(("arms", pd.DataFrame(table)))
    return out


def level_curves(results: StudyResults, factor: str) -> dict[Any, dict[str, list[pd.DataFrame]]]:
    """Per level of ``factor``: line name -> one per-round DataFrame (``round``, ``test_accuracy``,
    ``cum_uplink_bytes``) per seed, for :func:`reports.plots.accuracy_vs_uplink`."""
    curves = results.curves()
    levels = dict(factors(results))
    others = [n for n, _ in factors(results) if n != factor]
    out: dict[Any, dict[str, list[pd.DataFrame]]] = {}
    if curves.empty:
        return out
    for level in levels[factor]:
        at = curves[curves[f"param_{factor}"].map(lambda v, level=level: _same(v, level))]
        lines: dict[str, list[pd.DataFrame]] = {}
        for _, group in at.groupby("trial", sort=True):
            key = {n: group[f"param_{n}"].iloc[0] for n in others}
            lines[series_label(key)] = [g[["round", "test_accuracy", "cum_uplink_bytes"]].reset_index(drop=True)
                                        for _, g in group.groupby("seed", sort=True)]
        out[level] = lines
    return out
