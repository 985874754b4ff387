"""The kernel path: load the BPF side, take its requests, give it decisions.

Role in the request -> decision path::

      kernel (bpf/mlsched.bpf.c)                         user space (this module)
   producer -> mlsched_decide() -- hit --> decision
                   | miss
                   v
              `requests` ring ---- poll() --------> batch (numpy view of struct mlsched_request)
                                                      | engine decides (vectorized)
              `decisions` map <--- answer()/write_back() -- one mmap store per decision

1. ``load()`` opens the BPF object embedded in the cffi extension
   ``mlsched.runtime._bpf`` (its generated skeleton), sizes the ring, the decision
   slots and the table, loads the programs, maps the shared maps into memory and
   copies the table in.
2. ``attach_collector()`` puts the live collector on the scheduler tracepoints (a
   producer on the same maps, ``injector.Injector``, sends requests instead: replay,
   tests, benches).
3. ``poll()`` waits on the ring and returns a batch; Python never sees single
   records. ``answer()`` writes the batch's decisions back without a syscall;
   ``serve_round()`` is the two with the caller's decision between them.
4. ``stats()`` sums the per-CPU counters; ``close()`` detaches everything.

Statistics: kernel counters are named once in ``bpf/mlsched.h`` (enum
mlsched_stat) and appear here lower-cased without the prefix; the consumer's
own counters (records, rejected, written, double/late answers, drained) are
kept by the C side of this handle.

Layouts, constants and the table's kernel layout come from ``wire.py``; CPU domains
from ``topology.py``; the privilege and BTF checks and the error classes from
``bpfenv.py``.

Why one module of this length: ``KernelPath``'s methods map one-to-one onto the C side's
entry points over one handle (load, views, poll/answer, tables, stats); the producer side
lives in ``injector.py``.
"""

from __future__ import annotations

import errno as errno_mod
import logging
import mmap
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from . import bpfenv, topology
from .bpfenv import (
    DEFAULT_RING_BYTES,
    EXTENSION_MESSAGE,
    PIN_DIR,
    ExtensionMissing,
    KernelPathError,
    NoBTFError,
    PinnedMapsInUse,
    PrivilegeError,
    VerifierError,
    check_environment,
    unavailable_reason,
)

try:
    from ._bpf import ffi, lib
except ImportError as exc:              # a conversion-only install: no compiled extension
    raise ExtensionMissing(f"{EXTENSION_MESSAGE} ({exc})") from exc
from .level2 import Level2
from .wire import (
    MAX_TABLE_CPUS,
    REQUEST_DTYPE,
    UNSURE,
    dtype_of,
    stat_names,
    table_rows,
)

log = logging.getLogger(__name__)

#: Ring records per decision slot at least: an answer must not alias a request in flight.
SLOTS_PER_RING_RECORD = 4
#: A consumer that has not polled for this long is gone: misses are answered STAY at once.
DEFAULT_CONSUMER_TIMEOUT_NS = 1_000_000_000
RING_RECORD_HEADER = 8          # BPF_RINGBUF_HDR_SZ
LOG_BYTES = 1 << 20

__all__ = ["KernelPath", "KernelPathError", "LoadOptions", "NoBTFError", "PinnedMapsInUse",
           "PrivilegeError", "VerifierError", "check_environment", "now_ns",
           "unavailable_reason"]


def now_ns() -> int:
    """CLOCK_MONOTONIC in ns, the clock of request timestamps (bpf_ktime_get_ns)."""
    return lib.mls_now_ns()


def _take_log() -> str:
    buf = ffi.new("char[]", LOG_BYTES)
    n = lib.mls_log_take(buf, LOG_BYTES)
    return ffi.string(buf, n).decode(errors="replace")


def _raise(rc: int, what: str) -> None:
    message = ffi.string(lib.mls_last_error()).decode(errors="replace") or os.strerror(-rc)
    raise kernel_error(rc, what, message, _take_log())


