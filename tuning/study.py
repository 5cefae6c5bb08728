"""Run a study end to end: validation, output directory, baseline (the authors' defaults), the search loop
(:mod:`tuning.loop`) with any searcher, trials table, best.toml, summary.json, histories of the best and the
baseline (docs/study_output.md)."""

from __future__ import annotations

import json
import logging
import math
import platform
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from qsfl.config import dump_toml, load_toml
from qsfl.errors import ConfigError
from qsfl.io import atomic_write, atomic_write_text
from tuning.evaluate import Evaluator, Point
from tuning.loop import StudyLoop
from tuning.objective import SUMMARY_METRICS, Evaluation, dominates, params_id
from tuning.progress import LogSetup, Progress
from tuning.results import defaults_name
from tuning.search import SearchContext, Searcher, searchers
from tuning.space import baseline_overrides
from tuning.space import baseline_params as space_baseline_params
from tuning.spec import StudySpec, parse_spec
from tuning.storage import redact
from tuning.trials import TrialsTable, fitness_columns
from tuning.validate import check_resume, validate_study
from tuning.validation import Validated, ValidationResult, validate
from tuning.workers import SerialWorkers, Workers, make_workers

if TYPE_CHECKING:
    from qsfl.config import SimConfig
    from qsfl.history import History

log = logging.getLogger(__name__)

MARKERS = ("trials.parquet", "trials.csv", "trials.journal.jsonl", "checkpoint.pkl", "study.db")


@dataclass
class StudyResult:
    """What a finished study produced (also on disk under ``out_dir``)."""

    spec: StudySpec
    out_dir: Path
    best: list[dict[str, Any]]
    baseline: dict[str, Any] | None
    evaluations: int
    wall_time_s: float
    extra: dict[str, Any] = field(default_factory=dict)
    simulated_rounds: int = 0
    completed: int = 0
    new_evaluations: int = 0        # rows this session added (0 when --resume found the budget spent)
    rewritten: bool = True          # False: a --resume found a finished study and left its outputs alone

    @property
    def exit_code(self) -> int:
        """0, or 1 when the study has evaluations and none of them completed."""
        return 1 if self.evaluations and not self.completed else 0


# ----- output directory -----------------------------------------------------------------------------------
def prepare_out(spec: StudySpec, out_dir: Path, resume: bool) -> None:
    """Refuse to overwrite an earlier study unless resuming; write spec.toml (the spec as run)."""
    existing = [m for m in MARKERS if (out_dir / m).exists()]
    if existing and not resume:
        raise ConfigError(f"--out {out_dir}: already holds a study ({', '.join(existing)}); pass --resume to "
                          f"continue it or choose another --out")
    if resume and (out_dir / "spec.toml").is_file():
        try:
            old = parse_spec(load_toml(out_dir / "spec.toml"), default_name=spec.name)
        except ConfigError:
            old = None
        if old is not None and old.fingerprint != spec.fingerprint:
            raise ConfigError(f"--resume: the spec differs from {out_dir / 'spec.toml'} in more than the budget "
                              f"(ga.generations, optuna.n_trials, random.n_trials, study.time_budget_s); use the "
                              f"same spec or another --out")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--out: cannot create directory {str(out_dir)!r}: {exc.strerror or exc}") from None
    raw = dict(spec.raw)
    raw.setdefault("study", {})
    raw["study"] = {**raw["study"], "name": spec.name}
    text = redact(dump_toml(raw))   # optuna.storage's password stays out
    path = out_dir / "spec.toml"
    if not path.is_file() or path.read_text(encoding="utf-8") != text:   # a resume leaves an unchanged spec alone
        atomic_write_text(path, text)


# ----- the authors' defaults on the same budget --------------------------------------------------------------
def baseline_params(spec: StudySpec) -> dict[str, Any]:
    """The values the baseline simulates: the study strategy's own defaults (for QSFL the authors', K = ceil(alpha
    * C)) plus the base values of searched params that are not the strategy's."""
    return space_baseline_params(spec.base, spec.space)


def baseline_point(spec: StudySpec) -> Point:
    """The baseline as a point: the study strategy's own defaults on the base config (searched params that are
    not the strategy's keep the base values)."""
    return Point(baseline_params(spec), overrides=baseline_overrides(spec.base, spec.space))


