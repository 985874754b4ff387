"""Calibration data for int8 quantization: from a file, or synthesized for an N-CPU host.

Accepted files (one line of error naming the problem otherwise):

* ``.npz`` with an array ``features`` of shape [n, 10] (or [n, 5]), numeric;
* CSV with a header row naming the five features (``cpu, cpu_idle, cpu_not_idle,
  src_dom_load, dst_dom_load``, any order, extra columns ignored) — what
  ``mlsched-lite run --record`` writes.

Rows must be finite, counts >= 0, loads within [0, 1].
"""

from __future__ import annotations

import csv
import zipfile
from pathlib import Path

import numpy as np

from mlsched.runtime.bundle import MAX_CPUS
from mlsched.runtime.features import FEATURE_NAMES, FEATURE_WIDTH, LOAD_COLUMNS, host_features

#: Calibration rows the converter feeds the quantizer (more add time, not accuracy).
CALIBRATION_ROWS = 2000
MAX_FILE_ROWS = 10_000_000


class CalibrationError(ValueError):
    pass


def synthesize(ncpus: int, rows: int, rng: np.random.Generator) -> np.ndarray:
    """Raw features covering a healthy N-CPU host, extremes included."""
    cpu = rng.integers(0, ncpus, rows)
    idle = rng.integers(0, ncpus + 1, rows)
    loads = rng.uniform(0, 1, (rows, 2))
    x = host_features(ncpus, cpu, idle, loads[:, 0], loads[:, 1])
    # Pin the range ends so the input scale always spans the whole feature box.
    corners = host_features(ncpus, [0, ncpus - 1], [0, ncpus], [0.0, 1.0], [1.0, 0.0])
    return np.concatenate([corners, x])


def load(path: str | Path) -> np.ndarray:
    """Read raw calibration features [n, 10] float32 from .npz or CSV."""
    path = Path(path)
    if not path.is_file():
        raise CalibrationError(f"calibration file {path}: not found")
    if path.suffix == ".npz":
        x = _load_npz(path)
    else:
        x = _load_csv(path)
    return _validate(x, path)


def _load_npz(path: Path) -> np.ndarray:
    try:
        with np.load(path, allow_pickle=False) as z:
            if "features" not in z.files:
                raise CalibrationError(f"calibration file {path}: no 'features' array"
                                       f" (has {', '.join(z.files) or 'nothing'})")
            x = z["features"]
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        if isinstance(e, CalibrationError):
            raise
        raise CalibrationError(f"calibration file {path}: not a readable .npz ({e})") from None
    if x.ndim != 2 or x.shape[1] not in (len(FEATURE_NAMES), FEATURE_WIDTH):
        raise CalibrationError(f"calibration file {path}: 'features' has shape {list(x.shape)},"
                               f" expected [n, {FEATURE_WIDTH}] or [n, {len(FEATURE_NAMES)}]")
    if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
        raise CalibrationError(f"calibration file {path}: 'features' is {x.dtype}, not real numbers")
    return x.astype(np.float64)


def _load_csv(path: Path) -> np.ndarray:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                raise CalibrationError(f"calibration file {path}: empty")
            names = [h.strip() for h in header]
            missing = [n for n in FEATURE_NAMES if n not in names]
            if missing:
                raise CalibrationError(f"calibration file {path}: header lacks {', '.join(missing)}"
                                       f" (needs {', '.join(FEATURE_NAMES)})")
            cols = [names.index(n) for n in FEATURE_NAMES]
            rows = []
            for lineno, row in enumerate(reader, start=2):
                if not row:
                    continue
                if len(row) != len(names):
                    raise CalibrationError(f"calibration file {path}:{lineno}: {len(row)} fields,"
                                           f" header has {len(names)}")
                try:
                    rows.append([float(row[c]) for c in cols])
                except ValueError:
                    raise CalibrationError(f"calibration file {path}:{lineno}: not a number") from None
                if len(rows) > MAX_FILE_ROWS:
                    raise CalibrationError(f"calibration file {path}: more than {MAX_FILE_ROWS} rows")
    except UnicodeDecodeError:
        raise CalibrationError(f"calibration file {path}: not UTF-8 text (CSV) nor .npz") from None
    return np.array(rows, dtype=np.float64).reshape(-1, len(FEATURE_NAMES))


def _validate(x: np.ndarray, path: Path) -> np.ndarray:
    if x.shape[0] == 0:
        raise CalibrationError(f"calibration file {path}: no rows")
    if not np.all(np.isfinite(x[:, : len(FEATURE_NAMES)])):
        raise CalibrationError(f"calibration file {path}: NaN or infinite values")
    counts, loads = x[:, :3], x[:, list(LOAD_COLUMNS)]
    if np.any(counts < 0):
        raise CalibrationError(f"calibration file {path}: negative CPU ids or counts")
    if np.any(counts > MAX_CPUS):
        raise CalibrationError(f"calibration file {path}: CPU ids or counts above {MAX_CPUS},"
                               " the largest host a bundle describes")
    if np.any((loads < 0) | (loads > 1)):
        raise CalibrationError(f"calibration file {path}: loads outside [0, 1]")
    # padding columns 5..9 are zeros for the model, as at run time: whatever a file holds
    # there is not calibration data
    out = np.zeros((x.shape[0], FEATURE_WIDTH), dtype=np.float32)
    out[:, : len(FEATURE_NAMES)] = x[:, : len(FEATURE_NAMES)]
    return out
