"""Running ``mlsched-lite`` the way a user does: a child process, its output, its files."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

LITE = [sys.executable, "-m", "mlsched.runtime.cli"]
#: How long a test waits for something that must happen: a bound that only catches a hang,
#: far above what a busy 2-CPU machine needs.
HANG_S = 60.0


def lite(*args, timeout=60, **kw) -> subprocess.CompletedProcess:
    """Run one mlsched-lite command to its end."""
    return subprocess.run([*LITE, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, **kw)


def start(*args, **kw) -> subprocess.Popen:
    """Start a long-running mlsched-lite command (run) with its output piped."""
    return subprocess.Popen([*LITE, *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def wait_for(predicate, timeout: float = HANG_S, what: str = "condition") -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def prometheus(path: Path) -> dict[str, float]:
    """A Prometheus textfile as {metric: value}; every comment line must be HELP or TYPE."""
    values = {}
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            assert line.startswith(("# HELP mlsched_", "# TYPE mlsched_")), line
            continue
        name, value = line.split(" ")
        values[name] = float(value)
    return values