def defaults_label(spec: StudySpec) -> str:
    """What the baseline is, in words: "QSFL with the authors' defaults", "topk with its own defaults"."""
    return type(spec.base.strategy).defaults_label()


def evaluate_baseline(spec: StudySpec, evaluator: Evaluator | None = None) -> dict[str, Any]:
    """Simulate the authors' defaults on the study's seeds and rounds; the baseline.toml content."""
    evaluator = evaluator or Evaluator(spec)
    (ev,) = evaluator.evaluate([baseline_point(spec)], spec.base.rounds)
    return baseline_dict(spec, ev)


def evaluate_on_seeds(spec: StudySpec, point: Point, seeds: Sequence[int], pool: Workers | None = None) -> Evaluation:
    """A point (repaired as the study would) at the study's full rounds on other seeds, e.g. the fresh
    ``study.eval_seeds``: mean/std metrics and fitness over those seeds."""
    import copy

    raw = copy.deepcopy(dict(spec.raw))
    raw["study"] = {**raw.get("study", {}), "seeds": list(seeds), "eval_seeds": []}
    raw.pop("fidelity", None)
    fresh = parse_spec(raw, default_name=spec.name)
    if point.overrides is None:
        fixed, repair, penalty = fresh.space.repair(point.params, fresh.base)
        point = Point(fixed, repair, penalty)
    (ev,) = Evaluator(fresh, pool).evaluate([point], fresh.base.rounds)
    return ev


def baseline_dict(spec: StudySpec, ev: Evaluation) -> dict[str, Any]:
    """baseline.toml content from an evaluation."""
    return {"study": spec.name, "description": f"{defaults_label(spec)} on the study's budget",
            "strategy": spec.base.strategy.name,
            "params": ev.params, "seeds": list(ev.seeds), "state": ev.state, "reason": ev.reason,
            "metrics": ev.metrics, "metrics_std": ev.metrics_std,
            "fitness": [float(f) if ev.ok else math.nan for f in ev.fitness],
            "objectives": spec.objective.describe(), "directions": list(spec.objective.directions),
            "simulated_rounds": ev.simulated_rounds}


# ----- best configs ---------------------------------------------------------------------------------
def _full_rounds(row: Mapping[str, Any], rounds: int) -> bool:
    value = row.get("rounds")
    return value is None or value == 0 or (isinstance(value, float) and math.isnan(value)) or int(value) == rounds


def best_entries(rows: Sequence[Mapping[str, Any]], spec: StudySpec, limit: int = 5) -> list[dict[str, Any]]:
    """The best complete evaluations at the study's full rounds, best first: top ``limit`` for one objective,
    the Pareto front for several. Points that simulate identically (same ``simulation`` key) count once."""
    cols = fitness_columns(spec.objective.n)
    signs = spec.objective.weights
    seen: dict[str, Mapping[str, Any]] = {}
    for r in rows:
        ident = str(r.get("simulation") or "") or r["individual"]
        if r.get("state") == "complete" and ident not in seen and _full_rounds(r, spec.base.rounds) and \
                all(isinstance(r[c], (int, float)) and math.isfinite(r[c]) for c in cols):
            seen[ident] = r
    cand = list(seen.values())
    key = lambda r: tuple(-s * r[c] for c, s in zip(cols, signs)) + (r["trial"],)
    if spec.objective.n == 1:
        chosen = sorted(cand, key=key)[:limit]
    else:
        fits = [[r[c] for c in cols] for r in cand]
        chosen = sorted([r for r, f in zip(cand, fits) if not any(dominates(o, f, signs) for o in fits)], key=key)
    out = []
    for r in chosen:
        out.append({"individual": r["individual"], "trial": int(r["trial"]), "generation": int(r["generation"]),
                    "params": {p: _plain(r[f"param_{p}"]) for p in spec.space.names},
                    "fitness": [float(r[c]) for c in cols],
                    "metrics": {k[len("metric_"):]: float(v) for k, v in r.items()
                                if k.startswith("metric_") and not k.endswith("_std")},
                    "repair": r.get("repair", "") or ""})
    return out


def _plain(v: Any) -> Any:
    return v.item() if hasattr(v, "item") else v


