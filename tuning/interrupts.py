"""Ctrl-C around multiprocessing: defer a SIGINT while the main thread is inside multiprocessing's own code, and
start child processes with SIGINT blocked (the parent handles Ctrl-C and stops them). Standard library only.
See docs/reliability.md and :mod:`tuning.workers`."""

from __future__ import annotations

import contextlib
import multiprocessing
import signal
import threading
from collections.abc import Callable, Iterator

POLL_S = 0.1               # the longest a wait on a pool goes without looking for a deferred Ctrl-C
HAVE_SIGMASK = hasattr(signal, "pthread_sigmask")


@contextlib.contextmanager
def ctrl_c_deferred() -> Iterator[Callable[[], bool]]:
    """Inside this block a SIGINT only sets a flag (the yielded callable tells whether one came); leaving the
    block raises it as KeyboardInterrupt. For the main thread's calls into multiprocessing's code, which must not
    be interrupted half-way; the calls inside wait at most :data:`POLL_S` at a time and check the flag.

    Only where Python's own handler is installed (a KeyboardInterrupt at any bytecode); elsewhere (another
    thread, SIGINT ignored or handled by the caller) nothing changes and the flag stays false.
    """
    main = threading.current_thread() is threading.main_thread()
    if not main or signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield lambda: False
        return
    hit: list[int] = []
    signal.signal(signal.SIGINT, lambda signum, frame: hit.append(signum))
    try:
        yield lambda: bool(hit)
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if hit:
        raise KeyboardInterrupt


def block_sigint_in_this_thread() -> None:
    """Block SIGINT in this (helper) thread, so that every process it starts inherits the blocked signal.

    Multiprocessing's resource tracker is started first (a semaphore of a spawn context registers with it): the
    standard library unblocks SIGINT in the thread that starts the tracker, which would undo the block for the
    processes started next.
    """
    if not HAVE_SIGMASK:   # Windows: no signal masks (and no Ctrl-C sent to the workers' process group)
        return
    multiprocessing.get_context("spawn").Lock()
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
