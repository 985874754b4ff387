"""Serving statistics: what one interval or the whole run saw, and how it is reported.

The serve loop (``serve.py``) adds each batch to a ``Window``; at every interval
``interval_values`` combines that window with the kernel's counters into one flat
dict, which becomes the stats line (``stats_line``), the Prometheus textfile
(``prometheus_text``) and, for the whole run, the summary (``summary_text`` and
``--summary-json``).

Fields of that dict:
  records       ring records consumed (misses to answer plus shadow-mode hits)
  kernel_hits   decisions the in-kernel table answered (kernel counter), of which
  kernel_level1 / kernel_level2
                the table's first / second level answered (kernel counters)
  misses_sent   requests the kernel side put on the ring for an answer
  table / level2 / interpreter
                requests the engine answered from its table's first level / second
                level / with the interpreter
  dropped       records lost because the ring was full (kernel counter)
  stale         answers the kernel side found missing or too late (kernel counter)
  rejected      ring records of the wrong size or version, skipped
  double_answers / late_answers
                answers not stored: the seq was answered already / its slot was reused
  agreement     model decision == CFS's action, over collector records
  latency_*     request timestamp -> answer stored, p50/p99 (log histogram,
                LAT_PER_OCTAVE buckets per octave)
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import time
from dataclasses import dataclass, field, fields

import numpy as np

#: Latency histogram: LAT_PER_OCTAVE buckets per power of two of nanoseconds.
LAT_PER_OCTAVE = 16
LAT_BUCKETS = 40 * LAT_PER_OCTAVE          # up to 2^40 ns (18 min)


# ---- per-batch accumulation -----------------------------------------------------------------
class LatencyHistogram:
    """Log-bucketed latencies in ns: cheap to add a batch to, percentiles within 4.4 %."""

    def __init__(self):
        self.counts = np.zeros(LAT_BUCKETS, dtype=np.int64)

    def add(self, ns: np.ndarray) -> None:
        if ns.size == 0:
            return
        b = np.log2(np.maximum(ns, 1).astype(np.float64))
        b *= LAT_PER_OCTAVE
        idx = np.minimum(b.astype(np.int64), LAT_BUCKETS - 1)
        self.counts += np.bincount(idx, minlength=LAT_BUCKETS)

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    def percentile_us(self, q: float) -> float | None:
        """Upper edge of the bucket holding the q-th percentile, in µs (None: no samples)."""
        n = self.total
        if n == 0:
            return None
        rank = max(1, int(np.ceil(q / 100.0 * n)))
        i = int(np.searchsorted(np.cumsum(self.counts), rank))
        return 2.0 ** ((i + 1) / LAT_PER_OCTAVE) / 1000.0

    def merge(self, other: LatencyHistogram) -> None:
        self.counts += other.counts


@dataclass
class Window:
    """What one interval (or the whole run) saw on the user-space side."""

    records: int = 0
    table: int = 0
    level2: int = 0
    interpreter: int = 0
    invalid: int = 0
    answered: int = 0
    migrate: int = 0
    cfs_seen: int = 0
    cfs_agree: int = 0
    cfs_migrate: int = 0
    cfs_migrate_agree: int = 0
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)

    def merge(self, o: Window) -> None:
        for f in fields(self):
            if f.name != "latency":
                setattr(self, f.name, getattr(self, f.name) + getattr(o, f.name))
        self.latency.merge(o.latency)

    @property
    def agreement(self) -> float | None:
        return self.cfs_agree / self.cfs_seen if self.cfs_seen else None


def interval_values(window: Window, kernel_now: dict, since: dict, seconds: float) -> dict:
    k = {name: kernel_now[name] - since.get(name, 0) for name in kernel_now}
    return {
        "seconds": round(seconds, 3),
        "records": window.records, "answered": window.answered,
        "table": window.table, "level2": window.level2, "interpreter": window.interpreter,
        "invalid": window.invalid, "migrate": window.migrate,
        "kernel_hits": k["kernel_hits"], "kernel_level1": k["kernel_hits"] - k["level2_hits"],
        "kernel_level2": k["level2_hits"], "produced": k["produced"], "dropped": k["dropped"],
        "misses_sent": k["misses_sent"], "stale": k["stale"],
        "no_consumer": k["no_consumer"], "rejected": k["rejected"],
        "double_answers": k["double_answers"], "late_answers": k["late_answers"],
        "cfs_seen": window.cfs_seen, "cfs_agree": window.cfs_agree,
        "cfs_migrate": window.cfs_migrate, "cfs_migrate_agree": window.cfs_migrate_agree,
        "agreement": window.agreement,
        "requests_per_s": window.records / seconds if seconds > 0 else 0.0,
        "decisions_per_s": window.answered / seconds if seconds > 0 else 0.0,
        "latency_p50_us": window.latency.percentile_us(50),
        "latency_p99_us": window.latency.percentile_us(99),
        "latency_samples": window.latency.total,
    }


# ---- reporting ----------------------------------------------------------------------------------
def stats_line(v: dict) -> str:
    agree = "n/a" if v["agreement"] is None else f"{v['agreement']:.1%} of {v['cfs_seen']}"
    p50 = "-" if v["latency_p50_us"] is None else f"{v['latency_p50_us']:.0f}"
    p99 = "-" if v["latency_p99_us"] is None else f"{v['latency_p99_us']:.0f}"
    return (f"{time.strftime('%H:%M:%S')} req/s {v['requests_per_s']:,.0f}"
            f" | kernel level 1 {v['kernel_level1']} level 2 {v['kernel_level2']}"
            f" ring {v['misses_sent']} | user level 1 {v['table']} level 2 {v['level2']}"
            f" interp {v['interpreter']} | drops {v['dropped']} stale {v['stale']}"
            f" | agree w/ CFS {agree} | latency p50 {p50} us p99 {p99} us")


def summary_text(s: dict) -> str:
    agree = ("n/a (no CFS migrations seen)" if s["agreement"] is None else
             f"{s['agreement']:.1%} of {s['cfs_seen']} (CFS migrated {s['cfs_migrate']},"
             f" the model agreed on {s['cfs_migrate_agree']} of those;"
             f" the model said MIGRATE {s['migrate']} times)")
    lat = ("-" if s["latency_p50_us"] is None else
           f"p50 {s['latency_p50_us']:.0f} us, p99 {s['latency_p99_us']:.0f} us"
           f" over {s['latency_samples']} answers")
    return (f"summary: {s['seconds']:.1f} s, {s['records']} requests"
            f" ({s['requests_per_s']:,.0f}/s), {s['answered']} answered;"
            f" kernel: level 1 {s['kernel_level1']}, level 2 {s['kernel_level2']},"
            f" to the ring {s['misses_sent']}; user: level 1 {s['table']},"
            f" level 2 {s['level2']}, interpreter rows {s['interpreter']},"
            f" invalid {s['invalid']};"
            f" dropped {s['dropped']}, stale {s['stale']}, no consumer {s['no_consumer']},"
            f" rejected {s['rejected']}, late answers {s['late_answers']};"
            f" agreement with CFS {agree}; latency {lat}; peak RSS {s['peak_rss_mb']} MB serving,"
            f" {s['startup_peak_rss_mb']} MB at start-up"
            + (f"; write errors {s['write_errors']} ({s.get('record_lost_rows', 0)} recorded rows"
               " lost)" if s.get("write_errors") else ""))


PROM_METRICS = (
    # name, type, help, key in the counters dict
    ("requests_total", "counter", "ring records consumed by mlsched-lite", "records"),
    ("answered_total", "counter", "answers stored for the kernel side", "answered"),
    ("user_table_hits_total", "counter", "requests answered from the engine's table, level 1",
     "table"),
    ("user_level2_hits_total", "counter", "requests answered from the engine's table, level 2",
     "level2"),
    ("interpreter_rows_total", "counter", "requests answered by the int8 interpreter",
     "interpreter"),
    ("invalid_total", "counter", "requests with features outside the contract", "invalid"),
    ("kernel_hits_total", "counter", "decisions the in-kernel table answered", "kernel_hits"),
    ("kernel_level2_hits_total", "counter", "of those, decisions the table's second level"
     " answered", "kernel_level2"),
    ("misses_sent_total", "counter", "requests the kernel side sent to the ring for an answer",
     "misses_sent"),
    ("produced_total", "counter", "records the kernel side put on the ring", "produced"),
    ("dropped_total", "counter", "records lost because the ring was full", "dropped"),
    ("stale_total", "counter", "answers the kernel side found missing or late", "stale"),
    ("no_consumer_total", "counter", "misses answered STAY because no consumer ran",
     "no_consumer"),
    ("rejected_total", "counter", "ring records of the wrong size or version", "rejected"),
    ("double_answers_total", "counter", "answers refused: the request was answered already",
     "double_answers"),
    ("late_answers_total", "counter", "answers refused: a newer request took the slot",
     "late_answers"),
    ("cfs_compared_total", "counter", "collector records compared with CFS", "cfs_seen"),
    ("cfs_agree_total", "counter", "collector records where the model agreed with CFS",
     "cfs_agree"),
    ("latency_p50_seconds", "gauge", "request to answer, median over the last interval",
     "p50_s"),
    ("latency_p99_seconds", "gauge", "request to answer, 99th percentile over the last interval",
     "p99_s"),
    ("peak_rss_bytes", "gauge", "peak resident memory of mlsched-lite", "rss_bytes"),
    ("write_errors_total", "counter", "failed writes of the stats file, the record file and the stats lines on stdout",
     "write_errors"),
)


def prometheus_text(values: dict) -> str:
    out = []
    for name, kind, text, key in PROM_METRICS:
        v = values.get(key)
        if v is None:
            continue
        value = f"{v:g}" if isinstance(v, float) else str(v)
        out.append(f"# HELP mlsched_{name} {text}\n# TYPE mlsched_{name} {kind}\n"
                   f"mlsched_{name} {value}\n")
    return "".join(out)


# ---- memory -------------------------------------------------------------------------------------
def peak_rss_mb(pid: int | str = "self") -> float:
    """Peak resident set (VmHWM) of a process, this one by default, in MB; NaN if unknown."""
    with contextlib.suppress(OSError, ValueError):
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    return float("nan")


def peak_rss_bytes(pid: int | str = "self") -> int | None:
    """Peak resident set in bytes, None when it cannot be read."""
    mb = peak_rss_mb(pid)
    return None if math.isnan(mb) else int(mb * 1024 * 1024)


def release_free_memory() -> bool:
    """Give the C heap's free pages back to the kernel (glibc ``malloc_trim``): start-up
    work (the BTF libbpf parses, a derived table's build) leaves freed memory that would
    otherwise stay resident for the daemon's lifetime. False where there is no such call."""
    try:
        libc = ctypes.CDLL(None)
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return False
    trim.argtypes = [ctypes.c_size_t]
    trim(0)
    return True


def reset_peak_rss() -> bool:
    """Restart the VmHWM count from the current RSS (proc(5): clear_refs, value 5), so the
    serving peak is measured apart from start-up (libbpf parses the kernel's BTF while
    loading, then frees it)."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False
