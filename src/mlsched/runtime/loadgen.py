"""``run --load N``: a few CPU-bound worker processes, so CFS has tasks to move.

A demonstration aid for shadow mode on an otherwise idle host: each worker spins a
few milliseconds, sleeps a little, and exits by itself when its parent is gone.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys

#: A --load worker: spin a few ms, sleep a little, exit when its parent is gone.
WORKER = """
import os, time
parent = os.getppid()
while os.getppid() == parent:
    end = time.perf_counter() + 0.004
    while time.perf_counter() < end:
        pass
    time.sleep(0.001)
"""
MAX_WORKERS = 64


def start(n: int) -> list[subprocess.Popen]:
    """Start ``n`` workers (0..MAX_WORKERS)."""
    return [subprocess.Popen([sys.executable, "-I", "-S", "-c", WORKER],
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
            for _ in range(n)]


def stop(workers: list[subprocess.Popen]) -> None:
    """Kill and reap the workers."""
    for w in workers:
        with contextlib.suppress(OSError):
            w.kill()
    for w in workers:
        w.wait()
