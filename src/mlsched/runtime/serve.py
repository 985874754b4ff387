"""The serving loop behind ``mlsched-lite run``: ring requests in, decisions back, statistics out.

Role in the request -> decision path::

      kernel side (kernel.py)                             this module
   collector (tp_btf) / injector / a balancer
      mlsched_decide() -- hit --> decision                      ^ stats line every interval
           | miss (or hit, reported in shadow mode)             | Prometheus textfile (stats.py)
           v                                                    |
      `requests` ring --- poll(batch, max-wait) ---> engine.decide_wire(batch)  (one call)
      `decisions` map <-- answer(batch)  (one mmap store per decision, no syscall)
                                                    latency = now - request.ts_ns
                                                    agreement with what CFS did

1. **Start** (``Server.__init__``): check privileges and BTF, load and verify the
   bundle, load the BPF side (before the interpreter: libbpf's BTF parse then stays
   out of the process's peak memory), build the engine (for the collector: a table
   derived for this host's CPU count), give the kernel that table, set the CPU
   domains, warm numpy's small-block cache.
2. **Serve** (``Server.serve``): attach the collector unless told not to; each
   ``KernelPath.serve_round()`` polls a batch of ring records copied by a C callback,
   has ``Server.decide`` decide the whole batch at once and stores the decisions
   (``answer()``); every per-batch statistic is a numpy reduction, never a Python loop
   per record.
3. **Report**: one line per interval on stdout; the same counters as a Prometheus
   textfile; ``record`` appends the live features as CSV (recorder.py). No failed write
   ends serving: a line stdout refuses (a closed pipe, a full disk), a textfile or record
   write that fails is counted in ``write_errors`` (lines also in ``stats_line_errors``),
   said once on stderr, and the next interval tries again.
4. **Stop** when ``stop`` is set (signals) or the duration ends: detach the collector,
   answer what is already on the ring, return the summary; ``close()`` frees the rest.
"""

from __future__ import annotations

import errno
import importlib.util
import logging
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import numpy as np

from . import bpfenv, topology
from .bundle import load_bundle
from .engine import Engine
from .errors import UsageError
from .files import write_atomic
from .interp import BACKENDS
from .recorder import Recorder
from .stats import (
    LatencyHistogram,
    Window,
    interval_values,
    peak_rss_bytes,
    peak_rss_mb,
    prometheus_text,
    release_free_memory,
    reset_peak_rss,
    stats_line,
)
from .wire import MIGRATE, NONE, REASON_HIT

log = logging.getLogger(__name__)

#: Records per poll() batch (the ring's C callback fills at most this many).
DEFAULT_BATCH = 4096
#: How long a batch stays open after its first record (µs). 0: a batch is what the ring holds
#: when the consumer comes round; under load batches grow by themselves while the previous
#: one is decided, and any wait adds the wait plus the timer slack to every request.
DEFAULT_MAX_WAIT_US = 0
#: Interpreter package the daemon prefers under --backend auto: it serves only batches, where
#: tflite-runtime is the faster and smaller of the two (README, "Performance").
DAEMON_BACKEND_ORDER = ("tflite-runtime", "litert")
#: Longest single wait in the ring; bounds how late a stop request or the interval line can be.
POLL_TIMEOUT_MS = 100
#: The stop drain answers what is on the ring when the stop came, within this long; another
#: producer on pinned maps may keep adding requests, and those wait for the next consumer.
DRAIN_MAX_S = 0.25
#: numpy keeps freed data blocks smaller than this many bytes for reuse, a few per size.
NUMPY_SMALL_BLOCK = 1024


@dataclass
class ServeConfig:
    """What ``mlsched-lite run`` was asked to do (commands/run.py fills it from the flags)."""

    bundle: str | None = None
    backend: str = "auto"
    allow_insecure_bundle: bool = False
    cpus: int | None = None              # host CPUs the table covers; None: see Server
    collector: bool = True
    domains: list[list[int]] | None = None
    ring_size: int = bpfenv.DEFAULT_RING_BYTES
    pin: bool = False
    pin_dir: str = bpfenv.PIN_DIR
    batch: int = DEFAULT_BATCH
    max_wait_us: int = DEFAULT_MAX_WAIT_US
    duration: float = 0.0                # 0: until stopped
    interval: float = 5.0                # 0: no interval lines
    stats_file: str | None = None
    record: str | None = None


