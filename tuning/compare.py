"""Run a study's best configs next to the baselines over fresh seeds (the running half of ``qsfl compare``).

Labels: ``<strategy>-tuned-1..N`` (best first, run with the strategy the study tuned, or the labels of a
``--configs`` TOML), ``fedavg``, ``topk``, ``qj-only`` and ``scss-only`` (QSFL ablations with the authors'
defaults), ``qsfl-default`` (QSFL with the authors' defaults) and, for a study of another strategy,
``<strategy>-default`` (that strategy with its own defaults). Every run's History is saved under
``OUT/compare/<label>/seed<k>/`` (a run whose saved config equals the requested one is reused), one row per run
goes to ``OUT/compare/runs.csv`` and what was run to ``OUT/compare/plan.toml``. Tables, statistics and figures
are drawn from those files by ``reports.compare``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from qsfl.config import SimConfig, dump_toml, load_toml, strategy_fields
from qsfl.errors import ConfigError, check_range, check_table, reject_unknown
from qsfl.history import History
from qsfl.io import atomic_write_text
from tuning.objective import run_metrics
from tuning.results import COMPARE_DIR, best_digest, load_study, missing_files
from tuning.space import AUTHORS_DEFAULTS, SearchSpace, baseline_overrides, build_space
from tuning.spec import parse_base

log = logging.getLogger(__name__)

BASELINES = ("fedavg", "topk", "qj-only", "scss-only", "qsfl-default")
_DEFAULTS_TEXT = ", ".join(f"{k}={v}" for k, v in AUTHORS_DEFAULTS.items())
DESCRIPTIONS = {
    "fedavg": "FedAvg: every sampled client uploads its dense update",
    "topk": "top-k: every client uploads the top-p of its whole update (p={p:g})",
    "qj-only": "QSFL, QJ only (no SCSS): authors' defaults",
    "scss-only": "QSFL, SCSS only (no QJ): authors' defaults",
    "qsfl-default": f"QSFL with the authors' defaults ({_DEFAULTS_TEXT})",
}
DEFAULT_SEEDS = 5      # enough for a t interval that means something (the report says so)
CLIENTS_FILE = "clients.csv"


# ----- which configs -------------------------------------------------------------------------------
def defaults_run_label(base: SimConfig) -> str:
    """The compare label of the tuned strategy's own defaults: ``qsfl-default``, ``topk-default``, ..."""
    return f"{base.strategy.name}-default"


def baseline_configs(base: SimConfig, *, topk_p: float = 0.1,
                     space: SearchSpace | None = None) -> dict[str, SimConfig]:
    """The baselines built on ``base`` (same data, model, training and seed): FedAvg, top-k, the QSFL ablations and
    QSFL with the authors' defaults, and, for a study of another strategy, that strategy with its own defaults
    (``<name>-default``, with the study's search space to know which fields it searched)."""
    qsfl_base = base if base.strategy.name == "qsfl" else base.with_overrides({"strategy.name": "qsfl"})
    qsfl = {"strategy.name": "qsfl", **baseline_overrides(qsfl_base)}
    own: dict[str, SimConfig] = {}
    if base.strategy.name != "qsfl":
        own[defaults_run_label(base)] = base.with_overrides(baseline_overrides(base, space))
    return own | {
        "fedavg": base.with_overrides({"strategy.name": "fedavg"}),
        "topk": base.with_overrides({"strategy.name": "topk", "strategy.p": topk_p}),
        "qj-only": base.with_overrides({**qsfl, "strategy.use_qj": True, "strategy.use_scss": False}),
        "scss-only": base.with_overrides({**qsfl, "strategy.use_qj": False, "strategy.use_scss": True}),
        "qsfl-default": base.with_overrides({**qsfl, "strategy.use_qj": True, "strategy.use_scss": True}),
    }


