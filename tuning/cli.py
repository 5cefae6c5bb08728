"""``qsfl tune SPEC`` and ``qsfl compare OUT_DIR``: argument parsing and the tuning layer's part of each command.

The top-level CLI (qsfl_cli.py) registers these parsers and chains the reports after them (the report after a
study, the tables and figures after a comparison), so that ``tuning`` never imports ``reports``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import sys
from pathlib import Path
from typing import Any

from qsfl.errors import ConfigError
from qsfl.io import atomic_write_text, load_toml, parse_assignments
from tuning.storage import redact, resolve_url

log = logging.getLogger(__name__)

ENVIRONMENT_FILE = "environment.json"
CLUSTER_HELP = "run on a Dask cluster: tcp://host:8786, or local:N worker processes on this machine (docs/scaling.md)"


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    """Register the ``tune`` and ``compare`` subcommands (``common`` carries -v/-q)."""
    p = sub.add_parser("tune", parents=[common],
                       help="tune QSFL's hyperparameters with a GA or Optuna from a TOML study spec",
                       description="Run a tuning study. Outputs (trials table, best.toml, baseline.toml, logbook or "
                                   "study.db, report) go to --out; see docs/tuning.md.")
    p.add_argument("spec", type=Path, help="study spec TOML (see studies/)")
    p.add_argument("--out", type=Path, help="output directory (default: studies/out/<study name>)")
    p.add_argument("--resume", action="store_true", help="continue the study already in --out")
    p.add_argument("--workers", type=int, help="processes evaluating in parallel (default: study.workers, else 1)")
    p.add_argument("--cluster", metavar="ADDRESS", help=CLUSTER_HELP + "; default: study.cluster")
    p.add_argument("--storage", help="Optuna storage URL (default sqlite:///OUT/study.db), e.g. postgresql://..., or "
                                      "env:NAME to read it from the environment variable NAME (keeps a password off "
                                      "the command line)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a spec value, e.g. ga.population=4 or base.rounds=3 (repeatable)")
    p.add_argument("--no-report", action="store_true", help="do not write report.html / report.md at the end")

    c = sub.add_parser("compare", parents=[common],
                       help="re-run the best configs of a study with the baselines over fresh seeds",
                       description="Re-run the best N configs of a study (or the configs of a TOML file) together "
                                   "with fedavg, topk, QJ-only, SCSS-only and QSFL with the authors' defaults over "
                                   "seeds the search did not use; write OUT/compare.csv, compare_tests.csv, "
                                   "compare.md, compare/<label>/seed<k>/ and figures/compare_convergence.*")
    c.add_argument("out_dir", type=Path, metavar="OUT_DIR", help="the study's output directory (qsfl tune --out)")
    c.add_argument("--top", type=int, default=3, help="how many of the study's best configs (default 3; for "
                                                      "several objectives, points spread along the front)")
    c.add_argument("--configs", type=Path, metavar="FILE.toml",
                   help="compare these instead: [[config]] tables with label and params = {beta=..., k=...}")
    c.add_argument("--seeds", metavar="LIST", help="seeds the search did not use, e.g. 100,101,102 or 100-104 "
                                                   "(default: the spec's study.eval_seeds)")
    c.add_argument("--workers", type=int, default=1, help="parallel processes, 1 torch thread each (default 1)")
    c.add_argument("--cluster", metavar="ADDRESS", help=CLUSTER_HELP)
    c.add_argument("--rounds", type=int, help="override the number of rounds of every run")
    c.add_argument("--base", type=Path, metavar="FILE.toml",
                   help="base SimConfig when OUT_DIR has no spec.toml with a [base] table")
    c.add_argument("--topk-p", dest="topk_p", type=float, default=0.1, help="p of the topk baseline (default 0.1)")
    c.add_argument("--with", dest="others", action="append", default=[], type=Path, metavar="OTHER_OUT",
                   help="another tuned study of the same setting (e.g. of top-k): its best configs run side by side "
                        "on the same fresh seeds, with its strategy's defaults (repeatable)")


# ----- before torch is imported -----------------------------------------------------------------------
def planned_workers(args: argparse.Namespace) -> tuple[int, str | None]:
    """(workers, cluster) that this ``tune`` or ``compare`` command will run on, read without importing torch:
    the flags, else (tune) the spec's ``study.workers`` / ``study.cluster`` with its --set overrides. (1, None)
    where the spec cannot be read: the command's own checks report that."""
    workers, cluster = args.workers, args.cluster
    if args.command == "tune" and (workers is None or cluster is None):
        try:
            study = load_toml(args.spec).get("study", {})
            overrides = parse_assignments(args.overrides)
        except ConfigError:
            study, overrides = {}, {}
        study = dict(study) if isinstance(study, dict) else {}
        study.update({key.split(".", 1)[1]: value for key, value in overrides.items()
                      if key in ("study.workers", "study.cluster")})
        workers = workers if workers is not None else study.get("workers")
        cluster = cluster if cluster is not None else study.get("cluster")
    return (workers if isinstance(workers, int) else 1), (cluster if isinstance(cluster, str) else None)


