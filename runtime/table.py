"""The precomputed decision table: most requests end here, without the interpreter.

Geometry for an N-CPU host: a uint8 array ``[N, N+1, LOAD_LEVELS, LOAD_LEVELS]``
indexed ``[cpu, idle, q(src), q(dst)]`` (busy = N - idle on a healthy host, so it
needs no axis). A 64-CPU table is 64 * 65 * 121 bytes = 503 KB.

Building (``build``), for every (cpu, idle) row:

1. evaluate the interpreter on a lattice over src x dst loads that is
   ``PROBES_PER_CELL`` times finer than the table grid, so each cell holds its
   centre, its corners and points in between;
2. ``boundary`` mode: a cell is MIGRATE or STAY when every probe in it agrees,
   else UNSURE (a miss the runtime sends to the interpreter with the exact
   features); ``nearest`` mode: the centre's decision, never UNSURE.

Either way every sure cell equals the interpreter's decision at the cell centre.
The same code serves ``mlsched-convert`` and the runtime (which can derive a
table for a host with fewer CPUs than the bundle's from ``model.tflite``).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .features import LOAD_LEVELS, LOAD_STEPS, host_features, load_key
from .wire import UNSURE

MODES = ("boundary", "nearest")
#: Probe lattice points per table cell along each load axis (even: centre and edges both fall on it).
PROBES_PER_CELL = 4
#: (cpu, idle) rows evaluated per interpreter call while building.
ROWS_PER_CALL = 8


def table_shape(ncpus: int) -> tuple[int, int, int, int]:
    return (ncpus, ncpus + 1, LOAD_LEVELS, LOAD_LEVELS)


def table_bytes(ncpus: int) -> int:
    return ncpus * (ncpus + 1) * LOAD_LEVELS * LOAD_LEVELS


def _lattice(probes: int) -> tuple[np.ndarray, np.ndarray]:
    """Load values of the probe lattice and, per cell, the slice of lattice points inside it."""
    step = probes * LOAD_STEPS
    values = np.arange(step + 1) / step          # 0 .. 1 in 1/(probes*10)
    half = probes // 2
    # cell k covers [k - 1/2, k + 1/2] / LOAD_STEPS, i.e. lattice [k*probes - half, k*probes + half]
    lo = np.arange(LOAD_LEVELS) * probes - half   # may start below 0: clipped at use
    return values, lo


def build(decide: Callable[[np.ndarray], np.ndarray], ncpus: int, mode: str = "boundary",
          probes: int = PROBES_PER_CELL, progress: Callable[[int, int], None] | None = None
          ) -> np.ndarray:
    """Build the table by asking ``decide`` (raw features [n, 10] -> 0/1) over the probe lattice."""
    if mode not in MODES:
        raise ValueError(f"table mode {mode!r}: use one of {', '.join(MODES)}")
    if probes % 2 or probes < 2:
        raise ValueError("probes per cell must be an even number >= 2")
    values, lo = _lattice(probes)
    npts = values.size
    if mode == "nearest":
        values = np.arange(LOAD_LEVELS) / LOAD_STEPS
        npts = LOAD_LEVELS
    src, dst = np.meshgrid(values, values, indexing="ij")
    rows = [(c, i) for c in range(ncpus) for i in range(ncpus + 1)]
    table = np.empty(table_shape(ncpus), dtype=np.uint8)
    for start in range(0, len(rows), ROWS_PER_CALL):
        chunk = rows[start:start + ROWS_PER_CALL]
        cpu = np.repeat([c for c, _ in chunk], npts * npts)
        idle = np.repeat([i for _, i in chunk], npts * npts)
        feats = host_features(ncpus, cpu, idle, np.tile(src.ravel(), len(chunk)),
                              np.tile(dst.ravel(), len(chunk)))
        d = np.asarray(decide(feats), dtype=np.uint8).reshape(len(chunk), npts, npts)
        for k, (c, i) in enumerate(chunk):
            table[c, i] = d[k] if mode == "nearest" else _cells(d[k], lo, probes)
        if progress:
            progress(min(start + ROWS_PER_CALL, len(rows)), len(rows))
    return table


def _cells(lattice: np.ndarray, lo: np.ndarray, probes: int) -> np.ndarray:
    """Reduce one row's probe lattice to tri-state cells (vectorized over cells)."""
    # Window min/max over [lo, lo + probes] (clipped at the lattice edge) along both axes.
    n = lattice.shape[0]
    idx = np.clip(lo[:, None] + np.arange(probes + 1)[None, :], 0, n - 1)   # [cells, probes+1]
    win = lattice[idx[:, None, :, None], idx[None, :, None, :]]             # [c, c, p, p]
    mn, mx = win.min(axis=(2, 3)), win.max(axis=(2, 3))
    centre = lattice[np.ix_(np.arange(LOAD_LEVELS) * probes, np.arange(LOAD_LEVELS) * probes)]
    return np.where(mn == mx, centre, UNSURE).astype(np.uint8)


def lookup(table: np.ndarray, cpu, idle, busy, src, dst) -> tuple[np.ndarray, np.ndarray]:
    """Vectorized table lookup on raw features: (cell values uint8, in_geometry bool).

    Rows whose key falls outside the geometry (cpu >= N, idle + busy != N, negative
    or non-integral counts) get UNSURE and ``in_geometry`` False.
    """
    n = table.shape[0]
    cpu = np.asarray(cpu, np.float64)
    idle = np.asarray(idle, np.float64)
    busy = np.asarray(busy, np.float64)
    ok = ((cpu >= 0) & (cpu < n) & (idle >= 0) & (idle <= n) & (idle + busy == n)
          & (cpu == np.floor(cpu)) & (idle == np.floor(idle)))
    c = np.where(ok, cpu, 0).astype(np.int64)
    i = np.where(ok, idle, 0).astype(np.int64)
    vals = table[c, i, load_key(src), load_key(dst)]
    return np.where(ok, vals, UNSURE).astype(np.uint8), ok


def check_centres(table: np.ndarray, decide: Callable[[np.ndarray], np.ndarray],
                  max_cells: int) -> tuple[int, int]:
    """Compare the sure cells with ``decide`` at their centres: (cells checked, cells differing).

    At most ``max_cells`` cells are checked, a fixed random sample when there are more.
    """
    cpu, idle, qs, qd = np.nonzero(table != UNSURE)
    if cpu.size > max_cells:
        pick = np.random.default_rng(0).choice(cpu.size, max_cells, replace=False)
        cpu, idle, qs, qd = cpu[pick], idle[pick], qs[pick], qd[pick]
    if cpu.size == 0:
        return 0, 0
    feats = host_features(table.shape[0], cpu, idle, qs / LOAD_STEPS, qd / LOAD_STEPS)
    expected = decide(feats)
    return int(cpu.size), int((expected != table[cpu, idle, qs, qd]).sum())
