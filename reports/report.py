"""Read a study's output directory and write one self-contained report.html plus report.md.

The HTML embeds every figure as a base64 PNG and carries its own CSS: it opens offline, from an
e-mail attachment or a CI artifact, and reads without sideways scrolling (one column, wrapping tables).
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import html
import io
import logging
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from qsfl.config import SimConfig, dump_toml, load_toml
from qsfl.errors import ConfigError
from qsfl.history import History
from qsfl.io import atomic_write_text
from reports import plots
from reports.style import DPI

log = logging.getLogger(__name__)

TRIALS_FILES = ("trials.parquet", "trials.csv")
REQUIRED = ("spec.toml",)


# ----- reading a study directory -------------------------------------------------------------------
@dataclass
class Study:
    """Everything a study wrote under its output directory (missing optional parts are empty)."""

    out_dir: Path
    spec: dict[str, Any]
    trials: pd.DataFrame
    logbook: pd.DataFrame | None = None
    best: list[dict[str, Any]] = field(default_factory=list)
    baseline: dict[str, Any] | None = None
    histories: dict[str, History] = field(default_factory=dict)
    compare: pd.DataFrame | None = None
    compare_runs: dict[str, list[History]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The study name from the spec, else the directory name."""
        study = self.spec.get("study")
        name = study.get("name") if isinstance(study, dict) else None
        return str(self.spec.get("name") or name or self.out_dir.name)

    @property
    def engine(self) -> str:
        """``ga`` or ``optuna`` (from the trials table, else the spec)."""
        if "engine" in self.trials.columns and len(self.trials):
            return str(self.trials["engine"].iloc[0])
        study = self.spec.get("study")
        return str(study.get("engine", "ga")) if isinstance(study, dict) else "?"


def missing_files(out_dir: str | Path) -> list[str]:
    """Names of the files a study output must have that ``out_dir`` lacks."""
    d = Path(out_dir)
    missing = [f for f in REQUIRED if not (d / f).is_file()]
    if not any((d / f).is_file() for f in TRIALS_FILES):
        missing.append(" or ".join(TRIALS_FILES))
    return missing


def check_study_dir(out_dir: str | Path) -> Path:
    """Raise ConfigError naming the missing files unless ``out_dir`` is a study output directory."""
    d = Path(out_dir)
    if not d.is_dir():
        raise ConfigError(f"{d}: no such directory (expected the --out directory of `qsfl tune`)")
    missing = missing_files(d)
    if missing:
        raise ConfigError(f"{d}: not a study output directory; missing {', '.join(missing)}")
    return d


def read_trials(out_dir: str | Path) -> pd.DataFrame:
    """The trials table (parquet preferred, CSV otherwise)."""
    d = Path(out_dir)
    if (d / "trials.parquet").is_file():
        return pd.read_parquet(d / "trials.parquet")
    if (d / "trials.csv").is_file():
        return pd.read_csv(d / "trials.csv", keep_default_na=False, na_values=[""])
    raise ConfigError(f"{d}: missing {' or '.join(TRIALS_FILES)}")


def read_best(out_dir: str | Path) -> list[dict[str, Any]]:
    """The ``[[best]]`` entries of best.toml (best first), or [] when the study has not written it yet."""
    path = Path(out_dir) / "best.toml"
    if not path.is_file():
        return []
    best = load_toml(path).get("best", [])
    if not isinstance(best, list):
        raise ConfigError(f"{path}: expected [[best]] tables")
    return best


def read_baseline(out_dir: str | Path) -> dict[str, Any] | None:
    """baseline.toml (the authors' defaults on the study's budget) or None."""
    path = Path(out_dir) / "baseline.toml"
    return load_toml(path) if path.is_file() else None


def load_histories(root: str | Path) -> dict[str, History]:
    """Every History directory directly under ``root`` by directory name (unreadable ones skipped)."""
    out: dict[str, History] = {}
    root = Path(root)
    if not root.is_dir():
        return out
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        try:
            out[d.name] = History.load(d)
        except (ConfigError, OSError, ValueError, KeyError) as exc:
            log.warning("skipping %s: %s", d, exc)
    return out