_STRATEGY_FIELDS = set(strategy_fields())
_SIM_FIELDS = {f.name for f in dataclasses.fields(SimConfig)} - {"strategy"}
_INT_KEYS = ("k", "ns", "local_epochs", "batch_size", "strategy.k", "strategy.ns")


def params_to_overrides(params: Mapping[str, Any]) -> dict[str, Any]:
    """Search-space params (beta, k, ns, p, lr, ...) or dotted keys -> SimConfig overrides (the strategy stays the
    base config's unless the params name one with ``strategy.name``)."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        if isinstance(value, float) and value.is_integer() and key in _INT_KEYS:
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

    Without a ``[space]`` (``--configs`` and ``--base`` without a study) the known names (beta, k, ns, p, lr,
    ...) and dotted keys are used as they are.
    """
    if not spec or "space" not in spec:
        return lambda params: base.with_overrides(params_to_overrides(params))
    space = build_space(spec["space"], base)

    def to_config(params: Mapping[str, Any]) -> SimConfig:
        searched = {k: v for k, v in params.items() if k in space.names}
        extra = {k: v for k, v in params.items() if k not in space.names}  # --configs may set other fields
        if space.constraint == "repair":
            searched, _, _ = space.repair(searched, base)
        return base.with_overrides({**params_to_overrides(extra), **space.overrides(searched)})
    return to_config


