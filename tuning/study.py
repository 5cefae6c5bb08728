"""Run a study end to end: output directory, baseline (the authors' defaults), GA or Optuna search, trials
table, logbook, best.toml, histories of the best and the baseline (docs/study_output.md)."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from qsfl.config import dump_toml, load_toml
from qsfl.engine.threads import configure_threads
from qsfl.errors import ConfigError
from qsfl.io import atomic_write, atomic_write_text
from tuning.evaluate import Evaluator, SameParams, run_task
from tuning.objective import Evaluation, SeedResult, combine
from tuning.space import baseline_overrides
from tuning.spec import StudySpec, spec_fingerprint
from tuning.trials import TrialsTable, fitness_columns, read_trials
from tuning.workers import SerialWorkers, Workers, make_workers

log = logging.getLogger(__name__)

MARKERS = ("trials.parquet", "trials.csv", "trials.journal.jsonl", "checkpoint.pkl", "study.db")
SUMMARY_METRICS = ("final_accuracy", "best_accuracy", "uplink_mb", "compression_ratio", "rounds_to_target")


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


# ----- output directory -----------------------------------------------------------------------------------
def prepare_out(spec: StudySpec, out_dir: Path, resume: bool, external_storage: bool = False) -> None:
    """Refuse to overwrite an earlier study unless resuming; write spec.toml (the spec as run)."""
    existing = [m for m in MARKERS if (out_dir / m).exists()]
    if existing and not resume:
        raise ConfigError(f"--out {out_dir}: already holds a study ({', '.join(existing)}); pass --resume to "
                          f"continue it or choose another --out")
    if resume and (out_dir / "spec.toml").is_file():
        from tuning.spec import parse_spec

        try:
            old = parse_spec(load_toml(out_dir / "spec.toml"), default_name=spec.name)
        except ConfigError:
            old = None
        if old is not None and spec_fingerprint(old) != spec_fingerprint(spec):
            raise ConfigError(f"--resume: the spec differs from {out_dir / 'spec.toml'} in more than "
                              f"ga.generations / optuna.n_trials; use the same spec or another --out")
    out_dir.mkdir(parents=True, exist_ok=True)
    raw = dict(spec.raw)
    raw.setdefault("study", {})
    raw["study"] = {**raw["study"], "name": spec.name}
    atomic_write_text(out_dir / "spec.toml", dump_toml(raw))


# ----- the authors' defaults on the same budget --------------------------------------------------------------
def baseline_params(spec: StudySpec) -> dict[str, Any]:
    """The authors' defaults (beta 0.9, alpha 0.7 -> K, NS 6, p 0.4) plus base values of other searched params."""
    defaults = spec.space.defaults(spec.base)
    k = math.ceil(0.7 * spec.base.cohort_size)
    return {"beta": 0.9, "alpha": 0.7, "k": k, "ns": 6, "p": 0.4,
            **{n: v for n, v in defaults.items() if n not in ("beta", "alpha", "k", "ns", "p")}}


def evaluate_baseline(spec: StudySpec, mapper: Workers | None = None) -> dict[str, Any]:
    """Simulate the authors' defaults on the study's seeds and rounds; the baseline.toml content."""
    params = baseline_params(spec)
    others = {p.key: params[p.name] for p in spec.space.params if p.name not in ("beta", "alpha", "k", "ns", "p")}
    base = spec.base.with_overrides({**baseline_overrides(spec.base), **others})
    tasks = [(base.replace(seed=s).to_dict(),) for s in spec.study.seeds]
    results = [SeedResult.from_dict(r) for r in (mapper or SerialWorkers()).map(run_task, tasks)]
    ev = combine(params, spec.study.seeds, results, spec.objective, spec.base.rounds)
    return baseline_dict(spec, ev)


