"""``qsfl tune SPEC``: run or resume a tuning study (GA or Optuna) from a TOML spec."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from qsfl.errors import ConfigError

log = logging.getLogger(__name__)


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the ``tune`` subcommand."""
    p = sub.add_parser("tune", help="tune QSFL's hyperparameters with a GA or Optuna from a TOML study spec",
                       description="Run a tuning study. Outputs (trials table, best.toml, baseline.toml, logbook or "
                                   "study.db, report) go to --out; see docs/tuning.md.")
    p.add_argument("spec", type=Path, help="study spec TOML (see studies/)")
    p.add_argument("--out", type=Path, help="output directory (default: studies/out/<study name>)")
    p.add_argument("--resume", action="store_true", help="continue the study already in --out")
    p.add_argument("--workers", type=int, help="processes evaluating in parallel (default: study.workers, else 1)")
    p.add_argument("--cluster", metavar="ADDRESS",
                   help="GA: evaluate on a Dask cluster: tcp://host:8786, or local:N worker processes on this machine "
                        "(default: study.cluster; docs/scaling.md)")
    p.add_argument("--storage", help="Optuna storage URL (default sqlite:///OUT/study.db), e.g. postgresql://...")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a spec value, e.g. ga.population=4 or base.rounds=3 (repeatable)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    p.add_argument("--no-report", action="store_true", help="do not write report.html / report.md at the end")
    p.set_defaults(func=run_tune)


def write_report(out_dir: Path) -> Path | None:
    """Call reports.report.write_report(out_dir) when that module is installed; None otherwise."""
    try:
        from reports.report import write_report as report
    except (ImportError, AttributeError) as exc:
        log.info("no report written: %s", exc)
        return None
    try:
        return report(out_dir)
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - the study's results are already on disk
        log.warning("report failed: %s", exc)
        return None


def run_tune(args: argparse.Namespace) -> int:
    """Entry of ``qsfl tune``; ConfigError for user mistakes (exit 2)."""
    from qsfl_cli import show_progress
    from tuning.spec import load_spec
    from tuning.study import format_summary, run_study

    if args.workers is not None and args.workers < 1:
        raise ConfigError(f"--workers: {args.workers} is out of range; allowed [1, inf)")
    spec = load_spec(args.spec, args.overrides)
    workers = args.workers if args.workers is not None else spec.study.workers
    if args.cluster is not None:
        from tuning.workers import check_cluster

        check_cluster("--cluster", args.cluster)
        if args.workers is not None:
            raise ConfigError(f"--workers {args.workers} with --cluster {args.cluster}: choose one (the cluster's "
                              f"workers evaluate in parallel)")
    if args.storage is not None and spec.study.engine != "optuna":
        raise ConfigError("--storage: only for study.engine = \"optuna\"; the GA keeps checkpoint.pkl in --out")
    if args.storage is not None and "://" not in args.storage:
        raise ConfigError(f"--storage: expected a database URL such as sqlite:///study.db or "
                          f"postgresql://user@host/db, got {args.storage!r}")
    out = args.out or Path("studies") / "out" / spec.name
    verbose = logging.getLogger().isEnabledFor(logging.DEBUG)
    echo = (lambda s: None) if args.quiet else print
    result = run_study(spec, out, resume=args.resume, workers=workers, cluster=args.cluster, storage=args.storage,
                       progress=show_progress(args.quiet), verbose=verbose, echo=echo)
    if not args.no_report:
        report = write_report(out)
        if report is not None and not args.quiet:
            print(f"report: {report}")
    if not args.quiet:
        print(format_summary(result))
    return 0
