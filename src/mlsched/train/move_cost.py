"""What a move to another core costs a task, read from the curve measured on this host.

``make movecost`` (bench/movecost.c, driven by bench/movecost.py) measures, for working
sets from a few KiB to tens of MiB, how much longer one pass over the working set takes
right after the task moved to the other core than when it stayed: ``cost_ns`` per size,
with a 95 % bootstrap interval ``cost_ci95_ns``. It writes bench/movecost.json; this
module reads it back, for what the qemu guest cannot show (its emulated CPUs have no
caches, so there a move costs nothing):

* ``MoveCostCurve.load(path)``: the file checked (one-line ``MoveCostError``, exit
  status 2, for anything malformed); ``cost_ns(W)`` and ``interval_ns(W)`` by linear
  interpolation in log2(W) between the measured sizes, clamped to the first and last
  size outside them (``outside(W)`` says when);
* ``measured_charge`` / ``flat_charge``: what ``mlsched-train`` charges each MIGRATE row
  of outcome labels, with the note and report entry that say where the figure came from.

Pure: numpy and the standard library; no TensorFlow, no compiled extension.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mlsched.convert.errors import ConvertError

#: Byte counts may carry a binary suffix: 16K = 16 KiB.
SUFFIXES = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
_BYTES = re.compile(r"([0-9]+)([KMG]?)", re.IGNORECASE)
NS_PER_US = 1000.0


class MoveCostError(ConvertError):
    """A move-cost file or figure that cannot be used; the message is one line (exit 2)."""


def parse_bytes(text: str) -> int:
    """A byte count: digits, optionally with K, M or G (KiB, MiB, GiB)."""
    m = _BYTES.fullmatch(text.strip())
    if not m:
        raise MoveCostError(f"{text!r} is not a byte count (digits, optionally with K, M or G)")
    return int(m.group(1)) * SUFFIXES[m.group(2).upper()]


@dataclass(frozen=True)
class MoveCostCurve:
    """The measured cost of a move by working set (bytes -> ns), from one file."""

    path: str
    sha256: str
    sizes: np.ndarray          # working sets, bytes, strictly increasing
    cost: np.ndarray           # ns
    low: np.ndarray            # ns, 95 % interval
    high: np.ndarray
    host: dict = field(default_factory=dict)
    measured: str | None = None
    quick: bool = False        # a `--quick` run: the shape of a measurement, not its figures

    @classmethod
    def load(cls, path: str | Path) -> MoveCostCurve:
        p = Path(path)
        if not p.exists():
            raise MoveCostError(f"{p}: no such file")
        if not p.is_file():
            raise MoveCostError(f"{p}: not a regular file")
        data = p.read_bytes()
        try:
            obj = json.loads(data)
        except (UnicodeDecodeError, ValueError) as e:
            where = f" (line {e.lineno})" if isinstance(e, json.JSONDecodeError) else ""
            raise MoveCostError(f"{p}: not JSON{where}: not a `make movecost` file") from None
        return cls.from_dict(obj, str(p), hashlib.sha256(data).hexdigest())

    @classmethod
    def from_dict(cls, obj, path: str, sha256: str = "") -> MoveCostCurve:
        def refuse(what: str):
            raise MoveCostError(f"{path}: {what}")

        if not isinstance(obj, dict):
            refuse("not a JSON object: not a `make movecost` file")
        sizes = obj.get("sizes")
        if not isinstance(sizes, list):
            refuse("no 'sizes' list: not a `make movecost` file")
        if not sizes:
            refuse("'sizes' is empty: nothing was measured")
        host = obj.get("host", {})
        if not isinstance(host, dict):
            refuse("'host' is not a JSON object")
        rows = []
        for i, s in enumerate(sizes):
            if not isinstance(s, dict):
                refuse(f"sizes[{i}] is not a JSON object")
            w = s.get("working_set_bytes")
            if not (_is_int(w) and w > 0):
                refuse(f"sizes[{i}]: working_set_bytes {w!r} is not a byte count above 0")
            if rows and w <= rows[-1][0]:
                refuse(f"sizes[{i}]: working_set_bytes {w} not above the one before"
                       f" ({rows[-1][0]}): sizes must increase")
            cost = s.get("cost_ns")
            if not _is_number(cost):
                refuse(f"sizes[{i}]: cost_ns {cost!r} is not a finite number")
            ci = s.get("cost_ci95_ns")
            if not (isinstance(ci, list) and len(ci) == 2 and all(map(_is_number, ci))
                    and ci[0] <= ci[1]):
                refuse(f"sizes[{i}]: cost_ci95_ns {ci!r} is not an interval [low, high]")
            rows.append((w, float(cost), float(ci[0]), float(ci[1])))
        w, cost, low, high = (np.array(col, dtype=np.float64) for col in zip(*rows, strict=True))
        measured = obj.get("measured")
        method = obj.get("method")
        quick = isinstance(method, dict) and method.get("quick") is True
        return cls(path, sha256, w, cost, low, high, host,
                   measured if isinstance(measured, str) else None, quick)

    @property
    def sizes_bytes(self) -> list[int]:
        return [int(w) for w in self.sizes]

    def _at(self, values: np.ndarray, working_set):
        w = np.asarray(working_set, dtype=np.float64)
        if np.any(~np.isfinite(w)) or np.any(w < 0):
            bad = w[~np.isfinite(w) | (w < 0)].flat[0]
            raise MoveCostError(f"working set {bad:g}: a byte count >= 0")
        x = np.log2(np.clip(w, self.sizes[0], self.sizes[-1]))
        out = np.interp(x, np.log2(self.sizes), values)
        return float(out) if out.ndim == 0 else out

    def cost_ns(self, working_set):
        """The cost of a move for a working set of this many bytes (or an array of them)."""
        return self._at(self.cost, working_set)

    def interval_ns(self, working_set):
        """(low, high) of the 95 % interval, interpolated the same way."""
        return self._at(self.low, working_set), self._at(self.high, working_set)

    def outside(self, working_set: float) -> bool:
        """Whether this working set is outside the measured sizes (its cost is clamped)."""
        return bool(working_set < self.sizes[0] or working_set > self.sizes[-1])


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@dataclass(frozen=True)
class Charge:
    """What each MIGRATE row is charged (µs), the training note and the report entry."""

    us: float
    note: str
    report: dict


def flat_charge(us: float, explicit: bool) -> Charge:
    """One cost for every move, whatever the task: --migration-cost-us, or the kernel's."""
    if explicit:
        note = (f"migration cost {us:g} us: given by --migration-cost-us, the same for every"
                " move whatever the task's working set")
        source = "--migration-cost-us"
    else:
        note = (f"migration cost {us:g} us: the kernel's default sched_migration_cost, the age"
                " under which CFS treats a task as cache-hot")
        source = "the kernel's default sched_migration_cost"
    return Charge(us, note, {"model": "flat", "charged_us": us, "from": source})