def baseline_dict(spec: StudySpec, ev: Evaluation) -> dict[str, Any]:
    """baseline.toml content from an evaluation."""
    return {"study": spec.name, "description": "the QSFL authors' default parameters on the study's budget",
            "params": ev.params, "seeds": list(ev.seeds), "state": ev.state, "reason": ev.reason,
            "metrics": ev.metrics, "metrics_std": ev.metrics_std,
            "fitness": [float(f) if ev.ok else math.nan for f in ev.fitness],
            "objectives": spec.objective.describe(), "directions": list(spec.objective.directions)}


# ----- best configs ---------------------------------------------------------------------------------
def _dominates(a: Sequence[float], b: Sequence[float], signs: Sequence[float]) -> bool:
    better = False
    for x, y, s in zip(a, b, signs):
        if s * x < s * y:
            return False
        if s * x > s * y:
            better = True
    return better


def best_entries(rows: Sequence[Mapping[str, Any]], spec: StudySpec, limit: int = 5) -> list[dict[str, Any]]:
    """The best complete evaluations, best first: top ``limit`` for one objective, the Pareto front for several."""
    cols = fitness_columns(spec.objective.n)
    signs = spec.objective.weights
    seen: dict[str, Mapping[str, Any]] = {}
    for r in rows:
        if r.get("state") == "complete" and r["individual"] not in seen and \
                all(isinstance(r[c], (int, float)) and math.isfinite(r[c]) for c in cols):
            seen[r["individual"]] = r
    cand = list(seen.values())
    key = lambda r: tuple(-s * r[c] for c, s in zip(cols, signs)) + (r["trial"],)
    if spec.objective.n == 1:
        chosen = sorted(cand, key=key)[:limit]
    else:
        fits = {r["individual"]: [r[c] for c in cols] for r in cand}
        chosen = sorted([r for r in cand if not any(_dominates(fits[o["individual"]], fits[r["individual"]], signs)
                                                       for o in cand)], key=key)
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


def write_best(out_dir: Path, spec: StudySpec, best: list[dict[str, Any]]) -> None:
    """best.toml: ``[[best]]`` tables (params, fitness, metrics), best first."""
    doc = {"study": spec.name, "objectives": spec.objective.describe(),
           "directions": list(spec.objective.directions), "best": best}
    atomic_write_text(out_dir / "best.toml", dump_toml(doc))


def write_histories(spec: StudySpec, out_dir: Path, best: list[dict[str, Any]]) -> None:
    """Re-run the best config and the baseline on the first seed and save their Histories for plots."""
    from qsfl.sim import simulate

    seed = spec.study.seeds[0]
    runs = {}
    if best:
        runs["best"] = spec.base.with_overrides({**spec.space.overrides(best[0]["params"]), "seed": seed})
    params = baseline_params(spec)
    others = {p.key: params[p.name] for p in spec.space.params if p.name not in ("beta", "alpha", "k", "ns", "p")}
    runs["baseline"] = spec.base.with_overrides({**baseline_overrides(spec.base), **others, "seed": seed})
    for name, cfg in runs.items():
        try:
            simulate(cfg).save(out_dir / "histories" / name)
        except Exception as exc:  # noqa: BLE001 - plots are optional; the study's results are already written
            log.warning("could not save the %s history: %s", name, exc)


# ----- progress ------------------------------------------------------------------------------------
class Progress:
    """A tqdm bar (generations or trials) whose postfix shows the best fitness so far."""

    def __init__(self, enabled: bool, total: int, unit: str, desc: str, signs: Sequence[float],
                 baseline: Sequence[float] | None = None) -> None:
        self.signs = signs
        self.best: list[float] | None = None
        self.evals = 0
        self.baseline = baseline
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, unit=unit, desc=desc, dynamic_ncols=True)

    def evaluation(self, ev: Evaluation) -> None:
        self.evals += 1
        if ev.ok:
            if self.best is None:
                self.best = list(ev.fitness)
            else:
                self.best = [max(b, f) if s > 0 else min(b, f) for b, f, s in zip(self.best, ev.fitness, self.signs)]
        self._postfix()

    def _postfix(self) -> None:
        if self.bar is None:
            return
        fmt = lambda xs: "/".join(f"{x:.4g}" for x in xs)
        post = {"evals": self.evals, "best": fmt(self.best) if self.best else "-"}
        if self.baseline:
            post["defaults"] = fmt(self.baseline)
        self.bar.set_postfix(post, refresh=True)

    def set(self, n: int) -> None:
        if self.bar is not None:
            self.bar.n = n
            self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# ----- GA -------------------------------------------------------------------------------------------