# ----- validation before the answer (tuning.validation) ----------------------------------------------------
def defaults_entry(spec: StudySpec, baseline: Mapping[str, Any]) -> dict[str, Any]:
    """The baseline as a best.toml entry (``defaults = true``), its search-seed fitness and metrics."""
    params = baseline_params(spec)
    return {"individual": params_id(params), "trial": -1, "generation": -1, "defaults": True, "params": params,
            "fitness": [float(f) for f in baseline.get("fitness", [])],
            "metrics": {k: float(v) for k, v in baseline.get("metrics", {}).items()}, "repair": ""}


def run_validation(spec: StudySpec, evaluator: Evaluator, candidates: Sequence[Mapping[str, Any]],
                   baseline: Mapping[str, Any]) -> ValidationResult:
    """Re-simulate ``candidates`` and the baseline on the validation seeds and choose the answer."""
    return validate(evaluator, spec.objective, spec.validation, spec.base.rounds, candidates,
                    defaults_entry(spec, baseline), baseline_point(spec), defaults_name(spec.base.strategy.name))


def _validated_entry(v: Validated) -> dict[str, Any]:
    ev = v.evaluation
    return {**v.entry, "validation_fitness": v.fitness, "validation_state": ev.state,
            "validation_seeds": v.seeds, "validation_check": v.check,
            "validation_metrics": {k: float(x) for k, x in ev.metrics.items()}}


def validated_best(result: ValidationResult) -> list[dict[str, Any]]:
    """best.toml's entries after validation: the answer first (the defaults when they were not beaten), then the
    other validated configurations in validation's order (the pessimistic bound of their per-seed fitness)."""
    tuned = [_validated_entry(v) for v in result.ranked]
    if result.answer == "defaults":
        return [_validated_entry(result.defaults)] + tuned
    return tuned


def write_validation(out_dir: Path, spec: StudySpec, result: ValidationResult) -> None:
    """validation.csv: one row per validated configuration (the defaults first): params, the seeds it was validated
    on, search and validation fitness, the fitness on each of those seeds alone, the mean metrics there, its check
    against the defaults (``passed`` or why not; empty: not reached) and which is the answer."""
    rows = []
    answer = result.defaults if result.answer == "defaults" else (result.ranked[0] if result.ranked else None)
    rank = {id(v): i + 1 for i, v in enumerate(result.ranked)}
    for v in [result.defaults, *result.ranked]:
        ev = v.evaluation
        row: dict[str, Any] = {"label": v.label, "validation_rank": rank.get(id(v), 0), "answer": v is answer,
                               "trial": int(v.entry.get("trial", -1)), "seeds": ",".join(map(str, v.seeds)),
                               "check": v.check, "state": ev.state, "reason": ev.reason,
                               "constraint_met": v.constraint_met,
                               "pessimistic_fitness": v.pessimistic(spec.objective.weights[0])}
        row.update({f"param_{k}": _plain(x) for k, x in v.entry.get("params", {}).items()})
        for j, cols in enumerate(fitness_columns(spec.objective.n)):
            search = v.entry.get("fitness", [])
            row[f"search_{cols}"] = float(search[j]) if j < len(search) else math.nan
            row[f"validation_{cols}"] = v.fitness[j]
            row[f"per_seed_{cols}"] = json.dumps(v.per_seed[j])
        row.update({f"metric_{k}": float(x) for k, x in ev.metrics.items()})
        rows.append(row)
    df = pd.DataFrame(rows)
    atomic_write(out_dir / "validation.csv", lambda p: df.to_csv(p, index=False))


def write_best(out_dir: Path, spec: StudySpec, best: list[dict[str, Any]],
               answer: Mapping[str, Any] | None = None) -> None:
    """best.toml: ``answer``, ``verdict`` and ``validation_seeds`` (when validated), then ``[[best]]`` tables (params,
    search fitness and metrics, validation fitness and metrics), best first."""
    doc = {"study": spec.name, "objectives": spec.objective.describe(),
           "directions": list(spec.objective.directions), **dict(answer or {}), "best": best}
    atomic_write_text(out_dir / "best.toml", dump_toml(doc))


