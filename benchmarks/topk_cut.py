"""The top-p cut of QSFL's segments: ``segments.kth_largest`` (a numpy partition on the CPU) against
``torch.topk`` (what it replaced), on the shapes of the QSFL defaults with digits/mlp/50 clients: 35 qualified
clients' segments of 1602 entries, k = 641 (p = 0.4). Checks that both give the same values, prints the best
of many timed calls of each (one torch thread) and their ratio.

    python benchmarks/topk_cut.py
    python benchmarks/topk_cut.py --quick     # fewer calls (a smoke run)
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from qsfl.engine.threads import configure_threads
from qsfl.segments import kth_largest


def best_ms(fn, calls: int) -> float:
    fn()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=35)
    parser.add_argument("--width", type=int, default=1602)
    parser.add_argument("--k", type=int, default=641)
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    configure_threads(1)
    calls = 20 if args.quick else args.calls
    x = torch.randn(args.rows, args.width, generator=torch.Generator().manual_seed(0)).abs()

    def topk() -> torch.Tensor:
        return torch.topk(x, args.k, dim=1, sorted=False).values.min(dim=1, keepdim=True).values

    if not torch.equal(kth_largest(x, args.k), topk()):
        raise SystemExit("kth_largest differs from torch.topk")
    t_topk, t_ours = best_ms(topk, calls), best_ms(lambda: kth_largest(x, args.k), calls)
    print(f"{args.rows} x {args.width}, k = {args.k}; 1 thread; best of {calls} calls; "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"torch.topk {t_topk:.3f} ms, kth_largest {t_ours:.3f} ms: {t_topk / t_ours:.1f}x")


if __name__ == "__main__":
    main()
