"""The forkserver every local worker process is forked from (a ``--workers`` pool, a ``local:N`` Dask cluster):
one process that imports torch and qsfl once, so that a worker starts in a fraction of a second.
Standard library only: the CLI starts it before it imports torch itself
(:func:`tuning.workers.start_forkserver_early`), so that both imports run at once.

It and every process it forks start with SIGINT blocked (:func:`ensure_forkserver`): a Ctrl-C is the main
process's to handle, which stops the forkserver (:func:`stop_forkserver`) before it exits.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import threading
from typing import Any

from tuning.interrupts import block_sigint_in_this_thread, ctrl_c_deferred

#: modules the forkserver imports once, so that every forked pool worker starts with them loaded
PRELOAD = ["torch", "qsfl.sim", "tuning.objective"]
#: and for the workers of a ``local:N`` Dask cluster
DASK_PRELOAD = [*PRELOAD, "distributed"]


def available() -> bool:
    """Whether this platform has a forkserver (POSIX); elsewhere pools spawn."""
    return "forkserver" in mp.get_all_start_methods()


def pool_context() -> Any:
    """The multiprocessing context of every pool: forkserver (with :data:`PRELOAD`) where available, else spawn.

    Never fork: a forked child of a process that already ran torch can deadlock in its thread pools.
    """
    if available():
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(PRELOAD)   # no effect once the forkserver runs
        return ctx
    return mp.get_context("spawn")


def forkserver_pid() -> int | None:
    """The process id of this process's forkserver, None if none runs. The standard library keeps it private
    (unchanged from Python 3.4 to 3.14): without it an abandoned start leaves the forkserver to finish its
    imports and exit by itself."""
    import multiprocessing.forkserver as forkserver

    return getattr(getattr(forkserver, "_forkserver", None), "_forkserver_pid", None)


def ensure_forkserver(preload: list[str] | None = None) -> None:
    """Start the forkserver (if none runs; ``preload``: its modules, default :data:`PRELOAD`) from a thread that
    blocks SIGINT, so that it and every process it forks start with SIGINT blocked."""
    import multiprocessing.forkserver

    mp.get_context("forkserver").set_forkserver_preload(preload if preload is not None else PRELOAD)

    def start() -> None:
        block_sigint_in_this_thread()   # the thread ends here
        multiprocessing.forkserver.ensure_running()

    thread = threading.Thread(target=start, name="qsfl-forkserver-start", daemon=True)
    with ctrl_c_deferred():
        thread.start()
        thread.join()    # a fork and exec: milliseconds


def stop_forkserver() -> None:
    """SIGTERM this process's forkserver, if one runs. It ignores SIGINT and may still be importing torch (seconds
    on a busy machine); an idle one exits by itself when this process does, after tearing torch down."""
    pid = forkserver_pid()
    if pid is not None:
        with contextlib.suppress(OSError):   # it may have just exited
            os.kill(pid, signal.SIGTERM)
