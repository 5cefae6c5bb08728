"""What the CLI's process handling costs and saves on a whole ``qsfl tune`` with ``--workers 2`` and
``--cluster local:2``:

* the early forkserver start: the forkserver of the pool (or of the LocalCluster's workers) is started before the
  ``qsfl`` process imports torch, so that both imports run at once (tuning/workers.py: start_forkserver_early),
  measured against the same program with it switched off (a replacement in a ``python -c`` wrapper);
* ``--baseline DIR``: the same command run from another checkout (e.g. a worktree of an older commit), to measure
  what a change costs.

Each variant runs as a fresh process, the variants interleaved and their order reversed every other repeat,
median of ``--repeats``. Wall time of the ``qsfl`` process (what a shell waits for).

    python benchmarks/cli_startup.py                  # studies/quickstart.toml (a few minutes on 2 cores)
    python benchmarks/cli_startup.py --quick --repeats 7   # population 4, 1 generation, 3 rounds: start-up and exit
                                                           # dominate, so the differences stand out of the noise
    python benchmarks/cli_startup.py --quick --baseline /tmp/old-checkout
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
QUICK = ["--set", "ga.population=4", "--set", "ga.generations=1", "--set", "base.rounds=3",
         "--set", "fidelity.min_rounds=1"]
#: the program, and the same program with one part switched off
VARIANTS = {
    "qsfl": "import sys, qsfl_cli; sys.exit(qsfl_cli.main())",
    "no early start": "import sys, qsfl_cli; from tuning import cli; cli.start_workers_early = lambda args: None; "
                      "sys.exit(qsfl_cli.main())",
}


def run(code: str, argv: list[str], root: Path = REPO) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code, *argv], cwd=root, check=True,
                   env={**os.environ, "PYTHONPATH": str(root)})
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", type=Path, default=REPO / "studies" / "quickstart.toml")
    ap.add_argument("--quick", action="store_true", help="a tiny study (population 4, 1 generation, 3 rounds)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--baseline", type=Path, help="another checkout whose `qsfl tune` is timed as a variant too")
    args = ap.parse_args(argv)
    repeats = args.repeats
    variants = dict(VARIANTS)
    roots = dict.fromkeys(variants, REPO)
    if args.baseline is not None:
        variants["baseline"] = VARIANTS["qsfl"]
        roots["baseline"] = args.baseline.resolve()
    modes = {"--workers 2": ["--workers", "2"]}
    if importlib.util.find_spec("distributed") is not None:
        modes["--cluster local:2"] = ["--cluster", "local:2"]
    times: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(repeats):
            order = list(variants) if rep % 2 == 0 else list(variants)[::-1]
            for mode, flags in modes.items():
                for variant in order:
                    out = Path(tmp) / f"{rep}_{mode.split()[0].strip('-')}_{variant.replace(' ', '_')}"
                    cmd = ["tune", str(args.spec), "--out", str(out), "--no-report", "--quiet", *flags,
                           *(QUICK if args.quick else [])]
                    times.setdefault((mode, variant), []).append(run(variants[variant], cmd, roots[variant]))
    print(f"{args.spec.name}{' (quick)' if args.quick else ''}: wall seconds of `qsfl tune`, median of {repeats}")
    print(f"{'mode':>18} {'variant':>15} {'median s':>9}  runs              vs qsfl")
    for mode in modes:
        full = statistics.median(times[(mode, "qsfl")])
        for variant in variants:
            t = times[(mode, variant)]
            med = statistics.median(t)
            saved = "" if variant == "qsfl" else f"{med - full:+.2f} s ({(med - full) / med:+.0%})"
            print(f"{mode:>18} {variant:>15} {med:9.2f}  {', '.join(f'{x:.1f}' for x in t):<17} {saved}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
