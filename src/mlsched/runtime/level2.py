"""Table level 2: the int8 model's exact decision under the level-1 cells that are not sure.

The int8 model sees a load as one of 256 input levels (its input quantization),
so for one table row (cpu, idle) its decision over (src, dst) is a finite picture
of at most 256 x 256 input-level pairs. Level 1 cuts loads in 0.1 bands; a cell
whose picture is not one colour is UNSURE there. Level 2 stores, for each such
cell, the picture itself in the form ``bpf/mlsched.h`` ("table level 2") gives the
kernel: one *line byte* per src input level the cell covers, saying at which dst
offset the decision flips (``d < t`` -> first decision, else the other). A line
that is not monotone in dst is marked RING: its requests go to user space.

The mapping from a wire load L (1/1024) to an input level is the model's float
path (normalize, divide by the input scale, round half to even, saturate). The
kernel cannot run it, so ``fit_load_quant`` finds integers ``mul, add`` with
``clamp((L * mul + add) >> 32, 0, 255)`` equal to the float path for every one
of the 1025 wire values, or reports that none exist (the bundle then has no
level 2). Everything here is numpy; the engine decodes level 2 with ``decide``,
the kernel with ``mlsched_level2()`` in ``bpf/mlsched_decide.h``, both from the
same bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .wire import (
    CELL_LEVEL2,
    LOAD_LEVELS,
    LOAD_ONE,
    MIGRATE,
    STAY,
    UNSURE,
    load_level,
)
from .wire import (
    L2_FIRST_MIGRATE as FIRST_MIGRATE,
)
from .wire import (
    L2_INPUT_LEVELS as INPUT_LEVELS,
)
from .wire import (
    L2_MAX_LINES as MAX_LINES,
)
from .wire import (
    L2_RING as RING,
)
from .wire import (
    L2_SHIFT as SHIFT,
)
from .wire import (
    L2_THRESHOLD_MASK as THRESHOLD_MASK,
)

__all__ = ["CELL_LEVEL2", "FIRST_MIGRATE", "INPUT_LEVELS", "MAX_LINES", "RING", "SHIFT",
           "THRESHOLD_MASK", "WIRE_LOADS", "Level2", "Level2Error", "LoadQuant", "band_starts",
           "encode_lines", "fit_load_quant"]
#: Every wire load the kernel side quantizes (after its clamp to LOAD_ONE).
WIRE_LOADS = np.arange(LOAD_ONE + 1, dtype=np.int64)


class Level2Error(ValueError):
    """A level-2 description that cannot be right (bad bundle data)."""


@dataclass(frozen=True)
class LoadQuant:
    """Integer form of one load column's input quantization (struct mlsched_load_quant)."""

    mul: int
    add: int
    band_start: tuple[int, ...]      # input level of the smallest wire load of each 0.1 band

    def levels(self, wire) -> np.ndarray:
        """Input levels 0..255 of wire loads (clamped to LOAD_ONE first), int64."""
        L = np.minimum(np.asarray(wire, dtype=np.int64), LOAD_ONE)
        return np.clip((L * self.mul + self.add) >> SHIFT, 0, INPUT_LEVELS - 1)

    def level_of(self, wire: int) -> int:
        """``levels`` of one wire load, in Python integers."""
        v = (min(wire, LOAD_ONE) * self.mul + self.add) >> SHIFT
        return 0 if v < 0 else min(v, INPUT_LEVELS - 1)

    def to_json(self) -> dict:
        return {"mul": int(self.mul), "add": int(self.add), "band_start": list(self.band_start)}

    @classmethod
    def from_json(cls, d: dict) -> LoadQuant:
        try:
            q = cls(int(d["mul"]), int(d["add"]), tuple(int(v) for v in d["band_start"]))
        except (KeyError, TypeError, ValueError) as e:
            raise Level2Error(f"load quantization {d!r}: {e}") from None
        if len(q.band_start) != LOAD_LEVELS or abs(q.mul) >= 1 << 40 or abs(q.add) >= 1 << 50:
            raise Level2Error(f"load quantization {d!r}: out of range")
        if q.band_start != band_starts(q.levels(WIRE_LOADS)):
            raise Level2Error("load quantization: band starts do not match mul and add")
        return q


def band_starts(levels: np.ndarray) -> tuple[int, ...]:
    """Input level of the smallest wire load of each band, from the levels of all 1025 loads."""
    bands = load_level(WIRE_LOADS)
    return tuple(int(levels[np.argmax(bands == q)]) for q in range(LOAD_LEVELS))


