"""The report's tables: summary facts, best configurations (distinct simulations), top evaluations."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from qsfl.environment import describe
from reports.format import fmt_num, fmt_ratio, format_duration, params_text
from reports.study import Study, study_timing
from tuning.results import defaults_verdict, simulation_keys

# (metric name in tuning's METRICS, column title, scale): the metrics the report's tables show
METRIC_DISPLAY: tuple[tuple[str, str, float], ...] = (
    ("final_accuracy", "final acc.", 1.0), ("uplink_mb", "uplink MB", 1.0),
    ("compression_ratio", "compression", 1.0), ("rounds_to_target", "rounds to target", 1.0),
    ("uplink_bytes_to_target", "MB to target", 1e-6))


def _metric_cells(metrics: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, title, scale in METRIC_DISPLAY:
        v = metrics.get(name)
        v = None if v is None else float(v) * scale
        out[title] = fmt_ratio(v) if name == "compression_ratio" and v is not None else v
    return out


def match_trial(trials: pd.DataFrame, params: Mapping[str, Any], trial: Any = None) -> pd.Series | None:
    """The complete row of ``trials`` (pass the full-rounds view) of trial number ``trial`` when given and present,
    else the first whose ``param_*`` values equal ``params`` (floats within 1e-9), else None."""
    df = trials[trials["state"] == "complete"] if "state" in trials.columns else trials
    if trial is not None and "trial" in df.columns:
        hit = df[pd.to_numeric(df["trial"], errors="coerce") == int(trial)]
        if len(hit):
            return hit.iloc[0]
    mask = np.ones(len(df), dtype=bool)
    for k, v in params.items():
        col = f"param_{k}"
        if col not in df.columns:
            return None
        if isinstance(v, str):   # a categorical parameter (e.g. segmentation)
            mask &= (df[col].astype(str) == v).to_numpy()
            continue
        mask &= np.isclose(pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=float), float(v),
                           rtol=1e-9, atol=1e-12)
    return df[mask].iloc[0] if mask.any() else None


def _entries(study: Study, limit: int) -> list[dict[str, Any]]:
    """best.toml's entries, else the top complete trials (one per distinct simulation)."""
    r = study.results
    if r.best:
        return [dict(e) for e in r.best]
    fcols = r.fitness_columns
    if not fcols:
        return []
    done = r.complete()
    top = done.sort_values(fcols[0], ascending=not r.maximize[0], kind="stable").head(limit * 4)
    return [{"params": {c[len("param_"):]: v for c, v in row.items() if c.startswith("param_")},
             "fitness": [row[f] for f in fcols],
             "metrics": {c[len("metric_"):]: row[c] for c in row.index if c.startswith("metric_")}}
            for _, row in top.iterrows()]


