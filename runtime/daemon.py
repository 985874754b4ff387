"""``mlsched-lite run`` and ``replay``: serve the kernel side's requests with the engine.

Role in the request -> decision path::

      kernel side (bpf/mlsched.bpf.o)                    this module
   collector (tp_btf) / injector / a balancer
      mlsched_decide() -- hit --> decision                       ^ stats line every --interval
           | miss (or hit, reported in shadow mode)              | Prometheus textfile
           v                                                     |
      `requests` ring --- poll(batch, max-wait) ---> engine.decide_wire(batch)  (one call)
      `decisions` map <-- answer(batch)  (one mmap store per decision, no syscall)
                                                     latency = now - request.ts_ns
                                                     agreement with what CFS did

1. **Start**: check privileges and BTF, load and verify the bundle, build the
   engine (for the collector: a table derived for this host's CPU count), load
   the BPF object with that table, set the CPU domains, attach the collector
   (unless ``--no-collector``: then requests come only from other producers that
   share the pinned maps, e.g. the injector in ``make bench``).
2. **Serve**: ``poll()`` returns a batch of ring records copied by a C callback;
   the engine decides the whole batch at once; ``answer()`` stores the decisions;
   every per-batch statistic is a numpy reduction, never a Python loop per record.
3. **Report**: one line per ``--interval``; the same counters as a Prometheus
   textfile (written beside its name and renamed); ``--record`` appends the live
   features with CFS's action and the model's decision as CSV rows that
   ``mlsched-convert --calibration`` reads.
4. **Stop** on SIGINT/SIGTERM/``--duration``: detach everything, print the summary,
   exit 0. Without ``--pin`` nothing outlives the process; with ``--pin`` the maps
   (and their counters) stay under ``--pin-dir`` for the next ``run``, until
   ``mlsched-lite unpin``.

Statistics (per interval and in the summary):
  requests      ring records consumed (misses to answer plus shadow-mode hits)
  kernel_hits   decisions the in-kernel table answered (kernel counter)
  table / interpreter
                requests the engine answered from its table / with the interpreter
  drops         records lost because the ring was full (kernel counter)
  stale         answers the kernel side found missing or too late (kernel counter)
  rejected      ring records of the wrong size or version, skipped
  double_answers / late_answers
                answers not stored: the seq was answered already / its slot was reused
  agreement     model decision == CFS's action, over collector records
  latency       request timestamp -> answer stored, p50/p99 (log histogram, 16 buckets
                per octave: within 4.4 %)
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib.util
import json
import logging
import os
import signal
import stat
import sys
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np

from .features import LOAD_FIXED_ONE, MIGRATE, STAY
from .files import write_atomic

log = logging.getLogger("mlsched.runtime.daemon")
PROG = "mlsched-lite"

#: Records per poll() batch (the ring's C callback fills at most this many).
DEFAULT_BATCH = 4096
#: How long a batch stays open after its first record (µs). 0: a batch is what the ring holds
#: when the consumer comes round; under load batches grow by themselves while the previous
#: one is decided, and any wait adds the wait plus the timer slack (50 µs) to every request.
#: Measured at 100 k requests/s: 50 µs -> p50 240-251 µs, p99 460-597 µs; 0 -> p50 81-85 µs,
#: p99 149-163 µs.
DEFAULT_MAX_WAIT_US = 0
#: Interpreter package the daemon prefers under --backend auto: it serves only batches, where
#: tflite-runtime was faster (0.31 vs 0.37 µs/row at 4096 rows) and smaller (RSS 48.6 vs
#: 55.3 MB serving) than ai-edge-litert on these machines.
DAEMON_BACKEND_ORDER = ("tflite-runtime", "litert")
#: Longest single wait in the ring; bounds how late a signal or the interval line can be.
POLL_TIMEOUT_MS = 100
#: Latency histogram: LAT_PER_OCTAVE buckets per power of two of nanoseconds.
LAT_PER_OCTAVE = 16
LAT_BUCKETS = 40 * LAT_PER_OCTAVE          # up to 2^40 ns (18 min)
#: Rows per injector call in replay, and a ring four times that size: a chunk never drops.
REPLAY_CHUNK_ROWS = 16384
REPLAY_RING_BYTES = 4 << 20

RUN_EPILOG = """\
examples:
  mlsched-lite run --duration 15
        shadow mode beside CFS: decide every task migration CFS makes, report agreement
  mlsched-lite run --interval 10 --stats-file /run/mlsched/mlsched.prom
        as the systemd unit runs it: a stats line and a Prometheus textfile every 10 s
  mlsched-lite run --record live.csv --duration 60
        keep the live features; then: mlsched-convert MODEL -o BUNDLE --calibration live.csv
  mlsched-lite run --no-collector --pin --pin-dir /sys/fs/bpf/mlsched
        serve producers that share the pinned maps (a scheduler's balancer, the injector)

needs CAP_BPF and CAP_PERFMON (root); stops on SIGINT/SIGTERM or after --duration.
--backend auto prefers tflite-runtime here (batches only: faster and smaller than litert).
"""

REPLAY_EPILOG = """\
examples:
  mlsched-lite replay features.csv
        every row through the in-kernel helper (injector), misses through the ring to
        the engine, and the decision the kernel side then reads, one per row
  mlsched-lite replay trace.npz --bypass-table --output decisions.txt
"""


class DaemonError(Exception):
    """A user-fixable problem: one line, exit 2."""


# ---- argument parsing -----------------------------------------------------------------------
def _positive_int(text: str) -> int:
    try:
        v = int(text, 0)
    except ValueError:
        v = 0
    if v < 1:
        raise argparse.ArgumentTypeError(f"not a positive integer: {text!r}")
    return v


def _seconds(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        v = -1.0
    if not v >= 0 or v == float("inf"):
        raise argparse.ArgumentTypeError(f"not a number of seconds >= 0: {text!r}")
    return v


def _ring_bytes(text: str) -> int:
    v = _positive_int(text)
    if v & (v - 1) or v < 4096:
        raise argparse.ArgumentTypeError(f"--ring-size {text}: a power of two >= 4096 bytes")
    return v


def _domains(text: str) -> list[list[int]]:
    from .kernel import parse_domains

    try:
        return parse_domains(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_parser(subparsers) -> None:
    from .kernel import DEFAULT_RING_BYTES, PIN_DIR

    p = subparsers.add_parser(
        "run", help="serve the kernel side: ring buffer in, decisions back, live stats",
        description="Load the BPF side, attach the live collector (shadow mode beside CFS),"
                    " answer every request the kernel table cannot, report what happened.",
        epilog=RUN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=_seconds, default=0.0, metavar="S",
                   help="stop after S seconds (default: run until SIGINT/SIGTERM)")
    p.add_argument("--interval", type=_seconds, default=5.0, metavar="S",
                   help="seconds between stats lines and textfile writes (default 5; 0: none)")
    p.add_argument("--stats-file", metavar="PATH",
                   help="write the counters as a Prometheus textfile (atomic rename)")
    p.add_argument("--summary-json", metavar="PATH", help="write the final summary as JSON")
    p.add_argument("--record", metavar="FILE",
                   help="append live features, CFS action and model decision as CSV")
    p.add_argument("--batch", type=_positive_int, default=DEFAULT_BATCH, metavar="N",
                   help="records per batch (default %(default)s)")
    p.add_argument("--max-wait-us", type=int, default=DEFAULT_MAX_WAIT_US, metavar="U",
                   help="keep a batch open this long after its first record (default %(default)s)")
    p.add_argument("--ring-size", type=_ring_bytes, default=DEFAULT_RING_BYTES, metavar="BYTES",
                   help="request ring size, a power of two (default %(default)s)")
    p.add_argument("--domains", type=_domains, metavar="SPEC",
                   help="CPU domains, e.g. 0-3,4-7 (default: LLC groups; one per CPU if one LLC)")
    p.add_argument("--cpus", type=_positive_int, metavar="N",
                   help="host CPUs the table covers (default: online CPUs with the collector,"
                        " the bundle's without)")
    p.add_argument("--no-collector", action="store_true",
                   help="do not attach the tracepoint collector; serve other producers only")
    p.add_argument("--load", type=int, default=0, metavar="N",
                   help="also start N worker processes that alternate spinning and sleeping,"
                        " so CFS has tasks to migrate (demonstration; stopped at exit)")
    p.add_argument("--pin", action="store_true",
                   help="keep the maps pinned under --pin-dir (reused and kept after exit)")
    p.add_argument("--pin-dir", default=PIN_DIR, metavar="DIR",
                   help="where --pin keeps the maps (default %(default)s)")
    p.set_defaults(_daemon=run_daemon)

    r = subparsers.add_parser(
        "replay", help="run a feature file through the kernel side and the engine",
        description="Inject every row into the in-kernel helper; misses go through the ring to"
                    " the engine; print the decision the kernel side reads back, one per row.",
        epilog=REPLAY_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("input", metavar="FILE", help="CSV with the feature header, .npz, or -")
    r.add_argument("--output", metavar="FILE", help="decisions, one per row (default: stdout)")
    r.add_argument("--bypass-table", action="store_true",
                   help="send every row through the ring, not only table misses")
    r.set_defaults(_daemon=run_replay)

    u = subparsers.add_parser(
        "unpin", help="remove maps kept by run --pin",
        description="Remove the maps `run --pin` keeps pinned (and their counters).")
    u.add_argument("--pin-dir", default=PIN_DIR, metavar="DIR",
                   help="pin directory (default %(default)s)")
    u.set_defaults(_daemon=run_unpin)


def run(args) -> int:
    from . import kernel

    try:
        return args._daemon(args)
    except kernel.KernelPathError as e:
        msg = str(e)
        if getattr(args, "verbose", False) and getattr(e, "log", ""):
            print(e.log.rstrip(), file=sys.stderr)
        elif isinstance(e, kernel.VerifierError):
            msg += " (run with -v for the verifier log)"
        print(f"{PROG}: {msg}", file=sys.stderr)
        return 2
    except DaemonError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 2


# ---- statistics -----------------------------------------------------------------------------
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


def peak_rss_mb(pid: int | str = "self") -> float:
    """Peak resident set (VmHWM) of a process, this one by default, in MB; NaN if unknown."""
    with contextlib.suppress(OSError, ValueError):
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    return float("nan")


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


PROM_METRICS = (
    # name, type, help, key in the counters dict
    ("requests_total", "counter", "ring records consumed by mlsched-lite", "records"),
    ("answered_total", "counter", "answers stored for the kernel side", "answered"),
    ("user_table_hits_total", "counter", "requests answered from the engine's table", "table"),
    ("interpreter_rows_total", "counter", "requests answered by the int8 interpreter",
     "interpreter"),
    ("invalid_total", "counter", "requests with features outside the contract", "invalid"),
    ("kernel_hits_total", "counter", "decisions the in-kernel table answered", "kernel_hits"),
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
)


def prometheus_text(values: dict) -> str:
    out = []
    for name, kind, text, key in PROM_METRICS:
        v = values.get(key)
        if v is None:
            continue
        out.append(f"# HELP mlsched_{name} {text}\n# TYPE mlsched_{name} {kind}\n"
                   f"mlsched_{name} {v:g}\n" if isinstance(v, float) else
                   f"# HELP mlsched_{name} {text}\n# TYPE mlsched_{name} {kind}\n"
                   f"mlsched_{name} {v}\n")
    return "".join(out)


# ---- recording ------------------------------------------------------------------------------
RECORD_HEADER = ("cpu,cpu_idle,cpu_not_idle,src_dom_load,dst_dom_load,"
                 "cfs_action,decision,source,pid,ts_ns\n")


class Recorder:
    """Appends collector records as CSV rows ``mlsched-convert --calibration`` accepts."""

    def __init__(self, path: str):
        self.path = path
        # Never through a symlink (root appending to, and chmod-ing, whatever a link in a
        # shared directory points at), never a FIFO or device (open would block or worse).
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK \
            | os.O_CLOEXEC
        try:
            fd = os.open(path, flags, 0o644)
        except OSError as e:
            why = {errno.ELOOP: "is a symbolic link",
                   errno.ENXIO: "not a regular file"}.get(e.errno, e.strerror)
            raise DaemonError(f"--record {path}: {why}") from None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise DaemonError(f"--record {path}: not a regular file")
            os.fchmod(fd, 0o644)
            os.set_blocking(fd, True)
        except BaseException:
            os.close(fd)
            raise
        self.f = os.fdopen(fd, "a", encoding="ascii")
        if self.f.tell() == 0:
            self.f.write(RECORD_HEADER)
        self.rows = 0

    def add(self, batch: np.ndarray, decisions: np.ndarray) -> None:
        f = batch["f"]
        cols = np.stack([f["cpu"], f["idle"], f["busy"],
                         np.round(f["src_load"] / LOAD_FIXED_ONE, 4),
                         np.round(f["dst_load"] / LOAD_FIXED_ONE, 4),
                         batch["cfs_action"], decisions, batch["source"], batch["pid"],
                         batch["ts_ns"]], axis=1)
        lines = [",".join(map(_fmt, row)) for row in cols.tolist()]
        if lines:
            self.f.write("\n".join(lines) + "\n")
            self.rows += len(lines)

    def flush(self) -> None:
        self.f.flush()

    def close(self) -> None:
        self.f.close()


def _fmt(v) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))


# ---- the daemon -----------------------------------------------------------------------------
class Daemon:
    """One consumer: a KernelPath, an Engine, and the loop between them."""

    def __init__(self, args):
        from . import kernel
        from .api import load_bundle
        from .engine import Engine

        kernel.check_environment()
        self.args = args
        bundle = load_bundle(args.bundle, allow_insecure=args.allow_insecure_bundle)
        ncpus = args.cpus
        if ncpus is None and not args.no_collector:
            ncpus = _online_cpus()
        if ncpus is not None and ncpus > bundle.cpus:
            raise DaemonError(f"this host has {ncpus} CPUs but bundle {bundle.path} was converted"
                              f" for {bundle.cpus}: mlsched-convert MODEL -o BUNDLE"
                              f" --cpus {ncpus}")
        # The BPF side first: libbpf parses the kernel's BTF while loading (~8 MB, freed
        # after), so loading it before the interpreter keeps that out of the process's peak.
        self.kp = kernel.KernelPath()
        self.kp.load(None, ncpus=ncpus, ring_size=args.ring_size, domains=args.domains,
                     pin=args.pin, pin_dir=args.pin_dir, table_capacity=ncpus or bundle.cpus)
        try:
            self.engine = Engine(bundle, ncpus=ncpus, backend=daemon_backend(args.backend))
            log.debug("engine: %s", self.engine.describe())
            self.kp.set_table(self.engine.table)
            warm_up(self.engine)
        except BaseException:
            self.kp.close()
            raise
        self.hit_reason = kernel.lib.MLSCHED_REASON_HIT
        self.none = kernel.lib.MLSCHED_NONE
        self.now_ns = kernel.lib.mls_now_ns
        self.recorder = Recorder(args.record) if args.record else None
        self.stop = False
        self.total = Window()
        self.window = Window()
        self.kernel_start = self.kp.stats()
        self.startup_peak_rss_mb = round(peak_rss_mb(), 1)
        self.peak_reset = reset_peak_rss()

    def close(self) -> None:
        if self.recorder:
            self.recorder.close()
        self.kp.close()

    def handle_batch(self, batch: np.ndarray) -> None:
        w = self.window
        n = len(batch)
        w.records += n
        e = self.engine
        before = e.counters.snapshot()
        need = batch["reason"] != self.hit_reason
        if need.all():
            decisions = e.decide_wire(batch["f"])
        else:   # shadow mode: hit records carry the kernel's answer already
            decisions = batch["kernel_decision"].copy()
            decisions[need] = e.decide_wire(batch["f"][need])
        c = e.counters
        w.table += c.hits - before.hits
        w.interpreter += c.misses - before.misses
        w.invalid += c.invalid - before.invalid
        stored = self.kp.answer(batch, decisions)
        now = self.now_ns()
        w.answered += stored
        w.latency.add((now - batch["ts_ns"][need]).astype(np.int64))
        model = decisions
        w.migrate += int(np.count_nonzero(model == MIGRATE))
        cfs = batch["cfs_action"]
        seen = cfs != self.none
        if seen.any():
            w.cfs_seen += int(np.count_nonzero(seen))
            w.cfs_agree += int(np.count_nonzero(seen & (cfs == model)))
            cfs_moved = cfs == MIGRATE
            w.cfs_migrate += int(np.count_nonzero(cfs_moved))
            w.cfs_migrate_agree += int(np.count_nonzero(cfs_moved & (model == MIGRATE)))
            if self.recorder:
                self.recorder.add(batch[seen], model[seen])

    def counters(self, window: Window, kernel_now: dict, since: dict, seconds: float) -> dict:
        k = {name: kernel_now[name] - since.get(name, 0) for name in kernel_now}
        return {
            "seconds": round(seconds, 3),
            "records": window.records, "answered": window.answered,
            "table": window.table, "interpreter": window.interpreter, "invalid": window.invalid,
            "migrate": window.migrate,
            "kernel_hits": k["kernel_hits"], "produced": k["produced"], "dropped": k["dropped"],
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

    def stats_line(self, v: dict) -> str:
        agree = "n/a" if v["agreement"] is None else f"{v['agreement']:.1%} of {v['cfs_seen']}"
        p50 = "-" if v["latency_p50_us"] is None else f"{v['latency_p50_us']:.0f}"
        p99 = "-" if v["latency_p99_us"] is None else f"{v['latency_p99_us']:.0f}"
        return (f"{time.strftime('%H:%M:%S')} req/s {v['requests_per_s']:,.0f}"
                f" | kernel hits {v['kernel_hits']} | user table {v['table']}"
                f" interp {v['interpreter']} | drops {v['dropped']} stale {v['stale']}"
                f" | agree w/ CFS {agree} | latency p50 {p50} us p99 {p99} us")

    def write_stats_file(self, total: dict, window: dict) -> None:
        values = dict(total)
        for key, src in (("p50_s", "latency_p50_us"), ("p99_s", "latency_p99_us")):
            v = window.get(src)
            values[key] = None if v is None else v / 1e6
        values["rss_bytes"] = int(peak_rss_mb() * 1024 * 1024)
        write_atomic(self.args.stats_file, prometheus_text(values))

    def serve(self) -> dict:
        args = self.args
        kp = self.kp
        if not args.no_collector:
            kp.attach_collector(report_hits=True)
        start = time.monotonic()
        deadline = start + args.duration if args.duration > 0 else float("inf")
        interval = args.interval if args.interval > 0 else float("inf")
        next_report = start + interval
        last_kernel = self.kernel_start
        last_t = start
        log.info("serving: %d-CPU table%s, %d domains, ring %d KiB, batch %d, %s",
                 self.engine.ncpus, " (derived)" if self.engine.derived else "",
                 len(kp.domains), args.ring_size // 1024, args.batch,
                 "no collector" if args.no_collector else "collector attached (shadow mode)")
        while not self.stop:
            now = time.monotonic()
            if now >= deadline:
                break
            # no deadline and --interval 0 leave both infinite: wait the longest single wait
            until = min(deadline, next_report, now + POLL_TIMEOUT_MS / 1000)
            wait = max(0, int((until - now) * 1000))
            batch = kp.poll(timeout_ms=wait, max_records=args.batch, linger_us=args.max_wait_us)
            if len(batch):
                self.handle_batch(batch)
            now = time.monotonic()
            if now >= next_report:
                k = kp.stats()
                wv = self.counters(self.window, k, last_kernel, now - last_t)
                print(self.stats_line(wv), flush=True)
                self.total.merge(self.window)
                self.window = Window()
                if args.stats_file:
                    self.write_stats_file(self.counters(self.total, k, self.kernel_start,
                                                        now - start), wv)
                if self.recorder:
                    self.recorder.flush()
                last_kernel, last_t = k, now
                next_report = now + interval
        self.bpf_ids = kp.ids()
        kp.detach_collector()
        # answer what is already on the ring before going
        while True:
            batch = kp.poll(timeout_ms=0, max_records=args.batch)
            if not len(batch):
                break
            self.handle_batch(batch)
        end = time.monotonic()
        self.total.merge(self.window)
        k = kp.stats()
        summary = self.counters(self.total, k, self.kernel_start, end - start)
        summary["peak_rss_mb"] = round(peak_rss_mb(), 1)      # while serving
        summary["startup_peak_rss_mb"] = self.startup_peak_rss_mb
        if not self.peak_reset:
            summary["startup_peak_rss_mb"] = summary["peak_rss_mb"]
        summary["table_cpus"] = self.engine.ncpus
        summary["backend"] = self.engine.backend
        summary["recorded"] = self.recorder.rows if self.recorder else 0
        summary["bpf_ids"] = self.bpf_ids       # for leak checks: all gone after exit
        summary["pinned"] = self.args.pin
        if args.stats_file:
            self.write_stats_file(summary, summary)
        return summary


#: numpy keeps freed data blocks smaller than this many bytes for reuse, a few per size.
NUMPY_SMALL_BLOCK = 1024


def warm_up(engine) -> None:
    """Decide one batch of every size below NUMPY_SMALL_BLOCK rows, then zero the counters.

    numpy caches freed blocks under 1 KiB, a few per size; batch sizes vary from poll to
    poll, so a serving daemon filled that cache over hours (RSS crept up ~1 MB in a
    10-minute soak, ~2.6 MB in all). Filled at start, the serving RSS is the steady one.
    The rows are off-grid, so the interpreter path's temporaries are warmed too.
    """
    rows = np.zeros((NUMPY_SMALL_BLOCK, 5), dtype=np.uint32)
    latency = LatencyHistogram()
    for n in range(1, NUMPY_SMALL_BLOCK):
        engine.decide_wire(rows[:n])
        latency.add(rows[:n, 0].astype(np.int64))
    engine.reset_counters()


def daemon_backend(requested: str) -> str:
    """``auto`` -> the first installed package of DAEMON_BACKEND_ORDER; else as requested."""
    if requested != "auto":
        return requested
    from .interp import BACKENDS

    for name in DAEMON_BACKEND_ORDER:
        if importlib.util.find_spec(BACKENDS[name].split(".")[0]) is not None:
            return name
    return requested


def _online_cpus() -> int:
    from .kernel import parse_cpu_list

    with contextlib.suppress(OSError, ValueError):
        return max(parse_cpu_list(Path("/sys/devices/system/cpu/online").read_text())) + 1
    return os.cpu_count() or 1


def _check_writable(path: str | None, flag: str) -> None:
    if path is None:
        return
    parent = Path(path).parent
    if not parent.is_dir():
        raise DaemonError(f"{flag} {path}: directory {parent} does not exist")
    if Path(path).is_dir():
        raise DaemonError(f"{flag} {path}: is a directory")
    if not os.access(parent, os.W_OK):
        raise DaemonError(f"{flag} {path}: directory {parent} is not writable")


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
MAX_LOAD_WORKERS = 64


def start_load(n: int) -> list:
    import subprocess

    return [subprocess.Popen([sys.executable, "-I", "-S", "-c", WORKER],
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
            for _ in range(n)]


def stop_load(workers: list) -> None:
    for w in workers:
        with contextlib.suppress(OSError):
            w.kill()
    for w in workers:
        w.wait()


def run_daemon(args) -> int:
    if not 0 <= args.load <= MAX_LOAD_WORKERS:
        raise DaemonError(f"--load {args.load}: expected 0..{MAX_LOAD_WORKERS} workers")
    for path, flag in ((args.stats_file, "--stats-file"), (args.summary_json, "--summary-json"),
                       (args.record, "--record")):
        _check_writable(path, flag)
    if args.max_wait_us < 0 or args.max_wait_us > 1_000_000:
        raise DaemonError(f"--max-wait-us {args.max_wait_us}: expected 0..1000000")
    daemon = Daemon(args)
    previous = {}

    def on_signal(signum, frame):
        daemon.stop = True

    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.signal(sig, on_signal)
    workers = []
    try:
        workers = start_load(args.load)
        summary = daemon.serve()
    finally:
        stop_load(workers)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        daemon.close()
    print(summary_text(summary), flush=True)
    if args.summary_json:
        write_atomic(args.summary_json, json.dumps(summary, indent=1, sort_keys=True) + "\n")
    return 0


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
            f" kernel table hits {s['kernel_hits']}, user table hits {s['table']},"
            f" interpreter rows {s['interpreter']}, invalid {s['invalid']};"
            f" dropped {s['dropped']}, stale {s['stale']}, no consumer {s['no_consumer']},"
            f" rejected {s['rejected']}, late answers {s['late_answers']};"
            f" agreement with CFS {agree}; latency {lat}; peak RSS {s['peak_rss_mb']} MB serving,"
            f" {s['startup_peak_rss_mb']} MB at start-up")


# ---- replay ---------------------------------------------------------------------------------
def to_wire(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Raw features [n, 5] -> (valid mask, wire features [n, 5] uint32, loads in 1/1024).

    A row is representable when every value is finite, counts are whole numbers in
    0..2^32-1 and loads are >= 0 (loads above 1.0 travel as they are; the kernel clamps).
    """
    with np.errstate(invalid="ignore", over="ignore"):
        ok = np.isfinite(x).all(axis=1)
        counts = x[:, :3]
        ok &= ((counts >= 0) & (counts <= 0xFFFFFFFF) & (counts == np.floor(counts))).all(axis=1)
        loads = x[:, 3:5]
        ok &= ((loads >= 0) & (loads <= 0xFFFFFFFF / LOAD_FIXED_ONE)).all(axis=1)
        wire = np.zeros((len(x), 5), dtype=np.uint32)
        wire[ok, :3] = counts[ok]
        wire[ok, 3:] = np.rint(loads[ok] * LOAD_FIXED_ONE)
    return ok, wire


def run_replay(args) -> int:
    from . import kernel
    from .api import load_bundle
    from .cli import _output, read_features
    from .engine import Engine
    from .features import DECISION_NAMES

    kernel.check_environment()
    bundle = load_bundle(args.bundle, allow_insecure=args.allow_insecure_bundle)
    engine = Engine(bundle, backend=args.backend)
    chunks = read_features(args.input, REPLAY_CHUNK_ROWS)
    totals = dict(rows=0, invalid=0, kernel_hits=0, sent=0, answered=0, dropped=0, migrate=0)
    t0 = time.perf_counter()
    with kernel.KernelPath() as kp, _output(args.output) as out:
        kp.load(engine.table, ring_size=REPLAY_RING_BYTES, consumer_timeout_ns=0)
        for x in chunks:
            ok, wire = to_wire(x)
            decision = np.full(len(x), STAY, dtype=np.uint8)
            if ok.any():
                res = kp.inject(wire[ok], bypass_table=args.bypass_table)
                got = 0
                while got < res.sent:
                    batch = kp.poll(timeout_ms=1000, max_records=65536)
                    if not len(batch):
                        break
                    kp.answer(batch, engine.decide_wire(batch["f"]))
                    got += len(batch)
                d = res.result.copy()
                sent = res.seq != 0
                if sent.any():
                    rb = kp.read_decisions(int(res.first_seq), int(res.last_seq - res.first_seq + 1))
                    d[sent] = rb.decision[(res.seq[sent] - res.first_seq).astype(np.int64)]
                    totals["answered"] += int(rb.answered)
                decision[ok] = d
                totals["kernel_hits"] += res.hits
                totals["sent"] += res.sent
                totals["dropped"] += res.dropped
            totals["rows"] += len(x)
            totals["invalid"] += int((~ok).sum())
            totals["migrate"] += int((decision == MIGRATE).sum())
            names = np.array([DECISION_NAMES[STAY], DECISION_NAMES[MIGRATE]])
            if len(decision):
                out.write("\n".join(names[decision].tolist()) + "\n")
    seconds = time.perf_counter() - t0
    print(f"{PROG}: {totals['rows']} rows: kernel table hits {totals['kernel_hits']},"
          f" sent to the engine {totals['sent']}, answered {totals['answered']},"
          f" dropped {totals['dropped']}, invalid {totals['invalid']} (STAY),"
          f" MIGRATE {totals['migrate']} ({seconds:.2f} s)", file=sys.stderr)
    return 0


def _fs_type(path: Path) -> str | None:
    """File system type of the mount holding ``path`` (from /proc/self/mountinfo)."""
    target = str(path.resolve())
    best, fstype = "", None
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            fields = line.split()
            sep = fields.index("-")
            mnt = fields[4].replace("\\040", " ")
            if (target == mnt or target.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
                best, fstype = mnt, fields[sep + 1]
    return fstype


def run_unpin(args) -> int:
    import shutil

    d = Path(args.pin_dir)
    if not d.exists():
        print(f"{PROG}: nothing pinned at {d}", file=sys.stderr)
        return 0
    if _fs_type(d) != "bpf":
        raise DaemonError(f"--pin-dir {d}: not on a BPF filesystem; refusing to remove it")
    shutil.rmtree(d)
    print(f"{PROG}: removed {d}", file=sys.stderr)
    return 0