def write_logbook(out_dir: Path, logbook: Any, n_objectives: int) -> None:
    """logbook.csv: gen, nevals, nfailed, min_j, mean_j, max_j, std_j (atomic)."""
    from tuning.ga import logbook_rows

    df = pd.DataFrame(logbook_rows(logbook, n_objectives))
    atomic_write(out_dir / "logbook.csv", lambda p: df.to_csv(p, index=False))


def run_ga_search(spec: StudySpec, out_dir: Path, *, resume: bool, mapper: Workers, progress: Progress,
                  stop_after: int | None = None) -> tuple[TrialsTable, Any]:
    """The GA over the spec's space; returns the trials table and the final GA state."""
    from tuning.ga import GeneticAlgorithm

    table = TrialsTable(out_dir, spec.space.names, spec.objective.n, {p.name: p.type for p in spec.space.params})
    evaluator = Evaluator(spec, table, mapper, "ga", on_evaluation=lambda ev, row: progress.evaluation(ev))
    rows = table.load() if resume else []
    evaluator.load_rows(rows, counter=0)  # no checkpoint yet: every row is replayed in order

    def evaluate(genomes: list[list[float]], generation: int) -> tuple[list[tuple[tuple[float, ...], bool]], int]:
        points = [evaluator.point(spec.space.decode(g)) for g in genomes]
        evals, nevals = evaluator.evaluate_points(points, generation)
        return [(ev.fitness, ev.ok) for ev in evals], nevals

    def on_generation(state: Any) -> None:
        write_logbook(out_dir, state.logbook, spec.objective.n)
        progress.set(state.generation + 1)
        rec = state.logbook[-1]
        log.info("generation %d/%d: %d new evaluations, %d failed; best so far %s", state.generation,
                 spec.ga.generations, rec["nevals"], rec["nfailed"],
                 [round(v, 6) for v in state.hof[0].fitness.values] if len(state.hof) else None)

    ga = GeneticAlgorithm(spec.space.dim, spec.objective.weights, spec.ga, evaluate, seed=spec.study.search_seed,
                          checkpoint=out_dir / "checkpoint.pkl", fingerprint=spec_fingerprint(spec),
                          similar=SameParams(spec), hooks=[on_generation],
                          get_extra=lambda: {"counter": evaluator.counter},
                          set_extra=lambda extra: evaluator.load_rows(rows, int(extra["counter"])))
    try:
        state = ga.run(resume=resume, stop_after=stop_after)
    finally:
        table.close()   # the journal's last rows into trials.parquet / trials.csv
    write_logbook(out_dir, state.logbook, spec.objective.n)
    return table, state


