"""Trials table at scale: the cost of appending one row at 1,000 vs 100,000 rows, resume time and memory.

    python benchmarks/trials_journal.py            # 1,000 and 100,000 rows (a few minutes, ~1 GB of RAM)
    python benchmarks/trials_journal.py --quick    # 500 and 5,000 rows, 20 timed appends: checks the script

For each size N the table is filled to N - window rows with one compaction (as a study that ran that long
would have it: everything in trials.parquet), then ``window`` more rows are appended one by one and timed;
the last of them is row N. Reported per size:

* append: median / p90 / max of those appends (one fsync'd journal line each, plus any compaction that fell
  due: with the default window and compact_ratio none does);
* compaction: one rewrite of trials.parquet + trials.csv at N rows (what every append cost before the
  journal), and the amortised cost per append = append median + compaction / (compact_ratio * N);
* resume: TrialsTable.load() of N rows in the files + a journal tail of ``compact_ratio * N / 2`` rows, in
  a fresh process: its resident memory before and after, and the memory the loaded rows hold (traced with
  tracemalloc in a second load; a study keeps its rows in memory as dicts).

The verdict compares the median append at the large size with the small one (target: at most 2x).
Timings depend on the disk's fsync latency: run it on the machine you care about, with nothing else running.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tuning.trials import JOURNAL, TrialsTable

PARAMS = ["beta", "k", "ns", "p"]
TYPES = {"beta": "float", "k": "int", "ns": "int", "p": "float"}


def make_row(i: int) -> dict:
    """A row shaped like a real one (4 params, every metric, two seeds' per-seed JSON)."""
    from tuning.objective import METRICS

    row: dict = {"study": "bench", "engine": "ga", "generation": i // 50, "trial": i, "individual": f"{i:012x}",
                 "param_beta": (i * 0.618) % 1.0, "param_k": i % 14 + 1, "param_ns": i % 6 + 1,
                 "param_p": ((i * 0.414) % 0.95) + 0.05, "repair": "", "seeds": "0,1"}
    for m in METRICS:
        row[f"metric_{m}"] = 0.5 + (i % 97) / 1000
        row[f"metric_{m}_std"] = 0.01
    row.update({"fitness": 0.7 + (i % 89) / 1000, "state": "complete", "reason": "", "duration_s": 12.5,
                "finished_at": "2026-01-01T00:00:00+00:00"})
    row["per_seed"] = json.dumps([{"seed": s, "status": "complete", "reason": "", "duration_s": 6.25, "rounds": 30,
                                   "fedavg_uplink_bytes": 1.2e8, "metrics": {m: 0.5 for m in METRICS}}
                                  for s in (0, 1)])
    return row


def rss_mb() -> float:
    """Resident memory of this process in MB (Linux /proc; NaN elsewhere)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 1e6
    except (OSError, ValueError, IndexError):
        return math.nan


def measure(n: int, window: int, ratio: float, root: Path) -> dict:
    out = root / f"rows_{n}"
    rows = [make_row(i) for i in range(n)]
    table = TrialsTable(out, PARAMS, 1, TYPES, compact_ratio=ratio, compact_every_s=math.inf)
    table.replace(rows[: n - window])                       # a study that already holds n - window rows
    times = []
    for r in rows[n - window:]:
        t0 = time.perf_counter()
        table.append(r)
        times.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    table.compact()
    compaction = time.perf_counter() - t0
    table.close()
    # resume: n rows in the files, plus a journal tail of half a compaction period
    tail = max(1, int(ratio * n / 2))
    extra = [make_row(n + i) for i in range(tail)]
    table = TrialsTable(out, PARAMS, 1, TYPES, compact_ratio=ratio, compact_every_s=math.inf)
    table.load()
    for r in extra:
        table.append(r)
    assert (out / JOURNAL).stat().st_size > 0
    del table
    # in a fresh process, so that its memory is the resumed table's and nothing else's
    proc = subprocess.run([sys.executable, __file__, "--resume-only", str(out)], capture_output=True, text=True,
                          check=True)
    loaded, resume, before, after, held = json.loads(proc.stdout)
    assert loaded == n + tail, (loaded, n + tail)
    med = statistics.median(times)
    return {"n": n, "median": med, "p90": sorted(times)[int(0.9 * (len(times) - 1))], "max": max(times),
            "last": times[-1], "compaction": compaction, "amortised": med + compaction / max(1.0, ratio * n),
            "resume": resume, "tail": tail, "rss_before": before, "rss_after": after, "held": held}


def resume_only(out: Path) -> None:
    """Print [rows, seconds, RSS MB before, RSS MB after, MB held by the rows] of loading the table in ``out``."""
    import pandas  # noqa: F401 - imported before the first RSS reading: the libraries are not the table
    import pyarrow.parquet  # noqa: F401

    before = rss_mb()
    t0 = time.perf_counter()
    rows = TrialsTable(out, PARAMS, 1, TYPES).load()
    seconds = time.perf_counter() - t0
    after = rss_mb()
    del rows
    tracemalloc.start()      # a second load, traced: the Python objects the rows hold (not timed: tracing is slow)
    rows = TrialsTable(out, PARAMS, 1, TYPES).load()
    held = tracemalloc.get_traced_memory()[0] / 1e6
    print(json.dumps([len(rows), seconds, before, after, held]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--resume-only", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--quick", action="store_true", help="500 and 5,000 rows, 50 timed appends: checks the script")
    ap.add_argument("--small", type=int, default=1000)
    ap.add_argument("--large", type=int, default=100_000)
    ap.add_argument("--window", type=int, default=50, help="timed appends ending at row N")
    ap.add_argument("--ratio", type=float, default=0.1, help="TrialsTable compact_ratio")
    ap.add_argument("--dir", type=Path, help="where to write the tables (default: a temporary directory)")
    args = ap.parse_args(argv)
    if args.resume_only is not None:
        resume_only(args.resume_only)
        return 0
    if args.quick:
        args.small, args.large, args.window = 500, 5000, 20
    if not 0 < args.window < args.small <= args.large:
        ap.error("need 0 < --window < --small <= --large")
    if args.window >= args.ratio * (args.small - args.window):
        print("note: a compaction falls inside the timed window of the small table (see max)")

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        res = [measure(n, args.window, args.ratio, Path(tmp)) for n in (args.small, args.large)]

    ms = lambda s: f"{1000 * s:9.3f}"
    print(f"trials table, compact_ratio {args.ratio}, {args.window} timed appends ending at row N (times in ms)")
    print(f"{'rows N':>8} {'append med':>10} {'p90':>9} {'max':>9} {'row N':>9} {'rewrite':>9} "
          f"{'amortised':>9} {'resume':>9} {'tail':>7} {'RSS MB before/after resume':>27} {'rows hold MB':>12}")
    for r in res:
        print(f"{r['n']:>8} {ms(r['median']):>10} {ms(r['p90'])} {ms(r['max'])} {ms(r['last'])} {ms(r['compaction'])} "
              f"{ms(r['amortised'])} {ms(r['resume'])} {r['tail']:>7} {r['rss_before']:>15.0f} / {r['rss_after']:<9.0f} "
              f"{r['held']:>12.1f}")
    small, large = res
    ratio = large["median"] / small["median"]
    print(f"append at {large['n']:,} rows / at {small['n']:,} rows (medians): {ratio:.2f}x "
          f"({'within' if ratio <= 2 else 'ABOVE'} the 2x target); before the journal every append rewrote the "
          f"table: {ms(small['compaction']).strip()} ms -> {ms(large['compaction']).strip()} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
