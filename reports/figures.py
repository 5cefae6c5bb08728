"""Which figures a study's report has, in order, with their captions (the drawing is in reports.plots)."""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from qsfl.errors import ConfigError
from qsfl.history import History
from reports import grid, plots
from reports.plots import BETTER
from reports.study import Study

log = logging.getLogger(__name__)

CLIENTS_FILE = "clients.csv"


@dataclass
class FigureEntry:
    """One figure of the report: file stem, caption, the Figure itself and its section."""

    name: str
    caption: str
    figure: Figure
    section: str


def _target(study: Study) -> float | None:
    for runs in study.compare_runs.values():
        return float(runs[0].target_accuracy)
    try:
        return study.results.base_config().target_accuracy
    except ConfigError:
        return None


def _seeds_text(runs: dict[str, list[History]], source: str) -> str:
    several = any(len(v) > 1 for v in runs.values())
    return f"{source}, mean \u00b1 std over seeds" if several else f"{source}, one seed"


def _full_rounds_note(study: Study) -> str:
    """What the trials figures show when the study has lower-rung rows: the full-rounds rows only."""
    r = study.results
    if not r.rung_rows:
        return ""
    return (f" Evaluations at the full {r.full_rounds} rounds only ({len(r.trials)} of {len(r.all_trials)} rows; "
            "lower [fidelity] rungs left out).")


def _search_figures(study: Study, add: Callable[..., None]) -> None:
    r = study.results
    trials, fcols, maximize = r.trials, r.fitness_columns, r.maximize
    note = _full_rounds_note(study)
    plain_add = add

    def noted(name: str, section: str, caption: str, *args: Any, **kwargs: Any) -> None:
        plain_add(name, section, caption + note if not name.startswith("ga_fitness") else caption, *args, **kwargs)
    add = noted
    labels = [r.objective_label(j) for j in range(len(fcols))]
    search = "Search"
    if r.logbook is not None and len(r.logbook):
        for j in range(max(len(fcols), 1)):
            label = labels[j] if j < len(labels) else "fitness"
            up = maximize[j] if j < len(maximize) else True
            add(f"ga_fitness_{j}", search, f"GA: min, mean \u00b1 std and max of the fitness ({label}) in each "
                f"generation's population (logbook.csv); {BETTER[up].split(' ', 1)[1]}.",
                functools.partial(plots.ga_fitness, r.logbook, objective=j, ylabel=label, maximize=up,
                                  title="GA fitness per generation" + (f" ({label})" if len(fcols) > 1 else "")))
    for j, f in enumerate(fcols):
        add(f"optimization_history_{j}", search, f"Every evaluation's {labels[j]} in order, and the best so far "
            f"({BETTER[maximize[j]].split(' ', 1)[1]}).",
            functools.partial(plots.optimization_history, trials, fitness=f, maximize=maximize[j], ylabel=labels[j],
                              title=f"Optimisation history ({labels[j]})"))
    if len(fcols) == 2:
        add("objective_front", search, f"The two objectives of every complete evaluation: {labels[0]} "
            f"({r.directions[0]}) against {labels[1]} ({r.directions[1]}); the non-dominated ones joined.",
            functools.partial(plots.pareto_front, trials, x=fcols[1], y=fcols[0], minimize_x=not maximize[1],
                              maximize_y=maximize[0], xlabel=labels[1], ylabel=labels[0],
                              title="Pareto front of the objectives"))
    if {"metric_uplink_mb", "metric_final_accuracy"} <= set(trials.columns):
        marks = {}
        if r.baseline and {"uplink_mb", "final_accuracy"} <= set(r.baseline.get("metrics", {})):
            m = r.baseline["metrics"]
            marks[f"{r.strategy}-default"] = (float(m["uplink_mb"]), float(m["final_accuracy"]))
        add("pareto_front", search, "Final accuracy vs uplink MB of every complete evaluation: non-dominated "
            "configurations joined, dominated ones faint" + (f"; the star is the {r.defaults_name}."
                                                             if marks else "."),
            lambda: plots.pareto_front(trials, marks=marks, title="Accuracy vs uplink: Pareto front"))
    params = "Parameters"
    if [c for c in r.param_columns if trials[c].dropna().nunique() > 1] and fcols:
        add("param_importance", params, "How much of the fitness variance each parameter explains "
            "(optuna's fANOVA on the evaluated configurations).",
            lambda: plots.param_importance(trials, fitness=fcols, labels=labels))
        add("param_scatter", params, f"Each parameter against {labels[0]}, coloured by generation/trial "
            f"({BETTER[maximize[0]].split(' ', 1)[1]}).",
            lambda: plots.param_scatter(trials, fitness=fcols[0], maximize=maximize[0], ylabel=labels[0]))
        add("parallel_coordinates", params, "Every evaluation across the parameter ranges, coloured by "
            f"{labels[0]}; the best in orange.",
            lambda: plots.parallel_coordinates(trials, fitness=fcols[0], maximize=maximize[0], label=labels[0]))