# ----- the whole study ---------------------------------------------------------------------------------
def run_study(spec: StudySpec, out_dir: str | Path, *, resume: bool = False, workers: int = 1,
              cluster: str | None = None, storage: str | None = None, progress: bool = False,
              stop_after: int | None = None, verbose: bool = False,
              echo: Callable[[str], None] = lambda s: None) -> StudyResult:
    """Run (or resume) a study and write every output of docs/study_output.md; returns the result."""
    start = time.perf_counter()
    out = Path(out_dir)
    storage = storage or spec.optuna.storage
    cluster = cluster or spec.study.cluster
    if cluster is not None and spec.study.engine != "ga":
        raise ConfigError(f"--cluster {cluster}: only for study.engine = \"ga\"; Optuna studies scale out through a "
                          f"shared --storage (docs/scaling.md)")
    prepare_out(spec, out, resume)
    import torch

    threads = torch.get_num_threads()
    configure_threads(1)
    mapper = make_workers(workers, cluster, spec.base) if spec.study.engine == "ga" else SerialWorkers()
    ok = False
    try:
        baseline_path = out / "baseline.toml"
        baseline = load_toml(baseline_path) if resume and baseline_path.is_file() else None
        if baseline is None:
            echo("evaluating the authors' defaults (baseline) ...")
            baseline = evaluate_baseline(spec, mapper)
            atomic_write_text(baseline_path, dump_toml(baseline))
        base_fit = baseline["fitness"] if baseline.get("state") == "complete" else None
        if spec.study.engine == "ga":
            bar = Progress(progress, spec.ga.generations + 1, "gen", f"GA {spec.name}", spec.objective.weights,
                           base_fit)
            try:
                table, _ = run_ga_search(spec, out, resume=resume, mapper=mapper, progress=bar, stop_after=stop_after)
            finally:
                bar.close()
            rows = table.rows
            limit = spec.ga.hof_size
        else:
            from tuning.optuna_search import budget_used, run_optuna

            bar = Progress(progress, spec.optuna.n_trials, "trial", f"Optuna {spec.name}", spec.objective.weights,
                           base_fit)

            def on_trial(study: Any) -> None:
                done, _ = budget_used(study)
                bar.evals = done
                try:
                    vals = [study.best_value] if spec.objective.n == 1 else None
                except ValueError:
                    vals = None
                if vals is not None:
                    bar.best = vals
                bar.set(done)
                bar._postfix()

            try:
                run_optuna(spec, out, storage, workers=workers, owns_storage=storage is None,
                           on_trial=on_trial, verbose=verbose)
            finally:
                bar.close()
            df = read_trials(out)
            rows = [] if df is None else df.to_dict("records")
            limit = 5
        best = best_entries(rows, spec, limit=limit)
        write_best(out, spec, best)
        if spec.study.save_histories and stop_after is None:
            write_histories(spec, out, best)
        ok = True
    finally:
        if not ok:
            mapper.terminate()
        else:
            mapper.close()
        torch.set_num_threads(threads)  # a library caller gets its thread setting back
    return StudyResult(spec, out, best, baseline, len(rows), time.perf_counter() - start)


# ----- the printed summary ----------------------------------------------------------------------------
def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4g}"
    return str(v)


def format_summary(result: StudyResult) -> str:
    """Best params, their metrics and fitness, and the authors' defaults' on the same budget."""
    spec = result.spec
    lines = [f"study {spec.name} ({spec.study.engine}): {result.evaluations} evaluations in "
             f"{result.wall_time_s:.1f} s, seeds {list(spec.study.seeds)}, {spec.base.rounds} rounds",
             "objective: " + "; ".join(spec.objective.describe())]
    header = f"{'':22}" + "".join(f"{m:>19}" for m in SUMMARY_METRICS) + f"{'fitness':>22}"
    lines.append(header)

    def line(label: str, metrics: Mapping[str, Any], fitness: Sequence[float]) -> str:
        return (f"{label:22}" + "".join(f"{_fmt(metrics.get(m, math.nan)):>19}" for m in SUMMARY_METRICS)
                + f"{'/'.join(_fmt(float(f)) for f in fitness):>22}")

    for i, b in enumerate(result.best[:5]):
        lines.append(line("best" if i == 0 else f"#{i + 1}", b["metrics"], b["fitness"]))
    if result.baseline:
        lines.append(line("authors' defaults", result.baseline.get("metrics", {}), result.baseline.get("fitness", [])))
    if result.best:
        lines.append("best params: " + ", ".join(f"{k}={_fmt(v)}" for k, v in result.best[0]["params"].items())
                     + (f" (repaired: {result.best[0]['repair']})" if result.best[0].get("repair") else ""))
    else:
        lines.append("no evaluation completed: see the reason column of trials.csv")
    if result.baseline:
        lines.append("defaults:    " + ", ".join(f"{k}={_fmt(v)}" for k, v in result.baseline["params"].items()))
    lines.append(f"outputs in {result.out_dir}/ (trials.parquet, trials.csv, best.toml, baseline.toml, spec.toml)")
    return "\n".join(lines)
