"""Memory benchmark: does a tuning study's memory stay flat over generations?

Runs ``qsfl tune`` on a 20-generation GA study (small population, few rounds) in a child process, exactly as a
user would, and samples the resident set size (VmRSS from /proc, no psutil) of that process, and of its pool
workers with ``--workers N`` (plus the forkserver and resource tracker; RSS counts pages they share with each
other once per process), each time a generation is finished (logbook.csv gains a row). Prints the RSS per
generation and the growth ratio last / first-after-warm-up; a ratio near 1.0 means no leak from Histories,
models or the evaluation cache.

    python benchmarks/memory.py                      # serial, 20 generations
    python benchmarks/memory.py --workers 2          # main process + 2 pool workers
    python benchmarks/memory.py --generations 40 --population 10 --rounds 5
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

SPEC = """
[study]
name = "memory"
engine = "ga"
seeds = [0]
eval_seeds = []
search_seed = 0
save_histories = false

[base]
dataset = "digits"
model = "mlp"
clients = {clients}
rounds = {rounds}
batch_size = 20
lr = 0.1

[base.strategy]
name = "qsfl"

[space.beta]
low = 0.0
high = 1.0
[space.k]
low = 1
high = {clients}
[space.ns]
low = 1
high = {clients}
[space.p]
low = 0.02
high = 1.0

[objective]
formula = "final_accuracy - 0.5 * uplink_fraction"
direction = "maximize"

[ga]
population = {population}
generations = {generations}
mutpb = 0.6
indpb = 0.5
"""


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    """A process's VmRSS (or VmHWM) in KiB; 0 once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def children(pid: int) -> list[int]:
    """All live descendants of ``pid`` (pool workers and the forkserver / resource tracker)."""
    by_parent: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if fields[0] != "Z":
                by_parent.setdefault(int(fields[1]), []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in by_parent.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def logbook_generations(out: Path) -> int:
    try:
        with open(out / "logbook.csv", encoding="utf-8") as fh:
            return max(sum(1 for _ in fh) - 1, 0)
    except FileNotFoundError:
        return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--generations", type=int, default=20)
    ap.add_argument("--population", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--warmup", type=int, default=2, help="generations before the reference sample (default 2)")
    ap.add_argument("--max-growth", type=float, default=None,
                    help="exit with code 1 if last / first-after-warm-up total RSS exceeds this")
    args = ap.parse_args()
    if args.generations <= args.warmup:
        ap.error("--generations must exceed --warmup")

    with tempfile.TemporaryDirectory(prefix="qsfl-memory-") as tmp:
        spec = Path(tmp) / "memory.toml"
        spec.write_text(SPEC.format(clients=args.clients, rounds=args.rounds, population=args.population,
                                    generations=args.generations))
        out = Path(tmp) / "out"
        cmd = [sys.executable, "-m", "qsfl_cli", "tune", str(spec), "--out", str(out), "--no-report", "--quiet",
               "--workers", str(args.workers)]
        print(f"qsfl tune: GA, population {args.population}, {args.generations} generations, {args.rounds} rounds, "
              f"{args.clients} clients, --workers {args.workers}")
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        samples: list[tuple[int, int, int, int, float]] = []   # gen, main KiB, workers KiB, #workers, seconds
        seen = 0
        try:
            while True:
                gens = logbook_generations(out)
                if gens > seen:
                    kids = [k for k in children(proc.pid) if rss_kib(k)]
                    main_rss = rss_kib(proc.pid)
                    kid_rss = sum(rss_kib(k) for k in kids)
                    for g in range(seen, gens):   # a fast generation may be seen late: same sample
                        samples.append((g, main_rss, kid_rss, len(kids), time.perf_counter() - start))
                    seen = gens
                if proc.poll() is not None:
                    break
                time.sleep(0.02)
        except KeyboardInterrupt:
            proc.send_signal(signal.SIGINT)
            proc.wait()
            raise
        err = proc.stderr.read()
        if proc.returncode != 0:
            print(err, file=sys.stderr)
            print(f"qsfl tune failed with exit code {proc.returncode}", file=sys.stderr)
            return 1
        nevals = [int(line.split(",")[1]) for line in (out / "logbook.csv").read_text().splitlines()[1:]]

    if len(samples) < args.generations + 1:
        print(f"only {len(samples)} generations were sampled", file=sys.stderr)
        return 1
    print(f"\n{'gen':>4} {'evals':>6} {'main MiB':>9} {'workers MiB':>12} {'total MiB':>10} {'t (s)':>7}")
    for g, m, k, n, t in samples:
        workers = f"{k / 1024:8.1f} ({n})" if n else f"{'-':>12}"
        print(f"{g:>4} {nevals[g]:>6} {m / 1024:9.1f} {workers:>12} {(m + k) / 1024:10.1f} {t:7.1f}")
    ref = samples[args.warmup]
    # the last generation's sample can race with the pool shutting down: compare like with like
    last = [s for s in samples if s[3] == ref[3]][-1]
    growth_total = (last[1] + last[2]) / (ref[1] + ref[2])
    growth_main = last[1] / ref[1]
    per_gen = ((last[1] + last[2]) - (ref[1] + ref[2])) / 1024 / max(last[0] - ref[0], 1)
    print(f"\nRSS growth, generation {last[0]} / generation {ref[0]} (first after {args.warmup} warm-up "
          f"generations): total {growth_total:.3f}x, main process {growth_main:.3f}x "
          f"({per_gen:+.2f} MiB per generation); {sum(nevals)} evaluations in {samples[-1][4]:.0f} s")
    if args.max_growth is not None and growth_total > args.max_growth:
        print(f"growth {growth_total:.3f}x exceeds --max-growth {args.max_growth}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
