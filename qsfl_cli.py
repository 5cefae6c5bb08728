"""The `qsfl` command line: simulate | tune | compare | report.

User mistakes (bad config, bad spec, missing files) print one ``error: ...`` line and exit with code 2,
never a traceback. ``tune`` lives in tuning/cli.py, ``compare`` and ``report`` in reports/cli.py; each
module exposes ``add_parser(subparsers)`` and the parser's ``func``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from qsfl.config import SimConfig, load_config, parse_assignments
from qsfl.errors import ConfigError

EXIT_USAGE = 2

# flag name -> SimConfig field
SIM_FLAGS = {"dataset": "dataset", "model": "model", "partition": "partition", "clients": "clients",
             "rounds": "rounds", "local_epochs": "local_epochs", "batch_size": "batch_size", "lr": "lr",
             "strategy": "strategy.name", "seed": "seed", "engine": "engine", "device": "device"}


class UsageError(Exception):
    """Raised for a bad command line; printed as one line, exit code 2."""


def show_progress(quiet: bool) -> bool:
    """Progress bars only on a terminal and without --quiet."""
    return not quiet and sys.stderr.isatty()


def add_simulate_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("simulate", help="run one federated simulation and write its History",
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
    p.add_argument("--strategy", help="fedavg | topk | qsfl")
    p.add_argument("--seed", type=int)
    p.add_argument("--engine", help="auto | batched | sequential")
    p.add_argument("--device", help="auto | cpu | cuda")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="any config field, e.g. strategy.beta=0.9 or partition_options.alpha=0.5 (repeatable)")
    p.add_argument("--out", type=Path, default=Path("out/simulate"), help="output directory (default out/simulate)")
    p.add_argument("--quiet", action="store_true", help="no progress bar, summary only")
    p.set_defaults(func=run_simulate)


def build_sim_config(args: argparse.Namespace) -> SimConfig:
    """SimConfig from --config, the flags and --set overrides, validated."""
    config = load_config(args.config) if args.config else SimConfig()
    overrides = {SIM_FLAGS[flag]: getattr(args, flag) for flag in SIM_FLAGS if getattr(args, flag) is not None}
    overrides.update(parse_assignments(args.overrides))
    return config.with_overrides(overrides) if overrides else config


def format_summary(summary: dict[str, Any]) -> str:
    """One screen of the run's key numbers."""
    def mb(v: Any) -> str:
        return "-" if v is None else f"{v / 1e6:.3f} MB"
    lines = [
        f"status              {summary['status']}" + (f" ({summary['reason']})" if summary.get("reason") else ""),
        f"rounds run          {summary['rounds_run']}",
        f"parameters          {summary['n_params']:,}",
        f"final accuracy      {summary['final_accuracy']:.4f}",
        f"best accuracy       {summary['best_accuracy']:.4f}",
        f"uplink total        {mb(summary['total_uplink_bytes'])}",
        f"downlink total      {mb(summary['total_downlink_bytes'])}",
        f"compression ratio   {summary['compression_ratio']:.2f}x vs FedAvg",
        f"target accuracy     {summary['target_accuracy']:.2f}: "
        + (f"reached at round {summary['rounds_to_target']} after {mb(summary['uplink_bytes_to_target'])} uplink"
           if summary["rounds_to_target"] is not None else "not reached"),
        f"wall time           {summary['wall_time_s']:.2f} s",
    ]
    return "\n".join(lines)


def prepare_out_dir(path: Path) -> None:
    """Create the output directory before any work, so a bad --out fails at once with a clear error."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--out: cannot create directory {str(path)!r}: {exc.strerror or exc}") from None


def run_simulate(args: argparse.Namespace) -> int:
    from qsfl.sim import Simulation

    simulation = Simulation(build_sim_config(args))   # every check (data, model, ns) before any output
    prepare_out_dir(args.out)
    history = simulation.run(progress=show_progress(args.quiet))
    out = history.save(args.out)
    print(format_summary(history.summary))
    print(f"written to          {out}/history.csv, history.parquet, config.toml")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qsfl", description="QSFL simulator and hyperparameter tuner")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{simulate,tune,compare,report}")
    add_simulate_parser(sub)
    for module in ("tuning.cli", "reports.cli"):
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
            continue
        mod.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except (ConfigError, UsageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