def load_compare_runs(out_dir: str | Path, labels: Sequence[str] | None = None) -> dict[str, list[History]]:
    """Histories of ``qsfl compare``: OUT/compare/<label>/seed<k>/, ordered as ``labels`` (or by name)."""
    root = Path(out_dir) / "compare"
    if not root.is_dir():
        return {}
    names = list(labels) if labels is not None else sorted(p.name for p in root.iterdir() if p.is_dir())
    runs: dict[str, list[History]] = {}
    for label in names:
        seeds = load_histories(root / label)
        if seeds:
            runs[label] = [seeds[k] for k in sorted(seeds, key=_seed_key)]
    return runs


def _seed_key(name: str) -> tuple[int, str]:
    m = re.fullmatch(r"seed(\d+)", name)
    return (int(m.group(1)) if m else 1 << 62, name)


def load_study(out_dir: str | Path) -> Study:
    """Read a study output directory; ConfigError naming the missing files if it is not one."""
    d = check_study_dir(out_dir)
    spec = load_toml(d / "spec.toml")
    logbook = pd.read_csv(d / "logbook.csv") if (d / "logbook.csv").is_file() else None
    compare = pd.read_csv(d / "compare.csv") if (d / "compare.csv").is_file() else None
    labels = list(compare["label"]) if compare is not None and "label" in compare.columns else None
    runs = load_compare_runs(d, labels)
    if compare is not None and "seeds" in compare.columns:  # older runs of other seeds may lie there too
        seeds = {str(r["label"]): {int(s) for s in str(r["seeds"]).split(",") if s.strip().isdigit()}
                 for _, r in compare.iterrows()}
        runs = {k: [h for h in v if int(h.config.get("seed", -1)) in seeds.get(k, set())] for k, v in runs.items()}
        runs = {k: v for k, v in runs.items() if v}
    return Study(out_dir=d, spec=spec, trials=_with_derived(read_trials(d)), logbook=logbook, best=read_best(d),
                 baseline=read_baseline(d), histories=load_histories(d / "histories"), compare=compare,
                 compare_runs=runs)


# ----- what the spec says ------------------------------------------------------------------------
_MINIMISED = ("uplink", "bytes", "rounds_to_target", "loss", "mb", "fraction", "violation")


def spec_base(spec: dict[str, Any]) -> SimConfig:
    """The study's base SimConfig from spec.toml's [base], parsed exactly as tuning.spec does."""
    from tuning.spec import parse_base

    if not isinstance(spec.get("base"), dict):
        raise ConfigError("spec.toml: no [base] table")
    try:
        return parse_base(spec["base"])
    except ConfigError as exc:
        raise ConfigError(f"spec.toml: {exc}") from None


def spec_objective(spec: dict[str, Any]) -> Any:
    """tuning's Objective of the spec, or None when tuning is unavailable or the table is not its format."""
    try:
        from tuning.objective import build_objective
    except ImportError:
        return None
    try:
        return build_objective(spec.get("objective"))
    except (ConfigError, TypeError, ValueError):
        return None


def objective_directions(spec: dict[str, Any], n: int) -> list[bool]:
    """``maximize`` flag per fitness column, from the spec's [objective] (maximise when it does not say)."""
    objective = spec_objective(spec)
    if objective is not None:
        found = [d == "maximize" for d in objective.directions]
    else:
        table = spec.get("objective", {})
        table = table if isinstance(table, dict) else {}
        items = table.get("objectives") or [table.get("formula", "")]
        if "directions" in table:
            found = [str(d).lower().startswith("max") for d in table["directions"]]
        elif "direction" in table:
            found = [str(table["direction"]).lower().startswith("max")] * len(items)
        else:
            found = [not any(m in str(it) for m in _MINIMISED) for it in items]
    return (found + [True] * n)[:n]


def objective_text(spec: dict[str, Any]) -> str:
    """'maximize final_accuracy - 0.05 * uplink_fraction' (several objectives joined by '; ')."""
    objective = spec_objective(spec)
    if objective is not None:
        return "; ".join(objective.describe())
    table = spec.get("objective", {})
    return ", ".join(f"{k} = {v}" for k, v in table.items()) if isinstance(table, dict) else ""


