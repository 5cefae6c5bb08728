"""Torch CPU thread settings: one simulation per core in parallel workers, no oversubscription.

Torch starts one intra-op (OpenMP) thread per physical core in every process. When several simulations
run in parallel processes (a tuning study's workers), or other programs load the machine, those threads
outnumber the cores; OpenMP's barriers then wait for descheduled threads and small ops become 10-100x
slower (measured on a 2-core machine: a 50-client MLP round took 2.3 s with 2 threads under load and
0.26 s with 1). The engines' ops are small, so a worker loses little by using one thread.

Call :func:`configure_threads` at the start of every worker process (e.g. as a multiprocessing Pool
``initializer``), before it runs torch work::

    from qsfl.engine.threads import configure_threads
    pool = multiprocessing.Pool(workers, initializer=configure_threads, initargs=(1,))

or ``configure_threads(threads_per_worker(workers))`` to split the cores evenly.
"""

from __future__ import annotations

import logging
import os

import torch

log = logging.getLogger(__name__)

_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS reports one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def threads_per_worker(workers: int) -> int:
    """Intra-op threads for each of ``workers`` parallel processes so they share the cores, at least 1."""
    return max(1, available_cores() // max(1, int(workers)))


def configure_threads(threads: int | None = 1, *, interop: int | None = 1) -> int:
    """Set torch's intra-op threads (None: one per available core) and, once per process, its inter-op
    threads; also export OMP/MKL/OpenBLAS thread counts for child processes. Returns the thread count."""
    n = available_cores() if threads is None else max(1, int(threads))
    torch.set_num_threads(n)
    if interop is not None:
        try:
            torch.set_num_interop_threads(max(1, int(interop)))
        except RuntimeError:   # allowed only before the first inter-op parallel work; keep what is set
            log.debug("inter-op threads already fixed at %d", torch.get_num_interop_threads())
    for var in _ENV_VARS:
        os.environ[var] = str(n)
    return n
