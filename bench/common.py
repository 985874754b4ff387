"""Shared pieces of the benchmark: repetition summaries, the machine, atomic writes.

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