def objective_labels(spec: dict[str, Any], fitness_cols: Sequence[str]) -> list[str]:
    """Axis labels of the fitness columns: the objective's formula where it is short, else the column name."""
    objective = spec_objective(spec)
    texts = [f.text for f in objective.formulas] if objective is not None else []
    out = []
    for i, col in enumerate(fitness_cols):
        text = texts[i] if i < len(texts) else ""
        out.append(text if text and len(text) <= 24 else col)
    return out


def spec_seeds(spec: dict[str, Any]) -> tuple[list[int], list[int]]:
    """(search seeds, re-evaluation seeds) declared in the spec's [study] (tuning's defaults: [0], [100, 101, 102])."""
    study = spec.get("study", {}) if isinstance(spec.get("study"), dict) else {}
    return list(study.get("seeds", [0])), list(study.get("eval_seeds", [100, 101, 102]))


# ----- formatting helpers --------------------------------------------------------------------------
def fmt_num(v: Any, digits: int = 4) -> str:
    """A table cell: ints as ints, floats to ``digits`` significant digits, missing as an en dash."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "\u2013"
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v)).lower()
    if isinstance(v, (int, np.integer)):
        return f"{int(v):,}" if abs(int(v)) >= 10000 else str(int(v))
    if isinstance(v, (float, np.floating)):
        if math.isinf(v):
            return "\u221e"
        return f"{v:.{digits}g}"
    return str(v)


def format_duration(seconds: float) -> str:
    """3725 -> '1 h 2 min 5 s'."""
    if not math.isfinite(seconds):
        return "\u2013"
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    parts = [f"{h} h"] * bool(h) + [f"{m} min"] * bool(m) + [f"{sec} s"]
    return " ".join(parts) if s else f"{seconds:.2f} s"


def study_timing(trials: pd.DataFrame) -> dict[str, Any]:
    """Compute time (sum of evaluation durations) and wall-clock span (first start to last finish)."""
    out: dict[str, Any] = {"evaluations": len(trials), "compute_s": math.nan, "wall_s": math.nan,
                           "started": None, "finished": None}
    if "duration_s" in trials.columns:
        out["compute_s"] = float(pd.to_numeric(trials["duration_s"], errors="coerce").sum())
    if "finished_at" in trials.columns and len(trials):
        ts = pd.to_datetime(trials["finished_at"], errors="coerce", utc=True)
        dur = pd.to_timedelta(pd.to_numeric(trials.get("duration_s", 0), errors="coerce").fillna(0), unit="s")
        starts = ts - dur
        if ts.notna().any():
            out["started"], out["finished"] = starts.min(), ts.max()
            out["wall_s"] = float((ts.max() - starts.min()).total_seconds())
    if "state" in trials.columns:
        out.update({f"n_{k}": int(v) for k, v in trials["state"].value_counts().items()})
    return out


def complete_rows(trials: pd.DataFrame) -> pd.DataFrame:
    """Rows with state ``complete`` (all rows when the table has no state column)."""
    return trials[trials["state"] == "complete"] if "state" in trials.columns else trials


def _params_text(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={fmt_num(v)}" for k, v in params.items())


def match_trial(trials: pd.DataFrame, params: dict[str, Any]) -> pd.Series | None:
    """The complete trials row whose ``param_*`` values equal ``params`` (floats within 1e-9), or None."""
    df = complete_rows(trials)
    mask = np.ones(len(df), dtype=bool)
    for k, v in params.items():
        col = f"param_{k}"
        if col not in df.columns:
            return None
        mask &= np.isclose(pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=float), float(v),
                           rtol=1e-9, atol=1e-12)
    return df[mask].iloc[0] if mask.any() else None


METRIC_COLUMNS = (("metric_final_accuracy", "final acc."), ("metric_uplink_mb", "uplink MB"),
                  ("metric_compression_ratio", "compression"), ("metric_rounds_to_target", "rounds to target"),
                  ("metric_uplink_mb_to_target", "MB to target"))


def _with_derived(trials: pd.DataFrame) -> pd.DataFrame:
    """Add metric_uplink_mb_to_target (the bytes-at-equal-accuracy number) when only bytes are there."""
    if "metric_uplink_bytes_to_target" in trials.columns and "metric_uplink_mb_to_target" not in trials.columns:
        trials = trials.assign(metric_uplink_mb_to_target=pd.to_numeric(
            trials["metric_uplink_bytes_to_target"], errors="coerce") / 1e6)
    return trials


def _metric(metrics: dict[str, Any], name: str) -> Any:
    """A metric from a best.toml/baseline.toml ``metrics`` table (MB to target derived from bytes)."""
    if name == "uplink_mb_to_target" and name not in metrics and metrics.get("uplink_bytes_to_target") is not None:
        return float(metrics["uplink_bytes_to_target"]) / 1e6
    return metrics.get(name)


def best_table(study: Study, limit: int = 10) -> pd.DataFrame:
    """Best configs (best.toml, else the top trials) with params, fitness and the trials' metrics."""
    rows = []
    entries = study.best[:limit]
    if not entries:
        fcols = plots.fitness_columns(study.trials)
        if fcols:
            maximize = objective_directions(study.spec, len(fcols))[0]
            done = complete_rows(study.trials)
            top = done.sort_values(fcols[0], ascending=not maximize).drop_duplicates(
                plots.param_columns(done)).head(min(limit, 5))
            entries = [{"params": {c[6:]: r[c] for c in plots.param_columns(done)},
                        "fitness": [r[f] for f in fcols]} for _, r in top.iterrows()]
    for rank, entry in enumerate(entries, 1):
        params = dict(entry.get("params", {}))
        fitness = entry.get("fitness", [])
        fitness = fitness if isinstance(fitness, list) else [fitness]
        row: dict[str, Any] = {"rank": rank, "params": _params_text(params),
                               "fitness": ", ".join(fmt_num(f) for f in fitness)}
        match = match_trial(study.trials, params) if params else None
        for col, name in METRIC_COLUMNS:
            row[name] = match[col] if match is not None and col in match.index else _metric(
                entry.get("metrics", {}), col.removeprefix("metric_"))
        rows.append(row)
    if study.baseline:
        metrics = study.baseline.get("metrics", {})
        fitness = study.baseline.get("fitness", [])
        fitness = fitness if isinstance(fitness, list) else [fitness]
        rows.append({"rank": "authors' defaults", "params": _params_text(study.baseline.get("params", {})),
                     "fitness": ", ".join(fmt_num(f) for f in fitness),
                     **{name: _metric(metrics, col.removeprefix("metric_")) for col, name in METRIC_COLUMNS}})
    return pd.DataFrame(rows)