def kernel_error(rc: int, what: str, message: str, text: str) -> KernelPathError:
    """The error for a failed call: ``rc`` its negative errno, ``message`` its one-line
    reason, ``text`` what libbpf printed (a verifier log names the program refused)."""
    err = -rc
    if err in (errno_mod.EPERM,) or (err == errno_mod.EACCES and "LOAD LOG" not in text):
        return PrivilegeError(bpfenv.PRIVILEGE_MESSAGE, err, text)
    prog = re.search(r"prog '([^']+)': BPF program load failed", text)
    if prog and "BEGIN PROG LOAD LOG" in text:
        return VerifierError(f"the kernel's verifier rejected BPF program {prog.group(1)!r}"
                             f" ({_verifier_reason(text)}); run with -v for the verifier log",
                             err, text)
    return KernelPathError(f"{what}: {message}", err, text)


def _verifier_reason(text: str) -> str:
    """The verifier's last complaint: the line before 'processed N insns'."""
    body = text.split("BEGIN PROG LOAD LOG", 1)[-1].splitlines()
    for i, line in enumerate(body):
        if line.startswith("processed ") and i > 0:
            return body[i - 1].strip()
    return "see the log"


def check_call(rc: int, what: str) -> int:
    """``rc`` when it is not an error (>= 0), else the error naming ``what`` (raised)."""
    if rc < 0:
        _raise(rc, what)
    return rc


# ---- loading ------------------------------------------------------------------------------

@dataclass
class Round:
    """One ``serve_round()``: the batch poll() returned, the decisions written for it, how
    many answers were stored, and ``perf_counter()`` after each step (poll, decide, answer)."""
    batch: np.ndarray
    decisions: np.ndarray
    stored: int
    polled_at: float
    decided_at: float
    answered_at: float


@dataclass
class LoadOptions:
    """How ``KernelPath.load()`` sets the kernel side up (every field has a default)."""

    #: Host CPUs the collector covers; domains are cut to CPUs below it (None: all online).
    ncpus: int | None = None
    #: A ``--domains`` spec, explicit CPU lists, or None for the default (topology.py).
    domains: str | list[list[int]] | None = None
    #: The sysfs CPU directory the online mask and caches are read from.
    sysfs: str = topology.SYSFS_CPU
    #: Request ring bytes, a power of two.
    ring_size: int = DEFAULT_RING_BYTES
    #: Answer slots, a power of two (None: enough for the ring, see decision_slots_for()).
    decision_slots: int | None = None
    #: Heartbeat age after which misses count no_consumer (0: never).
    consumer_timeout_ns: int = DEFAULT_CONSUMER_TIMEOUT_NS
    #: Keep (or reuse) the maps under ``pin_dir`` so they outlive the process. The handle is
    #: the directory's one consumer: it holds a lock on it until close(), and a second
    #: consumer is refused. Pins of another geometry (ring, answer slots, table size) are
    #: replaced when no other process holds them; when one does, PinnedMapsInUse.
    pin: bool = False
    pin_dir: str = PIN_DIR
    #: With ``pin``: join the maps of the consumer that holds ``pin_dir`` (a producer: inject,
    #: read_decisions) without the lock; its table, domains and settings stay as they are.
    share: bool = False
    #: With no table at load: room for a table of that many CPUs, set later by set_table().
    table_capacity: int | None = None
    #: With no table at load: room (bytes) for a table level 2 set later by set_table().
    level2_capacity: int = 0

    def resolved_domains(self) -> list[list[int]]:
        if isinstance(self.domains, str):
            domains = topology.parse_domains(self.domains)
        elif self.domains is None:
            domains = topology.detect_domains(self.sysfs)
        else:
            domains = [list(d) for d in self.domains]
        if self.ncpus is None:
            return domains
        return topology.restrict(domains, self.ncpus, self.sysfs)


