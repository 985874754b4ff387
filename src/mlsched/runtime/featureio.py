"""Feature files in, decision text out: the file side of ``decide`` and ``replay``.

``read_features`` streams raw features [m, 5] (float64) from a CSV file (a header
names the five features, in any order, extra columns ignored), from standard input
(``-``) or from an ``.npz`` holding ``features`` [n, 5] or [n, 10], a chunk at a time,
so memory stays bounded whatever the file's size. File-level problems (missing,
empty, no header, no ``features``) raise ``UsageError`` before the first chunk; a bad
row becomes a row of NaN, which the engine answers STAY and counts as invalid.

``open_output`` gives standard output or a file that appears complete or not at all;
``format_decisions`` turns one batch's answers into lines of text or JSON.
"""

from __future__ import annotations

import contextlib
import csv
import io
import itertools
import json
import math
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from .engine import SOURCE_NAMES
from .errors import UsageError
from .features import FEATURE_NAMES
from .files import atomic_writer
from .wire import DECISION_NAMES, MIGRATE, STAY, UNSURE

#: Rows per engine batch when reading a feature file: bounds memory; larger chunks are no
#: faster, parsing dominates.
INPUT_CHUNK_ROWS = 4096

_NAMES = np.array([DECISION_NAMES[STAY], DECISION_NAMES[MIGRATE], DECISION_NAMES[UNSURE]])


def format_decisions(r, as_json: bool) -> str:
    """Text for one batch: decision names, or JSON lines, one per row."""
    if len(r) == 0:
        return ""
    if not as_json:
        return "\n".join(_NAMES[r.decisions].tolist()) + "\n"
    lines = []
    for d, s, p in zip(r.decisions.tolist(), r.source.tolist(), r.probability.tolist(),
                       strict=True):
        prob = None if math.isnan(p) else round(p, 6)
        lines.append(json.dumps({"decision": DECISION_NAMES[d], "probability": prob,
                                 "source": SOURCE_NAMES[s]}))
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def open_output(path: str | None):
    """stdout, or a file written beside its final name and renamed into place when complete."""
    if path is None or path == "-":
        yield sys.stdout
        sys.stdout.flush()
        return
    target = Path(path)
    if target.is_dir():
        raise UsageError(f"--output {path}: is a directory")
    with contextlib.ExitStack() as stack:
        try:
            f = stack.enter_context(atomic_writer(target))
        except OSError as e:
            raise UsageError(f"--output {path}: {e.strerror}") from None
        yield f


# ---- reading --input ------------------------------------------------------------------------
def read_features(path: str, chunk_rows: int = INPUT_CHUNK_ROWS) -> Iterator[np.ndarray]:
    """Yield raw features [m, 5] float64 from a CSV (path or '-') or .npz, ``chunk_rows`` at a time.

    File-level problems (missing, empty, no header, no 'features') raise UsageError before
    the first chunk; a bad row becomes a row of NaN, which the engine answers as invalid.
    """
    if path == "-":
        stream = io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8", errors="replace", newline="")
        return _csv_chunks(stream, "<stdin>", chunk_rows)
    p = Path(path)
    if not p.exists():
        raise UsageError(f"--input {path}: no such file")
    if p.is_dir():
        raise UsageError(f"--input {path}: is a directory")
    if p.suffix == ".npz":
        return _npz_chunks(p, chunk_rows)
    try:
        stream = open(p, encoding="utf-8", errors="replace", newline="")
    except OSError as e:
        raise UsageError(f"--input {path}: {e.strerror}") from None
    return _csv_chunks(stream, path, chunk_rows)


def _csv_chunks(stream, name: str, chunk_rows: int) -> Iterator[np.ndarray]:
    header_line = stream.readline()
    if not header_line:
        stream.close()
        raise UsageError(f"--input {name}: empty (expected a CSV header naming"
                       f" {', '.join(FEATURE_NAMES)})")
    header = [h.strip() for h in next(csv.reader([header_line]), [])]
    missing = [n for n in FEATURE_NAMES if n not in header]
    if missing:
        stream.close()
        raise UsageError(f"--input {name}: header lacks {', '.join(missing)}"
                       f" (needs {', '.join(FEATURE_NAMES)}; .npz files need the .npz suffix)")
    cols = [header.index(n) for n in FEATURE_NAMES]
    return _csv_rows(stream, cols, len(header), chunk_rows)


