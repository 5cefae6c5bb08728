"""Figures of runs (History DataFrames) and studies (trials table, GA logbook); each returns a Figure.

Every public function takes DataFrames (a :class:`qsfl.history.History` is accepted wherever a
History DataFrame is) and returns a :class:`matplotlib.figure.Figure` built without pyplot, so a
study can draw hundreds of figures without leaking memory and a notebook displays them as they are.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.colors import BoundaryNorm, ListedColormap
from matplotlib.figure import Figure

from qsfl.io import atomic_write
from reports.style import (
    DPI,
    HEIGHT_IN,
    WIDTH_IN,
    baseline_key,
    byte_unit,
    color_for,
    linestyle_for,
    marker_for,
    styled,
)

RunLike = Any  # pd.DataFrame or qsfl.history.History
Runs = Mapping[str, RunLike | Sequence[RunLike]]

ACCURACY = "test accuracy"
BETTER = {True: "\u2191 higher is better", False: "\u2193 lower is better"}
UPLINK_MB = "cumulative uplink (MB)"
TOTAL_MB = "cumulative uplink + downlink (MB)"
TIME_S = "simulated time (s)"
ROUND = "round"


# ----- helpers -------------------------------------------------------------------------------------
def as_frame(run: RunLike) -> pd.DataFrame:
    """The per-round DataFrame of a History or of a DataFrame itself."""
    return run.df if hasattr(run, "df") else run


def _as_list(value: RunLike | Sequence[RunLike]) -> list[pd.DataFrame]:
    if isinstance(value, pd.DataFrame) or hasattr(value, "df"):
        return [as_frame(value)]
    return [as_frame(v) for v in value]


def align_seeds(runs: Sequence[RunLike]) -> pd.DataFrame:
    """Per evaluated round: mean/std/min/max of accuracy and the means of cumulative uplink MB, uplink + downlink
    MB and simulated seconds (NaN without a system model) over seeds.

    Runs are aligned by round; only rounds evaluated in every run are kept (a diverged seed that
    stopped early shortens the curve rather than biasing the mean of the later rounds).
    """
    frames = []
    for i, df in enumerate(_as_list(runs)):
        ev = df.dropna(subset=["test_accuracy"])
        up = ev["cum_uplink_bytes"].to_numpy(dtype=float)
        down = ev["cum_downlink_bytes"].to_numpy(dtype=float) if "cum_downlink_bytes" in ev else np.nan
        seconds = ev["cum_time_s"].to_numpy(dtype=float) if "cum_time_s" in ev else np.nan
        frames.append(pd.DataFrame({"round": ev["round"].to_numpy(), "seed_idx": i,
                                    "acc": ev["test_accuracy"].to_numpy(dtype=float),
                                    "mb": up / 1e6, "total_mb": (up + down) / 1e6, "time_s": seconds}))
    if not frames:
        return pd.DataFrame(columns=["round", "n", "acc_mean", "acc_std", "acc_min", "acc_max", "mb_mean",
                                     "total_mb_mean", "time_mean"])
    long = pd.concat(frames, ignore_index=True)
    g = long.groupby("round")
    out = pd.DataFrame({
        "n": g["acc"].count(),
        "acc_mean": g["acc"].mean(),
        "acc_std": g["acc"].std(ddof=1).fillna(0.0),
        "acc_min": g["acc"].min(),
        "acc_max": g["acc"].max(),
        "mb_mean": g["mb"].mean(),
        "total_mb_mean": g["total_mb"].mean(),
        "time_mean": g["time_s"].mean(),
    }).reset_index()
    return out[out["n"] == len(frames)].reset_index(drop=True)


def fitness_columns(trials: pd.DataFrame) -> list[str]:
    """``["fitness"]`` for a single objective, else ``["fitness_0", "fitness_1", ...]``."""
    if "fitness" in trials.columns:
        return ["fitness"]
    cols = [c for c in trials.columns if c.startswith("fitness_") and c[len("fitness_"):].isdigit()]
    return sorted(cols, key=lambda c: int(c.split("_")[1]))


def param_columns(trials: pd.DataFrame, *, varying: bool = False) -> list[str]:
    """The ``param_*`` columns; with ``varying`` only the numeric ones taking more than one value (the plots'
    axes: a categorical parameter such as ``segmentation`` is left out of them)."""
    cols = [c for c in trials.columns if c.startswith("param_")]
    if varying:
        cols = [c for c in cols if pd.api.types.is_numeric_dtype(trials[c]) and trials[c].dropna().nunique() > 1]
    return cols


def _complete(trials: pd.DataFrame, cols: Sequence[str]) -> pd.DataFrame:
    df = trials[trials["state"] == "complete"] if "state" in trials.columns else trials
    for c in cols:
        df = df[np.isfinite(pd.to_numeric(df[c], errors="coerce"))]
    return df


def _figure(size: tuple[float, float]) -> Figure:
    """A pyplot-free figure with constrained layout (labels, colorbars and outside legends never clip)."""
    return Figure(figsize=size, layout="constrained")


def _title(ax: Any, title: str) -> None:
    ax.set_title(title, loc="left")


def _note(ax: Any, text: str) -> None:
    """A small grey remark at the top right of the axes (what the band shows, counts, ...)."""
    ax.set_title(text, loc="right", fontsize=8, color="#555555", fontweight="normal")


def _bottom_legend(fig: Figure, ax: Any, ncols: int = 4) -> None:
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=ncols)


def _log_ticks(axis: Any) -> None:
    """Plain numbers (0.02, 0.1, 0.5) on a log axis instead of overlapping 2x10^-2 labels."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def _int_ticks(axis: Any) -> None:
    """Rounds, generations, clients and segments are integers: no 1.5 on their axes."""
    from matplotlib.ticker import MaxNLocator
    axis.set_major_locator(MaxNLocator(integer=True))