def decision_slots_for(ring_size: int) -> int:
    """Answer slots for a ring: SLOTS_PER_RING_RECORD per record it holds, a power of two."""
    record = ffi.sizeof("struct mlsched_request") + RING_RECORD_HEADER
    return max(lib.MLSCHED_MIN_DECISION_SLOTS,
               _pow2_at_least(ring_size // record * SLOTS_PER_RING_RECORD))


def _in_use(table: np.ndarray | None, level2: Level2 | None) -> Level2 | None:
    """``level2``, checked against ``table``'s UNSURE cells when given; None when it refines
    no cell (a model sure everywhere): the kernel then has nothing to look up under level 1."""
    if level2 is None:
        return None
    if table is not None:
        level2.check(int((np.asarray(table) == UNSURE).sum()))
    return level2 if level2.cells else None


def _words(level2: Level2 | None) -> int:
    """__u64 words a table level 2 takes in `table2` (one half)."""
    return 0 if level2 is None else level2.kernel_words


# ---- the handle ------------------------------------------------------------------------

class KernelPath:
    """One loaded copy of the kernel side. Use as a context manager, or call close()."""

    def __init__(self):
        self._k = None
        self._views: dict[int, np.ndarray] = {}
        self._batch = None
        self._batch_view = None
        self.ring_bytes = 0
        self.decision_slots = 0
        self.table_ncpus = 0
        self.domains: list[list[int]] = []
        self.cpu_ids: list[int] = []
        self.pinned = False
        self.request_dtype = REQUEST_DTYPE

    # -- life cycle --

    def load(self, table: np.ndarray | None = None, options: LoadOptions | None = None,
             level2: Level2 | None = None, **overrides) -> KernelPath:
        """Load the BPF side with ``table`` ([N, N+1, 11, 11] uint8; None: every key misses
        until set_table()) and its second level (``level2``, None: none).
        ``options`` (a LoadOptions), or its fields as keywords."""
        if self._k is not None:
            raise KernelPathError("already loaded")
        opts = replace(options or LoadOptions(), **overrides)
        check_environment()
        if opts.share and (not opts.pin or table is not None):
            raise KernelPathError("share=True joins a pinned consumer's maps and its table: "
                                  "it needs pin=True and takes no table", errno_mod.EINVAL)
        if level2 is not None and table is None:
            raise KernelPathError("a table level 2 needs its table", errno_mod.EINVAL)
        level2 = _in_use(table, level2)
        rows = table_rows(table, refined=level2 is not None) if table is not None else None
        n_table = int(np.asarray(table).shape[0]) if table is not None else opts.table_capacity or 0
        if n_table > MAX_TABLE_CPUS:
            raise KernelPathError(f"table for {n_table} CPUs: the kernel side takes at most "
                                  f"{MAX_TABLE_CPUS}", errno_mod.E2BIG)
        slots = opts.decision_slots or decision_slots_for(opts.ring_size)
        domains = [] if opts.share else opts.resolved_domains()
        words = max(_words(level2), (opts.level2_capacity + 7) // 8)
        self._open(opts, n_table, slots, words)
        try:
            self._map_views()
            if opts.share:
                self.table_ncpus = (int(self.control["table_sel"][0])
                                    & lib.MLSCHED_TABLE_NCPUS_MASK)
                self.decision_slots = int(self.control["decision_slots"][0])
            else:
                if rows is not None:
                    self.set_table(table, level2, _rows=rows)
                # the table's CPUs: --cpus, else as many as the table has room for
                ncpus = opts.ncpus if opts.ncpus is not None else (n_table or None)
                self.set_cpu_index(topology.table_cpus(ncpus, opts.sysfs))
                self.set_domains(domains)
        except BaseException:
            self.close()
            raise
        log.debug("loaded: ring %d B, %d decision slots, %d-CPU table, %d domains",
                  opts.ring_size, slots, n_table, len(domains))
        return self

    def _open(self, opts: LoadOptions, n_table: int, slots: int, level2_words: int) -> None:
        """libbpf: open the embedded object, size the maps, load the programs."""
        c_opts = ffi.new("struct mls_load_opts *")
        c_opts.table2_words = level2_words
        c_opts.ring_bytes = opts.ring_size
        c_opts.decision_slots = slots
        c_opts.table_ncpus = n_table
        c_opts.consumer_timeout_ns = opts.consumer_timeout_ns
        c_opts.flags = lib.MLS_OPEN_SHARE if opts.share else 0
        if opts.pin:
            pin_dir = ffi.new("char[]", os.fsencode(opts.pin_dir))
            c_opts.pin_dir = pin_dir
        out = ffi.new("struct mls_kernel **")
        rc = lib.mls_open(c_opts, out)
        if rc == -errno_mod.ETXTBSY:        # mls_open(): pinned maps held elsewhere
            raise PinnedMapsInUse(ffi.string(lib.mls_last_error()).decode(errors="replace"),
                                  errno_mod.ETXTBSY, _take_log())
        check_call(rc, "loading the BPF side")
        self._k = out[0]
        notice = ffi.string(lib.mls_notice(self._k)).decode(errors="replace")
        if notice:
            log.warning("%s", notice)
        self.ring_bytes, self.decision_slots, self.pinned = opts.ring_size, slots, opts.pin

    def close(self) -> None:
        """Detach and free everything (pinned maps stay pinned: see unpin())."""
        if self._k is not None:
            self._views.clear()     # views handed out keep their own mappings
            self._batch = self._batch_view = None
            lib.mls_close(self._k)
            self._k = None

    def __enter__(self) -> KernelPath:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        if getattr(self, "_k", None) is not None:
            self.close()

    @property
    def loaded(self) -> bool:
        return self._k is not None

    def _handle(self):
        if self._k is None:
            raise KernelPathError("the kernel path is not loaded")
        return self._k

    #: Value layouts of the memory-mapped maps, by enum mls_map (mlsched_native.h).
    MMAP_LAYOUTS = {
        lib.MLS_MAP_DECISIONS: lambda: np.dtype(np.uint64),
        lib.MLS_MAP_CONTROL: lambda: dtype_of("struct mlsched_control"),
        lib.MLS_MAP_HOST: lambda: dtype_of("struct mlsched_host"),
        lib.MLS_MAP_TABLE: lambda: np.dtype((np.uint8, (lib.MLSCHED_ROW_BYTES,))),
        lib.MLS_MAP_DOMAINS: lambda: dtype_of("struct mlsched_domain"),
        lib.MLS_MAP_INJECT_BUF: lambda: dtype_of("struct mlsched_inject_slot"),
        lib.MLS_MAP_READBACK: lambda: dtype_of("struct mlsched_readback"),
    }

    def _view(self, which: int) -> np.ndarray:
        """numpy view of a memory-mapped map, ``which`` one of ``lib.MLS_MAP_*``, mapped on
        first use (mapped pages count in RSS)."""
        v = self._views.get(which)
        if v is not None:
            return v
        dt = self.MMAP_LAYOUTS[which]()
        size = ffi.new("size_t *")
        fd = lib.mls_map_fd(self._handle(), which, size)
        if fd < 0:
            _raise(fd, "mapping a BPF map")
        if dt.itemsize % 8:     # array map values sit at 8-byte strides
            raise KernelPathError(f"map {which}: value size {dt.itemsize} is not a "
                                  "multiple of 8; fix bpf/mlsched.h")
        # A mapping of our own (mmap keeps a reference to the map): the view stays valid
        # after close(), when the handle's own mappings are gone.
        mm = mmap.mmap(fd, size[0], flags=mmap.MAP_SHARED,
                       prot=mmap.PROT_READ | mmap.PROT_WRITE)
        v = np.frombuffer(mm, dtype=dt, count=size[0] // dt.itemsize)
        self._views[which] = v
        return v

    def _map_views(self) -> None:
        for which in (lib.MLS_MAP_DECISIONS, lib.MLS_MAP_CONTROL, lib.MLS_MAP_HOST):
            self._view(which)

    # -- configuration --

    @property
    def control(self) -> np.ndarray:
        """The mmapped struct mlsched_control (a 1-element structured array, writable)."""
        return self._view(lib.MLS_MAP_CONTROL)[0:1]

    def set_table(self, table: np.ndarray, level2: Level2 | None = None,
                  _rows: np.ndarray | None = None) -> None:
        """Publish ``table`` and its second level (None: none) in one step (see mls_set_table)."""
        level2 = _in_use(table, level2)
        rows = table_rows(table, refined=level2 is not None) if _rows is None else _rows
        n = int(np.asarray(table).shape[0])
        buf = np.ascontiguousarray(rows)
        geom = ffi.NULL
        lines = np.zeros(1, np.uint8)
        if level2 is not None:
            geom = ffi.new("struct mlsched_level2 *")
            geom.lines = level2.lines
            geom.cells = level2.cells
            geom.index_base = 0
            geom.word_base = level2.index_words
            for name, q in (("src", level2.src), ("dst", level2.dst)):
                side = getattr(geom, name)
                side.mul, side.add = q.mul, q.add
                for k, v in enumerate(q.band_start):
                    side.band_start[k] = v
            lines = level2.kernel_image()
        check_call(lib.mls_set_table(self._handle(), ffi.from_buffer("uint8_t[]", buf), buf.nbytes, n,
                                 ffi.from_buffer("uint8_t[]", lines),
                                 lines.nbytes if level2 is not None else 0, geom),
               "loading the table")
        self.table_ncpus = n

    def set_cpu_index(self, cpus: list[int]) -> None:
        """The table's CPUs: ``cpus[i]`` is the CPU id of table index i (the kernel keys the
        table and counts idle/busy CPUs by it; other CPUs are off the table)."""
        ids = np.asarray(cpus, dtype=np.uint32)
        check_call(lib.mls_set_cpu_index(self._handle(), ffi.from_buffer("uint32_t[]", ids),
                                     len(ids), len(ids)), "setting the CPU index")
        self.cpu_ids = [int(c) for c in ids]

    def set_domains(self, domains: list[list[int]]) -> None:
        if not domains:
            raise KernelPathError("no CPU domains")
        cpu_domain = topology.cpu_domain_map(domains, lib.MLSCHED_DOMAIN_NONE, np.uint32)
        ncpus = len(cpu_domain)
        check_call(lib.mls_set_domains(self._handle(), ffi.from_buffer("uint32_t[]", cpu_domain),
                                   len(cpu_domain), ncpus, len(domains)), "setting domains")
        self.domains = [list(d) for d in domains]

    def set_flags(self, *, bypass_table: bool | None = None, report_hits: bool | None = None
                  ) -> None:
        """Control flags read by every decide(): table bypass, hit reporting (shadow mode)."""
        ctl = self.control
        flags = int(ctl["flags"][0])
        for on, bit in ((bypass_table, lib.MLSCHED_CTL_BYPASS_TABLE),
                        (report_hits, lib.MLSCHED_CTL_REPORT_HITS)):
            if on is not None:
                flags = flags | bit if on else flags & ~bit
        ctl["flags"] = flags

    def set_consumer_timeout(self, ns: int) -> None:
        """Heartbeat age after which misses count no_consumer (0: never)."""
        self.control["consumer_timeout_ns"] = ns

    def clear_heartbeat(self) -> None:
        """Withdraw this consumer: producers answer misses STAY at once (no_consumer) until
        the next poll() renews the heartbeat."""
        self.control["heartbeat_ns"] = 0

    def ring_capacity(self) -> int:
        """Records the request ring holds when full."""
        return self.ring_bytes // (ffi.sizeof("struct mlsched_request") + RING_RECORD_HEADER)

    def heartbeat(self) -> None:
        """Tell the kernel side a consumer is here (poll() does it on every call)."""
        lib.mls_heartbeat(self._handle())

    def attach_collector(self, report_hits: bool = True) -> None:
        """Attach the tracepoint collector; ``report_hits``: emit kernel hits too (shadow mode)."""
        self.set_flags(report_hits=report_hits)
        check_call(lib.mls_attach_collector(self._handle()), "attaching the collector")

    def detach_collector(self) -> None:
        lib.mls_detach_collector(self._handle())

    def unpin(self) -> None:
        check_call(lib.mls_unpin(self._handle()), "unpinning")

    # -- hot path --

    def poll(self, timeout_ms: int = 100, max_records: int = 4096, linger_us: int = 0
             ) -> np.ndarray:
        """Wait up to ``timeout_ms`` for requests; return a batch of up to ``max_records``.

        The batch is a view of a buffer this handle reuses: valid until the next poll().
        ``linger_us`` > 0 keeps the batch open that long after its first record.
        """
        k = self._handle()
        if self._batch is None or len(self._batch_view) < max_records:
            self._batch = ffi.new("struct mlsched_request[]", max_records)
            self._batch_view = np.frombuffer(ffi.buffer(self._batch), dtype=self.request_dtype)
        n = check_call(lib.mls_poll(k, self._batch, max_records, timeout_ms, linger_us),
                   "polling the request ring")
        return self._batch_view[:n]

    def answer(self, batch: np.ndarray, decisions: np.ndarray) -> int:
        """Write decisions for a batch from poll(); informational hit records are skipped.
        Returns the number of answers stored."""
        d = np.ascontiguousarray(decisions, dtype=np.uint8)
        if len(d) != len(batch):
            raise ValueError(f"{len(d)} decisions for {len(batch)} requests")
        if not batch.flags.c_contiguous or batch.dtype != self.request_dtype:
            raise ValueError("answer() takes a batch returned by poll()")
        return lib.mls_answer_batch(self._handle(), ffi.from_buffer("struct mlsched_request[]",
                                                                    batch), ffi.from_buffer(
                                        "uint8_t[]", d), len(d))

    def serve_round(self, decide: Callable[[np.ndarray], np.ndarray], timeout_ms: int = 100,
                    max_records: int = 4096, linger_us: int = 0) -> Round | None:
        """Poll one batch, ``decide(batch)`` for it, answer it: the one step every consumer
        (the daemon, its stop drain, replay, the bench's consumers) is built of. None when
        poll() found nothing within ``timeout_ms``. The batch is a view that the next poll()
        overwrites."""
        batch = self.poll(timeout_ms=timeout_ms, max_records=max_records, linger_us=linger_us)
        polled_at = time.perf_counter()
        if not len(batch):
            return None
        decisions = decide(batch)
        decided_at = time.perf_counter()
        stored = self.answer(batch, decisions)
        return Round(batch, decisions, stored, polled_at, decided_at, time.perf_counter())

    def write_back(self, seq: np.ndarray, decision: np.ndarray) -> int:
        """Store decision[i] as the answer to seq[i]; returns the number stored (answers for
        an already-answered seq, a seq whose slot moved on, or values other than
        STAY/MIGRATE are skipped and counted)."""
        s = np.ascontiguousarray(seq, dtype=np.uint64)
        d = np.ascontiguousarray(decision, dtype=np.uint8)
        if s.shape != d.shape or s.ndim != 1:
            raise ValueError("seq and decision must be 1-D arrays of one length")
        return lib.mls_write_back(self._handle(), ffi.from_buffer("uint64_t[]", s),
                                  ffi.from_buffer("uint8_t[]", d), len(s))

    def drain(self, target: int = 0, idle_timeout_ms: int = 100) -> int:
        """Discard ring records (C consumer, the ring's ceiling) until ``target`` records
        or ``idle_timeout_ms`` without any; returns how many were drained."""
        out = ffi.new("uint64_t *")
        check_call(lib.mls_drain(self._handle(), target, idle_timeout_ms, out), "draining")
        return int(out[0])

    # -- state --

    def stats(self) -> dict[str, int]:
        """Kernel counters (summed over CPUs) and this consumer's counters, one flat dict."""
        k = self._handle()
        n = lib.MLSCHED_STAT_COUNT
        out = ffi.new("uint64_t[]", n)
        check_call(lib.mls_read_stats(k, out, n), "reading stats")
        result = dict(zip(stat_names(), (int(v) for v in out), strict=True))
        cs = ffi.new("struct mls_consumer_stats *")
        lib.mls_consumer_stats(k, cs)
        for name, _ in ffi.typeof("struct mls_consumer_stats").fields:
            result[name] = int(getattr(cs, name))
        return result

    def host(self) -> dict[str, int]:
        """Kernel-maintained host state: last seq, idle/busy CPUs, idle<->busy transitions."""
        h = self._view(lib.MLS_MAP_HOST)[0]
        return {name: int(h[name]) for name in h.dtype.names}

    def domain_loads(self) -> np.ndarray:
        """Current load_avg of each domain (1/1024), as last settled by the kernel."""
        return self._view(lib.MLS_MAP_DOMAINS)["load_avg"][:len(self.domains)].copy()

    def ids(self) -> dict[str, list[int]]:
        """Kernel ids of our programs, maps and links (for leak checks)."""
        k = self._handle()
        buf = ffi.new("uint32_t[]", 64)
        progs = list(buf[0:check_call(lib.mls_prog_ids(k, buf, 64), "ids")])
        maps = list(buf[0:check_call(lib.mls_map_ids(k, buf, 64), "ids")])
        links = list(buf[0:check_call(lib.mls_link_ids(k, buf, 64), "ids")])
        return {"progs": progs, "maps": maps, "links": links}


def _pow2_at_least(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())