def _run_figures(study: Study, add: Callable[..., None]) -> None:
    target = _target(study)
    strategy = study.results.strategy if getattr(study, "results", None) is not None else "qsfl"
    names = {"best": "best", "baseline": f"{strategy}-default"}  # tuning's histories/ keys -> plot labels
    ordered = sorted(study.histories.items(), key=lambda kv: (kv[0] != "best", kv[0]))  # best first
    runs = study.compare_runs or {names.get(k, k): [h] for k, h in ordered}
    conv = "Convergence and communication"
    if runs:
        src = _seeds_text(runs, "qsfl compare" if study.compare_runs else "saved histories of the study")
        add("convergence_uplink", conv, f"Test accuracy vs cumulative uplink MB, log scale ({src}).",
            lambda: plots.accuracy_vs_uplink(runs, log_x=True, target=target))
        add("convergence_round", conv, f"Test accuracy per round, rounds numbered from 1 ({src}).",
            lambda: plots.accuracy_vs_round(runs, target=target))
        histories = [h for v in runs.values() for h in v]
        if all("cum_downlink_bytes" in h.df for h in histories):
            add("convergence_total", conv, f"Test accuracy vs cumulative uplink + downlink MB, log scale ({src}).",
                lambda: plots.accuracy_vs_total_bytes(runs, log_x=True, target=target))
        if all("cum_time_s" in h.df and h.df["cum_time_s"].notna().all() and len(h.df) for h in histories):
            add("convergence_time", conv, f"Test accuracy vs simulated time: download + local training + upload, "
                f"each round as long as its slowest client (the runs' [system] device model; {src}).",
                lambda: plots.accuracy_vs_time(runs, target=target))
        add("uplink_composition", conv, "Total uplink per configuration split into QJ metadata, values, "
            "indices and headers.", lambda: plots.uplink_composition(runs))
    if study.compare is not None:
        tables: dict[str, list[pd.DataFrame]] = {}
        for label in study.compare.labels:
            paths = study.compare.runs.loc[study.compare.runs["label"] == label, "path"] \
                if "path" in study.compare.runs.columns else []
            frames = [pd.read_csv(Path(p) / CLIENTS_FILE) for p in paths if (Path(p) / CLIENTS_FILE).is_file()]
            if frames:
                tables[label] = frames
        if tables:
            add("client_accuracy", "Per-client fairness", "Accuracy of the final global model on each client's own "
                "label distribution (qsfl.fairness), one box per configuration over all clients"
                + (" and seeds." if len(study.compare.seeds) > 1 else "."),
                lambda: plots.client_accuracy(tables))
    if runs:
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


def _grid_figures(study: Study, add: Callable[..., None]) -> None:
    """A grid study: each metric against each numeric factor (a line per arm, 95 % band over seeds), then the
    accuracy-vs-uplink curves of every level of each factor."""
    r = study.results
    target = _target(study)
    seeds = len(r.spec_seeds()[0])
    for factor in grid.numeric_factors(r):
        for metric, label, bounds in grid.GRID_METRICS:
            summary = grid.level_summary(r, factor, metric, bounds=bounds)
            if summary.empty or not summary["n"].any():
                continue
            means = summary["mean"].dropna()
            log_y = bool(len(means) and means.min() > 0 and means.max() / means.min() > 30)
            undefined = " Seeds where it is undefined (target not reached) are left out; the table says how many " \
                        "remain." if metric in ("rounds_to_target", "slowdown") else ""
            add(f"grid_{metric}_vs_{_stem(factor)}", f"Metrics against {factor}",
                f"{label[0].upper() + label[1:]} against {factor}: the mean over {seeds} seeds per arm, with its "
                f"95 % confidence interval (Student t) as a band.{undefined}",
                functools.partial(plots.grid_metric, summary, xlabel=factor, ylabel=label, log_y=log_y,
                                  title=f"{label[0].upper() + label[1:]} vs {factor}"))
    for factor, _ in grid.factors(r):
        if factor == grid.ARM:
            continue
        for level, runs in grid.level_curves(r, factor).items():
            add(f"grid_uplink_{_stem(factor)}_{_stem(str(level))}", f"Accuracy vs uplink per {factor}",
                f"Test accuracy against cumulative uplink MB (log scale) at {factor} = {level}: the mean over "
                f"{seeds} seeds per round, ± std band.",
                functools.partial(plots.accuracy_vs_uplink, runs, log_x=True, target=target,
                                  title=f"Accuracy vs uplink, {factor} = {level}"))


def _stem(text: str) -> str:
    """A file-name-safe part of a figure name."""
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")


def study_figures(study: Study) -> list[FigureEntry]:
    """All figures the study's data supports, in report order (a figure that fails is logged and skipped)."""
    entries: list[FigureEntry] = []

    def add(name: str, section: str, caption: str, build: Callable[[], Figure]) -> None:
        try:
            entries.append(FigureEntry(name, caption, build(), section))
        except Exception as exc:  # noqa: BLE001 - a broken figure must not cost the user the rest of the report
            log.warning("figure %s skipped: %s: %s", name, type(exc).__name__, exc)

    if study.results.is_grid:
        _grid_figures(study, add)
        return entries
    _search_figures(study, add)
    _run_figures(study, add)
    return entries
