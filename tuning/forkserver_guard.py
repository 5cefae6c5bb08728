"""Imported first in the forkserver (:data:`tuning.forkserver.PRELOAD`), before torch: it ends the forkserver as soon
as the process that started it is gone, and skips the forkserver's teardown when it exits.

The forkserver starts with SIGINT blocked (:func:`tuning.forkserver.ensure_forkserver`), so a Ctrl-C is the main
process's alone; that process may then exit at once (``os._exit`` after Ctrl-C, or a SIGKILL) while the forkserver
is still importing torch (seconds on a busy machine), and the forkserver would outlive it by that long, holding
the terminal's output open. A daemon thread here watches the parent's process id and leaves with ``os._exit`` when
it changes. An idle forkserver exits when its parent does (multiprocessing's own rule); the exit handler below then
skips the interpreter's teardown of torch (most of a second). Forked workers inherit neither: threads do not survive
``fork``, and a multiprocessing child ends with ``os._exit`` without running exit handlers.
Standard library only.
"""

from __future__ import annotations

import atexit
import os
import threading
import time

POLL_S = 0.05   # how often the forkserver looks for its parent

_PARENT = os.getppid()


def _watch() -> None:
    while os.getppid() == _PARENT:
        time.sleep(POLL_S)
    os._exit(0)


atexit.register(os._exit, 0)
threading.Thread(target=_watch, name="qsfl-forkserver-guard", daemon=True).start()
