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
2. ``attach_collector()`` puts the live collector on the scheduler tracepoints;
   ``inject()`` runs the SEC("syscall") injector instead (tests, replay, bench):
   a second object, loaded on first use onto the same maps.
3. ``poll()`` waits on the ring and returns a batch; Python never sees single
   records. ``answer()`` writes the batch's decisions back without a syscall.
4. ``read_decisions()`` reads answers back the way the kernel side does;
   ``stats()`` sums the per-CPU counters; ``close()`` detaches everything.

Statistics: kernel counters are named once in ``bpf/mlsched.h`` (enum
mlsched_stat) and appear here lower-cased without the prefix; the consumer's
own counters (records, rejected, written, double/late answers, drained) are
kept by the C side of this handle.

Generated injector traffic is splitmix64 (``splitmix64`` below regenerates it):
per record r, cpu = (r & 0xffff) % N, idle = (r >> 16 & 0xffff) % (N + 1),
busy = N - idle (+1 when (r >> 54) % 100 < invalid_pct), src = (r >> 32 & 0x7ff)
% 1025, dst = (r >> 43 & 0x7ff) % 1025.
"""

from __future__ import annotations

import errno as errno_mod
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

try:
    from ._bpf import ffi, lib
except ImportError as exc:  # pragma: no cover - depends on the build
    ffi = lib = None
    _IMPORT_ERROR: ImportError | None = exc
else:
    _IMPORT_ERROR = None

log = logging.getLogger(__name__)

#: Default size of the request ring: 1 MiB = 16384 records of 64 bytes, 8 ms of traffic at
#: 2 M requests/s. The consumer maps the ring's data twice (wrap-around), so it costs 2 MiB of
#: resident memory; larger rings (--ring-size) absorb longer bursts at that price.
DEFAULT_RING_BYTES = 1 << 20
#: Ring records per decision slot at least: an answer must not alias a request in flight.
SLOTS_PER_RING_RECORD = 4
#: A consumer that has not polled for this long is gone: misses are answered STAY at once.
DEFAULT_CONSUMER_TIMEOUT_NS = 1_000_000_000
#: Where ``pin=True`` keeps the maps.
PIN_DIR = "/sys/fs/bpf/mlsched"
BTF_PATH = "/sys/kernel/btf/vmlinux"
RING_RECORD_HEADER = 8          # BPF_RINGBUF_HDR_SZ
LOG_BYTES = 1 << 20

# Linux capability bits (include/uapi/linux/capability.h).
CAP_SYS_ADMIN, CAP_PERFMON, CAP_BPF = 21, 38, 39
PRIVILEGE_MESSAGE = ("mlsched-lite needs CAP_BPF and CAP_PERFMON: "
                     "run as root or grant them")


# ---- errors ---------------------------------------------------------------------

class KernelPathError(RuntimeError):
    """One-line reason in ``str()``; ``errno`` and the captured libbpf ``log`` for -v."""

    def __init__(self, message: str, errno: int = 0, log: str = ""):
        super().__init__(message)
        self.errno = errno
        self.log = log


class PrivilegeError(KernelPathError):
    """No CAP_BPF/CAP_PERFMON (or CAP_SYS_ADMIN)."""


class NoBTFError(KernelPathError):
    """The kernel exposes no BTF: CO-RE programs cannot be loaded."""


class VerifierError(KernelPathError):
    """The verifier refused a program; ``log`` holds its full output."""


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
        return PrivilegeError(PRIVILEGE_MESSAGE, err, text)
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


def _check(rc: int, what: str) -> int:
    if rc < 0:
        _raise(rc, what)
    return rc


def capabilities() -> int:
    """Effective capability mask of this process."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return int(line.split()[1], 16)
    except OSError:
        pass
    return 0


def check_environment() -> None:
    """Raise the one-line error a user can act on before libbpf says something obscure."""
    if _IMPORT_ERROR is not None:
        raise KernelPathError(f"the BPF extension is not built ({_IMPORT_ERROR}): run `make build`")
    caps = capabilities()
    has = lambda bit: bool(caps >> bit & 1)  # noqa: E731
    if not (has(CAP_SYS_ADMIN) or (has(CAP_BPF) and has(CAP_PERFMON))):
        raise PrivilegeError(PRIVILEGE_MESSAGE, errno_mod.EPERM)
    if not os.path.exists(BTF_PATH):
        raise NoBTFError(f"kernel BTF not found at {BTF_PATH}: mlsched needs a kernel built "
                         "with CONFIG_DEBUG_INFO_BTF=y", errno_mod.ENOENT)