def write_histories(spec: StudySpec, out_dir: Path, best: list[dict[str, Any]], pool: Workers | None = None) -> None:
    """Re-run the best config and the baseline on the first seed and save their Histories for plots; on ``pool``'s
    workers at once where given (each run is seeded and single-threaded: the same History wherever it runs)."""
    seed = spec.study.seeds[0]
    runs = {}
    if best:
        runs["best"] = spec.base.with_overrides({**spec.space.overrides(best[0]["params"]), "seed": seed})
    runs["baseline"] = spec.base.with_overrides({**(baseline_point(spec).overrides or {}), "seed": seed})
    pool = pool if pool is not None else SerialWorkers()
    for name, history in zip(runs, pool.map(simulate_or_reason, list(runs.values())), strict=True):
        if isinstance(history, str):   # plots are optional; the study's results are already written
            log.warning("could not save the %s history: %s", name, history)
        else:
            history.save(out_dir / "histories" / name)


def simulate_or_reason(config: SimConfig) -> History | str:
    """``simulate(config)``, or why it failed (a worker's task: the error as text)."""
    from qsfl.sim import simulate

    try:
        return simulate(config)
    except Exception as exc:  # noqa: BLE001 - reported by the caller
        return f"{type(exc).__name__}: {exc}"


# ----- the whole study ---------------------------------------------------------------------------------
def make_searcher(spec: StudySpec, out_dir: Path, *, workers: int = 1, storage: str | None = None) -> Searcher:
    """The study's searcher (``study.engine``) with its context."""
    cls = searchers()[spec.study.engine]
    ctx = SearchContext(name=spec.name, space=spec.space, objective=spec.objective, base=spec.base,
                        seed=spec.study.search_seed, fingerprint=spec.fingerprint, out_dir=out_dir,
                        storage=storage, workers=workers, fidelity=spec.fidelity is not None)
    return cls(spec.searcher_settings, ctx)


def write_logbook(out_dir: Path, searcher: Searcher, n_objectives: int) -> None:
    """logbook.csv (GA only): gen, nevals, nfailed, min_j, mean_j, max_j, std_j (atomic)."""
    from tuning.search.ga import GASearcher, logbook_rows

    if not isinstance(searcher, GASearcher) or searcher.core.state is None:
        return
    df = pd.DataFrame(logbook_rows(searcher.core.state.logbook, n_objectives))
    atomic_write(out_dir / "logbook.csv", lambda p: df.to_csv(p, index=False))