def fit_load_quant(levels: np.ndarray) -> LoadQuant | None:
    """Integers (mul, add) reproducing ``levels`` (input levels 0..255 of wire loads 0..1024).

    Each load L asks ``lo_L <= L * mul + add <= hi_L`` (one side only where the level
    saturates at 0 or 255). Eliminating ``add`` pair by pair bounds ``mul``:
    ``mul * (L2 - L1) <= hi_L2 - lo_L1`` for every L1 != L2; any integer ``mul`` in the
    bounds leaves an interval for ``add``. The result is checked against ``levels``
    before it is returned; None when no integer form exists (or the levels are not
    non-decreasing, as a positive scale makes them).
    """
    lv = np.asarray(levels, dtype=np.int64)
    if lv.shape != WIRE_LOADS.shape or lv.min() < 0 or lv.max() >= INPUT_LEVELS:
        raise ValueError(f"levels must be {WIRE_LOADS.size} values in 0..{INPUT_LEVELS - 1}")
    if np.any(np.diff(lv) < 0):
        return None
    one = 1 << SHIFT
    far = 1 << 60
    L = WIRE_LOADS
    lo = np.where(lv > 0, lv * one, -far)                                  # L*mul + add >= lo
    hi = np.where(lv < INPUT_LEVELS - 1, (lv + 1) * one - 1, far)          # L*mul + add <= hi
    gap = L[None, :] - L[:, None]                                          # [L1, L2]: L2 - L1
    room = hi[None, :] - lo[:, None]                                       # hi_L2 - lo_L1
    up = gap > 0
    mul_hi = (room[up] // gap[up]).min()                                   # floor
    down = gap < 0
    mul_lo = (-((room[down]) // (-gap[down]))).max() if down.any() else -far
    # room[down] / gap[down] with gap < 0 flips the inequality: mul >= room / gap (ceil)
    mul_lo, mul_hi = max(int(mul_lo), 0), min(int(mul_hi), 1 << 40)   # levels never fall
    if mul_lo > mul_hi:
        return None
    # the allowed multiplier nearest the levels' own slope, then the allowed add nearest 0:
    # small integers, also where the levels saturate (one side of the bounds is open)
    mul = min(max(int(round((lv[-1] - lv[0]) / LOAD_ONE * one)), mul_lo), mul_hi)
    add_lo = int((lo - L * mul).max())
    add_hi = int((hi - L * mul).min())
    if add_lo > add_hi:
        return None
    q = LoadQuant(mul, min(max(0, add_lo), add_hi), band_starts(lv))
    if not np.array_equal(q.levels(L), lv):
        return None
    return q


def encode_lines(g: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Line bytes of lines ``g`` [..., offsets] (0/1 at each dst offset of a cell, in order).

    A line that flips once at offset t becomes t, with FIRST_MIGRATE when it starts
    MIGRATE; one that never flips, its length (every offset is below it); one that flips
    more than once, or is not ``valid`` (a padding line), RING. Lines of one offset (a
    model that does not read the dst load) never flip.
    """
    g = np.asarray(g)
    first = g[..., 0]
    flip = g[..., 1:] != g[..., :-1]
    nflip = flip.sum(-1)
    at = np.argmax(flip, axis=-1) + 1 if flip.shape[-1] else np.zeros(nflip.shape, np.int64)
    t = np.where(nflip == 0, g.shape[-1], at)
    byte = t | np.where(first == MIGRATE, FIRST_MIGRATE, 0)
    byte = np.where((nflip <= 1) & valid & (t < RING), byte, RING)
    return byte.astype(np.uint8)


@dataclass
class Level2:
    """The second level of one table: line bytes of every refined cell, and how to find them.

    Every UNSURE cell of the level-1 table is refined, its lines RING where the picture
    was not monotone. Cells are numbered in the order of the table's UNSURE cells
    (row-major over cpu, idle, q(src), q(dst)); ``index[cell]`` names the cell's lines
    in ``data``, ``lines`` bytes each. Many cells share their lines (the boundary crosses
    neighbouring rows' cells alike), so each distinct set is stored once.

    In the kernel (``bpf/mlsched.h``, "table level 2") one half of ``table2`` is the index,
    two cells per word, then the line bytes (``kernel_image``).
    """

    lines: int
    src: LoadQuant
    dst: LoadQuant
    index: np.ndarray                # uint32 [cells]: distinct line set of each refined cell
    data: np.ndarray                 # uint8 [distinct * lines]

    @property
    def cells(self) -> int:
        return int(self.index.size)

    @property
    def distinct(self) -> int:
        return self.data.size // self.lines if self.lines else 0

    @property
    def nbytes(self) -> int:
        return int(self.index.nbytes + self.data.nbytes)

    @property
    def index_words(self) -> int:
        return (self.cells + 1) // 2

    @property
    def kernel_words(self) -> int:
        """__u64 words of one half of ``table2``: the index, then the line bytes."""
        return self.index_words + (self.data.size + 7) // 8

    def kernel_image(self) -> np.ndarray:
        """The bytes of one half of ``table2`` (little-endian words)."""
        img = np.zeros(self.kernel_words * 8, dtype=np.uint8)
        img[:self.cells * 4] = self.index.astype("<u4").view(np.uint8)
        start = self.index_words * 8
        img[start:start + self.data.size] = self.data
        return img

    def ring_lines(self) -> int:
        """Line bytes of refined cells marked RING (padding lines of narrow edge bands included)."""
        per_set = ((self.data.reshape(-1, self.lines) & THRESHOLD_MASK) == RING).sum(axis=1)
        return int(per_set[self.index].sum()) if self.cells else 0

    def check(self, unsure_cells: int) -> None:
        if not 1 <= self.lines <= MAX_LINES:
            raise Level2Error(f"level 2 with {self.lines} lines per cell: 1..{MAX_LINES}")
        if self.index.dtype != np.uint32 or self.index.size != unsure_cells:
            raise Level2Error(f"level 2 indexes {self.index.size} cells, the table has"
                              f" {unsure_cells} UNSURE cells; they need {unsure_cells}")
        if self.data.dtype != np.uint8 or self.data.size % self.lines:
            raise Level2Error(f"level 2 holds {self.data.size} line bytes, not whole cells of"
                              f" {self.lines}")
        if self.cells and int(self.index.max()) >= self.distinct:
            raise Level2Error(f"level 2 index names line set {int(self.index.max())} of"
                              f" {self.distinct}")

    def decide(self, ordinal: np.ndarray, qs: np.ndarray, qd: np.ndarray, src: np.ndarray,
               dst: np.ndarray) -> np.ndarray:
        """Decisions (STAY/MIGRATE, UNSURE for RING lines) of refined cells, vectorized.

        ``ordinal``: each row's cell number; ``qs``/``qd`` its level-1 bands; ``src``/``dst``
        wire loads. The same arithmetic as ``mlsched_level2()``.
        """
        s = self.src.levels(src) - np.asarray(self.src.band_start)[qs]
        d = self.dst.levels(dst) - np.asarray(self.dst.band_start)[qd]
        ok = (s >= 0) & (s < self.lines) & (d >= 0) & (d < MAX_LINES)
        if not self.cells:
            return np.full(np.shape(ok), UNSURE, dtype=np.uint8)
        uid = self.index[np.where(ok, ordinal, 0)].astype(np.int64)
        line = self.data[np.where(ok, uid * self.lines + s, 0)]
        t = (line & THRESHOLD_MASK).astype(np.int64)
        first_migrate = (line & FIRST_MIGRATE) != 0
        out = np.where((d < t) == first_migrate, MIGRATE, STAY).astype(np.uint8)
        out[~ok | (t == RING)] = UNSURE
        return out

    def decide_one(self, ordinal: int, qs: int, qd: int, src: int, dst: int) -> int:
        """``decide`` for one request, in Python integers (small batches)."""
        s = self.src.level_of(src) - self.src.band_start[qs]
        d = self.dst.level_of(dst) - self.dst.band_start[qd]
        if not (0 <= s < self.lines and 0 <= d < MAX_LINES) or ordinal >= self.cells:
            return UNSURE
        line = int(self.data[int(self.index[ordinal]) * self.lines + s])
        t = line & THRESHOLD_MASK
        if t == RING:
            return UNSURE
        return MIGRATE if (d < t) == bool(line & FIRST_MIGRATE) else STAY

    @classmethod
    def from_cells(cls, lines: int, src: LoadQuant, dst: LoadQuant, cells: np.ndarray) -> Level2:
        """From the line bytes of every refined cell [cells, lines], storing each set once."""
        cells = np.asarray(cells, dtype=np.uint8).reshape(-1, lines)
        if cells.shape[0] == 0:
            return cls(lines, src, dst, np.zeros(0, np.uint32), np.zeros(0, np.uint8))
        uniq, inverse = np.unique(cells, axis=0, return_inverse=True)
        return cls(lines, src, dst, inverse.reshape(-1).astype(np.uint32), uniq.reshape(-1))

    def to_bytes(self) -> bytes:
        """level2.bin: the index (uint32 little-endian), then the line bytes."""
        return self.index.astype("<u4").tobytes() + self.data.tobytes()

    def to_json(self) -> dict:
        return {"lines": self.lines, "cells": self.cells, "src": self.src.to_json(),
                "dst": self.dst.to_json()}

    @classmethod
    def from_json(cls, d: dict, blob: bytes) -> Level2:
        try:
            lines, cells = int(d["lines"]), int(d["cells"])
            src, dst = LoadQuant.from_json(d["src"]), LoadQuant.from_json(d["dst"])
        except (KeyError, TypeError, ValueError) as e:
            raise Level2Error(f"level 2 description: {e}") from None
        if not 0 <= cells * 4 <= len(blob):
            raise Level2Error(f"level2.bin holds {len(blob)} bytes, fewer than the index of"
                              f" {cells} cells")
        index = np.frombuffer(blob, dtype="<u4", count=cells).astype(np.uint32)
        return cls(lines, src, dst, index, np.frombuffer(blob, np.uint8, offset=cells * 4).copy())
