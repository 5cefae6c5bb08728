"""qsfl.engine.allocator: glibc keeps freed tensor memory (no page faults next round) unless opted out."""

import os
import platform
import subprocess
import sys

import pytest

PROBE = """
import os, torch
from qsfl.engine.allocator import keep_freed_memory
tuned = keep_freed_memory()
assert keep_freed_memory() == tuned   # once per process, same answer
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
r0 = rss()
t = torch.empty(48 << 18).fill_(1.0)   # 48 MiB: above glibc's own mmap maximum (32 MiB), below ours (64 MiB)
del t
print(tuned, (rss() - r0) >> 20)
"""


def probe(env: dict[str, str]) -> tuple[bool, int]:
    out = subprocess.run([sys.executable, "-c", PROBE], env={**os.environ, **env}, capture_output=True, text=True,
                         check=True).stdout.split()
    return out[0] == "True", int(out[1])


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_freed_tensor_memory_stays_in_the_process_unless_opted_out():
    tuned, kept_mib = probe({"QSFL_MALLOC_TUNING": "1"})
    assert tuned and kept_mib >= 40            # the freed 48 MiB stay mapped for the next round
    tuned, kept_mib = probe({"QSFL_MALLOC_TUNING": "0"})
    assert not tuned and kept_mib < 8          # glibc's default: a block that large goes back to the OS