def best_table(study: Study, limit: int = 10) -> pd.DataFrame:
    """Best configurations, one row per distinct simulation (params that simulate identically share a row),
    with fitness and metrics; then the strategy's defaults from baseline.toml."""
    r = study.results
    keys = simulation_keys(r.trials) if len(r.trials) else pd.Series(dtype=object)
    rows: list[dict[str, Any]] = []
    by_key: dict[str, dict[str, Any]] = {}
    for entry in _entries(study, limit):
        params = dict(entry.get("params", {}))
        match = match_trial(r.trials, params, entry.get("trial")) if params else None
        key = str(keys.loc[match.name]) if match is not None else f"entry-{len(rows)}"
        if key in by_key:  # another point of the same simulation: list its params, no new row
            by_key[key]["params"] += f"; same simulation: {params_text(params)}"
            continue
        if len(rows) == limit:
            continue
        fitness = entry.get("fitness", [])
        fitness = fitness if isinstance(fitness, list) else [fitness]
        metrics = {c[len("metric_"):]: match[c] for c in match.index if c.startswith("metric_")} \
            if match is not None else dict(entry.get("metrics", {}))
        row = {"rank": len(rows) + 1, "params": params_text(params),
               "search fitness": ", ".join(fmt_num(f) for f in fitness)}
        if r.validation:
            row["validation fitness"] = ", ".join(fmt_num(f) for f in entry.get("validation_fitness", []))
            row["validation seeds"] = len(entry.get("validation_seeds", r.validation.get("validation_seeds", [])))
            if entry.get("defaults"):
                row["rank"] = f"{len(rows) + 1} ({r.defaults_name})"
        row.update(_metric_cells(metrics))
        rows.append(row)
        by_key[key] = row
    if r.baseline and not any(e.get("defaults") for e in r.best):
        fitness = r.baseline.get("fitness", [])
        fitness = fitness if isinstance(fitness, list) else [fitness]
        row = {"rank": r.defaults_name, "params": params_text(r.baseline.get("params", {})),
               "search fitness": ", ".join(fmt_num(f) for f in fitness)}
        if r.validation:
            row["validation fitness"] = ", ".join(fmt_num(f) for f in r.validation.get("defaults_validation_fitness",
                                                                                       []))
            row["validation seeds"] = len(r.validation.get("defaults_validation_seeds",
                                                           r.validation.get("validation_seeds", [])))
        row.update(_metric_cells(r.baseline.get("metrics", {})))
        rows.append(row)
    return pd.DataFrame(rows)


def seeds_note(study: Study) -> str:
    """What the best table's numbers are: search seeds (one or the mean over several), validation seeds."""
    r = study.results
    seeds, _ = r.spec_seeds()
    if len(seeds) > 1:
        text = (f"Metrics and search fitness are the search's own (mean over its {len(seeds)} seeds "
                f"{', '.join(map(str, seeds))})")
    else:
        text = f"Metrics and search fitness are the search's own (seed {seeds[0] if seeds else 0})"
    if r.validation:
        vseeds = r.validation.get("validation_seeds", [])
        text += (f"; validation fitness is the same configuration re-simulated on seeds the search never used "
                 f"({', '.join(map(str, vseeds))}; a candidate that passed on the first ones was confirmed on the "
                 f"rest, and the column 'validation seeds' says on how many each row was), and ranks the table. "
                 f"{str(r.validation.get('verdict', '')).capitalize()}. The test seeds (study.eval_seeds) are "
                 "left for `qsfl compare`")
    return text


def top_trials(study: Study, n: int = 10) -> pd.DataFrame:
    """The ``n`` best complete rows of the trials table by the first objective."""
    r = study.results
    fcols = r.fitness_columns
    if not fcols:
        return pd.DataFrame()
    done = r.complete()
    top = done.sort_values(fcols[0], ascending=not r.maximize[0], kind="stable").head(n)
    cols = [c for c in ("trial", "generation") if c in top.columns and (c != "generation" or r.engine == "ga")]
    out = pd.DataFrame({("gen" if c == "generation" else c): top[c] for c in cols})
    for c in r.param_columns:
        out[c.removeprefix("param_")] = top[c]
    for j, f in enumerate(fcols):
        out[f if len(fcols) == 1 else f"{f}: {r.objective_label(j)}"] = top[f]
    for name, title, scale in METRIC_DISPLAY:
        if f"metric_{name}" in top.columns:
            vals = pd.to_numeric(top[f"metric_{name}"], errors="coerce") * scale
            out[title] = [fmt_ratio(v) for v in vals] if name == "compression_ratio" else vals
    if "duration_s" in top.columns:
        out["time (s)"] = top["duration_s"]
    return out.reset_index(drop=True)


def correlation_text(correlations: Mapping[int, tuple[float, int]], full: int | None) -> str:
    """How well each [fidelity] rung ranked points as the full run did, in words."""
    parts = []
    for rounds, (rho, pairs) in sorted(correlations.items()):
        value = f"Spearman {rho:.2f}" if rho == rho else "too few to tell"
        parts.append(f"{rounds} rounds vs {full}: {value} over {pairs} point{'s' if pairs != 1 else ''}")
    return "; ".join(parts) + " (points that reached both; low values move the budget to later rungs)"


