"""Files mlsched writes: always complete or not at all. The one place that does it.

Every file output (``decide --output``, the stats textfile, ``--summary-json``, the
bench's results) is written to a temporary file beside its final name, mode 0644, flushed
to the disk, renamed into place when complete, and the directory entry flushed too: after
a power loss the name holds the old file or the new one, never an empty one. On any
failure the temporary file is removed and the old file, if any, stays as it was.

Directory outputs (a bundle, ``mlsched-train``'s OUTDIR, a SavedModel) are built in a
temporary directory beside their name (``atomic_directory``) and renamed into place; an
existing one is swapped out only once the new one is whole, and put back if the swap fails.
A file that another library writes by name (a plot) goes through ``atomic_path``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike) -> Iterator[TextIO]:
    """A text file that replaces ``path`` when the block ends without an exception; its data
    reach the disk before the rename."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        yield f
        f.flush()
        os.fsync(f.fileno())


def write_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through atomic_writer(), creating its directory."""
    with atomic_writer(path) as f:
        f.write(text)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary name beside ``path`` (same suffix) for a writer that takes a name; it
    replaces ``path`` when the block ends without an exception."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=target.suffix,
                               dir=target.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
        sync_directory(target.parent)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, replace: bool = False) -> Iterator[Path]:
    """A temporary directory beside ``path`` to fill; when the block ends without an
    exception it becomes ``path`` (mode 0755). An existing ``path`` raises FileExistsError
    unless ``replace``; then it is swapped out only once the new one is whole."""
    target = Path(path)
    if target.exists() and not replace:
        raise FileExistsError(f"{target} exists: pass --force to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    old = None
    try:
        yield tmp
        os.chmod(tmp, 0o755)
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
            os.rename(target, old / "previous")
            try:
                os.rename(tmp, target)
            except BaseException:
                os.rename(old / "previous", target)     # the old one stays as it was
                raise
        else:
            os.rename(tmp, target)
        sync_directory(target.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def sync_directory(path: str | os.PathLike) -> None:
    """Flush a directory's entries (a rename in it) to the disk."""
    fd = os.open(path or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
