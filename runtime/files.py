"""Files mlsched-lite writes: always complete or not at all.

Every output (``decide --output``, the stats textfile, ``--summary-json``) is written to a
temporary file beside its final name, mode 0644, and renamed into place when complete;
on any failure the temporary file is removed and the old file, if any, stays as it was.
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
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through atomic_writer()."""
    with atomic_writer(path) as f:
        f.write(text)