def measured_charge(curve: MoveCostCurve, working_set: int) -> Charge:
    """The curve's cost at ``working_set`` bytes. A cost measured below zero (a move that
    came out no slower, within noise) is charged as zero: a move is never paid for."""
    cost = curve.cost_ns(working_set)
    low, high = curve.interval_ns(working_set)
    outside = curve.outside(working_set)
    us = max(cost, 0.0) / NS_PER_US
    on = ", ".join(str(v) for v in (curve.host.get("cpu_model"),
                                    curve.host.get("kernel") and f"Linux {curve.host['kernel']}",
                                    curve.measured) if v)
    where = (f"outside the measured {curve.sizes_bytes[0]}..{curve.sizes_bytes[-1]} bytes:"
             " the nearest size's cost" if outside
             else "interpolated between the measured sizes")
    note = (f"migration cost {us:.4g} us: measured by `make movecost` on the host's own cores"
            + (f" ({on})" if on else "") + f", {curve.path}, for a working set of"
            f" {working_set} bytes, {where}; 95 % interval {low / NS_PER_US:.4g}.."
            f"{high / NS_PER_US:.4g} us"
            + ("; the cost measured below 0 is charged as 0" if cost < 0 else "")
            + ("; a --quick run, whose figures mean little" if curve.quick else ""))
    report = {"model": "measured", "file": curve.path, "sha256": curve.sha256,
              "cpu_model": curve.host.get("cpu_model"), "kernel": curve.host.get("kernel"),
              "measured": curve.measured, "working_set_bytes": working_set,
              "cost_ns": cost, "cost_ci95_ns": [low, high], "charged_us": us,
              "outside_measured_sizes": outside, "measured_sizes_bytes": curve.sizes_bytes,
              "quick_run": curve.quick}
    return Charge(us, note, report)
