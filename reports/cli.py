"""`qsfl compare` and `qsfl report`: argument parsing only; the work is in reports.compare / reports.report."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the ``compare`` and ``report`` subcommands."""
    c = sub.add_parser("compare", help="re-run the best configs of a study with the baselines over fresh seeds",
                       description="Re-run the best N configs of a study (or the configs of a TOML file) together "
                                   "with fedavg, topk, QJ-only, SCSS-only and QSFL with the authors' defaults over "
                                   "seeds the search did not use; write OUT/compare.csv, compare.md, "
                                   "compare/<label>/seed<k>/ and figures/compare_convergence.*")
    c.add_argument("out_dir", type=Path, metavar="OUT_DIR", help="the study's output directory (qsfl tune --out)")
    c.add_argument("--top", type=int, default=3, help="how many of the study's best configs (default 3)")
    c.add_argument("--configs", type=Path, metavar="FILE.toml",
                   help="compare these instead: [[config]] tables with label and params = {beta=..., k=...}")
    c.add_argument("--seeds", metavar="LIST", help="seeds the search did not use, e.g. 100,101,102 or 100-104 "
                                                   "(default: the spec's study.eval_seeds)")
    c.add_argument("--workers", type=int, default=1, help="parallel processes, 1 torch thread each (default 1)")
    c.add_argument("--cluster", metavar="ADDRESS", help="run on a Dask cluster: tcp://host:8786, or local:N worker "
                                                        "processes on this machine (docs/scaling.md)")
    c.add_argument("--rounds", type=int, help="override the number of rounds of every run")
    c.add_argument("--base", type=Path, metavar="FILE.toml",
                   help="base SimConfig when OUT_DIR has no spec.toml with a [base] table")
    c.add_argument("--topk-p", dest="topk_p", type=float, default=0.1, help="p of the topk baseline (default 0.1)")
    c.add_argument("--quiet", action="store_true", help="no progress bar")
    c.set_defaults(func=run_compare)

    r = sub.add_parser("report", help="write report.html and report.md of a study",
                       description="Write OUT/report.html (self-contained: figures embedded, opens offline), "
                                   "OUT/report.md and OUT/figures/*.png|svg from a study's output directory.")
    r.add_argument("out_dir", type=Path, metavar="OUT_DIR", help="the study's output directory (qsfl tune --out)")
    r.add_argument("--quiet", action="store_true", help="print nothing but errors")
    r.set_defaults(func=run_report)


def run_compare(args: argparse.Namespace) -> int:
    """Run ``qsfl compare`` and print the table."""
    from qsfl.errors import check_range
    from qsfl_cli import show_progress
    from reports.compare import compare_study, display_table, parse_seeds
    from reports.report import md_table

    if args.rounds is not None:
        check_range("--rounds", args.rounds, 1, None, integer=True)
    check_range("--topk-p", args.topk_p, 0.0, 1.0, lo_open=True)
    seeds = parse_seeds(args.seeds) if args.seeds else None
    summary = compare_study(args.out_dir, top=args.top, configs_file=args.configs, seeds=seeds,
                            workers=args.workers, rounds=args.rounds, base_file=args.base, topk_p=args.topk_p,
                            progress=show_progress(args.quiet), cluster=args.cluster)
    print(md_table(display_table(summary).drop(columns=["setting"])))
    print(f"written to {args.out_dir}/compare.csv, compare.md, compare/, figures/compare_convergence.png")
    if (args.out_dir / "spec.toml").is_file():
        print(f"include it in the report: qsfl report {args.out_dir}")
    return 0


def run_report(args: argparse.Namespace) -> int:
    """Run ``qsfl report``."""
    from reports.report import write_report

    path = write_report(args.out_dir)
    if not args.quiet:
        print(f"written to {path} and {path.with_suffix('.md')}")
    return 0