def run_study(spec: StudySpec, out_dir: str | Path, *, resume: bool = False, workers: int = 1,
              storage: str | None = None, progress: bool = False, stop_after: int | None = None,
              verbose: bool = False, echo: Callable[[str], None] = lambda s: None, quiet: bool = False,
              cluster: str | None = None, pool: Workers | None = None) -> StudyResult:
    """Run (or resume) a study and write every output of docs/study_output.md; returns the result.

    ``progress``: a tqdm bar (a terminal); log lines go to ``OUT/study.log`` and, unless ``quiet`` or a bar is
    shown, to stderr. ``stop_after``: end after that many batches (0-based: 2 = after GA generation 2).
    ``workers`` / ``cluster`` (default ``study.cluster``): where evaluations run
    (:func:`tuning.workers.make_workers`); ``pool``: run them on these workers instead (left open).
    """
    out = Path(out_dir)
    if resume:
        check_resume(out)
    if workers < 1:
        raise ConfigError(f"--workers: {workers} is out of range; allowed [1, inf)")
    if storage is not None and spec.study.engine != "optuna":
        raise ConfigError("--storage: only for study.engine = \"optuna\"; other searchers keep checkpoint.pkl "
                          "in --out")
    import torch

    from qsfl.engine.threads import configure_threads

    threads = torch.get_num_threads()
    configure_threads(1)
    try:
        validate_study(spec)                      # before anything is written: --out stays reusable
        prepare_out(spec, out, resume)
    except BaseException:
        torch.set_num_threads(threads)
        raise
    logs = LogSetup(out, stderr=not progress and not quiet)
    own_pool = pool is None
    try:
        pool = pool if pool is not None else make_workers(workers, cluster or spec.study.cluster, spec.base)
    except BaseException:   # e.g. an unreachable scheduler: exit 2 with the thread setting and log restored
        torch.set_num_threads(threads)
        logs.close()
        raise
    evaluator = Evaluator(spec, pool)
    searcher = make_searcher(spec, out, workers=pool.n, storage=storage)
    bar: Progress | None = None
    ok = False
    try:
        grid = is_grid(spec)
        baseline_path = out / "baseline.toml"
        baseline = load_toml(baseline_path) if resume and baseline_path.is_file() else None
        if baseline is None and not grid:    # a grid's arms are its baselines: nothing to compare against
            echo(f"evaluating the baseline: {defaults_label(spec)} ...")
            baseline = evaluate_baseline(spec, evaluator)
            atomic_write_text(baseline_path, dump_toml(baseline))
        base_fit = baseline["fitness"] if baseline is not None and baseline.get("state") == "complete" else None
        table = TrialsTable(out, spec.space.names, spec.objective.n, {p.name: p.type for p in spec.space.params})
        bar = Progress(bar=progress, total=_expected_rows(spec, searcher), desc=f"{searcher.name} {spec.name}",
                       signs=spec.objective.weights, full_rounds=spec.base.rounds, baseline=base_fit,
                       exact=spec.fidelity is None and searcher.exact_evaluations())
        loop = StudyLoop(spec, out, searcher, evaluator, table, bar,
                         on_batch=lambda: write_logbook(out, searcher, spec.objective.n))
        try:
            state = loop.run(resume=resume, stop_after=stop_after)
        finally:
            table.close()   # the journal's last rows into trials.parquet / trials.csv
        rows = table.rows
        limit = spec.ga.hof_size if spec.study.engine == "ga" else 5
        best = best_entries(rows, spec, limit=max(limit, spec.validation.top))
        simulated = int(sum(int(r.get("simulated_rounds") or 0) for r in rows))
        completed = sum(1 for r in rows if r.get("state") == "complete")
        result = StudyResult(spec, out, best, baseline, len(rows), state.elapsed_s,
                             simulated_rounds=simulated, completed=completed,
                             new_evaluations=bar.done - bar.resumed_at)
        if grid:   # nothing to choose: the trials table is the result (no best.toml, validation or histories)
            result.best = []
            if not (resume and not result.new_evaluations and _finished(out, len(rows))):
                write_summary(result)
            else:
                result.rewritten = False
            ok = True
            return result
        assert baseline is not None   # every study but a grid evaluated its baseline above
        if resume and not result.new_evaluations and _finished(out, len(rows)):
            ok = True   # the budget was spent and every output written by an earlier session: nothing to rewrite
            result.rewritten = False
            return result
        write_logbook(out, searcher, spec.objective.n)
        if spec.fidelity is not None:
            result.extra["fidelity"] = {"brackets": list(loop.state.brackets),
                                        "correlations": {str(r): {"spearman": rho, "pairs": n}
                                                         for r, (rho, n) in loop.correlations().items()}}
        answer: dict[str, Any] = {}
        if spec.validation.enabled and stop_after is None and best:
            confirm = spec.validation.confirm_seeds
            echo(f"validating the best {min(len(best), spec.validation.top)} and the defaults on seeds "
                 f"{list(spec.validation.seeds)}"
                 + (f", a passing one confirmed on {len(confirm)} more ({seed_ranges(confirm)})" if confirm else "")
                 + " ...")
            validation = run_validation(spec, evaluator, best[:spec.validation.top], baseline)
            write_validation(out, spec, validation)
            best = validated_best(validation)
            answer = {"answer": validation.answer, "verdict": validation.verdict,
                      "validation_seeds": [*validation.seeds, *validation.confirm_seeds],
                      "defaults_validation_fitness": validation.defaults.fitness,
                      "defaults_validation_seeds": validation.defaults.seeds}
            result.best = best
            result.extra["validation"] = answer
        else:
            best = best[:limit]
            result.best = best
        write_best(out, spec, best, answer)
        write_summary(result)
        if spec.study.save_histories and stop_after is None:
            write_histories(spec, out, best, pool)
        ok = True
    finally:
        if bar is not None:
            bar.close()
        searcher.close()
        if own_pool:
            if ok:
                pool.close()
            else:
                pool.terminate()
        torch.set_num_threads(threads)  # a library caller gets its thread setting back
        logs.close()
    return result


def _finished(out: Path, rows: int) -> bool:
    """Did an earlier session write every output of a study of ``rows`` evaluations (summary.json last)?"""
    try:
        summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (is_grid_dir(summary) or (out / "best.toml").is_file()) and summary.get("evaluations") == rows


