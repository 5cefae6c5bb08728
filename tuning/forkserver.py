"""The forkserver every local worker process is forked from (a ``--workers`` pool, a ``local:N`` Dask cluster):
one process that imports torch and qsfl once, so that a worker starts in a fraction of a second.
Standard library only, and multiprocessing's public API only: the CLI starts it before it imports torch itself
(:func:`tuning.workers.start_forkserver_early`), so that both imports run at once.

The forkserver is started (:func:`ensure_forkserver`) by starting a first, empty process of the forkserver context
from a background thread that blocks SIGINT: it and every process it forks start with SIGINT blocked, and a Ctrl-C
is the main process's to handle. The thread ends once the forkserver has imported its modules
(:func:`wait_forkserver`). The first module it imports, :mod:`tuning.forkserver_guard`, ends it when the main
process is gone, also while it still imports torch.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import threading
from typing import Any

from tuning.interrupts import block_sigint_in_this_thread

GUARD = "tuning.forkserver_guard"
#: modules the forkserver imports once, so that every forked pool worker starts with them loaded
PRELOAD = [GUARD, "torch", "qsfl.sim", "tuning.objective"]
#: and for the workers of a ``local:N`` Dask cluster
DASK_PRELOAD = [*PRELOAD, "distributed"]

_lock = threading.Lock()
_start: threading.Thread | None = None   # the thread that starts the forkserver (finished once it is ready)


def available() -> bool:
    """Whether this platform has a forkserver (POSIX); elsewhere pools spawn."""
    return "forkserver" in mp.get_all_start_methods()


def pool_context() -> Any:
    """The multiprocessing context of every pool: forkserver where available (start it with
    :func:`ensure_forkserver`), else spawn.

    Never fork: a forked child of a process that already ran torch can deadlock in its thread pools.
    """
    return mp.get_context("forkserver" if available() else "spawn")


def ensure_forkserver(preload: list[str] | None = None) -> threading.Thread:
    """Start the forkserver (``preload``: its modules, default :data:`PRELOAD`) in the background, unless this
    process started it already; returns the starting thread (see :func:`wait_forkserver`)."""
    global _start
    with _lock:
        if _start is None:
            ctx = mp.get_context("forkserver")
            ctx.set_forkserver_preload(preload if preload is not None else PRELOAD)

            def start() -> None:
                block_sigint_in_this_thread()   # the thread ends here
                first = ctx.Process(target=os.getpid, name="qsfl-forkserver-first", daemon=True)
                first.start()    # returns once the forkserver has imported its modules and forked it
                first.join()

            _start = threading.Thread(target=start, name="qsfl-forkserver-start", daemon=True)
            _start.start()
        return _start


def wait_forkserver(timeout: float | None = None) -> bool:
    """Wait until the forkserver this process started is ready (at most ``timeout`` seconds); True when it is,
    or when none was started."""
    thread = _start
    if thread is None:
        return True
    thread.join(timeout)
    return not thread.is_alive()