def compare_display(compare: pd.DataFrame) -> pd.DataFrame:
    """compare.csv as the mean +- std cells a reader wants."""
    from reports.compare import display_table
    return display_table(compare)


# ----- figures -------------------------------------------------------------------------------------
@dataclass
class FigureEntry:
    """One figure of the report: file stem, caption and the Figure itself."""

    name: str
    caption: str
    figure: Figure
    section: str


def study_figures(study: Study) -> list[FigureEntry]:
    """All figures the study's data supports, in report order (a figure that fails is logged and skipped)."""
    entries: list[FigureEntry] = []
    trials = study.trials
    fcols = plots.fitness_columns(trials)
    maximize = objective_directions(study.spec, len(fcols))
    ylabels = objective_labels(study.spec, fcols)
    target = _target(study)

    def add(name: str, section: str, caption: str, build: Callable[[], Figure]) -> None:
        try:
            entries.append(FigureEntry(name, caption, build(), section))
        except Exception as exc:  # noqa: BLE001 - a broken figure must not cost the user the rest of the report
            log.warning("figure %s skipped: %s: %s", name, type(exc).__name__, exc)

    search = "Search"
    if study.logbook is not None and len(study.logbook):
        for j in range(max(len(fcols), 1)):
            label = fcols[j] if j < len(fcols) else "fitness"
            ylabel = ylabels[j] if j < len(ylabels) else label
            add(f"ga_fitness_{j}", search, f"GA: min, mean \u00b1 std and max of {label} in each generation's "
                "population (logbook.csv).", functools.partial(
                    plots.ga_fitness, study.logbook, objective=j, ylabel=ylabel,
                    maximize=maximize[j] if j < len(maximize) else True,
                    title="GA fitness per generation" + (f" ({label})" if len(fcols) > 1 else "")))
    for j, f in enumerate(fcols):
        add(f"optimization_history_{j}", search, f"Every evaluation's {f} in order, and the best so far "
            f"({'higher' if maximize[j] else 'lower'} is better).",
            functools.partial(plots.optimization_history, trials, fitness=f, maximize=maximize[j], ylabel=ylabels[j],
                              title=f"Optimisation history ({f})"))
    if {"metric_uplink_mb", "metric_final_accuracy"} <= set(trials.columns):
        marks = {}
        if study.baseline and {"uplink_mb", "final_accuracy"} <= set(study.baseline.get("metrics", {})):
            m = study.baseline["metrics"]
            marks["qsfl-default"] = (float(m["uplink_mb"]), float(m["final_accuracy"]))
        add("pareto_front", search, "Final accuracy vs uplink MB of every complete evaluation: non-dominated "
            "configurations joined, dominated ones faint" + ("; the star is QSFL with the authors' defaults."
                                                             if marks else "."),
            lambda: plots.pareto_front(trials, marks=marks, title="Accuracy vs uplink: Pareto front"))
    params = "Parameters"
    if plots.param_columns(trials, varying=True) and fcols:
        add("param_importance", params, "How much of the fitness variance each parameter explains "
            "(optuna's fANOVA on the evaluated configurations).",
            lambda: plots.param_importance(trials, fitness=fcols))
        add("param_scatter", params, f"Each parameter against {fcols[0]}, coloured by generation/trial.",
            lambda: plots.param_scatter(trials, fitness=fcols[0], maximize=maximize[0], ylabel=ylabels[0]))
        add("parallel_coordinates", params, "Every evaluation across the parameter ranges, coloured by "
            f"{fcols[0]}; the best in orange.",
            lambda: plots.parallel_coordinates(trials, fitness=fcols[0], maximize=maximize[0]))

    names = {"best": "best", "baseline": "qsfl-default"}  # tuning's histories/ keys -> plot labels
    ordered = sorted(study.histories.items(), key=lambda kv: (kv[0] != "best", kv[0]))  # best first
    runs = study.compare_runs or {names.get(k, k): [h] for k, h in ordered}
    conv = "Convergence and communication"
    if runs:
        src = "qsfl compare, mean \u00b1 std over the comparison seeds" if study.compare_runs else \
            "saved histories of the study"
        add("convergence_uplink", conv, f"Test accuracy vs cumulative uplink MB, log scale ({src}).",
            lambda: plots.accuracy_vs_uplink(runs, log_x=True, target=target))
        add("convergence_round", conv, f"Test accuracy per round ({src}).",
            lambda: plots.accuracy_vs_round(runs, target=target))
        add("uplink_composition", conv, "Total uplink per configuration split into QJ metadata, values, "
            "indices and headers.", lambda: plots.uplink_composition(runs))
        label, first = next(iter(runs.items()))
        h = first[0]
        detail = f"Inside one run: {label}, seed {h.config.get('seed')}"
        add("uplink_breakdown", detail, "Uplink bytes of each round by kind.",
            lambda: plots.uplink_breakdown(h, title=f"Uplink bytes per round ({label})"))
        if h.df["qualified_clients"].map(len).sum():
            add("qj_selection", detail, "Which clients were sampled and which QJ qualified to upload, per "
                "round; right: each client's qualification rate.",
                lambda: plots.selection_heatmap(h, title=f"QJ selection per round ({label})"))
        if h.df["segment_coverage"].map(len).sum():
            add("segment_coverage", detail, "Number of qualified clients that sent each SCSS segment, per "
                "round; orange cells are segments nobody refreshed.",
                lambda: plots.coverage_heatmap(h, title=f"SCSS segment coverage ({label})"))
    return entries


