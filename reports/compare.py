"""Re-run a study's best configs with the baselines over fresh seeds, in parallel; write compare.csv/.md.

Labels: ``tuned-1..N`` (best first, or the labels of a --configs TOML), ``fedavg``, ``topk``,
``qj-only`` and ``scss-only`` (QSFL ablations with the authors' defaults) and ``qsfl-default``
(QSFL with the authors' defaults beta=0.9, alpha=0.7, ns=6, p=0.4). Every run's History is saved
under ``OUT/compare/<label>/seed<k>/``; a run whose saved config equals the requested one is reused.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from qsfl.config import SimConfig, StrategyConfig, load_toml
from qsfl.errors import ConfigError, check_table, reject_unknown
from qsfl.history import History
from qsfl.io import atomic_write_text

log = logging.getLogger(__name__)

BASELINES = ("fedavg", "topk", "qj-only", "scss-only", "qsfl-default")
AUTHORS_DEFAULTS: dict[str, Any] = {"strategy.beta": 0.9, "strategy.alpha": 0.7, "strategy.k": None,
                                    "strategy.ns": 6, "strategy.p": 0.4}
DESCRIPTIONS = {
    "fedavg": "FedAvg: every sampled client uploads its dense update",
    "topk": "top-k: every client uploads the top-p of its whole update (p={p:g})",
    "qj-only": "QSFL, QJ only (no SCSS): authors' defaults",
    "scss-only": "QSFL, SCSS only (no QJ): authors' defaults",
    "qsfl-default": "QSFL with the authors' defaults (beta=0.9, alpha=0.7, ns=6, p=0.4)",
}
METRICS = ("final_accuracy", "best_accuracy", "compression_ratio", "uplink_mb", "rounds_to_target",
           "uplink_mb_to_target")
DEFAULT_SEEDS = 3


# ----- which configs -------------------------------------------------------------------------------
def baseline_configs(base: SimConfig, *, topk_p: float = 0.1) -> dict[str, SimConfig]:
    """The five baselines built on ``base`` (same data, model, training and seed)."""
    qsfl = {"strategy.name": "qsfl", **AUTHORS_DEFAULTS}
    return {
        "fedavg": base.with_overrides({"strategy.name": "fedavg"}),
        "topk": base.with_overrides({"strategy.name": "topk", "strategy.p": topk_p}),
        "qj-only": base.with_overrides({**qsfl, "strategy.use_qj": True, "strategy.use_scss": False}),
        "scss-only": base.with_overrides({**qsfl, "strategy.use_qj": False, "strategy.use_scss": True}),
        "qsfl-default": base.with_overrides({**qsfl, "strategy.use_qj": True, "strategy.use_scss": True}),
    }


_STRATEGY_FIELDS = {f.name for f in dataclasses.fields(StrategyConfig)}
_SIM_FIELDS = {f.name for f in dataclasses.fields(SimConfig)} - {"strategy"}


def params_to_overrides(params: Mapping[str, Any]) -> dict[str, Any]:
    """Search-space params (beta, k, ns, p, lr, ...) or dotted keys -> SimConfig overrides."""
    out: dict[str, Any] = {"strategy.name": "qsfl"}
    for key, value in params.items():
        if isinstance(value, float) and value.is_integer() and key in ("k", "ns", "local_epochs", "batch_size",
                                                                         "strategy.k", "strategy.ns"):
            value = int(value)
        if "." in key:
            out[key] = value
        elif key in _STRATEGY_FIELDS:
            out[f"strategy.{key}"] = value
        elif key in _SIM_FIELDS:
            out[key] = value
        else:
            raise ConfigError(f"param {key!r}: not a SimConfig or strategy field; valid: "
                              f"{', '.join(sorted(_STRATEGY_FIELDS | _SIM_FIELDS))} or a dotted key")
    return out


def params_mapper(spec: Mapping[str, Any] | None, base: SimConfig) -> Callable[[Mapping[str, Any]], SimConfig]:
    """params -> SimConfig as the study evaluated them: its search space's keys and NS <= K repair.

    Falls back to the known names (beta, k, ns, p, lr, ...) and dotted keys when the spec has no
    [space] that tuning can read (e.g. `--configs` without a study).
    """
    space = None
    if spec and "space" in spec:
        try:
            from tuning.space import build_space
            space = build_space(spec["space"], base)
        except ImportError:
            space = None
    if space is None:
        return lambda params: base.with_overrides(params_to_overrides(params))

    def to_config(params: Mapping[str, Any]) -> SimConfig:
        searched = {k: v for k, v in params.items() if k in space.names}
        extra = {k: v for k, v in params.items() if k not in space.names}  # --configs may set other fields
        if space.constraint == "repair":
            searched, _, _ = space.repair(searched, base)
        return base.with_overrides({**params_to_overrides(extra), **space.overrides(searched)})
    return to_config


def read_spec(out_dir: Path) -> dict[str, Any] | None:
    """OUT/spec.toml as a dict, or None if there is none."""
    path = out_dir / "spec.toml"
    return load_toml(path) if path.is_file() else None


def read_base(out_dir: Path, base_file: str | Path | None = None) -> SimConfig:
    """The base SimConfig: --base FILE (a SimConfig table or a spec with [base]), else spec.toml's [base]."""
    from reports.report import spec_base

    if base_file is not None:
        data = load_toml(base_file)
        return spec_base(data) if isinstance(data.get("base"), dict) else SimConfig.from_dict(data)
    spec = read_spec(out_dir)
    if spec is None:
        raise ConfigError(f"{out_dir}: missing spec.toml (needed for its [base] config); pass --base FILE.toml")
    if not isinstance(spec.get("base"), dict):
        raise ConfigError(f"{out_dir / 'spec.toml'}: no [base] table; pass --base FILE.toml")
    return spec_base(spec)