def is_grid(spec: StudySpec) -> bool:
    """Is this a grid study (``study.engine = "grid"``: its points are given, nothing is chosen)?"""
    return spec.study.engine == "grid"


def is_grid_dir(summary: Mapping[str, Any]) -> bool:
    """Does a study directory's summary.json belong to a grid study?"""
    return summary.get("engine") == "grid"


def _expected_rows(spec: StudySpec, searcher: Searcher) -> int | None:
    """Rows the whole budget writes, roughly (progress bar total and ETA)."""
    points = searcher.expected_evaluations()
    if points is None:
        return None
    if spec.fidelity is None:
        return points
    eta = spec.fidelity.eta
    return int(math.ceil(points * sum(eta ** -i for i in range(len(spec.fidelity.rungs(spec.base.rounds))))))


def write_summary(result: StudyResult) -> None:
    """summary.json: evaluations, compute (simulated rounds, wall time), the best and the defaults, versions."""
    spec = result.spec
    doc = {"study": spec.name, "engine": spec.study.engine, "evaluations": result.evaluations,
           "completed": result.completed, "simulated_rounds": result.simulated_rounds,
           "wall_time_s": result.wall_time_s, "rounds": spec.base.rounds, "seeds": list(spec.study.seeds),
           "objectives": spec.objective.describe(), "directions": list(spec.objective.directions),
           "fidelity": None if spec.fidelity is None else {"min_rounds": spec.fidelity.min_rounds,
                                                            "eta": spec.fidelity.eta, "hedge": spec.fidelity.hedge,
                                                            "rungs": spec.fidelity.rungs(spec.base.rounds),
                                                            **result.extra.get("fidelity", {})},
           "best": result.best[0] if result.best else None,
           "validation": result.extra.get("validation"),
           "baseline_fitness": (result.baseline or {}).get("fitness"),
           "versions": versions()}
    atomic_write_text(result.out_dir / "summary.json", redact(json.dumps(doc, indent=2, default=_jsonable)))


def versions() -> dict[str, str]:
    """qsfl-tune, torch, Python and the git commit (when the package runs from a git checkout)."""
    import torch

    import qsfl

    commit = ""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).resolve().parent,
                                capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return {"qsfl_tune": qsfl.__version__, "torch": torch.__version__, "python": platform.python_version(),
            "commit": commit, "machine": platform.machine()}


def _jsonable(v: Any) -> Any:
    if hasattr(v, "item"):
        return v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return str(v)


# ----- the printed summary ----------------------------------------------------------------------------
def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4g}"
    return str(v)


def seed_ranges(seeds: Sequence[int]) -> str:
    """Seeds written compactly: runs of consecutive seeds as ``first-last`` (``[200, ..., 207, 300]`` ->
    ``200-207, 300``)."""
    parts: list[str] = []
    start = prev = None
    for s in [*seeds, None]:
        if s is not None and prev is not None and s == prev + 1:
            prev = s
            continue
        if start is not None:
            parts.append(str(start) if start == prev else f"{start}-{prev}")
        start = prev = s
    return ", ".join(parts)


GRID_SUMMARY = ("final_accuracy", "uplink_mb", "rounds_to_target", "oscillation", "slowdown")


def format_grid_summary(result: StudyResult) -> str:
    """One line per grid point: its params and the mean over seeds of a few metrics (all of them in trials.csv)."""
    from tuning.trials import read_trials

    spec = result.spec
    df = read_trials(result.out_dir)
    lines = [f"grid {spec.name}: {result.evaluations} points x {len(spec.study.seeds)} seeds, "
             f"{result.simulated_rounds} simulated rounds, {result.wall_time_s:.1f} s of compute; {spec.base.rounds} "
             "rounds; means over seeds"]
    names = spec.space.names
    width = max([len(n) for n in names] + [8]) + 2
    lines.append("".join(f"{n:>{width}}" for n in names) + "".join(f"{m:>19}" for m in GRID_SUMMARY) + f"{'state':>10}")
    for _, row in (df.iterrows() if df is not None else iter(())):
        lines.append("".join(f"{_fmt(_plain(row[f'param_{n}'])):>{width}}" for n in names)
                     + "".join(f"{_fmt(float(row[f'metric_{m}'])):>19}" for m in GRID_SUMMARY) + f"{row['state']:>10}")
    lines.append(f"outputs in {result.out_dir}/ (trials.parquet, trials.csv: per-seed metrics in per_seed; "
                 "summary.json, spec.toml)")
    return "\n".join(lines)


