"""The `qsfl` command line: simulate | tune | compare | report | data check | flower-app.

User mistakes (bad config, bad spec, missing files) print one ``error: ...`` line and exit with code 2, never a
traceback; Ctrl-C prints one line and exits with 130, also while the program is still importing torch (the
project's modules are imported inside :func:`main`, after its handler is in place). This module is the top
layer: it registers the parsers of ``tuning.cli`` (tune, compare) and ``reports.cli`` (report) and chains them,
the report after ``tune`` and the tables and figures after ``compare``, so that ``tuning`` never imports
``reports``.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from qsfl.config import SimConfig

# the built-in strategies (tests/e2e/test_cli.py checks it against the registry; the registry's import loads torch)
STRATEGY_HELP = ("fedavg | qsfl | topk | randk | stc | signsgd | qsgd (QSFL's ablations: qsfl with "
                 "--set strategy.use_scss=false (QJ-only) or strategy.use_qj=false (SCSS-only))")

# the project's modules (torch: seconds on a busy machine) are imported inside the functions, so that a Ctrl-C
# during those imports reaches main()'s handler

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

# flag name -> SimConfig field
SIM_FLAGS = {"dataset": "dataset", "model": "model", "partition": "partition", "clients": "clients",
             "rounds": "rounds", "local_epochs": "local_epochs", "batch_size": "batch_size", "lr": "lr",
             "strategy": "strategy.name", "seed": "seed", "engine": "engine", "device": "device"}


class UsageError(Exception):
    """Raised for a bad command line; printed as one line, exit code 2."""


def show_progress(quiet: bool) -> bool:
    """Progress bars only on a terminal and without --quiet."""
    return not quiet and sys.stderr.isatty()


def common_options(top: bool) -> argparse.ArgumentParser:
    """-v/--verbose and -q/--quiet, accepted before and after the subcommand.

    In the subcommands' copy the defaults are SUPPRESS, so ``qsfl -v tune ...`` keeps the top level's value
    instead of having the subcommand's default overwrite it.
    """
    p = argparse.ArgumentParser(add_help=False)
    default: Any = False if top else argparse.SUPPRESS
    p.add_argument("-v", "--verbose", action="store_true", default=default, help="debug logging")
    p.add_argument("-q", "--quiet", action="store_true", default=default,
                   help="no progress bars; print only results and errors")
    return p


# ----- simulate ----------------------------------------------------------------------------------------
def add_simulate_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("simulate", parents=[common], help="run one federated simulation and write its History",
                       description="Run one federated simulation. Config from --config TOML, then flags, "
                                   "then --set key=value overrides (later wins).")
    p.add_argument("--config", type=Path, help="TOML file with SimConfig fields and a [strategy] table")
    p.add_argument("--dataset")
    p.add_argument("--model")
    p.add_argument("--partition")
    p.add_argument("--clients", type=int)
    p.add_argument("--rounds", type=int)
    p.add_argument("--local-epochs", dest="local_epochs", type=int)
    p.add_argument("--batch-size", dest="batch_size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--strategy", help=STRATEGY_HELP)
    p.add_argument("--seed", type=int)
    p.add_argument("--engine", help="auto | batched | sequential")
    p.add_argument("--device", help="auto | cpu | cuda")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="any config field, e.g. strategy.beta=0.9 or partition_options.alpha=0.5 (repeatable)")
    p.add_argument("--out", type=Path, default=Path("out/simulate"), help="output directory (default out/simulate)")
    p.add_argument("--overwrite", action="store_true", help="replace the outputs of an earlier run in --out")
    p.set_defaults(func=run_simulate)


def build_sim_config(args: argparse.Namespace) -> SimConfig:
    """SimConfig from --config, the flags and --set overrides, validated."""
    from qsfl.config import SimConfig, load_config, parse_assignments

    config = load_config(args.config) if args.config else SimConfig()
    overrides = {SIM_FLAGS[flag]: getattr(args, flag) for flag in SIM_FLAGS if getattr(args, flag) is not None}
    overrides.update(parse_assignments(args.overrides))
    return config.with_overrides(overrides) if overrides else config


def _mb(v: Any) -> str:
    return "-" if v is None else f"{v / 1e6:.3f} MB"


def _ratio(v: Any) -> str:
    return f"{v:.2f}x vs FedAvg" if isinstance(v, (int, float)) and v == v and abs(v) != float("inf") else \
        "n/a (no uplink)"


def format_summary(summary: dict[str, Any]) -> str:
    """One screen of the run's key numbers (rounds counted from 1)."""
    lines = [
        f"status              {summary['status']}" + (f" ({summary['reason']})" if summary.get("reason") else ""),
        f"rounds run          {summary['rounds_run']}",
        f"parameters          {summary['n_params']:,}",
        f"final accuracy      {summary['final_accuracy']:.4f}",
        f"best accuracy       {summary['best_accuracy']:.4f}",
        f"uplink total        {_mb(summary['total_uplink_bytes'])}",
        f"downlink total      {_mb(summary['total_downlink_bytes'])}",
        f"compression ratio   {_ratio(summary['compression_ratio'])}",
        f"target accuracy     {summary['target_accuracy']:.2f}: "
        + (f"reached at round {summary['rounds_to_target']} after {_mb(summary['uplink_bytes_to_target'])} uplink"
           if summary["rounds_to_target"] is not None else "not reached"),
        f"wall time           {summary['wall_time_s']:.2f} s",
    ]
    return "\n".join(lines)