def _target(study: Study) -> float | None:
    for runs in study.compare_runs.values():
        return float(runs[0].target_accuracy)
    try:
        return spec_base(study.spec).target_accuracy
    except ConfigError:
        return None


def figure_png(fig: Figure) -> bytes:
    """The figure as PNG bytes (150 dpi, tight, white)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight", facecolor="white")
    return buf.getvalue()


# ----- HTML ----------------------------------------------------------------------------------------
CSS = """
*{box-sizing:border-box}
body{margin:0;background:#f6f7f9;color:#1d2330;font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,
"Helvetica Neue",Arial,sans-serif}
main{max-width:980px;margin:0 auto;padding:24px 28px 48px;background:#fff;min-height:100vh}
h1{font-size:1.7em;margin:.2em 0 .1em}h2{font-size:1.3em;margin:1.8em 0 .5em;padding-bottom:.2em;
border-bottom:2px solid #e3e6eb}h3{font-size:1.05em;margin:1.4em 0 .4em}
.sub{color:#5a6275;margin:0 0 1em}
table{border-collapse:collapse;width:100%;margin:.6em 0 1em;font-size:.88em;table-layout:auto}
th,td{border:1px solid #dfe3e8;padding:5px 8px;text-align:left;vertical-align:top;overflow-wrap:break-word}
th{background:#f0f2f5;font-weight:600}td.n{text-align:right;font-variant-numeric:tabular-nums;
white-space:nowrap}tr:nth-child(even) td{background:#fafbfc}
table.wide{font-size:.8em}table.wide th,table.wide td{padding:4px 5px}table.wide td.n{white-space:normal}
pre{white-space:pre-wrap;overflow-wrap:anywhere;background:#f4f5f7;border:1px solid #e3e6eb;
border-radius:6px;padding:10px 12px;font-size:.82em;line-height:1.4}
figure{margin:1.2em 0 1.8em}figure img{display:block;width:100%;max-width:780px;height:auto;margin:0 auto}
figcaption{color:#5a6275;font-size:.88em;margin:.4em auto 0;max-width:780px}
dl.facts{display:grid;grid-template-columns:max-content 1fr;gap:2px 16px;margin:.4em 0 1em}
dl.facts dt{color:#5a6275}dl.facts dd{margin:0;overflow-wrap:anywhere}
.note{color:#5a6275;font-size:.88em}
nav ul{padding-left:1.2em;columns:2;margin:.3em 0}
@media (max-width:760px){main{padding:14px 12px 32px}table{font-size:.76em}th,td{padding:3px 4px}
td.n{white-space:normal}table.wide{font-size:.68em}nav ul{columns:1}
dl.facts{grid-template-columns:1fr}dl.facts dd{margin-bottom:4px}}
"""


_NUMERIC_TEXT = re.compile(r"^[-+]?[\d.,]+(e[-+]?\d+)?\S*( \u00b1 [\d.,]+\S*)?( \(\d+/\d+\))?$|^\u2013( \(\d+/\d+\))?$")


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


def _looks_numeric(v: Any) -> bool:
    """Numbers and 'mean \u00b1 std' strings: right-aligned, never broken across lines."""
    return _is_num(v) or (isinstance(v, str) and bool(_NUMERIC_TEXT.match(v)))


def html_table(df: pd.DataFrame) -> str:
    """An HTML table (escaped; numbers right-aligned)."""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    wide = ' class="wide"' if len(df.columns) > 9 else ""
    body = []
    for _, row in df.iterrows():
        cells = "".join(f'<td class="n">{html.escape(fmt_num(v))}</td>' if _looks_numeric(v)
                        else f"<td>{html.escape(fmt_num(v))}</td>" for v in row)
        body.append(f"<tr>{cells}</tr>")
    return f"<table{wide}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def md_table(df: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table (pipes escaped)."""
    def cell(v: Any) -> str:
        return fmt_num(v).replace("|", "\\|").replace("\n", " ")
    lines = ["| " + " | ".join(cell(c) for c in df.columns) + " |",
             "|" + "|".join("---:" if len(df) and all(_is_num(v) for v in df[c]) else "---"
                            for c in df.columns) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for _, row in df.iterrows()]
    return "\n".join(lines)


def _facts(study: Study) -> list[tuple[str, str]]:
    t = study_timing(study.trials)
    states = ", ".join(f"{t[k]} {k[2:]}" for k in ("n_complete", "n_pruned", "n_failed") if t.get(k))
    base = study.spec.get("base", {}) if isinstance(study.spec.get("base"), dict) else {}
    facts = [("study", study.name), ("engine", study.engine),
             ("evaluations", f"{t['evaluations']}" + (f" ({states})" if states else "")),
             ("took", f"{format_duration(t['wall_s'])} wall clock (first start to last finish), "
                      f"{format_duration(t['compute_s'])} of simulation time summed over evaluations")]
    if t["started"] is not None:
        facts.append(("ran", f"{t['started']:%Y-%m-%d %H:%M:%S} \u2013 {t['finished']:%Y-%m-%d %H:%M:%S} UTC"))
    objective = objective_text(study.spec)
    if objective:
        facts.append(("objective", objective))
    if base:
        keys = ("dataset", "model", "partition", "clients", "client_fraction", "rounds", "local_epochs", "lr",
                "target_accuracy")
        facts.append(("problem", ", ".join(f"{k}={base[k]}" for k in keys if k in base)))
        seeds, _ = spec_seeds(study.spec)
        facts.append(("search seeds", ", ".join(map(str, seeds))))
    if study.logbook is not None:
        facts.append(("generations", str(len(study.logbook))))
    facts.append(("directory", str(study.out_dir.resolve())))
    facts.append(("report written", f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M:%S} UTC"))
    return facts


def _top_trials(study: Study, n: int = 10) -> pd.DataFrame:
    trials = study.trials
    fcols = plots.fitness_columns(trials)
    if not fcols:
        return pd.DataFrame()
    maximize = objective_directions(study.spec, len(fcols))[0]
    done = complete_rows(trials)
    top = done.sort_values(fcols[0], ascending=not maximize).head(n)
    names = {"generation": "gen", "duration_s": "time (s)", **dict(METRIC_COLUMNS)}
    cols = [c for c in ("trial", "generation") if c in top.columns and (c != "generation" or study.engine == "ga")] \
        + plots.param_columns(top) + fcols \
        + [c for c, _ in METRIC_COLUMNS if c in top.columns] \
        + (["duration_s"] if "duration_s" in top.columns else [])
    out = top[cols].copy()
    out.columns = [names.get(c, c.removeprefix("param_").replace("_", " ")) for c in cols]
    return out


def build_html(study: Study, figures: Sequence[FigureEntry], pngs: dict[str, bytes]) -> str:
    """The report as one HTML string with inline CSS and base64 images."""
    e = html.escape
    parts = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
             f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
             f"<title>{e(study.name)} \u2013 QSFL tuning report</title><style>{CSS}</style></head><body><main>",
             f"<h1>{e(study.name)}</h1><p class=\"sub\">QSFL hyperparameter study report</p>"]
    sections = ["Summary", "Best configurations"] + ["Comparison with baselines"] * (study.compare is not None) + \
        list(dict.fromkeys(f.section for f in figures)) + ["Top evaluations", "Study spec"]
    parts.append("<nav><ul>" + "".join(f'<li><a href="#{_anchor(s)}">{e(s)}</a></li>' for s in sections)
                 + "</ul></nav>")
    parts.append(f'<h2 id="{_anchor("Summary")}">Summary</h2><dl class="facts">'
                 + "".join(f"<dt>{e(k)}</dt><dd>{e(v)}</dd>" for k, v in _facts(study)) + "</dl>")
    best = best_table(study)
    parts.append(f'<h2 id="{_anchor("Best configurations")}">Best configurations</h2>')
    parts.append(html_table(best) if len(best) else '<p class="note">No complete evaluation yet.</p>')
    parts.append('<p class="note">Metrics are the search\'s own (mean over its seeds); the comparison below '
                 "re-runs them on fresh seeds.</p>" if len(best) else "")
    if study.compare is not None:
        parts.append(f'<h2 id="{_anchor("Comparison with baselines")}">Comparison with baselines</h2>')
        parts.append(html_table(compare_display(study.compare)))
        parts.append(f'<p class="note">{e(_compare_note(study))}</p>')
    section = None
    for f in figures:
        if f.section != section:
            section = f.section
            parts.append(f'<h2 id="{_anchor(section)}">{e(section)}</h2>')
        b64 = base64.b64encode(pngs[f.name]).decode("ascii")
        parts.append(f'<figure><img alt="{e(f.caption)}" src="data:image/png;base64,{b64}">'
                     f"<figcaption>{e(f.caption)}</figcaption></figure>")
    top = _top_trials(study)
    parts.append(f'<h2 id="{_anchor("Top evaluations")}">Top evaluations</h2>')
    parts.append(html_table(top) if len(top) else '<p class="note">No complete evaluation yet.</p>')
    parts.append(f'<h2 id="{_anchor("Study spec")}">Study spec</h2><pre>{e(dump_toml(study.spec))}</pre>')
    parts.append("</main></body></html>")
    return "\n".join(parts)


def _anchor(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _compare_note(study: Study) -> str:
    c = study.compare
    seeds = sorted({int(h.config.get("seed", -1)) for runs in study.compare_runs.values() for h in runs})
    note = "Mean \u00b1 sample std over seeds " + ", ".join(map(str, seeds)) + " (not used by the search)." \
        if seeds else "Mean \u00b1 std over seeds."
    if c is not None and "target_accuracy" in c.columns and len(c):
        note += (f" Rounds and uplink MB to target: mean over the seeds that reached accuracy "
                 f"{c['target_accuracy'].iloc[0]:g}; (reached/runs) counts them. Compression is vs FedAvg.")
    return note


def build_markdown(study: Study, figures: Sequence[FigureEntry]) -> str:
    """The report as Markdown, figures linked from figures/*.png."""
    lines = [f"# {study.name}", "", "QSFL hyperparameter study report", "", "## Summary", ""]
    lines += [f"- **{k}**: {v}" for k, v in _facts(study)]
    best = best_table(study)
    lines += ["", "## Best configurations", "", md_table(best) if len(best) else "No complete evaluation yet."]
    if study.compare is not None:
        lines += ["", "## Comparison with baselines", "", md_table(compare_display(study.compare)), "",
                  _compare_note(study)]
    section = None
    for f in figures:
        if f.section != section:
            section = f.section
            lines += ["", f"## {section}"]
        lines += ["", f"![{f.caption}](figures/{f.name}.png)", "", f"*{f.caption}*"]
    top = _top_trials(study)
    lines += ["", "## Top evaluations", "", md_table(top) if len(top) else "No complete evaluation yet."]
    lines += ["", "## Study spec", "", "```toml", dump_toml(study.spec).rstrip(), "```", ""]
    return "\n".join(lines)


def write_report(out_dir: str | Path, *, formats: Sequence[str] = ("png", "svg")) -> Path:
    """Write figures/*.png|svg, report.md and a self-contained report.html; return the HTML's path."""
    if "png" not in formats:
        raise ValueError(f"formats: {formats!r} must include 'png' (the HTML embeds it)")
    study = load_study(out_dir)
    figures = study_figures(study)
    fig_dir = study.out_dir / "figures"
    pngs: dict[str, bytes] = {}
    for f in figures:
        plots.save_figure(f.figure, fig_dir / f.name, formats)
        pngs[f.name] = (fig_dir / f"{f.name}.png").read_bytes()
    path = study.out_dir / "report.html"
    atomic_write_text(path, build_html(study, figures, pngs))
    atomic_write_text(study.out_dir / "report.md", build_markdown(study, figures))
    return path