def read_base(out_dir: Path, base_file: str | Path | None = None) -> SimConfig:
    """The base SimConfig: --base FILE (a SimConfig table or a spec with [base]), else spec.toml's [base]."""
    if base_file is not None:
        data = load_toml(base_file)
        return parse_base(data["base"]) if isinstance(data.get("base"), dict) else SimConfig.from_dict(data)
    path = out_dir / "spec.toml"
    if not path.is_file():
        raise ConfigError(f"{out_dir}: missing spec.toml (needed for its [base] config); pass --base FILE.toml")
    spec = load_toml(path)
    if not isinstance(spec.get("base"), dict):
        raise ConfigError(f"{path}: no [base] table; pass --base FILE.toml")
    try:
        return parse_base(spec["base"])
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def read_configs_file(path: str | Path) -> list[tuple[str | None, dict[str, Any]]]:
    """[[config]] tables (``label``, ``params`` and/or ``set``) or a best.toml's [[best]] -> (label, overrides)."""
    data = load_toml(path)
    entries = data.get("config", data.get("best"))
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{path}: expected [[config]] tables with params = {{...}} (or a best.toml's [[best]])")
    out = []
    for i, entry in enumerate(entries):
        where = f"{path}: config {i + 1}"
        reject_unknown(where, check_table(where, entry),
                       ("label", "params", "set", "fitness", "metrics", "individual", "trial", "generation", "repair"))
        overrides = dict(entry.get("params", {}))
        overrides.update(entry.get("set", {}))
        if not overrides:
            raise ConfigError(f"{where}: needs params = {{...}} or set = {{...}}")
        label = entry.get("label")
        if label is not None and (not isinstance(label, str) or not label or "/" in label or label in BASELINES
                                  or label.endswith("-default")):
            raise ConfigError(f"{where}: label {label!r} must be a non-empty name without '/', not one of "
                              f"{', '.join(BASELINES)} and not ending in -default")
        out.append((label, overrides))
    return out


def spread_along_front(points: Sequence[Sequence[float]], n: int) -> list[int]:
    """Indices of ``n`` points spread along a Pareto front: both ends of the first objective, then again and
    again the point farthest (in objectives scaled to [0, 1]) from those already picked. Ties go to the lower
    index, so the choice is deterministic."""
    pts = np.asarray(points, dtype=float)
    if len(pts) <= n:
        return list(range(len(pts)))
    if n <= 0:
        return []
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    scaled = (pts - lo) / np.where(hi > lo, hi - lo, 1.0)
    order = np.argsort(scaled[:, 0], kind="stable")
    chosen = [int(order[0])] + ([int(order[-1])] if n > 1 else [])
    while len(chosen) < n:
        dist = np.min(np.linalg.norm(scaled[:, None, :] - scaled[None, chosen, :], axis=2), axis=1)
        dist[chosen] = -1.0
        chosen.append(int(np.argmax(dist)))
    return sorted(chosen, key=lambda i: (scaled[i, 0], i))


def _plain(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


def _candidates(out_dir: Path, top: int) -> tuple[list[dict[str, Any]], str]:
    """Params of the study's best configs, best first (a spread of the front for several objectives)."""
    if missing_files(out_dir):
        raise ConfigError(f"{out_dir}: no best.toml and no complete trials to take the best configs from; "
                          "run `qsfl tune` first or pass --configs FILE.toml")
    study = load_study(out_dir)
    best = [dict(b.get("params", {})) for b in study.best]
    if len(study.directions) > 1:
        fronts = [[float(f) for f in b.get("fitness", [])] for b in study.best]
        signs = [1.0 if m else -1.0 for m in study.maximize]
        pick = spread_along_front([[s * f for s, f in zip(signs, fit)] for fit in fronts], top) if fronts else []
        return [best[i] for i in pick], "front"
    done = study.complete()
    fcols, pcols = study.fitness_columns, study.param_columns
    if fcols and pcols and len(done):  # after best.toml's entries: the next best trials, for --top > hof size
        ranked = done.sort_values(fcols[0], ascending=not study.maximize[0], kind="stable")
        best += [{c[len("param_"):]: _plain(r[c]) for c in pcols} for _, r in ranked.iterrows()]
    if not best:
        raise ConfigError(f"{out_dir}: no best.toml and no complete trials to take the best configs from; "
                          "run `qsfl tune` first or pass --configs FILE.toml")
    return best, "ranked"


def tuned_label(config: SimConfig, rank: int) -> str:
    """``<strategy>-tuned-<rank>``: the label says which strategy runs (``qsfl-tuned-1``, ``topk-tuned-1``)."""
    return f"{config.strategy.name}-tuned-{rank}"


def tuned_configs(out_dir: Path, base: SimConfig, *, top: int, configs_file: str | Path | None,
                  spec: Mapping[str, Any] | None = None) -> dict[str, tuple[SimConfig, dict[str, Any]]]:
    """label -> (config, params) of the configs to compare: from --configs, else best.toml / trials."""
    to_config = params_mapper(spec, base)
    out: dict[str, tuple[SimConfig, dict[str, Any]]] = {}
    if configs_file is not None:
        for label, params in read_configs_file(configs_file):
            label = label or tuned_label(to_config(params), len(out) + 1)
            if label in out:
                raise ConfigError(f"{configs_file}: label {label!r} appears twice")
            out[label] = (to_config(params), params)
        return out
    entries, _ = _candidates(out_dir, top)
    seen: list[dict[str, Any]] = []
    for params in entries:
        config = to_config(params)
        if config.to_dict() in seen:  # two genomes can repair to the same config (ns > k): compare it once
            continue
        seen.append(config.to_dict())
        out[tuned_label(config, len(out) + 1)] = (config, params)
        if len(out) == top:
            break
    return out


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
    """Simulate one job (or reuse its saved History if the config matches) and return its runs.csv row.

    Next to the History the run's per-client table goes to ``clients.csv`` (qsfl.fairness.client_table).
    """
    from qsfl.fairness import client_table
    from qsfl.sim import Simulation

    path = Path(job.path)
    config = SimConfig.from_dict(job.config)
    history = _reusable(path, config)
    reused = history is not None
    if history is None:
        try:
            sim = Simulation(config)
            history = sim.run()
            clients = client_table(sim, history.df, sim.final_weights)
        except Exception as exc:  # noqa: BLE001 - one broken run must not lose the others' results
            log.warning("%s seed %d failed: %s: %s", job.label, job.seed, type(exc).__name__, exc)
            return {"label": job.label, "kind": job.kind, "seed": job.seed, "status": "failed",
                    "reason": f"{type(exc).__name__}: {exc}", "path": str(path), "reused": False}
        history.save(path)
        atomic_write_text(path / CLIENTS_FILE, clients.to_csv(index=False))
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
    """One runs.csv row: the run's metrics (tuning.objective's names, NaN where undefined) and its status."""
    s = history.summary
    metrics = run_metrics(history)
    if not math.isfinite(metrics["compression_ratio"]):
        metrics["compression_ratio"] = math.nan  # no uplink at all (a run that diverged at once): undefined
    return {"label": label, "kind": kind, "seed": int(history.config.get("seed", -1)), "status": s["status"],
            "reason": s.get("reason") or "", **metrics, "target_accuracy": s["target_accuracy"],
            "rounds_run": s["rounds_run"], "fedavg_uplink_bytes": float(s["fedavg_uplink_bytes"]),
            "wall_time_s": s["wall_time_s"]}


def run_jobs(jobs: Sequence[Job], *, workers: int = 1, progress: bool = False,
             cluster: str | None = None) -> list[dict[str, Any]]:
    """Run all jobs on a pool of tuning.workers (serial, processes or a Dask cluster; Ctrl-C stops the workers
    at once) and return their rows in job order."""
    from tqdm.auto import tqdm

    from tuning.workers import make_workers

    rows: list[dict[str, Any] | None] = [None] * len(jobs)
    base = SimConfig.from_dict(jobs[0].config) if jobs else None   # its dataset is preloaded in every worker
    with tqdm(total=len(jobs), desc="compare", unit="run", disable=not progress) as bar, \
            make_workers(workers, cluster, base) as pool:
        for i, row in pool.map_unordered(run_job, jobs):
            rows[i] = row
            bar.update()
    return [r for r in rows if r is not None]


# ----- the command ---------------------------------------------------------------------------------
@dataclass
class ComparePlan:
    """What a comparison runs: labelled configs on the same seeds."""

    out_dir: Path
    base: SimConfig
    seeds: list[int]
    configs: dict[str, SimConfig]
    kinds: dict[str, str]
    settings: dict[str, str]
    params: dict[str, dict[str, Any]] = field(default_factory=dict)
    source: str = "best.toml"
    best_digest: str = ""
    defaults: str = "qsfl-default"                             # the label of the tuned strategy's own defaults
    objective: dict[str, Any] = field(default_factory=dict)    # the study's [objective] table (empty: none)
    studies: dict[str, str] = field(default_factory=dict)      # tuned label -> the study it comes from
    others: list[dict[str, Any]] = field(default_factory=list)  # --with studies: dir, study, best_digest, defaults

    def jobs(self) -> list[Job]:
        """One job per (label, seed), labels in plan order."""
        return [Job(label, self.kinds[label], seed, cfg.replace(seed=seed).to_dict(),
                    str(self.out_dir / COMPARE_DIR / label / f"seed{seed}"))
                for label, cfg in self.configs.items() for seed in self.seeds]

    def to_toml(self) -> dict[str, Any]:
        """plan.toml: seeds, source (best.toml digest or the configs file), and each label's kind and setting."""
        return {"seeds": self.seeds, "source": self.source, "best_digest": self.best_digest,
                "defaults": self.defaults, "objective": self.objective, "with": self.others,
                "base": {k: v for k, v in self.base.to_dict().items() if k != "strategy"},
                "config": [{"label": label, "kind": self.kinds[label], "setting": self.settings[label],
                            "params": self.params.get(label, {}),
                            **({"study": self.studies[label]} if self.studies.get(label) else {})}
                           for label in self.configs]}


def _short(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _fields_text(config: SimConfig, fields: Sequence[str]) -> str:
    """``p=0.4, ...``: the values of ``fields`` in ``config``'s strategy (what a strategy's defaults are)."""
    strategy = config.to_dict()["strategy"]
    return ", ".join(f"{k}={_short(strategy[k])}" for k in dict.fromkeys(fields) if k in strategy) or "no parameters"


def _setting(config: SimConfig) -> dict[str, Any]:
    """What two studies must share to be compared side by side: the config without strategy and seed."""
    return {k: v for k, v in config.to_dict().items() if k not in ("strategy", "seed")}


@dataclass
class OtherStudy:
    """A further tuned study of ``qsfl compare OUT --with OTHER``: its best configs join the comparison."""

    out_dir: Path
    name: str
    base: SimConfig
    tuned: dict[str, tuple[SimConfig, dict[str, Any]]]
    used_seeds: set[int]
    best_digest: str
    space: SearchSpace | None


def _other_study(path: str | Path, base: SimConfig, *, top: int, rounds: int | None, taken: set[str]) -> OtherStudy:
    """Read a ``--with`` study: same setting as ``base`` (ConfigError naming the differing keys), its best configs
    labelled ``<strategy>-tuned-<rank>`` (``<study>-tuned-<rank>`` where that label is taken)."""
    d = Path(path)
    where = f"--with {d}"
    if not d.is_dir() or missing_files(d):
        raise ConfigError(f"{where}: not a study output directory (expected the --out of `qsfl tune`)")
    study = load_study(d)
    if study.is_grid:
        raise ConfigError(f"{where}: a grid study has no tuned configuration to compare")
    other = read_base(d)
    if rounds is not None:
        other = other.replace(rounds=rounds)
    mine, theirs = _setting(base), _setting(other)
    differ = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
    if differ:
        raise ConfigError(f"{where}: its [base] differs in {', '.join(differ)}; tuned configs are compared side by "
                          "side only on the same setting (data, model, clients, rounds, training)")
    spec = load_toml(d / "spec.toml")
    tuned: dict[str, tuple[SimConfig, dict[str, Any]]] = {}
    for rank, (config, params) in enumerate(tuned_configs(d, other, top=top, configs_file=None, spec=spec).values(),
                                            1):
        label = tuned_label(config, rank)
        tuned[f"{study.name}-tuned-{rank}" if label in taken else label] = (config, params)
    space = build_space(spec["space"], other) if "space" in spec else None
    return OtherStudy(d, study.name, other, tuned, set(study.search_seeds()), best_digest(study.best), space)


def plan_comparison(out_dir: str | Path, *, top: int = 3, configs_file: str | Path | None = None,
                    seeds: Sequence[int] | None = None, rounds: int | None = None,
                    base_file: str | Path | None = None, topk_p: float = 0.1,
                    others: Sequence[str | Path] = ()) -> ComparePlan:
    """Choose the configs and seeds of a comparison (every check before any simulation). ``others``: further tuned
    studies of the same setting (``--with``) whose best configs run side by side, on the same fresh seeds."""
    out = Path(out_dir)
    check_range("--top", top, 1, None, integer=True)
    check_range("--topk-p", topk_p, 0.0, 1.0, lo_open=True)
    if rounds is not None:
        check_range("--rounds", rounds, 1, None, integer=True)
    if configs_file is None and not out.is_dir():
        raise ConfigError(f"{out}: no such directory (expected the --out directory of `qsfl tune`, "
                          "or pass --configs and --base)")
    base = read_base(out, base_file)
    if rounds is not None:
        base = base.replace(rounds=rounds)
    spec = load_toml(out / "spec.toml") if (out / "spec.toml").is_file() else None
    tuned = tuned_configs(out, base, top=top, configs_file=configs_file, spec=spec)
    study = load_study(out) if not missing_files(out) else None
    extra: list[OtherStudy] = []
    for path in others:
        extra.append(_other_study(path, base, top=top, rounds=rounds,
                                  taken=set(tuned) | {lab for o in extra for lab in o.tuned}))
    used = set(study.search_seeds()) if study is not None else set()
    for o in extra:          # fresh seeds for every study compared: none of them searched or validated on them
        used |= o.used_seeds
    preferred = study.spec_seeds()[1] if study is not None else []
    chosen = choose_seeds(seeds, used, preferred=preferred)
    space = build_space(spec["space"], base) if spec and "space" in spec else None
    baselines = baseline_configs(base, topk_p=topk_p, space=space)
    for o in extra:          # each further study's strategy with its own defaults, untuned
        label = defaults_run_label(o.base)
        if label not in baselines:
            baselines[label] = o.base.with_overrides(baseline_overrides(o.base, o.space))
    studies = {label: study.name if study is not None else "" for label in tuned}
    for o in extra:
        tuned.update(o.tuned)
        studies.update({label: o.name for label in o.tuned})
    configs = {label: cfg for label, (cfg, _) in tuned.items()} | baselines
    answered_defaults = [dict(b.get("params", {})) for b in (study.best if study is not None else [])
                         if b.get("defaults")]
    for o in extra:
        answered_defaults += [dict(b.get("params", {})) for b in load_study(o.out_dir).best if b.get("defaults")]
    settings = {label: f"{cfg.strategy.name}: " + ", ".join(f"{k}={_short(v)}" for k, v in params.items())
                + (" (the defaults: validation found nothing better)" if params in answered_defaults else "")
                + (f" (study {studies[label]})" if extra and studies.get(label) else "")
                for label, (cfg, params) in tuned.items()} \
        | {label: f"{type(cfg.strategy).defaults_label()} "
                  f"({_fields_text(cfg, [*type(cfg.strategy).baseline_fields, *_searched(cfg, space, extra)])})"
           for label, cfg in baselines.items() if label not in DESCRIPTIONS} \
        | {k: v.format(p=topk_p) for k, v in DESCRIPTIONS.items()}
    return ComparePlan(out_dir=out, base=base, seeds=chosen, configs=configs,
                       kinds={label: "baseline" if label in baselines else "tuned" for label in configs},
                       settings=settings, params={label: p for label, (_, p) in tuned.items()},
                       source="configs" if configs_file is not None else "best.toml",
                       best_digest=best_digest(study.best) if study is not None and configs_file is None else "",
                       defaults=defaults_run_label(base), objective=dict((spec or {}).get("objective", {})),
                       studies=studies,
                       others=[{"dir": str(o.out_dir), "study": o.name, "best_digest": o.best_digest,
                                "defaults": defaults_run_label(o.base)} for o in extra])


def _searched(config: SimConfig, space: SearchSpace | None, extra: Sequence[OtherStudy]) -> list[str]:
    """The strategy fields a study of ``config``'s strategy searched (to say what its defaults are)."""
    spaces = [space] + [o.space for o in extra if o.base.strategy.name == config.strategy.name]
    return [f for sp in spaces if sp is not None for f in sp.strategy_fields()
            if f in type(config.strategy).parameters()]


def run_comparison(plan: ComparePlan, *, workers: int = 1, progress: bool = False,
                   cluster: str | None = None) -> pd.DataFrame:
    """Run the plan and write compare/<label>/seed<k>/, compare/runs.csv and compare/plan.toml; return the runs.
    ``cluster``: run on a Dask cluster (``local:N`` or a scheduler address) instead of ``workers`` processes."""
    check_range("--workers", workers, 1, None, integer=True)
    root = plan.out_dir / COMPARE_DIR
    root.mkdir(parents=True, exist_ok=True)
    runs = pd.DataFrame(run_jobs(plan.jobs(), workers=workers, progress=progress, cluster=cluster))
    atomic_write_text(root / "runs.csv", runs.to_csv(index=False))
    atomic_write_text(root / "plan.toml", dump_toml(plan.to_toml()))
    return runs