def prepare_out_dir(path: Path, overwrite: bool) -> None:
    """Create the output directory before any work; refuse one that holds files unless ``overwrite``."""
    from qsfl.errors import ConfigError

    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise ConfigError(f"--out: {str(path)!r} is not empty (an earlier run?); pass --overwrite to replace its "
                          "files or choose another --out")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--out: cannot create directory {str(path)!r}: {exc.strerror or exc}") from None


def run_simulate(args: argparse.Namespace) -> int:
    from qsfl.sim import Simulation

    simulation = Simulation(build_sim_config(args))   # every check (data, model, ns) before any output
    prepare_out_dir(args.out, args.overwrite)
    history = simulation.run(progress=args.progress)
    out = history.save(args.out)
    print(format_summary(history.summary))
    print(f"written to          {out}/history.csv, history.parquet, config.toml, summary.json")
    return 0


# ----- data check --------------------------------------------------------------------------------------
def add_data_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("data", parents=[common], help="check a local dataset directory",
                       description="Datasets read from local files (femnist, mnist, cifar10).")
    actions = p.add_subparsers(dest="action", required=True, metavar="{check}")
    c = actions.add_parser("check", parents=[common], help="load a local dataset as a run would and say what it holds",
                           description="Load PATH as dataset NAME exactly as a simulation would, print what it "
                                       "found (files, samples, classes, natural clients) or one error line.")
    c.add_argument("path", type=Path, metavar="PATH", help="the directory (dataset_options.path)")
    c.add_argument("--dataset", required=True, help="femnist | mnist | cifar10")
    c.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="another loader option, e.g. max_users=50 (repeatable)")
    c.set_defaults(func=run_data_check)


def run_data_check(args: argparse.Namespace) -> int:
    from qsfl.config import parse_assignments
    from qsfl.data.check import check_dataset

    options = parse_assignments(args.overrides)
    print("\n".join(check_dataset(args.dataset, args.path, **options)))
    return 0


# ----- tune / compare chained with the reports -------------------------------------------------------------
def run_tune(args: argparse.Namespace) -> int:
    """``qsfl tune``: the study (tuning), then its report (reports) unless --no-report."""
    from qsfl.errors import ConfigError
    from tuning import cli as tuning_cli

    out, code, ran = tuning_cli.tune(args)
    if args.no_report or not ran:
        return code
    from reports.report import write_report

    try:
        path = write_report(out)
    except ConfigError:
        raise
    except Exception as exc:  # the study's results are on disk: say so, and fail visibly
        if interrupted(exc):
            raise
        print(f"error: the study finished but its report failed ({type(exc).__name__}: {exc}); "
              f"the results are in {out}; retry with `qsfl report {out}`", file=sys.stderr)
        return 1
    if not args.quiet:
        print(f"report: {path}")
    return code


def run_compare(args: argparse.Namespace) -> int:
    """``qsfl compare``: the simulations (tuning), then the tables and figures (reports)."""
    from reports.compare import display_table, objective_texts, summary_note, verdicts, write_compare
    from reports.format import md_table
    from tuning import cli as tuning_cli
    from tuning.results import read_compare

    out = tuning_cli.compare(args)
    summary = write_compare(out)
    compare = read_compare(out)
    assert compare is not None   # write_compare just read it
    print(md_table(display_table(summary, objective_texts(compare)).drop(columns=["setting"])))
    print(summary_note(compare, summary))
    for line in verdicts(compare, summary):
        print(f"- {line}")
    print(f"written to {out}/compare.csv, compare_tests.csv, compare.md, compare/, figures/compare_convergence.png")
    if (out / "spec.toml").is_file():
        print(f"include it in the report: qsfl report {out}")
    return 0


def compare_study(out_dir: str | Path, *, top: int = 3, configs_file: str | Path | None = None,
                  seeds: Sequence[int] | None = None, workers: int = 1, rounds: int | None = None,
                  base_file: str | Path | None = None, topk_p: float = 0.1, progress: bool = False,
                  others: Sequence[str | Path] = ()) -> Any:
    """``qsfl compare`` from Python: run the comparison and write its tables and figures; return compare.csv.
    ``others``: further tuned studies of the same setting compared side by side (``--with``)."""
    from reports.compare import write_compare
    from tuning.compare import plan_comparison, run_comparison

    plan = plan_comparison(out_dir, top=top, configs_file=configs_file, seeds=seeds, rounds=rounds,
                           base_file=base_file, topk_p=topk_p, others=others)
    run_comparison(plan, workers=workers, progress=progress)
    return write_compare(plan.out_dir)