def _csv_rows(stream, cols: list[int], width: int, chunk_rows: int) -> Iterator[np.ndarray]:
    with stream:
        while True:
            lines = list(itertools.islice(stream, chunk_rows))
            if not lines:
                return
            yield _parse_lines(lines, cols, width)


def _parse_lines(lines: list[str], cols: list[int], width: int) -> np.ndarray:
    """CSV lines -> [m, 5]: one row per non-blank line, NaN where a line is malformed.

    Fast path: numpy's C parser over the whole chunk (plain numbers, no quotes). If any
    line defeats it, the chunk is parsed line by line, each line on its own, so a stray
    quote cannot swallow the lines after it.
    """
    lines = [ln for ln in lines if ln.strip()]
    if not lines:
        return np.zeros((0, len(cols)))
    try:
        with np.errstate(all="ignore"), warnings_as_errors():
            a = np.loadtxt(lines, delimiter=",", comments=None, quotechar=None, ndmin=2,
                           dtype=np.float64)
        if a.shape == (len(lines), width):
            return a[:, cols]
    except ValueError:
        pass
    out = np.full((len(lines), len(cols)), np.nan)
    for i, line in enumerate(lines):
        try:
            row = next(csv.reader([line]), [])
        except csv.Error:
            continue
        if len(row) != width:
            continue
        for j, c in enumerate(cols):
            try:
                out[i, j] = float(row[c])
            except ValueError:
                pass
    return out


@contextlib.contextmanager
def warnings_as_errors():
    """loadtxt warns (instead of failing) on some malformed input; treat that as malformed."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            yield
        except Warning as w:
            raise ValueError(str(w)) from None


def _npz_chunks(path: Path, chunk_rows: int) -> Iterator[np.ndarray]:
    """Stream the 'features' array of an .npz (stored or deflated) without loading it whole."""
    def bad(what: str) -> UsageError:
        return UsageError(f"--input {path}: {what}")

    try:
        z = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise bad(f"not a readable .npz ({e})") from None
    if "features.npy" not in z.namelist():
        z.close()
        raise bad(f"no 'features' array (has {', '.join(n[:-4] for n in z.namelist()) or 'nothing'})")
    try:
        f = z.open("features.npy")
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise ValueError(f".npy format {version[0]}.{version[1]}: save it with numpy.savez")
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
        z.close()
        raise bad(f"'features' is not a readable array ({e})") from None
    if len(shape) != 2 or shape[1] not in (5, 10):
        z.close()
        raise bad(f"'features' has shape {list(shape)}, expected [n, 10] or [n, 5]")
    if dtype.hasobject or dtype.kind not in "biuf":
        z.close()
        raise bad(f"'features' is {dtype}, not real numbers")
    if fortran:
        z.close()
        raise bad("'features' is Fortran-ordered: save np.ascontiguousarray(features)")
    return _npz_rows(z, f, shape, dtype, chunk_rows, bad)


def _npz_rows(z, f, shape, dtype, chunk_rows, bad) -> Iterator[np.ndarray]:
    n, width = shape
    row_bytes = width * dtype.itemsize
    with z, f:
        done = 0
        while done < n:
            take = min(chunk_rows, n - done)
            try:
                buf = f.read(take * row_bytes)
            except (OSError, zipfile.BadZipFile, EOFError) as e:
                raise bad(f"'features' unreadable after {done} rows ({e})") from None
            if len(buf) != take * row_bytes:
                raise bad(f"'features' truncated after {done + len(buf) // row_bytes} of {n} rows")
            yield np.frombuffer(buf, dtype=dtype).reshape(take, width)[:, :5].astype(np.float64)
            done += take
