"""The quickstart GA study three ways: serial, ``--workers 2`` and ``--cluster local:2`` (Dask): wall time of
each ``qsfl tune`` process (start-up, baseline and pool start included) and whether the trials tables agree.

    python benchmarks/cluster_speed.py            # studies/quickstart.toml as written (minutes on 2 cores)
    python benchmarks/cluster_speed.py --quick    # population 4, 1 generation, 3 rounds: checks the script
    python benchmarks/cluster_speed.py --no-fidelity   # the same study without [fidelity]: all rounds, longer

Also prints the CPU share an idle pool and an idle LocalCluster use (Dask's housekeeping takes CPU the
workers need on a small machine).

Target (issue 15): ``--cluster local:2`` takes no more wall time than ``--workers 2``, and all three give
the same trials table (params and fitness; durations and timestamps aside). Each run is its own process, run
one after the other in the order given by --order (default: each mode once, then again in reverse order, and
the mean of the two is reported, so a machine that gets busier or quieter favours neither).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MODES = {"serial": ["--workers", "1"], "workers2": ["--workers", "2"], "cluster2": ["--cluster", "local:2"]}
QUICK = ["--set", "ga.population=4", "--set", "ga.generations=1", "--set", "base.rounds=3", "--set", "fidelity.min_rounds=1"]


def run(spec: Path, out: Path, mode: str, extra: list[str]) -> float:
    cmd = [sys.executable, "-m", "qsfl_cli", "tune", str(spec), "--out", str(out), "--no-report", "--quiet",
           *MODES[mode], *extra]
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, check=True)
    return time.perf_counter() - t0


def table(out: Path):
    from tuning.trials import read_trials

    df = read_trials(out)
    assert df is not None
    cols = ["trial", "generation", "individual"] + [c for c in df.columns if c.startswith(("param_", "fitness"))]
    return df[cols].reset_index(drop=True)


def _evaluation_seconds(out: Path) -> float:
    """Seconds spent inside the study's evaluations (as timed where they ran): the trials table's duration_s."""
    from tuning.trials import read_trials

    df = read_trials(out)
    assert df is not None
    return float(df["duration_s"].sum())


def _cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:   # exited meanwhile
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def idle_cpu(mode: str, seconds: float = 10.0) -> float:
    """Share of one core that the idle pool or LocalCluster (this process and every process it started) uses
    over ``seconds`` after one round of tasks (Linux /proc; NaN elsewhere)."""
    if not Path("/proc/self/stat").exists():
        return float("nan")
    from memory import children as descendants  # benchmarks/memory.py

    from tuning.workers import make_workers

    workers = make_workers(2, "local:2" if mode == "cluster2" else None)
    try:
        list(workers.map(abs, [1, 2]))
        time.sleep(1.0)
        pids = [os.getpid(), *descendants(os.getpid())]
        before = _cpu_seconds(pids)
        time.sleep(seconds)
        return (_cpu_seconds(pids) - before) / seconds
    finally:
        workers.close()


def without_fidelity(spec: Path, directory: Path) -> Path:
    """A copy of ``spec`` without its [fidelity] table (in ``directory``; relative data paths made absolute)."""
    from qsfl.io import dump_toml, load_toml
    from tuning.spec import resolve_data_paths

    raw = load_toml(spec)
    resolve_data_paths(raw, spec.parent)
    raw.pop("fidelity", None)
    raw.setdefault("study", {})["name"] = f"{raw.get('study', {}).get('name', spec.stem)}_no_fidelity"
    path = directory / f"{spec.stem}_no_fidelity.toml"
    path.write_text(dump_toml(raw))
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", type=Path, default=REPO / "studies" / "quickstart.toml")
    ap.add_argument("--quick", action="store_true", help="a tiny study: checks that the script works")
    ap.add_argument("--repeats", type=int, default=2, help="runs per mode, alternating the order (default 2)")
    ap.add_argument("--no-fidelity", action="store_true",
                    help="without the spec's [fidelity] table: every evaluation runs all rounds (a longer study)")
    args = ap.parse_args(argv)
    extra = QUICK if args.quick else []
    if args.no_fidelity:   # drop the pairs "--set fidelity.*"
        extra = [x for flag, value in zip(extra[::2], extra[1::2], strict=True) if not value.startswith("fidelity.")
                 for x in (flag, value)]
    times: dict[str, list[float]] = {m: [] for m in MODES}
    with tempfile.TemporaryDirectory() as tmp:
        if args.no_fidelity:
            args.spec = without_fidelity(args.spec, Path(tmp))
        order = list(MODES)
        for rep in range(args.repeats):
            for mode in order if rep % 2 == 0 else order[::-1]:
                out = Path(tmp) / f"{mode}_{rep}"
                times[mode].append(run(args.spec, out, mode, extra))
        busy = {m: [_evaluation_seconds(Path(tmp) / f"{m}_{r}") for r in range(args.repeats)] for m in MODES}
        reference = table(Path(tmp) / "serial_0")
        same = {m: all(table(Path(tmp) / f"{m}_{r}").equals(reference) for r in range(args.repeats)) for m in MODES}
    print(f"{args.spec.name}{' (quick)' if args.quick else ''}: wall seconds per `qsfl tune` process, "
          f"{args.repeats} run(s) each")
    print(f"{'mode':>10} {'mean s':>8}  runs                     same table as serial")
    for m in MODES:
        print(f"{m:>10} {sum(times[m]) / len(times[m]):8.1f}  {', '.join(f'{t:.1f}' for t in times[m]):<24} {same[m]}")
    print("seconds inside the evaluations (sum of the trials table's duration_s; the same evaluations in every mode):")
    for m in MODES:
        print(f"{m:>10} {sum(busy[m]) / len(busy[m]):8.1f}  {', '.join(f'{t:.1f}' for t in busy[m])}")
    w2, c2 = (sum(times[m]) / len(times[m]) for m in ("workers2", "cluster2"))
    pairs = sorted(c / w for c, w in zip(times["cluster2"], times["workers2"], strict=True))
    print(f"--cluster local:2 / --workers 2: {c2 / w2:.2f}x of the means, runs of one repeat: "
          f"{', '.join(f'{r:.2f}' for r in pairs)} ({'met' if c2 <= w2 else 'NOT met'}: target <= 1x)")
    for mode in ("workers2", "cluster2"):
        print(f"{mode}: idle for 10 s after one batch, its processes use {100 * idle_cpu(mode):.1f} % of one core")
    return 0 if all(same.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
