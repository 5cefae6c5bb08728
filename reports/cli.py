"""``qsfl report``: argument parsing only; the work is in reports.report."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    """Register the ``report`` subcommand on ``sub`` (what ``add_subparsers()`` returns; ``common`` carries -v/-q)."""
    r = sub.add_parser("report", parents=[common], help="write report.html and report.md of a study",
                       description="Write OUT/report.html (self-contained: figures embedded, opens offline), "
                                   "OUT/report.md and OUT/figures/*.png|svg from a study's output directory.")
    r.add_argument("out_dir", type=Path, metavar="OUT_DIR", help="the study's output directory (qsfl tune --out)")
    r.set_defaults(func=run_report)


def run_report(args: argparse.Namespace) -> int:
    """Run ``qsfl report``."""
    from reports.report import write_report

    path = write_report(args.out_dir)
    if not args.quiet:
        print(f"written to {path} and {path.with_suffix('.md')}")
    return 0