def read_configs_file(path: str | Path) -> list[tuple[str | None, dict[str, Any]]]:
    """[[config]] tables (``label``, ``params`` and/or ``set``) or a best.toml's [[best]] -> (label, overrides)."""
    data = load_toml(path)
    entries = data.get("config", data.get("best"))
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{path}: expected [[config]] tables with params = {{...}} (or a best.toml's [[best]])")
    out = []
    for i, entry in enumerate(entries):
        reject_unknown(f"{path}: config {i + 1}", check_table(f"{path}: config {i + 1}", entry),
                       ("label", "params", "set", "fitness", "metrics"))
        overrides = dict(entry.get("params", {}))
        overrides.update(entry.get("set", {}))
        if not overrides:
            raise ConfigError(f"{path}: config {i + 1}: needs params = {{...}} or set = {{...}}")
        label = entry.get("label")
        if label is not None and (not isinstance(label, str) or not label or "/" in label or label in BASELINES):
            raise ConfigError(f"{path}: config {i + 1}: label {label!r} must be a non-empty name without '/' "
                              f"and not one of {', '.join(BASELINES)}")
        out.append((label, overrides))
    return out


def tuned_configs(out_dir: Path, base: SimConfig, *, top: int, configs_file: str | Path | None,
                  spec: Mapping[str, Any] | None = None) -> dict[str, tuple[SimConfig, dict[str, Any]]]:
    """label -> (config, params) of the configs to compare: from --configs, else best.toml / trials."""
    from reports.report import (
        complete_rows,
        objective_directions,
        read_best,
        read_trials,
    )

    if configs_file is not None:
        entries = read_configs_file(configs_file)
    else:
        entries = [(None, dict(b.get("params", {}))) for b in read_best(out_dir)]  # all: duplicates drop below
        if not entries and any((out_dir / f).is_file() for f in ("trials.parquet", "trials.csv")):
            trials = complete_rows(read_trials(out_dir))
            from reports.plots import fitness_columns, param_columns
            fcols, pcols = fitness_columns(trials), param_columns(trials)
            if fcols and pcols and len(trials):
                up = objective_directions(dict(spec or {}), 1)[0]
                best = trials.sort_values(fcols[0], ascending=not up).drop_duplicates(pcols)
                entries = [(None, {c[6:]: _plain(r[c]) for c in pcols}) for _, r in best.head(5 * top).iterrows()]
        if not entries and top > 0:
            raise ConfigError(f"{out_dir}: no best.toml and no complete trials to take the best configs from; "
                              "run `qsfl tune` first or pass --configs FILE.toml")
    to_config = params_mapper(spec, base)
    out: dict[str, tuple[SimConfig, dict[str, Any]]] = {}
    seen: list[dict[str, Any]] = []
    for label, params in entries:
        config = to_config(params)
        if configs_file is None:
            # two genomes can repair to the same config (ns > k): compare distinct configs only
            if config.to_dict() in seen:
                continue
            if len(out) == top:
                break
        seen.append(config.to_dict())
        label = label or f"tuned-{len(out) + 1}"
        if label in out:
            raise ConfigError(f"{configs_file}: label {label!r} appears twice")
        out[label] = (config, params)
    return out


def _plain(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


def search_seeds(out_dir: Path, spec: Mapping[str, Any] | None = None) -> set[int]:
    """Simulation seeds the search used: the trials' ``seeds`` column and the spec's study.seeds."""
    from reports.report import read_trials, spec_seeds

    used: set[int] = set(spec_seeds(dict(spec))[0]) if spec else set()
    if any((out_dir / f).is_file() for f in ("trials.parquet", "trials.csv")):
        trials = read_trials(out_dir)
        if "seeds" in trials.columns:
            for cell in trials["seeds"].dropna().astype(str):
                used.update(int(s) for s in cell.replace(";", ",").split(",") if s.strip().lstrip("-").isdigit())
    return used


def choose_seeds(seeds: Sequence[int] | None, used: set[int], n: int = DEFAULT_SEEDS,
                 preferred: Sequence[int] = ()) -> list[int]:
    """The given seeds (ConfigError if the search used any), else ``preferred`` (the spec's eval_seeds)
    if the search did not use them, else the ``n`` smallest unused seeds."""
    if seeds:
        clash = sorted(set(seeds) & used)
        if clash:
            raise ConfigError(f"--seeds: {', '.join(map(str, clash))} were used by the search; a fair comparison "
                              f"needs fresh seeds (used: {', '.join(map(str, sorted(used)))})")
        if len(set(seeds)) != len(seeds):
            raise ConfigError(f"--seeds: duplicates in {', '.join(map(str, seeds))}")
        return list(seeds)
    if preferred and not set(preferred) & used:
        return list(preferred)
    out: list[int] = []
    s = 0
    while len(out) < n:
        if s not in used:
            out.append(s)
        s += 1
    return out


# ----- running -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Job:
    """One simulation of the comparison."""

    label: str
    kind: str
    seed: int
    config: dict[str, Any]
    path: str


def run_job(job: Job) -> dict[str, Any]:
    """Simulate one job (or reuse its saved History if the config matches) and return its result row."""
    from qsfl.sim import simulate

    path = Path(job.path)
    config = SimConfig.from_dict(job.config)
    history = _reusable(path, config)
    reused = history is not None
    if history is None:
        try:
            history = simulate(config)
        except Exception as exc:  # noqa: BLE001 - one broken run must not lose the others' results
            log.warning("%s seed %d failed: %s: %s", job.label, job.seed, type(exc).__name__, exc)
            return {"label": job.label, "kind": job.kind, "seed": job.seed, "status": "failed",
                    "reason": f"{type(exc).__name__}: {exc}", "path": str(path)}
        history.save(path)
    return {**run_row(job.label, job.kind, history), "path": str(path), "reused": reused}


def _reusable(path: Path, config: SimConfig) -> History | None:
    if not (path / "config.toml").is_file():
        return None
    try:
        h = History.load(path)
        return h if SimConfig.from_dict(h.config).to_dict() == config.to_dict() else None
    except (ConfigError, OSError, ValueError, KeyError):
        return None


def run_row(label: str, kind: str, history: History) -> dict[str, Any]:
    """The comparison metrics of one run, from its History's summary."""
    s = history.summary
    return {"label": label, "kind": kind, "seed": int(history.config.get("seed", -1)), "status": s["status"],
            "reason": s.get("reason") or "",
            "final_accuracy": s["final_accuracy"], "best_accuracy": s["best_accuracy"],
            "compression_ratio": s["compression_ratio"], "uplink_mb": s["total_uplink_bytes"] / 1e6,
            "rounds_to_target": math.nan if s["rounds_to_target"] is None else float(s["rounds_to_target"]),
            "uplink_mb_to_target": (math.nan if s["uplink_bytes_to_target"] is None
                                    else s["uplink_bytes_to_target"] / 1e6),
            "target_accuracy": s["target_accuracy"], "rounds_run": s["rounds_run"],
            "wall_time_s": s["wall_time_s"]}


def run_jobs(jobs: Sequence[Job], *, workers: int = 1, progress: bool = False,
             cluster: str | None = None) -> list[dict[str, Any]]:
    """Run all jobs (a pool of tuning.workers: serial, processes or a Dask cluster) and return their rows in
    job order."""
    from tqdm.auto import tqdm

    from tuning.workers import make_workers

    bar = tqdm(total=len(jobs), desc="compare", unit="run", disable=not progress)
    rows: list[dict[str, Any] | None] = [None] * len(jobs)
    base = SimConfig.from_dict(jobs[0].config) if jobs else None   # its dataset is preloaded in every worker
    try:
        with make_workers(workers, cluster, base) as pool:
            for i, row in pool.map_unordered(run_job, jobs):
                rows[i] = row
                bar.update()
    finally:
        bar.close()
    return [r for r in rows if r is not None]


# ----- tables --------------------------------------------------------------------------------------
def summarise(runs: pd.DataFrame, order: Sequence[str] | None = None,
              descriptions: Mapping[str, str] | None = None) -> pd.DataFrame:
    """One row per label: mean and sample std over seeds of each metric; the *_to_target ones over reached seeds."""
    rows = []
    labels = list(order) if order is not None else list(dict.fromkeys(runs["label"]))
    for label in labels:
        g = runs[runs["label"] == label]
        ok = g[g["status"] != "failed"] if "status" in g.columns else g
        row: dict[str, Any] = {"label": label, "kind": g["kind"].iloc[0] if len(g) else "",
                               "setting": (descriptions or {}).get(label, ""),
                               "seeds": ",".join(str(int(s)) for s in g["seed"]), "runs": len(ok),
                               "failed": len(g) - len(ok)}
        for m in METRICS:
            vals = pd.to_numeric(ok[m], errors="coerce").dropna().to_numpy(dtype=float) if m in ok else np.array([])
            row[f"{m}_mean"] = float(np.mean(vals)) if len(vals) else math.nan
            row[f"{m}_std"] = float(np.std(vals, ddof=1)) if len(vals) > 1 else (0.0 if len(vals) else math.nan)
        row["reached"] = int(pd.to_numeric(ok["rounds_to_target"], errors="coerce").notna().sum()) if len(ok) else 0
        row["diverged"] = int((ok["status"] == "diverged").sum()) if "status" in ok else 0
        row["target_accuracy"] = float(ok["target_accuracy"].iloc[0]) if len(ok) else math.nan
        rows.append(row)
    return pd.DataFrame(rows)


def _pm(mean: float, std: float, fmt: str, suffix: str = "") -> str:
    if not math.isfinite(mean):
        return "\u2013" if not math.isinf(mean) else "\u221e"
    return f"{mean:{fmt}}{suffix} \u00b1 {std:{fmt}}"


def display_table(summary: pd.DataFrame) -> pd.DataFrame:
    """compare.csv as readable 'mean +- std' strings, one row per configuration."""
    rows = []
    for _, r in summary.iterrows():
        n = int(r["runs"])
        reached = int(r["reached"])
        rtt = _pm(r["rounds_to_target_mean"], r["rounds_to_target_std"], ".1f") if reached else "\u2013"
        mtt = _pm(r["uplink_mb_to_target_mean"], r["uplink_mb_to_target_std"], ".3f") if reached else "\u2013"
        rows.append({
            "config": r["label"],
            "setting": r.get("setting", "") if isinstance(r.get("setting", ""), str) else "",
            "final accuracy": _pm(r["final_accuracy_mean"], r["final_accuracy_std"], ".4f"),
            "compression": _pm(r["compression_ratio_mean"], r["compression_ratio_std"], ".2f", "\u00d7"),
            "uplink MB": _pm(r["uplink_mb_mean"], r["uplink_mb_std"], ".3f"),
            f"rounds to {r['target_accuracy']:g}": f"{rtt} ({reached}/{n})",
            f"uplink MB to {r['target_accuracy']:g}": mtt,
        })
    return pd.DataFrame(rows)


def compare_markdown(summary: pd.DataFrame, *, seeds: Sequence[int], base: SimConfig) -> str:
    """compare.md: the table, what was run, and the figure."""
    from reports.report import md_table

    disp = display_table(summary)
    lines = ["# Comparison of tuned configurations with baselines", "",
             f"Each configuration run on seeds {', '.join(map(str, seeds))} (not used by the search): "
             f"{base.dataset}/{base.model}, {base.clients} clients, {base.rounds} rounds. "
             "Cells are mean \u00b1 sample std over seeds; rounds and uplink MB to the target average the seeds "
             "that reached the target accuracy, (reached/runs) counts them. Compression is vs FedAvg on the same "
             "rounds.", "",
             md_table(disp), "", "![accuracy vs uplink](figures/compare_convergence.png)", ""]
    failed = summary[summary["failed"] > 0]
    for _, r in failed.iterrows():
        lines.append(f"- {r['label']}: {int(r['failed'])} run(s) failed; see compare/runs.csv")
    return "\n".join(lines) + "\n"


# ----- the command ---------------------------------------------------------------------------------
def compare_study(out_dir: str | Path, *, top: int = 3, configs_file: str | Path | None = None,
                  seeds: Sequence[int] | None = None, workers: int = 1, rounds: int | None = None,
                  base_file: str | Path | None = None, topk_p: float = 0.1, progress: bool = False,
                  cluster: str | None = None) -> pd.DataFrame:
    """Run the comparison and write compare.csv, compare.md, compare/runs.csv and the figures; return the table."""
    from reports import plots
    from reports.report import load_compare_runs, spec_seeds

    out = Path(out_dir)
    if top < 0:
        raise ConfigError(f"--top: {top} is out of range; allowed [0, inf)")
    if workers < 1:
        raise ConfigError(f"--workers: {workers} is out of range; allowed [1, inf)")
    if cluster is not None:
        from tuning.workers import check_cluster

        check_cluster("--cluster", cluster)
    if configs_file is None and not out.is_dir():
        raise ConfigError(f"{out}: no such directory (expected the --out directory of `qsfl tune`, "
                          "or pass --configs and --base)")
    base = read_base(out, base_file)
    if rounds is not None:
        base = base.replace(rounds=rounds)
    spec = read_spec(out) if out.is_dir() else None
    configs = tuned_configs(out, base, top=top, configs_file=configs_file, spec=spec)
    baselines = baseline_configs(base, topk_p=topk_p)
    seeds = choose_seeds(seeds, search_seeds(out, spec), preferred=spec_seeds(spec)[1] if spec else ())
    descriptions = {label: ", ".join(f"{k}={_short(v)}" for k, v in params.items())
                    for label, (_, params) in configs.items()}
    descriptions.update({k: v.format(p=topk_p) for k, v in DESCRIPTIONS.items()})
    everything = {label: cfg for label, (cfg, _) in configs.items()} | baselines
    jobs = [Job(label, "baseline" if label in BASELINES else "tuned", seed,
                cfg.replace(seed=seed).to_dict(), str(out / "compare" / label / f"seed{seed}"))
            for label, cfg in everything.items() for seed in seeds]
    out.mkdir(parents=True, exist_ok=True)
    runs = pd.DataFrame(run_jobs(jobs, workers=workers, progress=progress, cluster=cluster))
    (out / "compare").mkdir(exist_ok=True)
    atomic_write_text(out / "compare" / "runs.csv", runs.to_csv(index=False))
    summary = summarise(runs, order=list(everything), descriptions=descriptions)
    atomic_write_text(out / "compare.csv", summary.to_csv(index=False))
    atomic_write_text(out / "compare.md", compare_markdown(summary, seeds=seeds, base=base))
    histories = load_compare_runs(out, list(everything))
    histories = {k: [h for h in v if int(h.config.get("seed", -1)) in seeds] for k, v in histories.items()}
    plots.save_figure(plots.accuracy_vs_uplink(histories, log_x=True, target=base.target_accuracy),
                      out / "figures" / "compare_convergence")
    plots.save_figure(plots.accuracy_vs_round(histories, target=base.target_accuracy),
                      out / "figures" / "compare_convergence_round")
    return summary


def _short(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def parse_seeds(text: str) -> list[int]:
    """'100,101,102' or '100-102' -> [100, 101, 102]; ConfigError on anything else."""
    out: list[int] = []
    for part in (p.strip() for p in text.split(",")):
        try:
            if "-" in part[1:]:
                lo, hi = part.split("-", 1) if not part.startswith("-") else (part, part)
                out.extend(range(int(lo), int(hi) + 1))
            elif part:
                out.append(int(part))
        except ValueError:
            raise ConfigError(f"--seeds: {text!r} is not a comma-separated list of integers (e.g. 100,101,102)") \
                from None
    if not out or any(s < 0 for s in out):
        raise ConfigError(f"--seeds: {text!r}: expected non-negative integers, e.g. 100,101,102")
    return out