def daemon_backend(requested: str) -> str:
    """``auto`` -> the first installed package of DAEMON_BACKEND_ORDER; else as requested."""
    if requested != "auto":
        return requested
    for name in DAEMON_BACKEND_ORDER:
        if importlib.util.find_spec(BACKENDS[name].split(".")[0]) is not None:
            return name
    return requested


def warm_up(engine: Engine) -> None:
    """Decide one batch of every size below NUMPY_SMALL_BLOCK rows, then zero the counters.

    numpy caches freed blocks under 1 KiB, a few per size; batch sizes vary from poll to
    poll, so a serving daemon would fill that cache over hours and its RSS would creep.
    Filled at start, the serving RSS is the steady one. The rows are off-grid, so the
    interpreter path's temporaries are warmed too.
    """
    rows = np.zeros((NUMPY_SMALL_BLOCK, 5), dtype=np.uint32)
    latency = LatencyHistogram()
    for n in range(1, NUMPY_SMALL_BLOCK):
        engine.decide_wire(rows[:n])
        latency.add(rows[:n, 0].astype(np.int64))
    engine.reset_counters()


def check_writable(path: str | None, flag: str) -> None:
    """Refuse, before anything is loaded, an output file that cannot be written."""
    if path is None:
        return
    parent = Path(path).parent
    if not parent.is_dir():
        raise UsageError(f"{flag} {path}: directory {parent} does not exist")
    if Path(path).is_dir():
        raise UsageError(f"{flag} {path}: is a directory")
    if not os.access(parent, os.W_OK):
        raise UsageError(f"{flag} {path}: directory {parent} is not writable")


def write_line(stream: TextIO, text: str) -> None:
    """``text`` and a newline onto ``stream``; raises OSError when the write fails.

    A stream with a file descriptor is written through it directly: a write that fails
    then leaves nothing in the stream's buffer to fail again at the next line or at exit.
    A stream without one (an in-memory capture) is written and flushed.
    """
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):
        fd = None
    if fd is None:
        stream.write(text + "\n")
        stream.flush()
        return
    stream.flush()          # whatever was written through the stream itself goes first
    data = memoryview((text + "\n").encode(stream.encoding or "utf-8", "replace"))
    while data:
        data = data[os.write(fd, data):]