def unavailable_reason() -> str | None:
    """Why the kernel path cannot run here (one line), or None when it can."""
    try:
        check_environment()
    except KernelPathError as exc:
        return str(exc)
    return None


# ---- layouts from the header ------------------------------------------------------

_PRIMITIVES = {
    "uint8_t": "u1", "unsigned char": "u1", "uint16_t": "u2", "unsigned short": "u2",
    "uint32_t": "u4", "unsigned int": "u4", "uint64_t": "u8", "unsigned long long": "u8",
    "int": "i4", "int32_t": "i4", "int64_t": "i8", "long long": "i8",
}


def dtype_of(ctype) -> np.dtype:
    """A numpy dtype with the exact layout cffi computed for a C type from the header."""
    if isinstance(ctype, str):
        ctype = ffi.typeof(ctype)
    if ctype.kind == "primitive":
        return np.dtype(_PRIMITIVES[ctype.cname])
    if ctype.kind == "array":
        return np.dtype((dtype_of(ctype.item), (ctype.length,)))
    if ctype.kind == "struct":
        names, formats, offsets = [], [], []
        for name, field in ctype.fields:
            names.append(name)
            formats.append(dtype_of(field.type))
            offsets.append(field.offset)
        return np.dtype({"names": names, "formats": formats, "offsets": offsets,
                         "itemsize": ffi.sizeof(ctype)})
    raise TypeError(f"no numpy layout for {ctype.cname}")


def _const(name: str) -> int:
    return getattr(lib, name)


def stat_names() -> list[str]:
    """Kernel counter names in enum mlsched_stat order, e.g. 'kernel_hits'."""
    names = {}
    for attr in dir(lib):
        if attr.startswith("MLSCHED_STAT_") and attr != "MLSCHED_STAT_COUNT":
            names[getattr(lib, attr)] = attr[len("MLSCHED_STAT_"):].lower()
    return [names[i] for i in range(lib.MLSCHED_STAT_COUNT)]


# ---- domains -------------------------------------------------------------------------

def parse_cpu_list(text: str) -> list[int]:
    """'0-3,8' -> [0, 1, 2, 3, 8] (the sysfs cpulist format)."""
    cpus: list[int] = []
    for part in text.strip().split(","):
        if not part:
            continue
        lo, _, hi = part.partition("-")
        a, b = int(lo), int(hi or lo)
        if b < a:
            raise ValueError(f"CPU range {part!r} runs backwards")
        cpus.extend(range(a, b + 1))
    return cpus


def parse_domains(spec: str) -> list[list[int]]:
    """``--domains`` syntax: '0-3,4-7' -> [[0..3], [4..7]]; each comma-separated item is a
    domain, an item may join ranges with '+' ('0-1+4-5')."""
    domains, seen = [], set()
    for item in spec.split(","):
        item = item.strip()
        if not item:
            raise ValueError(f"--domains {spec!r}: empty domain")
        try:
            cpus = [c for part in item.split("+") for c in parse_cpu_list(part)]
        except ValueError:
            raise ValueError(f"--domains {spec!r}: {item!r} is not a CPU range like 0-3") from None
        if seen & set(cpus):
            raise ValueError(f"--domains {spec!r}: CPU {sorted(seen & set(cpus))[0]} in two domains")
        seen |= set(cpus)
        domains.append(cpus)
    if len(domains) > lib.MLSCHED_MAX_DOMAINS:
        raise ValueError(f"--domains {spec!r}: at most {lib.MLSCHED_MAX_DOMAINS} domains")
    if max(seen) >= lib.MLSCHED_MAX_CPUS:
        raise ValueError(f"--domains {spec!r}: CPU ids must be below {lib.MLSCHED_MAX_CPUS}")
    return domains


