"""``run --record``: the live requests as CSV rows that ``mlsched-convert --calibration`` reads.

One row per collector record: the five features (loads as fractions), what CFS did,
the model's decision, the record's source, pid and timestamp, and the domain ids of
the record's CPU and of the CPU CFS moved the task to (empty when the CPU is in no
domain, or for a STAY: no destination). ``mlsched-train`` tells a move between
domains from one inside a domain by them. The file is opened for appending, never
through a symbolic link and never a FIFO or device; an existing file must have this
header (rows of another layout are not appended to it).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat

import numpy as np

from . import topology
from .errors import UsageError
from .wire import LOAD_ONE

log = logging.getLogger(__name__)

#: Buffered rows written at once (and at every interval and at close).
FLUSH_ROWS = 4096

RECORD_HEADER = ("cpu,cpu_idle,cpu_not_idle,src_dom_load,dst_dom_load,"
                 "cfs_action,decision,source,pid,ts_ns,src_domain,dst_domain\n")
#: Domain id of a CPU in no domain: the field is left empty.
NO_DOMAIN = -1


class Recorder:
    """Appends collector records as CSV rows ``mlsched-convert --calibration`` accepts.

    Rows are buffered and written whole: a write that fails (a full disk, a quota) is
    cut back to the last complete row, counted in ``write_errors`` and its rows in
    ``lost_rows``; serving goes on. A file that ends in half a row (a kill, an earlier
    full disk) is cut back to its last complete row before anything is appended.
    """

    def __init__(self, path: str):
        self.path = path
        self.rows = 0              # rows on disk from this run
        self.lost_rows = 0         # rows a failed write could not store
        self.write_errors = 0
        self.repaired_bytes = 0    # a partial last row found at open and cut off
        self._pending: list[str] = []
        self._pending_rows = 0
        self._cpu_domain = np.full(0, NO_DOMAIN, dtype=np.int64)
        self.fd, created = _open(path)
        self.created = created
        try:
            self.size = os.fstat(self.fd).st_size
            if not created:
                self._check_not_shared()
            self._check_header()
            self._repair_tail()
            if self.size == 0:
                self._pending.append(RECORD_HEADER)
                self.flush()
                if self.write_errors:
                    raise UsageError(f"--record {path}: cannot write the header")
        except BaseException:
            os.close(self.fd)
            raise

    def _check_not_shared(self) -> None:
        """An existing file must be ours alone: same owner, no other names."""
        st = os.fstat(self.fd)
        if st.st_nlink > 1:
            raise UsageError(f"--record {self.path}: has {st.st_nlink} hard links; refusing to"
                             " append to a file that other names share")
        if st.st_uid != os.geteuid():
            raise UsageError(f"--record {self.path}: owned by uid {st.st_uid}, not by this"
                             " user; refusing to append to it")

    def _check_header(self) -> None:
        """An existing file gets rows of its own layout only."""
        if self.size == 0:
            return
        head = os.pread(self.fd, len(RECORD_HEADER), 0).decode("ascii", "replace")
        if head != RECORD_HEADER:
            raise UsageError(f"--record {self.path}: its header is not this version's"
                             f" ({RECORD_HEADER.strip()}); record to a new file")

    def set_domains(self, domains: list[list[int]]) -> None:
        """The CPU ids of each domain (domain i: ``domains[i]``), as the kernel side has them."""
        self._cpu_domain = topology.cpu_domain_map(domains, NO_DOMAIN, np.int64)

    def _domains(self, cpus: np.ndarray) -> np.ndarray:
        """Domain id per CPU id; NO_DOMAIN outside every domain (MLSCHED_CPU_NONE too)."""
        cpus = cpus.astype(np.int64)
        inside = cpus < len(self._cpu_domain)
        out = np.full(len(cpus), NO_DOMAIN, dtype=np.int64)
        out[inside] = self._cpu_domain[cpus[inside]]
        return out

    def _repair_tail(self) -> None:
        """Cut a partial last row (no newline at the end) back to the last complete one."""
        if self.size == 0 or os.pread(self.fd, 1, self.size - 1) == b"\n":
            return
        keep = self.size
        while keep > 0:
            start = max(0, keep - 65536)
            chunk = os.pread(self.fd, keep - start, start)
            nl = chunk.rfind(b"\n")
            if nl >= 0:
                keep = start + nl + 1
                break
            keep = start
        os.ftruncate(self.fd, keep)
        self.repaired_bytes = self.size - keep
        log.warning("--record %s: cut a partial last row (%d bytes)", self.path,
                    self.repaired_bytes)
        self.size = keep

    def add(self, batch: np.ndarray, decisions: np.ndarray) -> None:
        f = batch["f"]
        cols = np.stack([f["cpu"], f["idle"], f["busy"],
                         np.round(f["src_load"] / LOAD_ONE, 4),
                         np.round(f["dst_load"] / LOAD_ONE, 4),
                         batch["cfs_action"], decisions, batch["source"], batch["pid"],
                         batch["ts_ns"]], axis=1)
        doms = np.stack([self._domains(batch["raw_cpu"]), self._domains(batch["dst_cpu"])],
                        axis=1).tolist()
        lines = [",".join([*map(_fmt, row), *(_fmt_domain(d) for d in dom)])
                 for row, dom in zip(cols.tolist(), doms, strict=True)]
        if lines:
            self._pending.append("\n".join(lines) + "\n")
            self._pending_rows += len(lines)
            if self._pending_rows >= FLUSH_ROWS:
                self.flush()

    def flush(self) -> None:
        """Write the buffered rows whole, or none of them (counted, never raised)."""
        if not self._pending:
            return
        data = "".join(self._pending).encode("ascii")
        rows, self._pending, self._pending_rows = self._pending_rows, [], 0
        try:
            view = memoryview(data)
            while view:
                n = os.write(self.fd, view)
                view = view[n:]
        except OSError as e:
            self.write_errors += 1
            self.lost_rows += rows
            with contextlib.suppress(OSError):
                os.ftruncate(self.fd, self.size)
            if self.write_errors == 1:
                log.warning("--record %s: %s; rows are counted as lost until writes succeed",
                            self.path, e.strerror)
            return
        self.size += len(data)
        self.rows += rows

    def close(self) -> None:
        self.flush()
        os.close(self.fd)

    def abandon(self) -> None:
        """Close without recording: a file this recorder created holds only the header, so it
        goes again (a run that could not start leaves nothing behind)."""
        os.close(self.fd)
        if self.created and self.rows == 0:
            with contextlib.suppress(OSError):
                os.unlink(self.path)


def _open(path: str) -> tuple[int, bool]:
    """(fd, created): never through a symbolic link (root appending to whatever a link in
    a shared directory points at), never a FIFO or device (open would block or worse)."""
    base = os.O_RDWR | os.O_APPEND | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    created = True
    try:
        try:
            fd = os.open(path, base | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            created = False
            fd = os.open(path, base)
    except OSError as e:
        why = {errno.ELOOP: "is a symbolic link",
               errno.ENXIO: "not a regular file"}.get(e.errno, e.strerror)
        raise UsageError(f"--record {path}: {why}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UsageError(f"--record {path}: not a regular file")
        if created:
            os.fchmod(fd, 0o644)        # ours: readable as the calibration input it is
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd, created


def _fmt_domain(d: int) -> str:
    return "" if d == NO_DOMAIN else str(d)


def _fmt(v) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))