# ----- flower-app --------------------------------------------------------------------------------------
def add_flower_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("flower-app", parents=[common], help="write a Flower app that runs a study's best config",
                       description="Write a Flower app (ServerApp + ClientApp + pyproject.toml) that runs the best "
                                   "config of the study in OUT_DIR (its spec.toml's [base] with best.toml's params) in "
                                   "a federation: Flower's simulation runtime (flwr run) or real SuperNodes. Needs "
                                   "qsfl-tune's flower extra to run (docs/flower.md).")
    p.add_argument("study_dir", type=Path, metavar="OUT_DIR", help="a study's output directory (qsfl tune --out)")
    p.add_argument("--out", type=Path, required=True, help="the app's directory")
    p.add_argument("--name", default="qsfl-app", help="the app's name (default qsfl-app)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="change a config field after the study's params, e.g. rounds=5 or seed=1 (repeatable)")
    p.add_argument("--overwrite", action="store_true", help="replace the files of an app already in --out")
    p.set_defaults(func=run_flower_app)


def run_flower_app(args: argparse.Namespace) -> int:
    from qsfl.config import parse_assignments
    from qsfl.flower.export import run_command, write_app
    from qsfl.io import load_toml
    from tuning.compare import read_base, tuned_configs
    from tuning.results import check_study_dir

    study = check_study_dir(args.study_dir)
    base = read_base(study)
    label, (config, params) = next(iter(tuned_configs(study, base, top=1, configs_file=None,
                                                      spec=load_toml(study / "spec.toml")).items()))
    overrides = parse_assignments(args.overrides)
    if overrides:
        config = config.with_overrides(overrides)
    out = write_app(config, args.out, name=args.name, overwrite=args.overwrite, source=f"{study} ({label})")
    print(f"Flower app for {config.strategy.name} with {params} written to {out}")
    print(f"run it with Flower's simulation runtime: {run_command(out, config)}")
    return 0


# ----- the parser ------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    from qsfl import __version__
    from reports import cli as reports_cli
    from tuning import cli as tuning_cli

    parser = argparse.ArgumentParser(prog="qsfl", description="QSFL simulator and hyperparameter tuner",
                                     parents=[common_options(top=True)])
    parser.add_argument("--version", action="version", version=f"qsfl-tune {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{simulate,tune,compare,report,data,flower-app}")
    common = common_options(top=False)
    add_simulate_parser(sub, common)
    tuning_cli.add_parsers(sub, common)
    reports_cli.add_parsers(sub, common)
    add_data_parser(sub, common)
    add_flower_parser(sub, common)
    sub.choices["tune"].set_defaults(func=run_tune)
    sub.choices["compare"].set_defaults(func=run_compare)
    return parser


def _exit_now(code: int) -> None:
    """Leave at once after Ctrl-C: flush what was printed and logged, skip the exit handlers and the interpreter's
    teardown. Every ``finally`` has run (workers terminated, files written atomically), and tearing down torch
    alone takes seconds on a busy machine; a user who pressed Ctrl-C wants the prompt back now. (A finished command
    ends the ordinary way.)"""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def interrupted(exc: BaseException) -> bool:
    """Did Ctrl-C cause ``exc``? A KeyboardInterrupt, or an exception raised because of one (an import of a C
    extension that was interrupted fails with ``ImportError: initialization failed``, caused by it)."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, KeyboardInterrupt):
            return True
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return False


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default: this program's arguments) and return the exit code.

    The program itself (no ``argv``) prints an unexpected error's traceback with every storage password masked
    (:func:`tuning.storage.redact`) and exits with 1; a caller in Python gets the exception."""
    program = argv is None       # the `qsfl` program itself, not a caller in Python
    try:
        return _run(argv)
    except BaseException as exc:
        if not interrupted(exc):
            if not (program and isinstance(exc, Exception)):
                raise
            from tuning.storage import redact

            print(redact("".join(traceback.format_exception(exc))), end="", file=sys.stderr)
            return 1
        if program:   # leaving now: a second Ctrl-C must not interrupt the one line below
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        print("interrupted", file=sys.stderr)
        if program:
            _exit_now(EXIT_INTERRUPTED)
        return EXIT_INTERRUPTED


def _run(argv: Sequence[str] | None) -> int:
    from qsfl.errors import ConfigError

    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv
    args.progress = show_progress(args.quiet)
    from tuning.storage import RedactingFormatter, redact

    handler = logging.StreamHandler()
    handler.setFormatter(RedactingFormatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, handlers=[handler])
    try:
        if args.command in ("tune", "compare"):
            from tuning import cli as tuning_cli

            tuning_cli.start_workers_early(args)   # torch is not imported yet: the forkserver imports it meanwhile
        return int(args.func(args) or 0)
    except (ConfigError, UsageError) as exc:
        print(redact(f"error: {exc}"), file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
