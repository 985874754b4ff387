"""The decision engine: raw features in, MIGRATE/STAY out, table first, interpreter for the rest.

Every path into a decision goes through here: the library API (``api.py``), the
``mlsched-lite decide`` CLI and the kernel daemon (ring-buffer batches). Per batch,
never per row:

1. **hygiene** — a row with a NaN/±inf feature or a negative count is ``invalid``
   and answered STAY; loads outside [0, 1] are clamped (``clamped``) and every load
   is rounded to the wire's 1/1024 grid, so a float request and the same request
   from the kernel get the same cell and the same model input; padding columns
   5..9 are ignored (the model sees zeros there, as the table does);
2. **key** — (cpu, idle, q(src), q(dst)) via ``table.TwoLevels.lookup``, the reference
   lookup; a key outside the geometry (cpu >= N, idle + busy != N, fractional counts) is
   a miss. The daemon's paths (``decide_wire``: ``_wire_keys`` + ``_level2_wire`` for
   batches, ``_decide_small`` for a few rows) are specialisations of that reference on
   the flat table, and tests/runtime/test_lookup_reference.py holds them to it;
3. **hits** — sure cells (STAY/MIGRATE) are the answer (level 1); under an UNSURE
   cell, the table's second level (``level2.py``) answers at the model's own input
   levels of the two loads (level 2), exactly as the kernel's helper does;
4. **misses** — what neither level answers (a level-2 line left to user space,
   off-grid keys, a bundle without level 2) goes through ONE ``Model`` call with
   their exact features, mapped to the model's inputs and normalized as the bundle's
   manifest says (``features.InputMap``: which feature each input reads).

::

    features [n, 5|10] --hygiene--> key --level 1--> sure? -------------------> decision
                            |                   \\ refined --level 2--> line? -> decision
                            |                    \\ UNSURE / off-grid / RING line
                            |                              ---> Model.decide (one call)
                            \\ invalid -----------------------------------------> STAY

The daemon's fast path (``decide_wire``) takes the wire format of ``bpf/mlsched.h``
directly: integer counts and loads in fixed point (x = L / 1024, exact), through a
flat copy of the table with a trailing UNSURE sentinel, so an all-hit batch costs a
dozen numpy passes over a few thousand integers.

Table for this host: a bundle's table describes the N CPUs it was converted for.
``Engine(bundle, ncpus=M)`` with M < N derives an M-CPU table from ``model.tflite``
at start-up (``table.build``, the bundle's mode) so a small host's requests hit;
M > N is refused (the model never saw such hosts). ``ncpus=None`` keeps the
bundle's table: right for features recorded anywhere (the CLI, the library API).

Statistics (``Counters``): requests = hits + misses + invalid, ``level2_hits`` the
part of the hits level 2 answered; ``off_grid`` is
the part of the misses whose key lies outside the table; ``interpreter_rows``
counts rows the interpreter evaluated (misses, plus every valid row when
probabilities were asked for) in ``interpreter_calls`` invokes of the shim.

The engine is not thread-safe: one engine per thread.

Why one module of this length: the float path, the wire batch path and the per-row path are
three entry points of one object over the same state (flat table, level-2 bases, counters).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, replace
from typing import NamedTuple

import numpy as np

from . import table as table_mod
from .bundle import Bundle
from .features import COUNT_COLUMNS, DST_LOAD, LOAD_COLUMNS, SRC_LOAD, THRESHOLD
from .interp import Model, table_deciders
from .level2 import CELL_LEVEL2, WIRE_LOADS, Level2
from .wire import (
    DECISION_NAMES,
    LOAD_LEVELS,
    LOAD_ONE,
    LOAD_SHIFT,
    LOAD_STEPS,
    MIGRATE,
    STAY,
    UNSURE,
    from_wire,
    load_level,
    wire_columns,
)

log = logging.getLogger(__name__)

#: Per-row answer source codes (``BatchResult.source``): table level 1, the interpreter,
#: invalid features, table level 2.
SOURCE_TABLE, SOURCE_INTERPRETER, SOURCE_INVALID, SOURCE_LEVEL2 = 0, 1, 2, 3
SOURCE_NAMES = ("table", "interpreter", "invalid", "level2")
#: Raw feature columns the engine reads; columns past these are padding and ignored.
RAW_COLUMNS = 5
#: Wire batches of at most this many rows take the per-row path (``_decide_small``): a
#: dozen numpy calls on a one-row array cost more than the same steps in Python integers.
SMALL_BATCH = 8
#: Float counts are clipped to this before the integer lookup: far beyond any table's CPUs,
#: so a huge count stays off the grid instead of wrapping around in the cast.
COUNT_CLIP = 1 << 31


class EngineError(ValueError):
    """The engine cannot serve this bundle on this host; one line that names the fix."""


@dataclass
class Counters:
    """What the engine has answered since it started (or since ``reset``)."""

    requests: int = 0
    hits: int = 0
    level2_hits: int = 0
    misses: int = 0
    off_grid: int = 0
    interpreter_rows: int = 0
    interpreter_calls: int = 0
    invalid: int = 0
    clamped: int = 0
    batches: int = 0

    @property
    def hit_rate(self) -> float:
        """Table hits over the rows that reached the table (valid rows)."""
        asked = self.hits + self.misses
        return self.hits / asked if asked else 0.0

    def snapshot(self) -> Counters:
        return replace(self)

    def as_dict(self) -> dict:
        return {**asdict(self), "hit_rate": self.hit_rate}


@dataclass
class BatchResult:
    """Per-row answers of one batch."""

    decisions: np.ndarray            # uint8 [n]: STAY (0) or MIGRATE (1)
    source: np.ndarray               # uint8 [n]: SOURCE_* code of each row
    probability: np.ndarray | None   # float32 [n] model probability at the exact features, NaN if invalid

    def __len__(self) -> int:
        return int(self.decisions.shape[0])


class Decision(NamedTuple):
    """One answer of ``Engine.decide_one``."""

    decision: int                # STAY or MIGRATE
    source: str                  # "table", "level2", "interpreter" or "invalid"
    probability: float | None    # only when asked for; None for invalid features

    @property
    def name(self) -> str:
        return DECISION_NAMES[self.decision]

    @property
    def migrate(self) -> bool:
        return self.decision == MIGRATE


def _safe_float(v) -> float:
    """float(v), with NaN for what is not a number and ±inf for what overflows."""
    try:
        return float(v)
    except OverflowError:
        return math.inf if v > 0 else -math.inf
    except (TypeError, ValueError):
        return math.nan


def as_features(features) -> np.ndarray:
    """Anything row-like -> float64 [n, 5] (a copy). Wrong shapes raise ValueError; bad values don't.

    Values that are not numbers (text, None, ints beyond float range) become NaN or
    ±inf, which the engine then answers as invalid; only the shape is checked here.
    """
    try:
        x = np.asarray(features, dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        try:
            obj = np.asarray(features, dtype=object)
        except ValueError:
            raise ValueError("features must be a rectangular [n, 5] or [n, 10] array") from None
        x = np.frompyfunc(_safe_float, 1, 1)(obj).astype(np.float64) if obj.size else \
            np.zeros(obj.shape, np.float64)
    if x.ndim == 1:
        x = x[None, :] if x.size else np.zeros((0, RAW_COLUMNS))
    if x.ndim != 2 or x.shape[1] not in (RAW_COLUMNS, 2 * RAW_COLUMNS):
        raise ValueError(f"features must be [n, {RAW_COLUMNS}] or [n, {2 * RAW_COLUMNS}]"
                         f" (cpu, cpu_idle, cpu_not_idle, src_dom_load, dst_dom_load[, padding]),"
                         f" got shape {list(x.shape)}")
    return np.array(x[:, :RAW_COLUMNS], dtype=np.float64)


class Engine:
    """Table-first migration decisions over one bundle. See the module doc."""

    def __init__(self, bundle: Bundle, ncpus: int | None = None, backend: str = "auto",
                 model: Model | None = None):
        self.bundle = bundle
        if model is None:
            model = Model(bundle.model_bytes, backend=backend, width=bundle.width)
        self.model = model
        self.backend = self.model.backend
        self.normalization = bundle.normalization
        self.inputs = bundle.inputs
        self._load_inputs = (self.inputs.input_of(SRC_LOAD), self.inputs.input_of(DST_LOAD))
        self.mode = bundle.table_mode
        self.derived = False
        if ncpus is None or ncpus == bundle.cpus:
            self.table, self.level2 = bundle.table, bundle.level2
            if self.level2 is not None:
                self._check_level2(self.level2)
        else:
            if isinstance(ncpus, bool) or not isinstance(ncpus, int) or ncpus < 1:
                raise EngineError(f"ncpus must be a positive integer, got {ncpus!r}")
            if ncpus > bundle.cpus:
                raise EngineError(
                    f"cannot serve a {ncpus}-CPU host: bundle {bundle.path} was converted for"
                    f" {bundle.cpus} CPUs; convert the model for {ncpus}"
                    f" (mlsched-convert MODEL -o BUNDLE --cpus {ncpus})")
            t0 = time.perf_counter()
            self.table, self.level2 = self._derive(ncpus)
            self.derived = True
            log.info("derived a %d-CPU %s table (%d bytes, %.1f%% UNSURE, level 2: %s) from %s"
                     " in %.2f s; the bundle's table is for %d CPUs", ncpus, self.mode,
                     self.table.nbytes, 100.0 * float((self.table == UNSURE).mean()),
                     f"{self.level2.nbytes} bytes" if self.level2 else "none",
                     bundle.model_path, time.perf_counter() - t0, bundle.cpus)
        self.ncpus = int(self.table.shape[0])
        # Flat copy for the wire path: index = cpu*S_CPU + idle*S_IDLE + q(src)*LEVELS + q(dst);
        # the extra last cell is UNSURE, where off-grid keys point.
        # Cells level 2 refines hold CELL_LEVEL2 + their rank in the row (as in the kernel).
        self._levels = table_mod.TwoLevels(self.table, self.level2)
        self._row_base = self._levels.base.reshape(-1).astype(np.int64)
        self._flat = np.append(np.ascontiguousarray(self._levels.codes).ravel(), np.uint8(UNSURE))
        self._off_grid_index = self._flat.size - 1
        self._s_idle = LOAD_LEVELS * LOAD_LEVELS
        self._s_cpu = (self.ncpus + 1) * self._s_idle
        self.counters = Counters()

    # ---- the table's levels --------------------------------------------------------------
    def model_input(self, raw) -> np.ndarray:
        """Raw features [n, >= 5] -> the model's normalized inputs [n, width] (the mapping)."""
        return self.normalization.apply(self.inputs.select(np.asarray(raw)[:, :RAW_COLUMNS]))

    def _quantize(self, raw) -> np.ndarray:
        """Raw features -> the model's input tensor values (int8 for a full-int8 model)."""
        return self.model.quantize_input(self.model_input(raw))

    def _derive(self, ncpus: int) -> tuple[np.ndarray, Level2 | None]:
        """Both levels for an ``ncpus``-CPU host (level 1 alone in nearest mode or for a
        model whose input is not int8)."""
        if self.mode != "boundary" or not self.model.quantized:
            return table_mod.build(self.interpreter_decide, ncpus, self.mode), None
        # one interpreter, this thread: a worker thread's malloc arena keeps the build's
        # freed memory resident for the daemon's lifetime
        ex = table_mod.build_exact(ncpus, self._quantize, table_deciders(self.model, workers=1),
                                   load_inputs=self._load_inputs)
        if ex.reason:
            log.info("no table level 2: %s", ex.reason)
        return ex.table, ex.level2

    def _check_level2(self, level2: Level2) -> None:
        """Level 2's integer load quantization must be the model's, for all 1025 wire loads."""
        src, dst = table_mod.input_levels(self._quantize, self.bundle.cpus, self._load_inputs)
        if not (np.array_equal(level2.src.levels(WIRE_LOADS), src)
                and np.array_equal(level2.dst.levels(WIRE_LOADS), dst)):
            raise EngineError(f"bundle {self.bundle.path}: its table level 2 quantizes loads"
                              " unlike its model's input; rebuild it with mlsched-convert")

    # ---- interpreter --------------------------------------------------------------------
    def interpreter_decide(self, raw) -> np.ndarray:
        """The interpreter alone on raw features [n, 5|10], no table, not counted.

        Exactly the function the converter tabulates (and ``table.build`` derives from).
        """
        with np.errstate(over="ignore", invalid="ignore"):
            return self.model.decide(self.model_input(np.asarray(raw, dtype=np.float64)))

    def _interpret(self, raw5: np.ndarray, probabilities: bool) -> np.ndarray:
        """One shim call over raw features [m, 5]: probabilities (float32) or decisions (uint8)."""
        self.counters.interpreter_calls += 1
        self.counters.interpreter_rows += len(raw5)
        with np.errstate(over="ignore", invalid="ignore"):   # huge finite counts saturate int8
            u = self.model_input(raw5)
            return self.model.probability(u) if probabilities else self.model.decide(u)

    # ---- batch API ----------------------------------------------------------------------
    def decide(self, features, probabilities: bool = False) -> BatchResult:
        """Decide a batch of raw features [n, 5] or [n, 10] (one row may be 1-D).

        Never raises on feature values (see the module doc); a wrong shape raises ValueError.
        With ``probabilities`` every valid row also gets the model's probability at its
        exact features (one interpreter call over the batch); decisions are unchanged.
        """
        f = as_features(features)
        n = f.shape[0]
        c = self.counters
        c.batches += 1
        c.requests += n
        with np.errstate(invalid="ignore"):
            invalid = ~np.isfinite(f).all(axis=1)
            invalid |= (f[:, list(COUNT_COLUMNS)] < 0).any(axis=1)
            loads = f[:, list(LOAD_COLUMNS)]
            clamped = ((loads < 0) | (loads > 1)).any(axis=1) & ~invalid
        # one quantization on every path: loads go where the wire would put them (1/1024)
        f[:, list(LOAD_COLUMNS)] = np.rint(np.clip(loads, 0.0, 1.0) * LOAD_ONE) / LOAD_ONE
        f[invalid] = 0.0
        # the reference lookup on the wire values these features travel as; a fractional
        # count is off the table's grid (counts beyond any table are clipped before the cast)
        counts = f[:, list(COUNT_COLUMNS)]
        integral = (counts == np.floor(counts)).all(axis=1)
        ints = np.clip(counts, 0, COUNT_CLIP).astype(np.int64)
        wire = np.rint(f[:, list(LOAD_COLUMNS)] * LOAD_ONE).astype(np.int64)
        vals, level, in_geometry = self._levels.lookup(ints[:, 0], ints[:, 1], ints[:, 2],
                                                       wire[:, 0], wire[:, 1])
        in_geometry &= integral
        vals[~in_geometry] = UNSURE
        source = np.where(vals != UNSURE, SOURCE_TABLE, SOURCE_INTERPRETER).astype(np.uint8)
        source[in_geometry & (level == 2)] = SOURCE_LEVEL2
        hit = (vals != UNSURE) & ~invalid
        miss = ~(hit | invalid)
        decisions = np.where(hit, vals, STAY).astype(np.uint8)
        source[invalid] = SOURCE_INVALID
        prob = None
        if probabilities:
            prob = np.full(n, np.nan, dtype=np.float32)
            valid = ~invalid
            if valid.any():
                prob[valid] = self._interpret(f[valid], probabilities=True)
                decisions[miss] = prob[miss] > THRESHOLD
        elif miss.any():
            decisions[miss] = self._interpret(f[miss], probabilities=False)
        n_invalid = int(invalid.sum())
        n_hit = int(hit.sum())
        c.invalid += n_invalid
        c.clamped += int(clamped.sum())
        c.hits += n_hit
        c.level2_hits += int(np.count_nonzero(source == SOURCE_LEVEL2))
        c.misses += n - n_hit - n_invalid
        c.off_grid += int((~in_geometry & ~invalid).sum())
        return BatchResult(decisions, source, prob)

    def decide_one(self, cpu, idle, busy, src_load, dst_load,
                   probability: bool = False) -> Decision:
        """One decision on raw features; bad values give STAY with source ``invalid``."""
        row = [[_safe_float(v) for v in (cpu, idle, busy, src_load, dst_load)]]
        r = self.decide(row, probabilities=probability)
        p = None
        if probability and not math.isnan(r.probability[0]):
            p = float(r.probability[0])
        return Decision(int(r.decisions[0]), SOURCE_NAMES[r.source[0]], p)

    # ---- daemon fast path ---------------------------------------------------------------
    def decide_wire(self, features, out: np.ndarray | None = None,
                    source: np.ndarray | None = None) -> np.ndarray:
        """Decide a batch in the wire format of ``struct mlsched_features`` (bpf/mlsched.h).

        ``features``: a structured array with fields cpu, idle, busy, src_load, dst_load
        (e.g. ``records["f"]`` of a ring batch, strided views are fine) or an integer
        array [n, 5] in that column order. Loads are fixed point, x = L / 1024; loads
        above 1024 are clamped (``clamped``). Unsigned input cannot be invalid; signed
        input with a negative count or load is answered STAY and counted ``invalid``.

        Writes decisions (uint8) into ``out`` when given (length n), else a new array,
        and returns it; ``source``, when given, receives the per-row SOURCE_* codes.
        Steps: table keys -> table cells -> invalid rows -> interpreter for the misses.
        """
        cols = wire_columns(features)
        n = cols[0].shape[0]
        self.counters.batches += 1
        self.counters.requests += n
        if out is None:
            out = np.empty(n, dtype=np.uint8)
        if n == 0:
            return out
        if n <= SMALL_BATCH:
            self._decide_small(cols, out, source)
            return out
        keys, in_geometry = self._wire_keys(*cols)
        invalid = _negative_rows(cols)
        if invalid is not None:
            in_geometry &= ~invalid
        keys[~in_geometry] = self._off_grid_index
        np.take(self._flat, keys, out=out)
        refined = self._level2_wire(out, keys, cols) if self.level2 is not None else None
        missing = out == UNSURE
        if invalid is not None:
            missing &= ~invalid
            out[invalid] = STAY
        if source is not None:
            _fill_source(source, n, missing, invalid)
            if refined is not None:
                source[refined] = SOURCE_LEVEL2
        if missing.any():
            idx = np.flatnonzero(missing)
            raw = from_wire(np.stack([col[idx] for col in cols], axis=1))
            out[idx] = self._interpret(raw, probabilities=False)
        self._count_wire(cols, missing, in_geometry, invalid)
        return out

    def _decide_small(self, cols, out: np.ndarray, source: np.ndarray | None) -> None:
        """``decide_wire``'s steps for a few rows, one row at a time in Python integers:
        the same keys, cells, level-2 bytes, counters and one interpreter call. A
        specialisation of the reference ``TwoLevels.lookup``."""
        c = self.counters
        n = len(out)
        ncpus, cells = self.ncpus, LOAD_LEVELS * LOAD_LEVELS
        miss = []
        for r in range(n):
            cpu, idle, busy, src, dst = (int(col[r]) for col in cols)
            where = SOURCE_TABLE
            if min(cpu, idle, busy, src, dst) < 0:
                out[r] = STAY
                c.invalid += 1
                if source is not None:
                    source[r] = SOURCE_INVALID
                continue
            if src > LOAD_ONE or dst > LOAD_ONE:
                c.clamped += 1
            d = UNSURE
            if cpu < ncpus and idle <= ncpus and idle + busy == ncpus:
                qs = (LOAD_STEPS * min(src, LOAD_ONE) + LOAD_ONE // 2) >> LOAD_SHIFT
                qd = (LOAD_STEPS * min(dst, LOAD_ONE) + LOAD_ONE // 2) >> LOAD_SHIFT
                key = cpu * self._s_cpu + idle * self._s_idle + qs * LOAD_LEVELS + qd
                d = int(self._flat[key])
                if d >= CELL_LEVEL2:
                    d = self.level2.decide_one(int(self._row_base[key // cells]) + d - CELL_LEVEL2,
                                               qs, qd, src, dst)
                    where = SOURCE_LEVEL2
            else:
                c.off_grid += 1
            if d == UNSURE:
                miss.append(r)
                where = SOURCE_INTERPRETER
            else:
                out[r] = d
                c.hits += 1
                c.level2_hits += where == SOURCE_LEVEL2
            if source is not None:
                source[r] = where
        c.misses += len(miss)
        if miss:
            raw = from_wire(np.stack([col[miss] for col in cols], axis=1))
            out[miss] = self._interpret(raw, probabilities=False)

    def _level2_wire(self, out: np.ndarray, keys: np.ndarray, cols) -> np.ndarray | None:
        """Answer the refined cells in ``out`` from level 2 (UNSURE where a line is left to
        the interpreter); returns the rows level 2 answered, or None."""
        idx = np.flatnonzero(out >= CELL_LEVEL2)
        if idx.size == 0:
            return None
        k = keys[idx]
        row, cell = np.divmod(k, LOAD_LEVELS * LOAD_LEVELS)
        qs, qd = np.divmod(cell, LOAD_LEVELS)
        ordinal = self._row_base[row] + (out[idx].astype(np.int64) - CELL_LEVEL2)
        d = self.level2.decide(ordinal, qs, qd, cols[3][idx], cols[4][idx])
        out[idx] = d
        answered = idx[d != UNSURE]
        self.counters.level2_hits += int(answered.size)
        return answered

    def _wire_keys(self, cpu, idle, busy, src, dst) -> tuple[np.ndarray, np.ndarray]:
        """Flat table index of every row (int64; garbage where the key is off-grid) and
        whether the key lies in the table's geometry (cpu < N, idle + busy == N): with
        ``_level2_wire``, the batch specialisation of the reference ``TwoLevels.lookup``."""
        ncpus = self.ncpus
        ok = cpu < ncpus                    # compared in the input's own integer type
        ok &= idle <= ncpus
        key = cpu.astype(np.int64)
        key *= self._s_cpu
        t = idle.astype(np.int64)
        ok &= np.add(t, busy, dtype=np.int64, casting="unsafe") == ncpus
        t *= self._s_idle
        key += t
        load_level(src, out=t)
        t *= LOAD_LEVELS
        key += t
        key += load_level(dst, out=t)
        return key, ok

    def _count_wire(self, cols, missing, in_geometry, invalid) -> None:
        c = self.counters
        n = cols[0].shape[0]
        big = (cols[3] > LOAD_ONE) | (cols[4] > LOAD_ONE)
        off_grid = ~in_geometry
        n_invalid = 0
        if invalid is not None:
            n_invalid = int(np.count_nonzero(invalid))
            big &= ~invalid
            off_grid &= ~invalid
            c.invalid += n_invalid
        n_miss = int(np.count_nonzero(missing))
        c.hits += n - n_miss - n_invalid
        c.misses += n_miss
        c.off_grid += int(np.count_nonzero(off_grid))
        c.clamped += int(np.count_nonzero(big))

    # ---- misc ---------------------------------------------------------------------------
    def reset_counters(self) -> Counters:
        """Return the counters so far and start from zero."""
        old, self.counters = self.counters, Counters()
        return old

    def describe(self) -> str:
        how = "derived from model.tflite" if self.derived else "from the bundle"
        l2 = f"level 2 {self.level2.nbytes} bytes" if self.level2 is not None else "no level 2"
        return (f"{self.ncpus}-CPU {self.mode} table {how} ({l2}), backend {self.backend},"
                f" bundle {self.bundle.path}")


def _negative_rows(cols) -> np.ndarray | None:
    """Rows with a negative value (signed input only; None when no column is signed)."""
    signed = [col for col in cols if col.dtype.kind == "i"]
    if not signed:
        return None
    bad = signed[0] < 0
    for col in signed[1:]:
        bad |= col < 0
    return bad


def _fill_source(source: np.ndarray, n: int, missing: np.ndarray,
                 invalid: np.ndarray | None) -> None:
    source[:n] = SOURCE_TABLE
    source[missing] = SOURCE_INTERPRETER
    if invalid is not None:
        source[invalid] = SOURCE_INVALID
