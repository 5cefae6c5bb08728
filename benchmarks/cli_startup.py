"""What the CLI's process handling saves on a whole ``qsfl tune`` with ``--workers 2`` and ``--cluster local:2``:

* the early forkserver start: the forkserver of the pool (or of the LocalCluster's workers) is started before the
  ``qsfl`` process imports torch, so that both imports run at once (tuning/workers.py: start_forkserver_early);
* the fast exit: after a finished command the exit handlers run and the interpreter's teardown of every module's
  objects is skipped (qsfl_cli.py: _exit_now).

Each is measured against the same program with that one part switched off (a monkeypatch in a ``python -c``
wrapper; the code is otherwise the same), each variant as a fresh process, the variants interleaved and their
order reversed every other repeat, median of ``--repeats``. Wall time of the ``qsfl`` process (what a shell waits
for).

    python benchmarks/cli_startup.py                  # studies/quickstart.toml (a few minutes on 2 cores)
    python benchmarks/cli_startup.py --quick --repeats 7   # population 4, 1 generation, 3 rounds: start-up and exit
                                                           # dominate, so the savings stand out of the noise
"""

from __future__ import annotations

import argparse
import importlib.util
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
    "no fast exit": "import sys, qsfl_cli; qsfl_cli._observed = lambda: True; sys.exit(qsfl_cli.main())",
}


def run(code: str, argv: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code, *argv], cwd=REPO, check=True)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", type=Path, default=REPO / "studies" / "quickstart.toml")
    ap.add_argument("--quick", action="store_true", help="a tiny study (population 4, 1 generation, 3 rounds)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    repeats = args.repeats
    modes = {"--workers 2": ["--workers", "2"]}
    if importlib.util.find_spec("distributed") is not None:
        modes["--cluster local:2"] = ["--cluster", "local:2"]
    times: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(repeats):
            order = list(VARIANTS) if rep % 2 == 0 else list(VARIANTS)[::-1]
            for mode, flags in modes.items():
                for variant in order:
                    out = Path(tmp) / f"{rep}_{mode.split()[0].strip('-')}_{variant.replace(' ', '_')}"
                    cmd = ["tune", str(args.spec), "--out", str(out), "--no-report", "--quiet", *flags,
                           *(QUICK if args.quick else [])]
                    times.setdefault((mode, variant), []).append(run(VARIANTS[variant], cmd))
    print(f"{args.spec.name}{' (quick)' if args.quick else ''}: wall seconds of `qsfl tune`, median of {repeats}")
    print(f"{'mode':>18} {'variant':>15} {'median s':>9}  runs              saved by the part")
    for mode in modes:
        full = statistics.median(times[(mode, "qsfl")])
        for variant in VARIANTS:
            t = times[(mode, variant)]
            med = statistics.median(t)
            saved = "" if variant == "qsfl" else f"{med - full:+.2f} s ({(med - full) / med:+.0%})"
            print(f"{mode:>18} {variant:>15} {med:9.2f}  {', '.join(f'{x:.1f}' for x in t):<17} {saved}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