def format_summary(result: StudyResult) -> str:
    """Best params, their search and validation fitness and metrics, and the defaults' on the same budget."""
    spec = result.spec
    if is_grid(spec):
        return format_grid_summary(result)
    validation = result.extra.get("validation")
    lines = [f"study {spec.name} ({spec.study.engine}): {result.evaluations} evaluations, "
             f"{result.simulated_rounds} simulated rounds, {result.wall_time_s:.1f} s of compute; search seeds "
             f"{list(spec.study.seeds)}, {spec.base.rounds} rounds",
             "objective: " + "; ".join(spec.objective.describe())]
    header = f"{'':22}" + "".join(f"{m:>19}" for m in SUMMARY_METRICS) + f"{'search fitness':>22}"
    lines.append(header + (f"{'validation fitness (seeds)':>28}" if validation else ""))

    def line(label: str, metrics: Mapping[str, Any], fitness: Sequence[float], valid: Sequence[float] | None,
             n_valid: int = 0) -> str:
        text = (f"{label:22}" + "".join(f"{_fmt(metrics.get(m, math.nan)):>19}" for m in SUMMARY_METRICS)
                + f"{'/'.join(_fmt(float(f)) for f in fitness):>22}")
        cell = "/".join(_fmt(float(f)) for f in valid) + f" ({n_valid})" if valid is not None else ""
        return text + (f"{cell:>28}" if valid is not None else "")

    name = defaults_name(spec.base.strategy.name)
    for i, b in enumerate(result.best[:5]):
        label = ("answer" if validation else "best") if i == 0 else f"#{i + 1}"
        label += f" ({name})" if b.get("defaults") else ""
        lines.append(line(label, b["metrics"], b["fitness"], b.get("validation_fitness") if validation else None,
                          len(b.get("validation_seeds", ()))))
    if result.baseline and not any(b.get("defaults") for b in result.best[:5]):
        lines.append(line(name, result.baseline.get("metrics", {}), result.baseline.get("fitness", []),
                          validation.get("defaults_validation_fitness") if validation else None,
                          len(validation.get("defaults_validation_seeds", ())) if validation else 0))
    if result.best:
        first = result.best[0]
        lines.append(("answer params: " if validation else "best params: ")
                     + ", ".join(f"{k}={_fmt(v)}" for k, v in first["params"].items())
                     + (f" (repaired: {first['repair']})" if first.get("repair") else ""))
    else:
        lines.append("no evaluation completed: see the reason column of trials.csv")
    if result.baseline:
        lines.append("defaults:    " + ", ".join(f"{k}={_fmt(v)}" for k, v in result.baseline["params"].items()))
    ranking = result.extra.get("fidelity", {}).get("correlations", {})
    if ranking:
        lines.append("rung ranking: " + "; ".join(
            f"{r} rounds vs {spec.base.rounds}: " + (f"Spearman {c['spearman']:.2f}" if c["spearman"] == c["spearman"]
                                                     else "too few to tell") + f" over {c['pairs']} points"
            for r, c in ranking.items()) + f"; brackets started at rungs {result.extra['fidelity']['brackets']}")
    if validation:
        vs = spec.validation
        lines.append(f"metrics and search fitness: the search seeds {list(spec.study.seeds)}; validation fitness: "
                     f"the validation seeds {seed_ranges(vs.seeds)} ({len(vs.seeds)})"
                     + (f", confirmation seeds {seed_ranges(vs.confirm_seeds)} ({len(vs.confirm_seeds)}) for a "
                        "configuration that passed there" if vs.confirm_seeds else "")
                     + ", never searched")
        lines.append(f"validation: {validation['verdict']}")
    lines.append(f"outputs in {result.out_dir}/ (trials.parquet, trials.csv, best.toml, baseline.toml, "
                 + ("validation.csv, " if validation else "") + "summary.json, spec.toml)")
    return "\n".join(lines)