def _versions(env: Mapping[str, Any]) -> str:
    keys = (("qsfl_tune", "qsfl-tune"), ("git_commit", "commit"), ("python", "Python"), ("torch", "torch"),
            ("numpy", "numpy"), ("optuna", "optuna"), ("deap", "deap"))
    return ", ".join(f"{label} {env[k]}" for k, label in keys if env.get(k))


def _hardware(env: Mapping[str, Any]) -> str:
    parts = [str(env.get("cpu", "")), f"{env['cpu_count']} CPUs" if env.get("cpu_count") else "",
             f"{env['memory_gb']} GB RAM" if env.get("memory_gb") else "",
             f"GPU {env['gpu']}" if env.get("gpu") else "", str(env.get("platform", ""))]
    return ", ".join(p for p in parts if p)


def facts(study: Study, now: dt.datetime | None = None) -> list[tuple[str, str]]:
    """The summary section: what ran, for how long, on what, with which versions."""
    r = study.results
    t = study_timing(r.all_trials)
    states = ", ".join(f"{t[k]} {k[2:]}" for k in ("n_complete", "n_pruned", "n_failed") if t.get(k))
    if r.rung_rows:
        states += (f"; {len(r.trials)} at the full {r.full_rounds} rounds, {r.rung_rows} at lower [fidelity] rungs "
                   f"({', '.join(map(str, sorted(set(int(x) for x in r.all_trials['rounds']) - {r.full_rounds})))} "
                   "rounds), which no table or figure about configurations shows")
    base = r.spec.get("base", {}) if isinstance(r.spec.get("base"), dict) else {}
    sessions = f"in {t['sessions']} sessions" if t["sessions"] > 1 else "in one session"
    out = [("study", r.name), ("engine", r.engine),
           ("evaluations", f"{t['evaluations']}" + (f" ({states})" if states else "")),
           ("took", f"{format_duration(t['wall_s'])} wall clock computing {sessions} (pauses between sessions "
                    f"left out), {format_duration(t['compute_s'])} of simulation summed over evaluations")]
    if t["started"] is not None:
        out.append(("ran", f"{t['started']:%Y-%m-%d %H:%M:%S} \u2013 {t['finished']:%Y-%m-%d %H:%M:%S} UTC"))
    if r.objectives:
        out.append(("objective", "; ".join(r.describe_objectives())))
    correlations = r.rung_correlations()
    if correlations:
        out.append(("rung ranking", correlation_text(correlations, r.full_rounds)))
    verdict = r.validation.get("verdict") if r.validation else defaults_verdict(r.best, r.baseline, r.directions)
    if verdict:
        out.append(("answer" if r.validation else "note", str(verdict)[0].upper() + str(verdict)[1:] + "."))
    if base:
        keys = ("dataset", "model", "partition", "clients", "client_fraction", "rounds", "local_epochs", "lr",
                "target_accuracy")
        out.append(("problem", ", ".join(f"{k}={base[k]}" for k in keys if k in base)))
        out.append(("seeds" if r.is_grid else "search seeds", ", ".join(map(str, r.spec_seeds()[0]))))
    if r.logbook is not None:
        out.append(("generations", str(len(r.logbook))))
    for i, session in enumerate(r.sessions, 1):
        env = session.get("environment", {})
        label = "tuned with" if len(r.sessions) == 1 else f"session {i}"
        out.append((label, f"{session.get('started', '?')}: {_versions(env)}; {_hardware(env)}"))
    env = describe()
    out.append(("report written", f"{(now or dt.datetime.now(dt.UTC)):%Y-%m-%d %H:%M:%S} UTC with "
                                  f"{_versions(env)}; {_hardware(env)}"))
    out.append(("directory", str(r.out_dir.resolve())))
    return out
