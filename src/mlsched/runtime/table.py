"""The precomputed decision table: most requests end here, without the interpreter.

Two levels. Level 1 (this module's array) cuts loads in 0.1 bands; level 2
(``level2.py``) holds, under every level-1 cell that is not one colour, the int8
model's decision at every pair of its input levels. ``build_exact`` makes both from
the model's complete picture; ``build`` makes level 1 alone by probing (``nearest``
mode, and models whose input cannot be enumerated).

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

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .features import DST_LOAD, LOAD_LEVELS, LOAD_STEPS, SRC_LOAD, host_features
from .level2 import (
    FIRST_MIGRATE,
    INPUT_LEVELS,
    MAX_LINES,
    RING,
    THRESHOLD_MASK,
    WIRE_LOADS,
    Level2,
    Level2Error,
    encode_lines,
    fit_load_quant,
)
from .wire import CELL_LEVEL2, LOAD_ONE, MIGRATE, UNSURE, cell_ordinals, load_level

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


class Exact:
    """What ``build_exact`` made: both levels and the figures the report keeps."""

    def __init__(self, table: np.ndarray, level2: Level2 | None, reason: str | None,
                 points: int, ring_lines: int, lines_total: int):
        self.table = table
        self.level2 = level2
        self.reason = reason               # why there is no level 2 (None: there is one)
        self.points = points               # interpreter rows evaluated
        self.ring_lines = ring_lines       # refined-cell lines left to user space
        self.lines_total = lines_total     # refined-cell lines that can be addressed
        self._levels: TwoLevels | None = None

    @property
    def levels(self) -> TwoLevels:
        """Both levels ready for lookups (made once)."""
        if self._levels is None:
            self._levels = TwoLevels(self.table, self.level2)
        return self._levels


#: Model input columns of the src and dst load under the default mapping.
DEFAULT_LOAD_INPUTS = (SRC_LOAD, DST_LOAD)


def input_levels(quantize: Callable[[np.ndarray], np.ndarray], ncpus: int,
                 load_inputs: tuple[int | None, int | None] = DEFAULT_LOAD_INPUTS
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Input levels 0..255 of every wire load 0..1024 in the src and the dst column.

    ``load_inputs``: the model input that reads each load (``InputMap.input_of``); a load
    the model does not read has one level for every wire load (0), so its lines are one
    level wide and the table is constant along it.
    """
    x = WIRE_LOADS / LOAD_ONE
    q = np.asarray(quantize(host_features(ncpus, 0, 0, x, x)), dtype=np.int64)
    return tuple(np.zeros(WIRE_LOADS.size, np.int64) if col is None
                 else q[:, col] + INPUT_LEVELS // 2 for col in load_inputs)


def _bands(levels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lowest and highest input level of each 0.1 band of wire loads."""
    bands = load_level(WIRE_LOADS)
    lo = np.array([levels[bands == q].min() for q in range(LOAD_LEVELS)])
    hi = np.array([levels[bands == q].max() for q in range(LOAD_LEVELS)])
    return lo, hi


def _fill(levels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reachable input levels (sorted) and, for each of the 256, the reachable one standing in."""
    reach = np.unique(levels)
    pos = np.clip(np.searchsorted(reach, np.arange(INPUT_LEVELS), side="right") - 1, 0, None)
    return reach, pos


def build_exact(ncpus: int, quantize: Callable[[np.ndarray], np.ndarray],
                deciders: list[Callable[[np.ndarray], np.ndarray]],
                progress: Callable[[int, int], None] | None = None,
                load_inputs: tuple[int | None, int | None] = DEFAULT_LOAD_INPUTS) -> Exact:
    """Both levels from the int8 model's complete picture, row by row.

    ``quantize``: raw features [n, 10] -> the model's int8 input [n, width] (through the
    bundle's feature mapping); ``load_inputs``: the model inputs that read the src and
    the dst load (None: not read; ``input_levels``); ``deciders``: one or more functions
    int8 input -> 0/1, each its own interpreter: rows are shared out among them, one
    thread each. For each (cpu, idle) the model is asked about every pair of reachable
    src and dst input levels; a level-1 cell is sure iff its whole rectangle of levels is
    one colour, and every other cell gets level-2 lines. Rows whose model input is the
    same (a model that does not read cpu, or reads counts the int8 input cannot tell
    apart) are asked once. Raises Level2Error if the stored levels decode to anything
    but the picture.
    """
    lv_src, lv_dst = input_levels(quantize, ncpus, load_inputs)
    qsrc, qdst = fit_load_quant(lv_src), fit_load_quant(lv_dst)
    plan = _Plan(lv_src, lv_dst, load_inputs)
    reason = None
    if qsrc is None or qdst is None:
        reason = "the model's load input levels have no integer form the kernel can compute"
    elif max(plan.lines, plan.span_d) > MAX_LINES:
        reason = (f"a 0.1 load band spans {max(plan.lines, plan.span_d)} input levels of the"
                  f" model, more than {MAX_LINES}")
    table = np.empty(table_shape(ncpus), dtype=np.uint8)
    rows = [(c, i) for c in range(ncpus) for i in range(ncpus + 1)]
    cpu, idle = np.array(rows, dtype=np.int64).reshape(-1, 2).T
    bases = np.asarray(quantize(host_features(ncpus, cpu, idle, 0.0, 0.0)), dtype=np.int8)
    bases, first, row_of = np.unique(bases, axis=0, return_index=True, return_inverse=True)
    row_of = row_of.reshape(-1)
    where = [rows[int(n)] for n in first]
    out: list = [None] * len(bases)
    done = [0]
    lock = threading.Lock()

    def work(k: int) -> None:
        decide = deciders[k]
        for n in range(k, len(bases), len(deciders)):
            out[n] = plan.row(bases[n], decide, refine=reason is None, where=where[n])
            with lock:
                done[0] += 1
                if progress and (done[0] % 8 == 0 or done[0] == len(bases)):
                    progress(done[0], len(bases))

    if len(deciders) == 1:
        work(0)
    else:
        with ThreadPoolExecutor(len(deciders)) as pool:
            for f in [pool.submit(work, k) for k in range(len(deciders))]:
                f.result()
    for n, (c, i) in enumerate(rows):
        table[c, i] = out[row_of[n]][0]
    points = len(bases) * plan.reach_s.size * plan.reach_d.size
    if reason is not None:
        return Exact(table, None, reason, points, 0, 0)
    per_row = [out[k] for k in row_of]
    chunks = [o[1] for o in per_row if o[1] is not None]
    data = np.concatenate(chunks) if chunks else np.zeros(0, np.uint8)
    level2 = Level2.from_cells(plan.lines, qsrc, qdst, data)
    level2.check(int((table == UNSURE).sum()))
    return Exact(table, level2, None, points, sum(o[2] for o in per_row),
                 sum(o[3] for o in per_row))


class _Plan:
    """The geometry of one build: input levels of each 0.1 band, and per-row work."""

    def __init__(self, lv_src: np.ndarray, lv_dst: np.ndarray,
                 load_inputs: tuple[int | None, int | None] = DEFAULT_LOAD_INPUTS):
        self.src_input, self.dst_input = load_inputs
        self.lo_s, self.hi_s = _bands(lv_src)
        self.lo_d, self.hi_d = _bands(lv_dst)
        self.lines = int((self.hi_s - self.lo_s).max()) + 1
        self.span_d = int((self.hi_d - self.lo_d).max()) + 1
        self.reach_s, self.fill_s = _fill(lv_src)
        self.reach_d, self.fill_d = _fill(lv_dst)
        # per cell: its rectangle of input levels, as prefix-sum corners
        self.cs, self.cd = np.meshgrid(np.arange(LOAD_LEVELS), np.arange(LOAD_LEVELS),
                                       indexing="ij")
        self.area = ((self.hi_s[self.cs] - self.lo_s[self.cs] + 1)
                     * (self.hi_d[self.cd] - self.lo_d[self.cd] + 1))

    def row(self, base: np.ndarray, decide, refine: bool, where
            ) -> tuple[np.ndarray, np.ndarray | None, int, int]:
        """(level-1 cells, level-2 line bytes of its UNSURE cells, RING lines, lines) of a row
        whose model input without the loads is ``base``."""
        rs, rd = self.reach_s, self.reach_d
        grid = np.repeat(base[None, :], rs.size * rd.size, axis=0)
        if self.src_input is not None:
            grid[:, self.src_input] = np.repeat(rs - INPUT_LEVELS // 2, rd.size)
        if self.dst_input is not None:
            grid[:, self.dst_input] = np.tile(rd - INPUT_LEVELS // 2, rs.size)
        small = np.asarray(decide(grid), dtype=np.int64).reshape(rs.size, rd.size)
        pic = small[self.fill_s][:, self.fill_d]                     # [256, 256], 0/1
        pre = np.zeros((INPUT_LEVELS + 1, INPUT_LEVELS + 1), dtype=np.int64)
        pre[1:, 1:] = pic.cumsum(0).cumsum(1)
        lo_s, hi_s, lo_d, hi_d, cs, cd = (self.lo_s, self.hi_s, self.lo_d, self.hi_d,
                                          self.cs, self.cd)
        ones = (pre[hi_s[cs] + 1, hi_d[cd] + 1] - pre[lo_s[cs], hi_d[cd] + 1]
                - pre[hi_s[cs] + 1, lo_d[cd]] + pre[lo_s[cs], lo_d[cd]])
        cells = np.where(ones == 0, 0, np.where(ones == self.area, MIGRATE, UNSURE))
        cells = cells.astype(np.uint8)
        uq, ud = np.nonzero(cells == UNSURE)
        if not refine or uq.size == 0:
            return cells, None, 0, 0
        s_lv = lo_s[uq][:, None] + np.arange(self.lines)[None, :]             # [K, lines]
        valid = s_lv <= hi_s[uq][:, None]
        d_lv = np.minimum(lo_d[ud][:, None] + np.arange(self.span_d)[None, :], hi_d[ud][:, None])
        g = pic[np.minimum(s_lv, INPUT_LEVELS - 1)[:, :, None], d_lv[:, None, :]]
        chunk = encode_lines(g, valid)
        _verify(chunk, g, valid, d_lv - lo_d[ud][:, None], where)
        return (cells, chunk.reshape(-1), int(((chunk == RING) & valid).sum()),
                int(valid.sum()))


def _verify(chunk: np.ndarray, g: np.ndarray, valid: np.ndarray, d_off: np.ndarray, row) -> None:
    """Decode the line bytes at every dst offset and compare with the picture they came from."""
    t = (chunk & THRESHOLD_MASK).astype(np.int64)[..., None]
    first = ((chunk & FIRST_MIGRATE) != 0)[..., None]
    dec = np.where((d_off[:, None, :] < t) == first, 1, 0)
    check = valid[..., None] & (t != RING)
    if np.any((dec != g) & check):
        raise Level2Error(f"table level 2 of row (cpu {row[0]}, idle {row[1]}) disagrees with"
                          f" the interpreter; refusing to write it")


class TwoLevels:
    """Both levels of one table, ready to answer wire features (``lookup``).

    ``codes``/``base``: the cells as the kernel holds them (``wire.cell_ordinals``; the
    level-1 table itself, and no bases, without a level 2).
    """

    def __init__(self, table: np.ndarray, level2: Level2 | None):
        self.table = table
        self.level2 = level2
        n = table.shape[0]
        self.codes = table.reshape(n, n + 1, -1)
        self.base = np.zeros((n, n + 1), np.uint32)
        if level2 is not None:
            level2.check(int((table == UNSURE).sum()))
            self.codes, self.base = cell_ordinals(table)

    def lookup(self, cpu, idle, busy, src_wire, dst_wire
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(decisions with UNSURE for misses, level 0/1/2 that answered, in_geometry).

        The reference lookup in Python: the same arithmetic as the kernel's
        ``mlsched_lookup()`` and ``mlsched_level2()`` (bpf/mlsched_decide.h), written for
        reading. ``cpu``/``idle``/``busy`` integers; loads in 1/1024, clamped to 1.0 here as
        in the kernel. The engine's batch and float paths call it; its wire paths
        (``Engine._wire_keys``/``_level2_wire``, ``Engine._decide_small``) are faster
        specialisations that tests/runtime/test_lookup_reference.py holds to it.
        """
        table = self.table
        n = table.shape[0]
        cpu, idle, busy = (np.asarray(v, np.int64) for v in (cpu, idle, busy))
        src = np.minimum(np.asarray(src_wire, np.int64), LOAD_ONE)
        dst = np.minimum(np.asarray(dst_wire, np.int64), LOAD_ONE)
        ok = (cpu >= 0) & (cpu < n) & (idle >= 0) & (idle <= n) & (busy == n - idle)
        qs, qd = load_level(src), load_level(dst)
        c, i = np.where(ok, cpu, 0), np.where(ok, idle, 0)
        vals = np.where(ok, table[c, i, qs, qd], UNSURE).astype(np.uint8)
        level = np.where(vals <= MIGRATE, 1, 0).astype(np.uint8)
        ref = ok & (vals == UNSURE)
        if self.level2 is not None and ref.any():
            c, i, qs, qd = c[ref], i[ref], qs[ref], qd[ref]
            ordinal = (self.base[c, i].astype(np.int64)
                       + self.codes[c, i, qs * LOAD_LEVELS + qd] - CELL_LEVEL2)
            d = self.level2.decide(ordinal, qs, qd, src[ref], dst[ref])
            vals[ref] = d
            level[ref] = np.where(d <= MIGRATE, 2, 0)
        return vals, level, ok


__all__ = ["MODES", "Exact", "Level2Error", "build", "build_exact", "check_centres",
           "input_levels", "TwoLevels", "table_bytes", "table_shape"]
