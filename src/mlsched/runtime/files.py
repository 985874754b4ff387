"""Files mlsched-lite writes: always complete or not at all.

Every output (``decide --output``, the stats textfile, ``--summary-json``) is written to a
temporary file beside its final name, mode 0644, flushed to the disk, renamed into place
when complete, and the directory entry flushed too: after a power loss the name holds the
old file or the new one, never an empty one. On any failure the temporary file is
removed and the old file, if any, stays as it was.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike) -> Iterator[TextIO]:
    """A text file that replaces ``path`` when the block ends without an exception."""
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent or ".")
    try:
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
        sync_directory(target.parent)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through atomic_writer()."""
    with atomic_writer(path) as f:
        f.write(text)


def sync_directory(path: str | os.PathLike) -> None:
    """Flush a directory's entries (a rename in it) to the disk."""
    fd = os.open(path or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
