"""``mlsched-lite unpin``: remove the maps ``run --pin`` keeps, and only from a BPF filesystem."""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import shutil
import sys
from pathlib import Path

from .. import bpfenv
from ..errors import UsageError
from .common import PROG

NAME = "unpin"


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        NAME, help="remove maps kept by run --pin",
        description="Remove the maps `run --pin` keeps pinned (and their counters).")
    p.add_argument("--pin-dir", default=bpfenv.PIN_DIR, metavar="DIR",
                   help="pin directory (default %(default)s)")
    return p


def fs_type(path: Path) -> str | None:
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


def run(args) -> int:
    d = Path(args.pin_dir)
    if not d.exists():
        print(f"{PROG}: nothing pinned at {d}", file=sys.stderr)
        return 0
    if fs_type(d) != "bpf":
        raise UsageError(f"--pin-dir {d}: not on a BPF filesystem; refusing to remove it")
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        try:    # the lock a running consumer holds (mlsched_native.c, prepare_pin_dir)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UsageError(f"--pin-dir {d} is in use by a running consumer: stop it first"
                             ) from None
        shutil.rmtree(d)
    finally:
        os.close(fd)
    print(f"{PROG}: removed {d}", file=sys.stderr)
    return 0
