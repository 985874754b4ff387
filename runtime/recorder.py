"""``run --record``: the live requests as CSV rows that ``mlsched-convert --calibration`` reads.

One row per collector record: the five features (loads as fractions), what CFS did,
the model's decision, the record's source, pid and timestamp. The file is opened
for appending, never through a symbolic link and never a FIFO or device.
"""

from __future__ import annotations

import errno
import os
import stat

import numpy as np

from .errors import UsageError
from .wire import LOAD_ONE

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
            raise UsageError(f"--record {path}: {why}") from None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise UsageError(f"--record {path}: not a regular file")
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
                         np.round(f["src_load"] / LOAD_ONE, 4),
                         np.round(f["dst_load"] / LOAD_ONE, 4),
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