class Server:
    """One consumer: a KernelPath, an Engine, and the loop between them."""

    def __init__(self, config: ServeConfig):
        bpfenv.check_environment()
        self.config = config
        # refused record files are refused before anything is loaded
        self.recorder = Recorder(config.record) if config.record else None
        try:
            self._start(config)
        except BaseException:
            if self.recorder:
                self.recorder.abandon()
            raise

    def _start(self, config: ServeConfig) -> None:
        bundle = load_bundle(config.bundle, allow_insecure=config.allow_insecure_bundle)
        ncpus = config.cpus
        if ncpus is None and config.collector:
            ncpus = topology.cpu_count()
        if ncpus is not None and ncpus > bundle.cpus:
            raise UsageError(f"this host has {ncpus} CPUs but bundle {bundle.path} was converted"
                             f" for {bundle.cpus}: mlsched-convert MODEL -o BUNDLE"
                             f" --cpus {ncpus}")
        # imported here: it needs the compiled extension, which `decide` and the converter
        # never do (ExtensionMissing names the fix where it is not installed)
        from . import kernel

        self.kp = kernel.KernelPath()
        self.kp.load(None, ncpus=ncpus, ring_size=config.ring_size, domains=config.domains,
                     pin=config.pin, pin_dir=config.pin_dir,
                     table_capacity=ncpus or bundle.cpus,
                     level2_capacity=(bundle.level2.kernel_words * 8 if bundle.level2 is not None
                                      else 0))
        if config.collector:
            self._warn_coverage()
        if self.recorder:
            self.recorder.set_domains(self.kp.domains)
        try:
            self.engine = Engine(bundle, ncpus=ncpus, backend=daemon_backend(config.backend))
            log.debug("engine: %s", self.engine.describe())
            self._set_table()
            warm_up(self.engine)
        except BaseException:
            self.kp.close()
            raise
        self.hit_reason = REASON_HIT
        self.now_ns = kernel.now_ns
        self.stop = False
        self.total = Window()
        self.window = Window()
        self.bpf_ids: dict[str, list[int]] = {}
        self.stats_write_errors = 0
        self.stats_line_errors = 0
        self.kernel_start = self.kp.stats()
        self.startup_peak_rss_mb = _round(peak_rss_mb())
        release_free_memory()
        self.peak_reset = reset_peak_rss()

    def _set_table(self) -> None:
        """Give the kernel both table levels; level 1 alone if level 2 does not fit the room
        loaded for it (a derived table's level 2 larger than the bundle's)."""
        e = self.engine
        try:
            self.kp.set_table(e.table, e.level2)
        except bpfenv.KernelPathError as exc:
            if e.level2 is None or exc.errno != errno.E2BIG:
                raise
            log.warning("table level 2 (%d bytes) does not fit the kernel's room for it (pinned"
                        " maps of another bundle? `mlsched-lite unpin` makes room): the kernel"
                        " answers from level 1 and sends the rest to the ring",
                        e.level2.kernel_words * 8)
            self.kp.set_table(e.table)

    def _warn_coverage(self) -> None:
        """Say which online CPUs the collector keeps no domain load for."""
        missing = topology.uncovered(self.kp.domains)
        if missing:
            log.warning("CPUs %s are in no domain: the collector keeps no load for them",
                        ",".join(map(str, missing)))

    def close(self) -> None:
        if self.recorder:
            self.recorder.close()
        self.kp.close()

    # ---- one batch ------------------------------------------------------------------------
    def serve_round(self, timeout_ms: int, max_records: int, linger_us: int = 0) -> int:
        """One batch through ``KernelPath.serve_round``, then its accounting; the records
        it took (0: none came)."""
        r = self.kp.serve_round(self.decide, timeout_ms=timeout_ms, max_records=max_records,
                                linger_us=linger_us)
        if r is None:
            return 0
        need = r.batch["reason"] != self.hit_reason
        w = self.window
        w.answered += r.stored
        w.latency.add((self.now_ns() - r.batch["ts_ns"][need]).astype(np.int64))
        self.compare_with_cfs(r.batch, r.decisions)
        return len(r.batch)

    def decide(self, batch: np.ndarray) -> np.ndarray:
        """Decisions for every record: the engine's where an answer is needed, the kernel's
        own for hit records (shadow mode reports those for the comparison with CFS)."""
        need = batch["reason"] != self.hit_reason
        e = self.engine
        w = self.window
        w.records += len(batch)
        before = e.counters.snapshot()
        if need.all():
            decisions = e.decide_wire(batch["f"])
        else:
            decisions = batch["kernel_decision"].copy()
            decisions[need] = e.decide_wire(batch["f"][need])
        c = e.counters
        w.level2 += c.level2_hits - before.level2_hits
        w.table += c.hits - before.hits - (c.level2_hits - before.level2_hits)
        w.interpreter += c.misses - before.misses
        w.invalid += c.invalid - before.invalid
        w.migrate += int(np.count_nonzero(decisions == MIGRATE))
        return decisions

    def compare_with_cfs(self, batch: np.ndarray, model: np.ndarray) -> None:
        """Agreement with what CFS did, over collector records; record them if asked."""
        cfs = batch["cfs_action"]
        seen = cfs != NONE
        if not seen.any():
            return
        w = self.window
        w.cfs_seen += int(np.count_nonzero(seen))
        w.cfs_agree += int(np.count_nonzero(seen & (cfs == model)))
        cfs_moved = cfs == MIGRATE
        w.cfs_migrate += int(np.count_nonzero(cfs_moved))
        w.cfs_migrate_agree += int(np.count_nonzero(cfs_moved & (model == MIGRATE)))
        if self.recorder:
            self.recorder.add(batch[seen], model[seen])

    # ---- reporting ------------------------------------------------------------------------
    def write_stats_file(self, total: dict, window: dict) -> None:
        values = dict(total)
        for key, src in (("p50_s", "latency_p50_us"), ("p99_s", "latency_p99_us")):
            v = window.get(src)
            values[key] = None if v is None else v / 1e6
        values["rss_bytes"] = peak_rss_bytes()
        values["write_errors"] = self.write_errors
        try:
            write_atomic(self.config.stats_file, prometheus_text(values))
        except OSError as e:
            self.stats_write_errors += 1
            if self.stats_write_errors == 1:
                log.warning("--stats-file %s: %s; serving goes on, failed writes are counted",
                            self.config.stats_file, e.strerror)

    def print_line(self, text: str) -> bool:
        """One line on stdout; a failed one is counted and said once on stderr (a stderr that
        fails too says nothing), never raised. Returns whether the line was written."""
        try:
            write_line(sys.stdout, text)
        except OSError as e:
            self.stats_line_errors += 1
            if self.stats_line_errors == 1:
                log.warning("stdout: %s; serving goes on, failed stats lines are counted",
                            e.strerror or e)
            return False
        return True

    @property
    def write_errors(self) -> int:
        """Failed writes of the stats lines, the stats file and the record file so far."""
        return (self.stats_line_errors + self.stats_write_errors
                + (self.recorder.write_errors if self.recorder else 0))

    def report(self, now: float, start: float, last_kernel: dict, last_t: float) -> dict:
        """The interval line, the textfile and the recorder's flush; returns kernel counters."""
        k = self.kp.stats()
        wv = interval_values(self.window, k, last_kernel, now - last_t)
        self.print_line(stats_line(wv))
        self.total.merge(self.window)
        self.window = Window()
        if self.config.stats_file:
            self.write_stats_file(interval_values(self.total, k, self.kernel_start, now - start),
                                  wv)
        if self.recorder:
            self.recorder.flush()
        return k

    # ---- the loop -------------------------------------------------------------------------
    def serve(self) -> dict:
        """Serve until ``stop`` is set or the duration ends; return the run's summary."""
        cfg = self.config
        kp = self.kp
        if cfg.collector:
            kp.attach_collector(report_hits=True)
        start = time.monotonic()
        deadline = start + cfg.duration if cfg.duration > 0 else float("inf")
        interval = cfg.interval if cfg.interval > 0 else float("inf")
        next_report = start + interval
        last_kernel, last_t = self.kernel_start, start
        log.info("serving: %d-CPU table%s, %d domains, ring %d KiB, batch %d, %s",
                 self.engine.ncpus, " (derived)" if self.engine.derived else "",
                 len(kp.domains), cfg.ring_size // 1024, cfg.batch,
                 "collector attached (shadow mode)" if cfg.collector else "no collector")
        while not self.stop:
            now = time.monotonic()
            if now >= deadline:
                break
            # no deadline and no interval leave both infinite: wait the longest single wait
            until = min(deadline, next_report, now + POLL_TIMEOUT_MS / 1000)
            wait = max(0, int((until - now) * 1000))
            self.serve_round(wait, cfg.batch, cfg.max_wait_us)
            now = time.monotonic()
            if now >= next_report:
                last_kernel, last_t = self.report(now, start, last_kernel, last_t), now
                next_report = now + interval
        self.drain()
        return self.summary(time.monotonic() - start)

    def drain(self) -> None:
        """Detach the collector, withdraw the heartbeat (producers stop sending to the ring and
        answer STAY at once) and answer what is already on the ring: at most a ring's worth
        of records, for at most DRAIN_MAX_S. The heartbeat is withdrawn again at the end,
        since every poll renews it."""
        self.bpf_ids = self.kp.ids()
        self.kp.detach_collector()
        self.kp.clear_heartbeat()
        budget = self.kp.ring_capacity()
        deadline = time.monotonic() + DRAIN_MAX_S
        while budget > 0 and time.monotonic() < deadline:
            took = self.serve_round(0, min(self.config.batch, budget))
            if not took:
                break
            budget -= took
        self.kp.clear_heartbeat()

    def summary(self, seconds: float) -> dict:
        self.total.merge(self.window)
        self.window = Window()
        s = interval_values(self.total, self.kp.stats(), self.kernel_start, seconds)
        if self.recorder:
            self.recorder.flush()
        s["peak_rss_mb"] = _round(peak_rss_mb())      # while serving
        s["startup_peak_rss_mb"] = (self.startup_peak_rss_mb if self.peak_reset
                                    else s["peak_rss_mb"])
        s["table_cpus"] = self.engine.ncpus
        s["backend"] = self.engine.backend
        s["recorded"] = self.recorder.rows if self.recorder else 0
        s["record_lost_rows"] = self.recorder.lost_rows if self.recorder else 0
        s["write_errors"] = self.write_errors
        s["stats_line_errors"] = self.stats_line_errors
        s["bpf_ids"] = self.bpf_ids       # for leak checks: all gone after exit
        s["pinned"] = self.config.pin
        if self.config.stats_file:
            self.write_stats_file(s, s)
        return s


def _round(mb: float) -> float | None:
    """A memory figure for the summary: None when it could not be read (JSON has no NaN)."""
    return None if math.isnan(mb) else round(mb, 1)