def robust_range(values: Sequence[float], *, maximize: bool) -> tuple[float, float] | None:
    """A y range that leaves far-off *worst* values (penalties, failures) off scale, or None if there are none.

    A value is far off when it lies more than 3 interquartile ranges beyond the quartile on the worse side;
    the better side is never cut, so the best evaluations always show.
    """
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if len(v) < 5:
        return None
    q1, q3 = np.percentile(v, [25, 75])
    spread = q3 - q1 if q3 > q1 else max(abs(q3) * 0.1, 1e-12)
    keep = v[v >= q1 - 3 * spread] if maximize else v[v <= q3 + 3 * spread]
    if len(keep) == len(v):
        return None
    lo, hi = float(keep.min()), float(keep.max())
    pad = 0.08 * (hi - lo) if hi > lo else max(abs(hi) * 0.05, 1e-9)
    return lo - pad, hi + pad


def _off_scale(ax: Any, x: np.ndarray, y: np.ndarray, rng: tuple[float, float] | None, maximize: bool) -> int:
    """Apply ``rng`` as y limits and mark the points beyond it at the edge; return how many there are."""
    if rng is None:
        return 0
    ax.set_ylim(*rng)
    off = np.isfinite(y) & ((y < rng[0]) if maximize else (y > rng[1]))
    if off.any():
        edge = rng[0] if maximize else rng[1]
        ax.scatter(x[off], np.full(int(off.sum()), edge), marker="v" if maximize else "^", s=28, color="#7f7f7f",
                   clip_on=False, zorder=4, label="_off scale")
    return int(off.sum())


def _empty(fig: Figure, ax: Any, message: str) -> Figure:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color="#555555")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)
    return fig


def _pname(col: str) -> str:
    return col[len("param_"):] if col.startswith("param_") else col


def _savefig(fig: Figure, fmt: str, path: Path) -> None:
    fig.savefig(path, format=fmt, dpi=DPI, bbox_inches="tight", facecolor="white")