def detect_domains(sysfs: str = "/sys/devices/system/cpu") -> list[list[int]]:
    """CPUs grouped by last-level cache; a single LLC gives one domain per CPU."""
    try:
        online = parse_cpu_list(Path(sysfs, "online").read_text())
    except OSError:
        online = list(range(os.cpu_count() or 1))
    groups: dict[tuple[int, ...], list[int]] = {}
    for cpu in online:
        best_level, shared = -1, (cpu,)
        for index in sorted(Path(sysfs, f"cpu{cpu}", "cache").glob("index*")):
            try:
                level = int((index / "level").read_text())
                cpus = tuple(parse_cpu_list((index / "shared_cpu_list").read_text()))
            except (OSError, ValueError):
                continue
            if level > best_level:
                best_level, shared = level, cpus
        groups.setdefault(shared, []).append(cpu)
    domains = sorted(groups.values())
    if len(domains) <= 1:
        domains = [[c] for c in online]
    limit = lib.MLSCHED_MAX_DOMAINS
    if len(domains) > limit:        # more LLCs (or CPUs) than the collector scans: merge
        per = -(-len(domains) // limit)
        domains = [sum(domains[i:i + per], []) for i in range(0, len(domains), per)]
    return domains


# ---- results --------------------------------------------------------------------------

@dataclass
class InjectResult:
    """What one ``inject()`` did; per-record arrays only for batch (not generated) input."""
    done: int
    hits: int
    sent: int
    dropped: int
    no_consumer: int
    migrate: int
    first_seq: int
    last_seq: int
    elapsed_ns: int
    result: np.ndarray | None = None    # uint8 decision returned by mlsched_decide()
    reason: np.ndarray | None = None    # uint8 enum mlsched_reason
    fate: np.ndarray | None = None      # uint8 enum mlsched_fate
    seq: np.ndarray | None = None       # uint64 seq sent (0: none)


@dataclass
class ReadResult:
    """Answers as the kernel side sees them for seqs first_seq .. first_seq + n - 1."""
    first_seq: int
    answered: int
    missing: int
    overwritten: int
    migrate: int
    decision: np.ndarray                 # uint8, STAY where not answered
    status: np.ndarray                   # uint8 enum mlsched_answer_status


def splitmix64(seed: int, count: int) -> np.ndarray:
    """The injector's generator, for checking generated records in user space."""
    gamma = np.uint64(0x9E3779B97F4A7C15)
    state = np.uint64(seed) + gamma * np.arange(1, count + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = state
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def generated_features(seed: int, count: int, ncpus: int, invalid_pct: int = 0) -> np.ndarray:
    """Features the injector generates from ``seed``: [count, 5] uint32 (wire units)."""
    r = splitmix64(seed, count)
    u = np.uint64
    out = np.empty((count, 5), dtype=np.uint32)
    out[:, 0] = (r & u(0xFFFF)) % u(ncpus)
    out[:, 1] = ((r >> u(16)) & u(0xFFFF)) % u(ncpus + 1)
    out[:, 2] = ncpus - out[:, 1].astype(np.int64) + ((r >> u(54)) % u(100) < u(invalid_pct))
    out[:, 3] = ((r >> u(32)) & u(0x7FF)) % u(1025)
    out[:, 4] = ((r >> u(43)) & u(0x7FF)) % u(1025)
    return out


def table_rows(table: np.ndarray) -> np.ndarray:
    """[N, N+1, 11, 11] uint8 -> the kernel's rows [N*(N+1), MLSCHED_ROW_BYTES]."""
    t = np.asarray(table)
    levels = lib.MLSCHED_LOAD_LEVELS
    if t.ndim != 4 or t.shape[1] != t.shape[0] + 1 or t.shape[2:] != (levels, levels):
        raise ValueError(f"table shape {t.shape}: expected [N, N+1, {levels}, {levels}]")
    if t.dtype != np.uint8:
        raise ValueError(f"table dtype {t.dtype}: expected uint8")
    if t.size and int(t.max()) > lib.MLSCHED_UNSURE:
        raise ValueError("table holds values other than STAY/MIGRATE/UNSURE")
    n = t.shape[0]
    rows = np.full((n * (n + 1), lib.MLSCHED_ROW_BYTES), lib.MLSCHED_UNSURE, dtype=np.uint8)
    rows[:, :lib.MLSCHED_ROW_CELLS] = t.reshape(n * (n + 1), levels * levels)
    return rows


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
        self.pinned = False
        self.request_dtype = dtype_of("struct mlsched_request") if lib else None

    # -- life cycle --

    def load(self, table: np.ndarray | None = None, ncpus: int | None = None,
             ring_size: int = DEFAULT_RING_BYTES,
             domains: str | list[list[int]] | None = None, pin: bool = False,
             decision_slots: int | None = None,
             consumer_timeout_ns: int = DEFAULT_CONSUMER_TIMEOUT_NS,
             pin_dir: str = PIN_DIR, table_capacity: int | None = None) -> KernelPath:
        """Load the BPF object with ``table`` ([N, N+1, 11, 11] uint8, None: all misses).

        ``ncpus``: host CPUs the collector covers (default: online CPUs); ``domains``:
        a ``--domains`` spec, explicit CPU lists, or None for the LLC groups in sysfs.
        ``pin``: keep (or reuse) the maps under ``pin_dir`` so they outlive the process.
        ``table_capacity``: with ``table=None``, room for a table of that many CPUs, loaded
        later with set_table() (until then every key misses).
        """
        if self._k is not None:
            raise KernelPathError("already loaded")
        check_environment()
        rows = table_rows(table) if table is not None else None
        n_table = int(np.asarray(table).shape[0]) if table is not None else table_capacity or 0
        if n_table > lib.MLSCHED_MAX_TABLE_CPUS:
            raise KernelPathError(f"table for {n_table} CPUs: the kernel side takes at most "
                                  f"{lib.MLSCHED_MAX_TABLE_CPUS}", errno_mod.E2BIG)
        record = ffi.sizeof("struct mlsched_request") + RING_RECORD_HEADER
        if decision_slots is None:
            decision_slots = max(lib.MLSCHED_MIN_DECISION_SLOTS,
                                 _pow2_at_least(ring_size // record * SLOTS_PER_RING_RECORD))
        if isinstance(domains, str):
            domains = parse_domains(domains)
        elif domains is None:
            domains = detect_domains()
        if ncpus is not None:
            domains = [[c for c in d if c < ncpus] for d in domains]
            domains = [d for d in domains if d]

        opts = ffi.new("struct mls_load_opts *")
        opts.ring_bytes = ring_size
        opts.decision_slots = decision_slots
        opts.table_ncpus = n_table
        opts.consumer_timeout_ns = consumer_timeout_ns
        if pin:
            pin_path = ffi.new("char[]", os.fsencode(pin_dir))
            opts.pin_dir = pin_path
        out = ffi.new("struct mls_kernel **")
        _check(lib.mls_open(opts, out), "loading the BPF side")
        self._k = out[0]
        try:
            self.ring_bytes, self.decision_slots, self.pinned = ring_size, decision_slots, pin
            self._map_views()
            if rows is not None:
                self.set_table(table, _rows=rows)
            self.set_domains(domains)
        except BaseException:
            self.close()
            raise
        log.debug("loaded: ring %d B, %d decision slots, %d-CPU table, %d domains",
                  ring_size, decision_slots, n_table, len(domains))
        return self

    def close(self) -> None:
        """Detach and free everything (pinned maps stay pinned: see unpin())."""
        if self._k is not None:
            self._views.clear()
            self._batch_view = None
            lib.mls_close(self._k)
            self._k = None

    def __enter__(self) -> KernelPath:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        if getattr(self, "_k", None) is not None and lib is not None:
            self.close()

    @property
    def loaded(self) -> bool:
        return self._k is not None

    def _handle(self):
        if self._k is None:
            raise KernelPathError("the kernel path is not loaded")
        return self._k

    @staticmethod
    def _layout(which: int) -> np.dtype:
        """Value layout of a memory-mapped map (enum mls_map, runtime/_native/mlsched_native.h)."""
        return {
            lib.MLS_MAP_DECISIONS: lambda: np.dtype(np.uint64),
            lib.MLS_MAP_CONTROL: lambda: dtype_of("struct mlsched_control"),
            lib.MLS_MAP_HOST: lambda: dtype_of("struct mlsched_host"),
            lib.MLS_MAP_TABLE: lambda: np.dtype((np.uint8, (lib.MLSCHED_ROW_BYTES,))),
            lib.MLS_MAP_DOMAINS: lambda: dtype_of("struct mlsched_domain"),
            lib.MLS_MAP_INJECT_BUF: lambda: dtype_of("struct mlsched_inject_slot"),
            lib.MLS_MAP_READBACK: lambda: dtype_of("struct mlsched_readback"),
        }[which]()

    def _view(self, which: int) -> np.ndarray:
        """numpy view of a memory-mapped map, ``which`` one of ``lib.MLS_MAP_*``, mapped on
        first use (mapped pages count in RSS)."""
        v = self._views.get(which)
        if v is not None:
            return v
        dt = self._layout(which)
        size = ffi.new("size_t *")
        ptr = lib.mls_map_mmap(self._handle(), which, size)
        if ptr == ffi.NULL:
            _raise(-errno_mod.ENOENT, "mapping a BPF map")
        if dt.itemsize % 8:     # array map values sit at 8-byte strides
            raise KernelPathError(f"map {which}: value size {dt.itemsize} is not a "
                                  "multiple of 8; fix bpf/mlsched.h")
        v = np.frombuffer(ffi.buffer(ptr, size[0] // dt.itemsize * dt.itemsize), dtype=dt)
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

    def set_table(self, table: np.ndarray, _rows: np.ndarray | None = None) -> None:
        rows = table_rows(table) if _rows is None else _rows
        n = int(np.asarray(table).shape[0])
        buf = np.ascontiguousarray(rows)
        _check(lib.mls_set_table(self._handle(), ffi.from_buffer("uint8_t[]", buf), n),
               "loading the table")
        self.table_ncpus = n

    def set_domains(self, domains: list[list[int]]) -> None:
        if not domains:
            raise KernelPathError("no CPU domains")
        ncpus = max(max(d) for d in domains) + 1
        cpu_domain = np.zeros(ncpus, dtype=np.uint32)
        for i, d in enumerate(domains):
            cpu_domain[d] = i
        _check(lib.mls_set_domains(self._handle(), ffi.from_buffer("uint32_t[]", cpu_domain),
                                   ncpus, len(domains)), "setting domains")
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

    def heartbeat(self) -> None:
        """Tell the kernel side a consumer is here (poll() does it on every call)."""
        lib.mls_heartbeat(self._handle())

    def attach_collector(self, report_hits: bool = True) -> None:
        """Attach the tracepoint collector; ``report_hits``: emit kernel hits too (shadow mode)."""
        self.set_flags(report_hits=report_hits)
        _check(lib.mls_attach_collector(self._handle()), "attaching the collector")

    def detach_collector(self) -> None:
        lib.mls_detach_collector(self._handle())

    def unpin(self) -> None:
        _check(lib.mls_unpin(self._handle()), "unpinning")

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
        n = _check(lib.mls_poll(k, self._batch, max_records, timeout_ms, linger_us),
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
        _check(lib.mls_drain(self._handle(), target, idle_timeout_ms, out), "draining")
        return int(out[0])

    # -- test-run programs --

    def inject(self, features: np.ndarray | None = None, *, generate: int = 0, seed: int = 1,
               gen_ncpus: int | None = None, invalid_pct: int = 0, bypass_table: bool = False,
               pid: int = 0, ignore_consumer: bool = False, bad_version: bool = False,
               bad_size: bool = False) -> InjectResult:
        """Run records through mlsched_decide() in the kernel.

        ``features``: [n, 5] integers (cpu, idle, busy, src_load, dst_load; loads in 1/1024)
        or a structured array with those fields; or ``generate`` > 0 records from ``seed``
        for a ``gen_ncpus``-CPU host (default: the table's). ``bypass_table`` sends every
        record to the ring; ``bad_version``/``bad_size`` emit malformed records.
        """
        k = self._handle()
        flags = ((lib.MLSCHED_INJ_BYPASS_TABLE if bypass_table else 0)
                 | (lib.MLSCHED_INJ_NO_CONSUMER_CHECK if ignore_consumer else 0)
                 | (lib.MLSCHED_INJ_BAD_VERSION if bad_version else 0)
                 | (lib.MLSCHED_INJ_BAD_SIZE if bad_size else 0))
        args = ffi.new("struct mlsched_inject_args *")
        args.pid = pid
        if generate:
            args.flags = flags | lib.MLSCHED_INJ_GENERATE
            args.count = generate
            args.seed = seed & (2**64 - 1)
            args.gen_ncpus = gen_ncpus or self.table_ncpus or 1
            args.gen_invalid_pct = invalid_pct
            _check(lib.mls_inject(k, args), "injecting")
            return _inject_result(args)
        feats = _as_wire(features)
        slots = self._view(lib.MLS_MAP_INJECT_BUF)
        total = InjectResult(0, 0, 0, 0, 0, 0, 0, 0, 0)
        parts = []
        for start in range(0, len(feats), len(slots)):
            chunk = feats[start:start + len(slots)]
            n = len(chunk)
            for i, name in enumerate(("cpu", "idle", "busy", "src_load", "dst_load")):
                slots["f"][name][:n] = chunk[:, i]
            args.flags, args.count = flags, n
            _check(lib.mls_inject(k, args), "injecting")
            r = _inject_result(args)
            parts.append((slots["result"][:n].copy(), slots["reason"][:n].copy(),
                          slots["fate"][:n].copy(), slots["seq"][:n].copy()))
            for f in ("done", "hits", "sent", "dropped", "no_consumer", "migrate", "elapsed_ns"):
                setattr(total, f, getattr(total, f) + getattr(r, f))
            total.first_seq = total.first_seq or r.first_seq
            total.last_seq = r.last_seq or total.last_seq
        if parts:
            total.result, total.reason, total.fate, total.seq = (
                np.concatenate([p[i] for p in parts]) for i in range(4))
        else:
            empty = np.zeros(0, np.uint8)
            total.result, total.reason, total.fate, total.seq = (
                empty, empty, empty, np.zeros(0, np.uint64))
        return total

    def read_decisions(self, first_seq: int, count: int) -> ReadResult:
        """Read the answers to seqs first_seq .. first_seq + count - 1 through the kernel's
        own check (mlsched_answer()); counts answered/stale in the kernel stats."""
        k = self._handle()
        view = self._view(lib.MLS_MAP_READBACK)
        args = ffi.new("struct mlsched_read_args *")
        res = ReadResult(first_seq, 0, 0, 0, 0, np.zeros(count, np.uint8),
                         np.zeros(count, np.uint8))
        for start in range(0, count, len(view)):
            n = min(len(view), count - start)
            args.first_seq, args.count = first_seq + start, n
            _check(lib.mls_read_decisions(k, args), "reading decisions")
            res.decision[start:start + n] = view["decision"][:n]
            res.status[start:start + n] = view["status"][:n]
            res.answered += args.answered
            res.missing += args.missing
            res.overwritten += args.overwritten
            res.migrate += args.migrate
        return res

    # -- state --

    def stats(self) -> dict[str, int]:
        """Kernel counters (summed over CPUs) and this consumer's counters, one flat dict."""
        k = self._handle()
        n = lib.MLSCHED_STAT_COUNT
        out = ffi.new("uint64_t[]", n)
        _check(lib.mls_read_stats(k, out, n), "reading stats")
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
        progs = list(buf[0:_check(lib.mls_prog_ids(k, buf, 64), "ids")])
        maps = list(buf[0:_check(lib.mls_map_ids(k, buf, 64), "ids")])
        links = list(buf[0:_check(lib.mls_link_ids(k, buf, 64), "ids")])
        return {"progs": progs, "maps": maps, "links": links}


def _pow2_at_least(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def _as_wire(features) -> np.ndarray:
    """[n, 5] uint32 from an integer array or a structured array with the feature fields."""
    f = np.asarray(features)
    if f.dtype.names:
        f = np.stack([f[n] for n in ("cpu", "idle", "busy", "src_load", "dst_load")], axis=1)
    if f.ndim != 2 or f.shape[1] != 5:
        raise ValueError(f"features of shape {f.shape}: expected [n, 5]")
    if f.dtype.kind not in "iu" or (f.size and (f.min() < 0 or f.max() > 0xFFFFFFFF)):
        raise ValueError("features must be integers in 0..2**32-1 (loads in 1/1024)")
    return f.astype(np.uint32)


def _inject_result(a) -> InjectResult:
    return InjectResult(done=a.done, hits=a.hits, sent=a.sent, dropped=a.dropped,
                        no_consumer=a.no_consumer, migrate=a.migrate, first_seq=a.first_seq,
                        last_seq=a.last_seq, elapsed_ns=a.elapsed_ns)