def start_workers_early(args: argparse.Namespace) -> bool:
    """Start the forkserver of this command's pool or ``local:N`` cluster now, in the background
    (:func:`tuning.workers.start_forkserver_early`), before this process imports torch: both imports then run at
    once (benchmarks/cli_startup.py). Returns whether it started one."""
    from tuning.workers import start_forkserver_early

    return start_forkserver_early(*planned_workers(args))


# ----- tune ----------------------------------------------------------------------------------------
def _record_session(out: Path, started: dt.datetime, argv: list[str], status: str) -> None:
    """Append this run of ``qsfl tune`` (times, command, versions, hardware) to OUT/environment.json."""
    from qsfl.environment import describe

    path = out / ENVIRONMENT_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, ValueError):
        data = {}
    sessions = data.get("sessions", []) if isinstance(data, dict) else []
    sessions.append({"started": started.isoformat(timespec="seconds"),
                     "finished": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "status": status,
                     "command": redact(" ".join(["qsfl", *argv])), "environment": describe()})
    atomic_write_text(path, json.dumps({"sessions": sessions}, indent=2))


def tune(args: argparse.Namespace) -> tuple[Path, int, bool]:
    """Run (or resume) the study of ``qsfl tune``; return its output directory, exit code (1: every evaluation
    failed) and whether anything new ran (False: ``--resume`` of a study whose budget was spent). ConfigError for
    user mistakes."""
    from tuning.results import defaults_verdict
    from tuning.spec import load_spec
    from tuning.study import format_summary, run_study

    if args.workers is not None and args.workers < 1:
        raise ConfigError(f"--workers: {args.workers} is out of range; allowed [1, inf)")
    spec = load_spec(args.spec, args.overrides)
    workers = args.workers if args.workers is not None else spec.study.workers
    _check_cluster(args)
    storage = None if args.storage is None else resolve_url(args.storage)
    if storage is not None and spec.study.engine != "optuna":
        raise ConfigError("--storage: only for study.engine = \"optuna\"; the GA keeps checkpoint.pkl in --out")
    if storage is not None and "://" not in storage:
        raise ConfigError(f"--storage: expected a database URL such as sqlite:///study.db or "
                          f"postgresql://user@host/db, or env:NAME, got {redact(repr(storage))}")
    out: Path = args.out or Path("studies") / "out" / spec.name
    verbose = logging.getLogger().isEnabledFor(logging.DEBUG)
    echo = (lambda s: None) if args.quiet else print
    started = dt.datetime.now(dt.UTC)
    status = "interrupted"
    try:
        result = run_study(spec, out, resume=args.resume, workers=workers, storage=storage,
                           progress=args.progress, verbose=verbose, echo=echo, quiet=args.quiet,
                           cluster=args.cluster)
        status = "complete"
    finally:
        if (out / "spec.toml").is_file():  # the study started: say what ran it, even when it stopped early
            _record_session(out, started, list(getattr(args, "argv", sys.argv[1:])), status)
    if args.resume and not result.new_evaluations and not result.rewritten:
        print(f"nothing to resume: the study in {out} already ran its whole budget ({result.evaluations} evaluations); "
              "its outputs and report are unchanged (raise ga.generations, optuna.n_trials or random.n_trials in the "
              "spec to extend it, or `qsfl report` to redraw the report)", file=sys.stderr)
        return out, result.exit_code, False
    if not args.quiet:
        print(format_summary(result))
        verdict = None if "validation" in result.extra else \
            defaults_verdict(result.best, result.baseline, list(spec.objective.directions))
        if verdict:
            print(f"note: {verdict}")
    if result.exit_code:
        print(f"error: all {result.evaluations} evaluations failed; see the reason column of {out / 'trials.csv'}",
              file=sys.stderr)
    return out, result.exit_code, True


def _check_cluster(args: argparse.Namespace) -> None:
    """--cluster is ``local:N`` or a scheduler address, and not combined with an explicit --workers N > 1."""
    if args.cluster is None:
        return
    from tuning.workers import check_cluster

    check_cluster("--cluster", args.cluster)
    if args.workers is not None and args.workers != 1:
        raise ConfigError(f"--workers {args.workers} with --cluster {args.cluster}: choose one (the cluster's "
                          f"workers evaluate in parallel)")


# ----- compare -------------------------------------------------------------------------------------
def compare(args: argparse.Namespace) -> Any:
    """Plan and run the simulations of ``qsfl compare`` (tables and figures are the reports' part)."""
    from tuning.compare import parse_seeds, plan_comparison, run_comparison

    _check_cluster(args)
    seeds = parse_seeds(args.seeds) if args.seeds else None
    plan = plan_comparison(args.out_dir, top=args.top, configs_file=args.configs, seeds=seeds, rounds=args.rounds,
                           base_file=args.base, topk_p=args.topk_p, others=args.others)
    run_comparison(plan, workers=args.workers, progress=args.progress, cluster=args.cluster)
    return plan.out_dir