def save_figure(fig: Figure, path_stem: str | Path, formats: Sequence[str] = ("png", "svg")) -> list[Path]:
    """Write ``<stem>.png`` (150 dpi) and ``<stem>.svg`` atomically; return the paths."""
    stem = Path(path_stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in formats:
        path = stem.with_name(f"{stem.name}.{fmt}")
        atomic_write(path, functools.partial(_savefig, fig, fmt))
        paths.append(path)
    return paths


# ----- convergence ---------------------------------------------------------------------------------
def _convergence(runs: Runs, *, x: str, log_x: bool, band: str, target: float | None,
                 title: str | None) -> Figure:
    if band not in ("std", "minmax", "none"):
        raise ValueError(f"band: unknown value {band!r}; valid: std, minmax, none")
    fig = _figure((WIDTH_IN, HEIGHT_IN))
    ax = fig.subplots()
    tuned = drawn = 0
    for label, value in runs.items():
        stats = align_seeds(_as_list(value))
        if stats.empty:
            continue
        color = color_for(label, tuned)
        style, marker = linestyle_for(label, tuned), marker_for(label, tuned)
        tuned += baseline_key(label) is None
        # rounds are shown 1-based
        xs = {"uplink": stats["mb_mean"], "total": stats["total_mb_mean"], "time": stats["time_mean"]}.get(
            x, stats["round"] + 1)
        n = int(stats["n"].iloc[0])
        # markers at staggered points: lines that coincide (identical simulations) still show each label
        every = max(len(xs) // 6, 1)
        ax.plot(xs, stats["acc_mean"], color=color, ls=style, marker=marker, ms=5, mfc="white", mew=1.3,
                markevery=(drawn % every, every), label=label if n == 1 else f"{label} (n={n})")
        drawn += 1
        if n > 1 and band != "none":
            lo, hi = ((stats["acc_mean"] - stats["acc_std"], stats["acc_mean"] + stats["acc_std"])
                      if band == "std" else (stats["acc_min"], stats["acc_max"]))
            ax.fill_between(xs, lo, hi, color=color, alpha=0.15 if len(runs) <= 4 else 0.09, linewidth=0)
    if target is not None:
        ax.axhline(target, color="#777777", lw=0.9, ls=(0, (4, 3)), label="_target", zorder=0)
        # at the left end: curves start low, so the label rarely sits on one
        ax.annotate(f"target {target:g}", xy=(0.0, target), xycoords=("axes fraction", "data"),
                    xytext=(3, 3), textcoords="offset points", ha="left", va="bottom", fontsize=8,
                    color="#555555")
    if log_x:
        ax.set_xscale("log")
        _log_ticks(ax.xaxis)
    xlabel = {"uplink": UPLINK_MB, "total": TOTAL_MB, "time": TIME_S}.get(x)
    ax.set_xlabel(xlabel + (", log scale" if log_x else "") if xlabel else ROUND)
    if x == "round":
        _int_ticks(ax.xaxis)
    ax.set_ylabel(ACCURACY)
    spread = {"std": "mean \u00b1 std over seeds", "minmax": "mean, min-max over seeds", "none": "mean over seeds"}
    _title(ax, title or {"uplink": "Accuracy vs communication", "total": "Accuracy vs uplink + downlink",
                         "time": "Accuracy vs simulated time"}.get(x, "Accuracy vs round"))
    if any(len(_as_list(v)) > 1 for v in runs.values()):
        _note(ax, spread[band])
    if ax.get_legend_handles_labels()[0]:  # below the axes: never on top of a curve
        _bottom_legend(fig, ax, ncols=min(4, len(runs)))
    return fig


@styled
def accuracy_vs_uplink(runs: Runs, *, log_x: bool = False, band: str = "std", target: float | None = None,
                       title: str | None = None) -> Figure:
    """Test accuracy vs cumulative uplink MB: one mean line per label, +-std or min-max band over seeds."""
    return _convergence(runs, x="uplink", log_x=log_x, band=band, target=target, title=title)


@styled
def accuracy_vs_total_bytes(runs: Runs, *, log_x: bool = False, band: str = "std", target: float | None = None,
                            title: str | None = None) -> Figure:
    """Test accuracy vs cumulative uplink + downlink MB: one mean line per label, +-std or min-max band over seeds."""
    return _convergence(runs, x="total", log_x=log_x, band=band, target=target, title=title)


@styled
def accuracy_vs_time(runs: Runs, *, log_x: bool = False, band: str = "std", target: float | None = None,
                     title: str | None = None) -> Figure:
    """Test accuracy vs simulated seconds (the Histories' ``cum_time_s``, from a system model): one mean line per
    label, +-std or min-max band over seeds."""
    return _convergence(runs, x="time", log_x=log_x, band=band, target=target, title=title)


@styled
def accuracy_vs_round(runs: Runs, *, band: str = "std", target: float | None = None,
                      title: str | None = None) -> Figure:
    """Test accuracy vs round (1-based): one mean line per label, +-std or min-max band over seeds."""
    return _convergence(runs, x="round", log_x=False, band=band, target=target, title=title)


# ----- grid studies ----------------------------------------------------------------------------------
@styled
def grid_metric(summary: pd.DataFrame, *, xlabel: str, ylabel: str, title: str | None = None,
                log_y: bool = False) -> Figure:
    """A metric against the levels of a factor (``summary``: :func:`reports.grid.level_summary`): one line per
    ``series`` through the means over seeds, and its 95 % confidence band where the interval exists. A series' arm
    (``param_arm``, else its name) picks the colour, dashes and marker of the baselines."""
    fig = _figure((WIDTH_IN, HEIGHT_IN))
    ax = fig.subplots()
    tuned = 0
    for label, g in summary.groupby("series", sort=False):
        arm = str(g["param_arm"].iloc[0]) if "param_arm" in g.columns else str(label)
        color, style, marker = color_for(arm, tuned), linestyle_for(arm, tuned), marker_for(arm, tuned)
        tuned += baseline_key(arm) is None
        x = pd.to_numeric(g["level"], errors="coerce").to_numpy(dtype=float)
        y = g["mean"].to_numpy(dtype=float)
        ax.plot(x, y, color=color, ls=style, marker=marker, ms=5, mfc="white", mew=1.3, label=str(label))
        lo, hi = g["low"].to_numpy(dtype=float), g["high"].to_numpy(dtype=float)
        band = np.isfinite(lo) & np.isfinite(hi)
        if band.any():
            ax.fill_between(x, np.where(band, lo, np.nan), np.where(band, hi, np.nan), color=color, alpha=0.15,
                            linewidth=0)
    if log_y:
        ax.set_yscale("log")
        _log_ticks(ax.yaxis)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    levels = pd.to_numeric(summary["level"], errors="coerce").dropna().unique()
    if len(levels) and np.allclose(levels, np.round(levels)):
        ax.set_xticks(sorted(levels))
    _title(ax, title or f"{ylabel} vs {xlabel}")
    _note(ax, "mean over seeds, 95 % CI band")
    if ax.get_legend_handles_labels()[0]:
        _bottom_legend(fig, ax, ncols=min(4, summary["series"].nunique()))
    return fig


# ----- communication -------------------------------------------------------------------------------
UPLINK_PARTS = (("uplink_meta_bytes", "QJ metadata"), ("uplink_value_bytes", "values"),
                ("uplink_index_bytes", "indices"), ("uplink_header_bytes", "headers"))
PART_COLORS = ("#E69F00", "#0072B2", "#56B4E9", "#999999")


@styled
def uplink_breakdown(run: RunLike, *, title: str | None = None) -> Figure:
    """Uplink bytes per round stacked into QJ metadata, values, indices and headers."""
    df = as_frame(run)
    fig = _figure((WIDTH_IN, HEIGHT_IN * 0.9))
    ax = fig.subplots()
    if df.empty:
        return _empty(fig, ax, "no rounds")
    unit, div = byte_unit(float(df["uplink_bytes"].max()))
    rounds = df["round"].to_numpy() + 1
    bottom = np.zeros(len(df))
    width = 0.85 if len(df) <= 80 else 1.0
    total = float(df["uplink_bytes"].sum()) or 1.0
    for (col, name), color in zip(UPLINK_PARTS, PART_COLORS):
        vals = df[col].to_numpy(dtype=float) / div
        ax.bar(rounds, vals, bottom=bottom, width=width, color=color, linewidth=0,
               label=f"{name} ({df[col].sum() / total:.1%})")
        bottom += vals
    ax.set_xlabel(ROUND)
    _int_ticks(ax.xaxis)
    ax.set_ylabel(f"uplink per round ({unit})")
    _title(ax, title or "Uplink bytes per round")
    _note(ax, f"total {df['uplink_bytes'].sum() / div:,.1f} {unit}")
    _bottom_legend(fig, ax)
    ax.margins(x=0.01)
    return fig


@styled
def uplink_composition(runs: Runs, *, title: str | None = None) -> Figure:
    """Total uplink MB per label (mean over seeds), stacked into QJ metadata, values, indices, headers."""
    labels = list(runs)
    fig = _figure((WIDTH_IN, 1.3 + 0.38 * max(len(labels), 1)))
    ax = fig.subplots()
    if not labels:
        return _empty(fig, ax, "no runs")
    totals = {lab: {col: float(np.mean([f[col].sum() for f in _as_list(runs[lab])])) for col, _ in UPLINK_PARTS}
              for lab in labels}
    unit, div = byte_unit(max(sum(t.values()) for t in totals.values()))
    y = np.arange(len(labels))[::-1]
    left = np.zeros(len(labels))
    for (col, name), color in zip(UPLINK_PARTS, PART_COLORS):
        vals = np.array([totals[lab][col] for lab in labels]) / div
        ax.barh(y, vals, left=left, color=color, label=name, height=0.65, linewidth=0)
        left += vals
    ax.set_yticks(y, labels)
    several = any(len(_as_list(runs[lab])) > 1 for lab in labels)
    ax.set_xlabel(f"total uplink ({unit}" + (", mean over seeds)" if several else ")"))
    ax.grid(axis="y", visible=False)
    _title(ax, title or "Where the uplink bytes go")
    _bottom_legend(fig, ax)
    return fig


# ----- per-client fairness -------------------------------------------------------------------------
@styled
def client_accuracy(clients: Mapping[str, pd.DataFrame | Sequence[pd.DataFrame]], *,
                    title: str | None = None) -> Figure:
    """Per label, the spread of per-client accuracy (qsfl.fairness tables, pooled over seeds) as box plots."""
    labels = list(clients)
    fig = _figure((WIDTH_IN, 1.4 + 0.42 * max(len(labels), 1)))
    ax = fig.subplots()
    data = []
    for lab in labels:
        value = clients[lab]
        frames = [value] if isinstance(value, pd.DataFrame) else list(value)
        acc = np.concatenate([f["accuracy"].to_numpy(dtype=float) for f in frames]) if frames else np.array([])
        data.append(acc[np.isfinite(acc)])
    if not any(len(d) for d in data):
        return _empty(fig, ax, "no per-client accuracies")
    y = np.arange(len(labels))[::-1]
    box = ax.boxplot(data, positions=y, orientation="horizontal", widths=0.6, patch_artist=True, showfliers=True,
                     flierprops={"marker": ".", "markersize": 4, "alpha": 0.6})
    for i, (patch, lab) in enumerate(zip(box["boxes"], labels)):
        patch.set_facecolor(color_for(lab, i))
        patch.set_alpha(0.35)
    ax.set_yticks(y, labels)
    ax.set_xlabel("accuracy of the final model on a client's own label distribution")
    ax.grid(axis="y", visible=False)
    _title(ax, title or "Per-client accuracy")
    n = max((len(v) if not isinstance(v, pd.DataFrame) else 1) for v in clients.values())
    _note(ax, "each box: all clients" + (f" of {n} seeds" if n > 1 else ""))
    return fig


# ----- QJ / SCSS inside a run ----------------------------------------------------------------------
@styled
def selection_heatmap(run: RunLike, *, n_clients: int | None = None, title: str | None = None) -> Figure:
    """Clients x rounds: not sampled / sampled / qualified by QJ, with each client's qualification rate."""
    df = as_frame(run)
    if n_clients is None:
        cfg = df.attrs.get("config") or {}
        seen = [c for lst in df["sampled_clients"] for c in lst] + [c for lst in df["qualified_clients"] for c in lst]
        n_clients = int(cfg.get("clients") or (max(seen) + 1 if seen else 0))
    fig = _figure((WIDTH_IN, min(2.0 + 0.12 * n_clients, 7.5)))
    ax, bx = fig.subplots(1, 2, gridspec_kw={"width_ratios": [5, 1]}, sharey=True)
    if df.empty or n_clients == 0:
        return _empty(fig, ax, "no rounds")
    grid = np.zeros((n_clients, len(df)), dtype=int)
    for j, (sampled, qualified) in enumerate(zip(df["sampled_clients"], df["qualified_clients"])):
        grid[list(sampled), j] = 1
        grid[list(qualified), j] = 2
    cmap = ListedColormap(["#f2f2f2", "#a6cee3", "#0072B2"])
    ax.imshow(grid, aspect="auto", interpolation="nearest", cmap=cmap, norm=BoundaryNorm([-0.5, 0.5, 1.5, 2.5], 3),
              extent=(0.5, len(df) + 0.5, n_clients - 0.5, -0.5))
    ax.grid(False)
    ax.set_xlabel(ROUND)
    _int_ticks(ax.xaxis)
    _int_ticks(ax.yaxis)
    ax.set_ylabel("client")
    sampled = (grid >= 1).sum(axis=1)
    rate = np.divide((grid == 2).sum(axis=1), sampled, out=np.zeros(n_clients), where=sampled > 0)
    bx.barh(np.arange(n_clients), rate, color="#0072B2", height=0.8)
    bx.set_xlim(0, 1)
    bx.set_xlabel("qualified / sampled")
    bx.grid(axis="y", visible=False)
    bx.tick_params(axis="y", left=False)
    from matplotlib.patches import Patch
    fig.legend(handles=[Patch(facecolor=c, edgecolor="#999999", linewidth=0.5, label=lab) for c, lab in
                        (("#f2f2f2", "not sampled"), ("#a6cee3", "sampled"), ("#0072B2", "qualified (uploads)"))],
               loc="outside lower center", ncols=3)
    _title(ax, title or "QJ selection per round")
    return fig


@styled
def coverage_heatmap(run: RunLike, *, title: str | None = None) -> Figure:
    """Segments x rounds: how many qualified clients sent each SCSS segment (0 = segment not refreshed)."""
    df = as_frame(run)
    rows = [list(v) for v in df["segment_coverage"]] if len(df) else []
    ns = max((len(r) for r in rows), default=0)
    fig = _figure((WIDTH_IN, min(1.8 + 0.3 * ns, 6.0)))
    ax = fig.subplots()
    if ns == 0:
        return _empty(fig, ax, "no SCSS segments in this run")
    grid = np.array([r + [0] * (ns - len(r)) for r in rows], dtype=float).T
    vmax = max(int(grid.max()), 1)
    cmap = ListedColormap(["#D55E00"] + [c for c in _blues(vmax)])
    im = ax.imshow(grid, aspect="auto", interpolation="nearest", cmap=cmap,
                   norm=BoundaryNorm(np.arange(-0.5, vmax + 1.5), vmax + 1),
                   extent=(0.5, len(df) + 0.5, ns - 0.5, -0.5))
    ax.grid(False)
    ax.set_yticks(range(ns)) if ns <= 16 else _int_ticks(ax.yaxis)
    ax.set_xlabel(ROUND)
    _int_ticks(ax.xaxis)
    ax.set_ylabel("segment")
    cb = fig.colorbar(im, ax=ax, ticks=range(vmax + 1), pad=0.01)
    cb.set_label("senders")
    uncovered = int((grid == 0).sum())
    _title(ax, title or "SCSS segment coverage per round")
    _note(ax, f"{uncovered} of {grid.size} segment-rounds not refreshed (orange)")
    return fig


def _blues(n: int) -> list[tuple[float, float, float, float]]:
    from matplotlib import colormaps
    cmap = colormaps["Blues"]
    return [cmap(0.25 + 0.75 * i / max(n - 1, 1)) for i in range(n)]


# ----- study: search progress ----------------------------------------------------------------------
@styled
def ga_fitness(logbook: pd.DataFrame, *, objective: int = 0, ylabel: str = "fitness", maximize: bool = True,
               title: str | None = None) -> Figure:
    """GA fitness per generation from the logbook: min, mean (+-std band) and max lines."""
    fig = _figure((WIDTH_IN, HEIGHT_IN))
    ax = fig.subplots()
    suffix = f"_{objective}"
    cols = {k: (k + suffix if k + suffix in logbook.columns else k) for k in ("min", "mean", "max", "std")}
    if logbook.empty or cols["mean"] not in logbook.columns:
        return _empty(fig, ax, "no logbook")
    gen = logbook["gen"].to_numpy()
    mean = logbook[cols["mean"]].to_numpy(dtype=float)
    if cols["std"] in logbook.columns:
        std = logbook[cols["std"]].to_numpy(dtype=float)
        ax.fill_between(gen, mean - std, mean + std, color="#0072B2", alpha=0.15, linewidth=0)
    ax.plot(gen, logbook[cols["max"]], color="#009E73", marker="^", ms=4, label="max")
    ax.plot(gen, mean, color="#0072B2", marker="o", ms=4, label="mean \u00b1 std")
    ax.plot(gen, logbook[cols["min"]], color="#D55E00", marker="v", ms=4, label="min")
    lines = {k: logbook[cols[k]].to_numpy(dtype=float) for k in ("max", "mean", "min")}
    rng = robust_range(np.concatenate(list(lines.values())).tolist(), maximize=maximize)
    note = BETTER[maximize]
    if rng is not None:  # penalised/failed evaluations would flatten the interesting part
        ax.set_ylim(*rng)
        off = {k: int(((v < rng[0]) if maximize else (v > rng[1])).sum()) for k, v in lines.items()}
        note += "; off scale: " + ", ".join(f"{k} in {n} gen." for k, n in off.items() if n) \
            + " (penalised evaluations)"
    _note(ax, note)
    ax.set_xlabel("generation")
    ax.set_ylabel(ylabel)
    if len(gen) <= 20:
        ax.set_xticks(gen)
    _title(ax, title or "GA fitness per generation")
    _bottom_legend(fig, ax, ncols=3)
    return fig


@styled
def optimization_history(trials: pd.DataFrame, *, fitness: str = "fitness", maximize: bool = True,
                         ylabel: str | None = None, title: str | None = None) -> Figure:
    """Fitness of every evaluation in order, with the best-so-far line (Optuna trials or GA evaluations)."""
    fig = _figure((WIDTH_IN, HEIGHT_IN))
    ax = fig.subplots()
    if fitness not in trials.columns:
        return _empty(fig, ax, f"no column {fitness!r}")
    df = trials.sort_values("trial") if "trial" in trials.columns else trials
    x = df["trial"].to_numpy() if "trial" in df.columns else np.arange(len(df))
    val = pd.to_numeric(df[fitness], errors="coerce").to_numpy(dtype=float)
    state = df["state"].to_numpy() if "state" in df.columns else np.full(len(df), "complete")
    ok = (state == "complete") & np.isfinite(val)
    if not ok.any():
        return _empty(fig, ax, "no complete evaluations")
    pruned = (state == "pruned") & np.isfinite(val)
    if pruned.any():
        ax.scatter(x[pruned], val[pruned], s=14, marker="x", color="#999999", alpha=0.6, label="pruned")
    ax.scatter(x[ok], val[ok], s=18, color="#0072B2", alpha=0.7, label="evaluation", linewidths=0)
    n_off = _off_scale(ax, x[ok], val[ok], robust_range(val[ok], maximize=maximize), maximize)
    best = np.where(ok, val, -np.inf if maximize else np.inf)
    best = np.maximum.accumulate(best) if maximize else np.minimum.accumulate(best)
    first = int(np.argmax(ok))
    ax.step(x[first:], best[first:], where="post", color="#D55E00", lw=2, label="best so far")
    ax.set_xlabel("evaluation (trial number)")
    ax.set_ylabel(ylabel or fitness)
    n_failed = int((state == "failed").sum())
    _title(ax, title or "Optimisation history")
    note = f"{int(ok.sum())} complete" + (f", {int(pruned.sum())} pruned" if pruned.any() else "") + \
        (f", {n_failed} failed" if n_failed else "") + (f", {n_off} off scale (grey)" if n_off else "") + \
        "; " + BETTER[maximize]
    _note(ax, note)
    ax.legend(loc="lower right" if maximize else "upper right")
    return fig


def pareto_mask(xs: Sequence[float], ys: Sequence[float], *, minimize_x: bool = True,
                maximize_y: bool = True) -> np.ndarray:
    """Boolean mask of the non-dominated points (better x and y; ties are not domination)."""
    x = np.asarray(xs, dtype=float) * (1 if minimize_x else -1)
    y = np.asarray(ys, dtype=float) * (-1 if maximize_y else 1)
    mask = np.ones(len(x), dtype=bool)
    for i in range(len(x)):
        dominated = (x <= x[i]) & (y <= y[i]) & ((x < x[i]) | (y < y[i]))
        mask[i] = not dominated.any()
    return mask


@styled
def pareto_front(trials: pd.DataFrame, *, x: str = "metric_uplink_mb", y: str = "metric_final_accuracy",
                 minimize_x: bool = True, maximize_y: bool = True, log_x: bool = False,
                 marks: Mapping[str, tuple[float, float]] | None = None, xlabel: str | None = None,
                 ylabel: str | None = None, title: str | None = None) -> Figure:
    """Trade-off of two metrics over all complete evaluations; the Pareto front bold, dominated faint."""
    fig = _figure((WIDTH_IN, HEIGHT_IN))
    ax = fig.subplots()
    if x not in trials.columns or y not in trials.columns:
        return _empty(fig, ax, f"trials table lacks {x!r} or {y!r}")
    df = _complete(trials, [x, y])
    if df.empty:
        return _empty(fig, ax, "no complete evaluations")
    xs, ys = df[x].to_numpy(dtype=float), df[y].to_numpy(dtype=float)
    front = pareto_mask(xs, ys, minimize_x=minimize_x, maximize_y=maximize_y)
    ax.scatter(xs[~front], ys[~front], s=16, color="#7f7f7f", alpha=0.4, linewidths=0, label="dominated")
    order = np.argsort(xs[front])
    ax.plot(xs[front][order], ys[front][order], color="#0072B2", marker="o", ms=6, lw=1.4,
            drawstyle="steps-post" if minimize_x == maximize_y else "default", label="Pareto front")
    for i, (name, (mx, my)) in enumerate((marks or {}).items()):
        ax.scatter([mx], [my], marker="*", s=160, color=color_for(name, i), edgecolors="black", linewidths=0.6,
                   zorder=5, label=name)
    if log_x:
        ax.set_xscale("log")
        _log_ticks(ax.xaxis)
    ax.set_xlabel(xlabel or _metric_label(x))
    ax.set_ylabel(ylabel or _metric_label(y))
    _title(ax, title or "Pareto front")
    _note(ax, f"{int(front.sum())} of {len(xs)} evaluations non-dominated")
    ax.legend(loc="lower right" if maximize_y else "upper right")
    return fig


def _metric_label(col: str) -> str:
    names = {"metric_uplink_mb": "uplink per run (MB)", "metric_final_accuracy": "final test accuracy",
             "metric_best_accuracy": "best test accuracy", "metric_compression_ratio": "compression ratio vs FedAvg",
             "metric_rounds_to_target": "rounds to target accuracy", "metric_uplink_bytes": "uplink per run (bytes)"}
    return names.get(col, col.removeprefix("metric_").replace("_", " "))


# ----- study: parameters ---------------------------------------------------------------------------
def trials_to_optuna(trials: pd.DataFrame, *, fitness: Sequence[str] | None = None,
                     maximize: Sequence[bool] | bool = True, params: Sequence[str] | None = None) -> Any:
    """An in-memory optuna Study holding the complete trials (works for GA tables too)."""
    import optuna
    from optuna.distributions import FloatDistribution, IntDistribution

    fitness = list(fitness or fitness_columns(trials))
    flags = [maximize] * len(fitness) if isinstance(maximize, bool) else list(maximize)
    params = list(params or param_columns(trials, varying=True))
    df = _complete(trials, list(fitness) + params)
    dists: dict[str, Any] = {}
    for col in params:
        vals = df[col]
        if pd.api.types.is_integer_dtype(vals) or pd.api.types.is_bool_dtype(vals):
            dists[_pname(col)] = IntDistribution(int(vals.min()), int(vals.max()))
        else:
            dists[_pname(col)] = FloatDistribution(float(vals.min()), float(vals.max()))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(directions=["maximize" if f else "minimize" for f in flags])
    for _, row in df.iterrows():
        p = {_pname(c): (int(row[c]) if isinstance(dists[_pname(c)], IntDistribution) else float(row[c]))
             for c in params}
        values = [float(row[f]) for f in fitness]
        study.add_trial(optuna.trial.create_trial(values=values, params=p, distributions=dists))
    return study


def param_importances(trials: pd.DataFrame, *, fitness: str | None = None, evaluator: Any = None,
                      params: Sequence[str] | None = None) -> dict[str, float]:
    """Normalised importance of each varying parameter for ``fitness`` (fANOVA by default, seeded)."""
    import optuna
    from optuna.importance import FanovaImportanceEvaluator

    fitness = fitness or fitness_columns(trials)[0]
    study = trials_to_optuna(trials, fitness=[fitness], params=params)
    if len(study.trials) < 2 or not study.trials[0].params:
        return {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.importance.get_param_importances(
            study, evaluator=evaluator or FanovaImportanceEvaluator(seed=0))


@styled
def param_importance(trials: pd.DataFrame, *, fitness: Sequence[str] | None = None, evaluator: Any = None,
                     params: Sequence[str] | None = None, labels: Sequence[str] | None = None,
                     title: str | None = None) -> Figure:
    """Horizontal bars of each parameter's importance (optuna evaluator) per fitness objective."""
    fitness = list(fitness or fitness_columns(trials))
    imps = {f: param_importances(trials, fitness=f, evaluator=evaluator, params=params) for f in fitness}
    names = sorted({n for d in imps.values() for n in d}, key=lambda n: -max(d.get(n, 0) for d in imps.values()))
    fig = _figure((WIDTH_IN, 1.2 + 0.45 * max(len(names), 1) * max(len(fitness), 1) ** 0.5))
    ax = fig.subplots()
    if not names:
        return _empty(fig, ax, "not enough complete evaluations with varying parameters")
    y = np.arange(len(names))[::-1]
    h = 0.8 / len(fitness)
    for i, f in enumerate(fitness):
        vals = [imps[f].get(n, 0.0) for n in names]
        ax.barh(y + (len(fitness) - 1 - 2 * i) * h / 2, vals, height=h * 0.9, color=color_for("", i),
                label=labels[i] if labels is not None and i < len(labels) else f)
        for yy, v in zip(y + (len(fitness) - 1 - 2 * i) * h / 2, vals):
            ax.text(v, yy, f" {v:.2f}", va="center", fontsize=8)
    ax.set_yticks(y, names)
    ax.set_xlim(0, 1.08)
    ax.set_xlabel("importance (normalised, sums to 1)")
    ax.grid(axis="y", visible=False)
    _title(ax, title or "Parameter importance")
    kind = type(evaluator).__name__ if evaluator is not None else "FanovaImportanceEvaluator"
    _note(ax, f"optuna {kind}")
    if len(fitness) > 1:
        ax.legend(loc="lower right")
    return fig


@styled
def param_scatter(trials: pd.DataFrame, *, fitness: str | None = None, params: Sequence[str] | None = None,
                  maximize: bool = True, ylabel: str | None = None, title: str | None = None) -> Figure:
    """One panel per parameter: its value vs fitness over all complete evaluations, coloured by order."""
    fitness = fitness or fitness_columns(trials)[0]
    params = list(params or param_columns(trials, varying=True))
    ncols = max(len(params), 1) if len(params) <= 4 else 3
    nrows = max(1, math.ceil(len(params) / ncols))
    fig = _figure((WIDTH_IN, 0.8 + (2.6 if ncols == 4 else 2.3) * nrows))
    axes = np.atleast_1d(fig.subplots(nrows, ncols, sharey=True, squeeze=False)).ravel()
    df = _complete(trials, [fitness] + params)
    if not params or df.empty:
        return _empty(fig, axes[0], "no complete evaluations with varying parameters")
    order = df["generation"] if "generation" in df.columns and (df["generation"] >= 0).any() else df.get(
        "trial", pd.Series(np.arange(len(df)), index=df.index))
    sc = None
    from matplotlib.ticker import MaxNLocator
    y = df[fitness].to_numpy(dtype=float)
    rng = robust_range(y, maximize=maximize)
    for ax, col in zip(axes, params):
        sc = ax.scatter(df[col], df[fitness], c=order, cmap="viridis", s=16, alpha=0.8, linewidths=0)
        _off_scale(ax, df[col].to_numpy(dtype=float), y, rng, maximize)
        ax.set_xlabel(_pname(col))
        # narrow panels: few ticks, whole numbers for integer parameters
        ax.xaxis.set_major_locator(MaxNLocator(nbins=4, integer=pd.api.types.is_integer_dtype(df[col])))
    for ax in axes[len(params):]:
        ax.set_visible(False)
    for r in range(nrows):
        axes[r * ncols].set_ylabel(ylabel or fitness)
    if sc is not None:
        cb = fig.colorbar(sc, ax=list(axes[:len(params)]), pad=0.02, fraction=0.04)
        cb.locator = MaxNLocator(integer=True)
        cb.update_ticks()
        cb.set_label("generation" if "generation" in df.columns and (df["generation"] >= 0).any() else "trial")
    fig.suptitle(title or "Parameters vs fitness", fontweight="bold", fontsize=11)
    return fig


@styled
def parallel_coordinates(trials: pd.DataFrame, *, fitness: str | None = None, params: Sequence[str] | None = None,
                         maximize: bool = True, label: str | None = None, title: str | None = None) -> Figure:
    """Each evaluation a line across the parameter axes (scaled to [0, 1]) and fitness, coloured by fitness."""
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    fitness = fitness or fitness_columns(trials)[0]
    params = list(params or param_columns(trials, varying=True))
    fig = _figure((WIDTH_IN, HEIGHT_IN))
    ax = fig.subplots()
    df = _complete(trials, [fitness] + params)
    if not params or df.empty:
        return _empty(fig, ax, "no complete evaluations with varying parameters")
    cols = params + [fitness]
    data = df[cols].to_numpy(dtype=float, copy=True)   # pandas may hand out a read-only view
    rng = robust_range(data[:, -1], maximize=maximize)
    if rng is not None:  # far-off penalised values would squash every other line onto one end
        data[:, -1] = np.clip(data[:, -1], *rng)
    lo, hi = data.min(axis=0), data.max(axis=0)
    scaled = (data - lo) / np.where(hi > lo, hi - lo, 1.0)
    norm = Normalize(lo[-1], hi[-1] if hi[-1] > lo[-1] else lo[-1] + 1)
    cmap = colormaps["viridis" if maximize else "viridis_r"]
    order = np.argsort(data[:, -1] if maximize else -data[:, -1])  # best drawn last, on top
    xs = np.arange(len(cols))
    for i in order:
        ax.plot(xs, scaled[i], color=cmap(norm(data[i, -1])), alpha=0.55, lw=1.0)
    best = order[-1]
    ax.plot(xs, scaled[best], color="#D55E00", lw=2.6, label="best")  # legend would crowd: the note says it
    for j, x in enumerate(xs.tolist()):
        ax.axvline(x, color="#444444", lw=0.8)
        clipped = j == len(cols) - 1 and rng is not None
        ax.text(x, -0.04, ("\u2264" if clipped and maximize else "") + _fmt(lo[j]), ha="center", va="top", fontsize=8)
        ax.text(x, 1.04, ("\u2265" if clipped and not maximize else "") + _fmt(hi[j]), ha="center", va="bottom",
                fontsize=8)
    ax.set_xticks(xs, [_pname(c) for c in params] + [label or fitness])
    ax.tick_params(axis="x", pad=16)
    ax.set_yticks([])
    ax.set_ylim(-0.12, 1.12)
    ax.grid(False)
    ax.spines[["left", "bottom"]].set_visible(False)
    cb = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, pad=0.02)
    cb.set_label(label or fitness)
    ax.set_title(title or "Parallel coordinates", loc="left", pad=18)
    _note(ax, f"{len(df)} complete evaluations; best in orange")
    return fig


def _fmt(v: float) -> str:
    return f"{v:.3g}" if abs(v) < 1e4 else f"{v:.2e}"
