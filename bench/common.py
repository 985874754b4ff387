"""Shared pieces of the benchmark: repetition summaries, the machine, atomic writes, and
the one producer loop every ring benchmark sends with (``send_all``: bounded, never hangs).

Every figure in ``bench/results.json`` is a ``Figure``: the median over the
repetitions, their min and max, the raw repetitions and the unit. A figure that
cannot be measured here is ``None`` with a one-line reason beside it.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from mlsched.runtime import files

#: Distributions whose versions go into the machine description.
PACKAGES = ("mlsched", "numpy", "cffi", "ai-edge-litert", "tflite-runtime", "tensorflow-cpu",
            "tensorflow")


def figure(reps: list[float], unit: str, **extra) -> dict:
    """Median, min and max of ``reps`` (at least one value), rounded for reading."""
    if not reps:
        raise ValueError("a figure needs at least one repetition")
    return {"median": _round(statistics.median(reps)), "min": _round(min(reps)),
            "max": _round(max(reps)), "reps": [_round(r) for r in reps], "unit": unit, **extra}


def missing(reason: str) -> dict:
    """A figure that could not be measured here, and why."""
    return {"median": None, "reason": reason}


def _round(x: float) -> float:
    """Four significant digits: enough for figures that move by percents run to run."""
    if x == 0 or x != x:
        return x
    return float(f"{x:.4g}")


def machine() -> dict:
    """CPU model, cores, kernel, Python and package versions of this host."""
    cpu_model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_mb = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_mb = int(line.split()[1]) // 1024
    except OSError:
        pass
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return {
        "cpu_model": cpu_model,
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)),
        "memory_mb": mem_mb,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "packages": versions,
        "git_commit": _git_commit(),
    }


def load_average() -> list[float]:
    """1, 5 and 15 minute load averages: how busy the host was around the run."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, cwd=Path(__file__).resolve().parent, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` (creating its directory) complete or not at all."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    files.write_atomic(path, text)


def write_json_atomic(path: Path, obj) -> None:
    write_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


#: A producer gives up when the ring has taken nothing for this long while the consumer is
#: still there: a consumer that stopped draining, not a slow one, which a busy host shows
#: as pauses of a fraction of a second.
RING_STUCK_S = 30.0
#: First pause after an injection the ring could not take whole, doubled up to the maximum
#: while the ring stays full.
FULL_RING_BACKOFF_S = 50e-6
FULL_RING_BACKOFF_MAX_S = 5e-3


class RingStuck(RuntimeError):
    """A producer's loop ended before it sent what it was asked to, and why."""


@dataclass
class Sent:
    """What ``send_all`` put on the ring: counts, the seq span, the last injection."""
    sent: int = 0
    dropped: int = 0
    calls: int = 0
    first_seq: int = 0
    last_seq: int = 0
    last: object = None


def send_all(inject: Callable[[int], object], count: int, consumer_alive: Callable[[], bool],
             what: str, stuck_s: float = RING_STUCK_S) -> Sent:
    """Call ``inject(call_index)`` until ``count`` records were sent (the ring took them).

    Records the ring drops are not counted as sent; the loop pauses and sends more. It
    stops with ``RingStuck`` naming ``what`` when the consumer is gone, or when the ring
    has taken nothing for ``stuck_s`` seconds: it never waits forever on a full ring.
    """
    out = Sent()
    backoff = FULL_RING_BACKOFF_S
    progress_at = time.monotonic()
    while out.sent < count:
        res = inject(out.calls)
        out.calls += 1
        out.last = res
        out.sent += res.sent
        out.dropped += res.dropped
        now = time.monotonic()
        if res.sent:
            out.first_seq = out.first_seq or res.first_seq
            out.last_seq = res.last_seq or out.last_seq
            progress_at = now
        if out.sent >= count:
            break
        if not consumer_alive():
            raise RingStuck(f"{what}: the consumer stopped after {out.sent} of {count}"
                            f" records were sent ({out.dropped} dropped on a full ring)")
        if now - progress_at > stuck_s:
            raise RingStuck(f"{what}: the ring took no record for {stuck_s:.0f} s with the"
                            f" consumer running ({out.sent} of {count} sent)")
        if res.dropped:             # the ring is full: let the consumer catch up
            time.sleep(backoff)
            backoff = min(2 * backoff, FULL_RING_BACKOFF_MAX_S)
        else:
            backoff = FULL_RING_BACKOFF_S
    return out
