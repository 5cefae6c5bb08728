"""glibc malloc settings that keep freed tensor memory in the process for the next round.

A round allocates and frees many tensors of a few MB (the cohort's updates, signs, masks). glibc serves
blocks above its mmap threshold with fresh ``mmap`` pages and returns heap memory above its trim threshold
to the OS, so every round pays page faults (the kernel zeroes each 4 KiB page on first touch) for memory it
just gave back. Raising both thresholds keeps that memory mapped: ``benchmarks/qsfl_rounds.py`` (digits, mlp,
50 clients, QSFL defaults) measured 12.3 and 13.7 ms per batched round against 13.5 and 15.3 ms with
``QSFL_MALLOC_TUNING=0`` (two alternating pairs of runs; sequential/batched 10.2x against 9.0-9.4x).
PyTorch's CPU performance guide suggests jemalloc/tcmalloc for the same reason; this needs no preload.

The cost: up to ``TRIM_THRESHOLD`` of freed memory stays in the process. Set ``QSFL_MALLOC_TUNING=0`` to leave
malloc as it is. On other C libraries (macOS, musl, Windows) nothing changes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import platform

log = logging.getLogger(__name__)

MMAP_THRESHOLD = 64 << 20    # blocks below 64 MiB come from the heap (glibc's dynamic maximum is 32 MiB)
TRIM_THRESHOLD = 256 << 20   # keep up to 256 MiB of free heap top instead of returning it to the OS
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3   # glibc's mallopt parameter numbers (malloc.h)

_done: bool | None = None


def keep_freed_memory() -> bool:
    """Once per process: raise glibc's mmap and trim thresholds (see the module docstring). Returns whether
    they are set (False on a non-glibc system or with ``QSFL_MALLOC_TUNING=0``)."""
    global _done
    if _done is not None:
        return _done
    _done = False
    if os.environ.get("QSFL_MALLOC_TUNING", "1").strip() in ("0", "false", "no", "off"):
        return False
    if platform.libc_ver()[0] != "glibc":   # musl has mallopt as a no-op stub; macOS and Windows have none
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _done = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    log.debug("glibc malloc thresholds raised: %s", _done)
    return _done
