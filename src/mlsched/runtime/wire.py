"""The wire contract in Python: what ``bpf/mlsched.h`` says, from its generated layout.

``bpf/mlsched.h`` is the only description of the records the kernel side and
mlsched-lite exchange. ``cffi_build.py`` reads it into ``mlsched.runtime._contract``, a
pure-Python cffi module (ABI mode: constants and struct layouts, no compiled code), and
into the compiled extension ``mlsched.runtime._bpf`` that the kernel path uses. This module
turns what ``_contract`` knows into what Python needs, and nothing else in the runtime
restates it; since it needs no compiled part, everything below the kernel path (tables,
engine, bundle, conversion, training) imports on a machine without clang or libbpf:

* constants: decisions (STAY / MIGRATE / UNSURE), "no value" markers, the load
  fixed point (``LOAD_ONE`` = 1.0) and the table quantization (``LOAD_STEPS``);
* numpy dtypes with the exact layouts cffi computed (``dtype_of``), e.g.
  ``REQUEST_DTYPE`` for a ring record;
* the one conversion between float features and wire features, both ways:
  ``to_wire`` (raw floats -> validity mask + uint32 fixed point) and
  ``from_wire`` (wire records -> the floats the engine decides on, x = L / 1024,
  exact in binary floating point);
* ``load_level``: the table's load quantization, in the same integer arithmetic
  as the BPF helper (``(STEPS * min(L, ONE) + ONE / 2) >> SHIFT``);
* the table's kernel layout (``table_rows``) and the kernel counter names.
"""

from __future__ import annotations

import numpy as np

from ._contract import ffi

#: The header's constants and enum values (no library is loaded for them).
lib = ffi.dlopen(None)

ABI_VERSION = lib.MLSCHED_ABI_VERSION

#: Decision values (enum mlsched_decision).
STAY, MIGRATE, UNSURE = lib.MLSCHED_STAY, lib.MLSCHED_MIGRATE, lib.MLSCHED_UNSURE
DECISION_NAMES = {STAY: "STAY", MIGRATE: "MIGRATE", UNSURE: "UNSURE"}
#: "No decision / no CFS action" in the u8 fields of a request.
NONE = lib.MLSCHED_NONE
#: request.reason of a record the kernel answered itself (informational, shadow mode).
REASON_HIT = lib.MLSCHED_REASON_HIT

#: Loads travel in fixed point: LOAD_ONE is 1.0, LOAD_ONE == 1 << LOAD_SHIFT.
LOAD_ONE = lib.MLSCHED_LOAD_ONE
LOAD_SHIFT = lib.MLSCHED_LOAD_SHIFT
#: Table quantization of loads: levels 0..LOAD_STEPS.
LOAD_STEPS = lib.MLSCHED_LOAD_STEPS
LOAD_LEVELS = lib.MLSCHED_LOAD_LEVELS
#: Largest value of a u32 wire field.
U32_MAX = 0xFFFFFFFF
#: Limits of the kernel side: CPU ids, collector domains, CPUs of a loadable table.
MAX_CPUS = lib.MLSCHED_MAX_CPUS
MAX_DOMAINS = lib.MLSCHED_MAX_DOMAINS
MAX_TABLE_CPUS = lib.MLSCHED_MAX_TABLE_CPUS

_PRIMITIVES = {
    "uint8_t": "u1", "unsigned char": "u1", "uint16_t": "u2", "unsigned short": "u2",
    "uint32_t": "u4", "unsigned int": "u4", "uint64_t": "u8", "unsigned long long": "u8",
    "int": "i4", "int32_t": "i4", "int64_t": "i8", "long long": "i8",
}


def dtype_of(ctype) -> np.dtype:
    """A numpy dtype with the exact layout cffi computed for a C type from the header."""
    if isinstance(ctype, str):
        ctype = ffi.typeof(ctype)
    if ctype.kind == "primitive":
        return np.dtype(_PRIMITIVES[ctype.cname])
    if ctype.kind == "array":
        return np.dtype((dtype_of(ctype.item), (ctype.length,)))
    if ctype.kind == "struct":
        names, formats, offsets = [], [], []
        for name, field in ctype.fields:
            names.append(name)
            formats.append(dtype_of(field.type))
            offsets.append(field.offset)
        return np.dtype({"names": names, "formats": formats, "offsets": offsets,
                         "itemsize": ffi.sizeof(ctype)})
    raise TypeError(f"no numpy layout for {ctype.cname}")


#: struct mlsched_features: field names in order, and its dtype.
FEATURE_FIELDS: tuple[str, ...] = tuple(n for n, _ in ffi.typeof("struct mlsched_features").fields)
FEATURES_DTYPE = dtype_of("struct mlsched_features")
#: struct mlsched_request: one ring record.
REQUEST_DTYPE = dtype_of("struct mlsched_request")


def stat_names() -> list[str]:
    """Kernel counter names in enum mlsched_stat order, e.g. 'kernel_hits'."""
    names = {}
    for attr in dir(lib):
        if attr.startswith("MLSCHED_STAT_") and attr != "MLSCHED_STAT_COUNT":
            names[getattr(lib, attr)] = attr[len("MLSCHED_STAT_"):].lower()
    return [names[i] for i in range(lib.MLSCHED_STAT_COUNT)]


# ---- float <-> fixed point ------------------------------------------------------------------
def to_wire(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Raw features [n, 5] -> (representable mask [n], wire features [n, 5] uint32).

    A row is representable when every value is finite, the counts are whole numbers in
    0..2^32-1 and the loads are >= 0 and fit a u32 in fixed point; loads above 1.0 travel
    as they are (the kernel side clamps them). Loads are rounded to the nearest 1/LOAD_ONE.
    Rows that are not representable are zero in the wire array.
    """
    x = np.asarray(raw, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != len(FEATURE_FIELDS):
        raise ValueError(f"raw features must be [n, {len(FEATURE_FIELDS)}],"
                         f" got shape {list(x.shape)}")
    with np.errstate(invalid="ignore", over="ignore"):
        ok = np.isfinite(x).all(axis=1)
        counts = x[:, :3]
        ok &= ((counts >= 0) & (counts <= U32_MAX) & (counts == np.floor(counts))).all(axis=1)
        loads = x[:, 3:5]
        ok &= ((loads >= 0) & (loads <= U32_MAX / LOAD_ONE)).all(axis=1)
        wire = np.zeros((len(x), len(FEATURE_FIELDS)), dtype=np.uint32)
        wire[ok, :3] = counts[ok]
        wire[ok, 3:] = np.rint(loads[ok] * LOAD_ONE)
    return ok, wire


def wire_columns(features) -> tuple[np.ndarray, ...]:
    """The five wire columns (cpu, idle, busy, src_load, dst_load) of ``features``.

    ``features``: a structured array with the fields of struct mlsched_features (e.g.
    ``batch["f"]`` of a ring batch; strided views are fine) or an integer array [n, 5] in
    that column order. Columns keep their integer dtype (signed input is allowed: the
    engine answers negative values as invalid); anything else raises ValueError.
    """
    a = np.asarray(features)
    if a.dtype.names:
        missing = [k for k in FEATURE_FIELDS if k not in a.dtype.names]
        if missing:
            raise ValueError(f"wire records lack fields {', '.join(missing)}")
        cols = tuple(a[k].reshape(-1) for k in FEATURE_FIELDS)
    else:
        if a.ndim != 2 or a.shape[1] != len(FEATURE_FIELDS):
            raise ValueError(f"wire features must be [n, {len(FEATURE_FIELDS)}] integers"
                             f" ({', '.join(FEATURE_FIELDS)}), got shape {list(a.shape)}")
        cols = tuple(a[:, k] for k in range(len(FEATURE_FIELDS)))
    for col in cols:
        if col.dtype.kind not in "ui":
            raise ValueError(f"wire features must be integers, got {col.dtype}")
    return cols


def as_wire_array(features) -> np.ndarray:
    """[n, 5] uint32 wire features from an integer array or a structured array.

    Raises ValueError for values that do not fit a u32 field.
    """
    cols = wire_columns(features)
    for col in cols:
        if col.size and (int(col.min()) < 0 or int(col.max()) > U32_MAX):
            raise ValueError("wire features must be integers in 0..2**32-1 (loads in 1/1024)")
    return np.stack([c.astype(np.uint32) for c in cols], axis=1) if cols[0].size else \
        np.zeros((0, len(FEATURE_FIELDS)), dtype=np.uint32)


def from_wire(features) -> np.ndarray:
    """Wire features -> the raw float features [n, 5] the engine decides on.

    Counts become floats as they are; loads become x = min(L, LOAD_ONE) / LOAD_ONE
    (exact in binary floating point), i.e. clamped to 1.0 as the kernel side clamps.
    """
    cols = wire_columns(features)
    raw = np.empty((cols[0].shape[0], len(cols)), dtype=np.float64)
    for k, col in enumerate(cols):
        raw[:, k] = col
    np.minimum(raw[:, 3:], LOAD_ONE, out=raw[:, 3:])
    raw[:, 3:] /= LOAD_ONE
    return raw


def load_level(fixed: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Table level of wire loads, in the BPF helper's integer arithmetic (int64).

    ``(LOAD_STEPS * min(L, LOAD_ONE) + LOAD_ONE / 2) >> LOAD_SHIFT``: rounds halves up.
    ``out``: an int64 array of the same length to compute in (no allocation).
    """
    if out is None:
        out = np.empty(np.shape(fixed), dtype=np.int64)
    np.minimum(fixed, LOAD_ONE, out=out, casting="unsafe")
    out *= LOAD_STEPS
    out += LOAD_ONE // 2
    out >>= LOAD_SHIFT
    return out


# ---- the decision table in the kernel's layout ----------------------------------------------
#: struct mlsched_row: the cells, then the cell number of the row's first refined cell.
ROW_DTYPE = dtype_of("struct mlsched_row")
ROW_BYTES = lib.MLSCHED_ROW_BYTES
#: Table level 2 (bpf/mlsched.h, "table level 2"): row cells from CELL_LEVEL2 up are refined;
#: input level of a wire load = clamp((L * mul + add) >> L2_SHIFT, 0, L2_INPUT_LEVELS - 1);
#: a line byte is a threshold (L2_THRESHOLD_MASK bits, L2_RING: left to user space) and
#: L2_FIRST_MIGRATE; a cell spans at most L2_MAX_LINES input levels on either axis.
CELL_LEVEL2 = lib.MLSCHED_CELL_LEVEL2
L2_SHIFT = lib.MLSCHED_L2_SHIFT
L2_INPUT_LEVELS = lib.MLSCHED_L2_INPUT_LEVELS
L2_FIRST_MIGRATE = lib.MLSCHED_L2_FIRST_MIGRATE
L2_THRESHOLD_MASK = lib.MLSCHED_L2_THRESHOLD_MASK
L2_RING = lib.MLSCHED_L2_RING
L2_MAX_LINES = lib.MLSCHED_L2_MAX_LINES


def cell_ordinals(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Kernel cell codes and row bases for a level-1 table whose UNSURE cells level 2 refines.

    Returns (codes [N, N+1, ROW_CELLS] uint8: STAY/MIGRATE, or CELL_LEVEL2 + rank of the
    cell among its row's UNSURE cells; base [N, N+1] uint32: cell number of the row's
    first refined cell, i.e. the order of level 2's cells).
    """
    n = table.shape[0]
    flat = table.reshape(n, n + 1, -1)
    unsure = flat == UNSURE
    rank = np.cumsum(unsure, axis=2) - 1
    codes = np.where(unsure, CELL_LEVEL2 + rank, flat).astype(np.uint8)
    per_row = unsure.sum(axis=2).reshape(-1)
    base = (np.cumsum(per_row) - per_row).reshape(n, n + 1).astype(np.uint32)
    return codes, base


def table_rows(table: np.ndarray, refined: bool = False) -> np.ndarray:
    """[N, N+1, LEVELS, LEVELS] uint8 -> the kernel's rows [N*(N+1), MLSCHED_ROW_BYTES].

    ``refined``: the table has a second level under its UNSURE cells; each UNSURE cell
    becomes MLSCHED_CELL_LEVEL2 + its rank among its row's UNSURE cells, and the row's
    ``level2_base`` the cell number of its first one (the order of level 2's cells).
    """
    t = np.asarray(table)
    levels = LOAD_LEVELS
    if t.ndim != 4 or t.shape[1] != t.shape[0] + 1 or t.shape[2:] != (levels, levels):
        raise ValueError(f"table shape {t.shape}: expected [N, N+1, {levels}, {levels}]")
    if t.dtype != np.uint8:
        raise ValueError(f"table dtype {t.dtype}: expected uint8")
    if t.size and int(t.max()) > UNSURE:
        raise ValueError("table holds values other than STAY/MIGRATE/UNSURE")
    n = t.shape[0]
    rows = np.zeros(n * (n + 1), dtype=ROW_DTYPE)
    rows["cell"][:] = UNSURE
    if refined:
        codes, base = cell_ordinals(t)
        rows["cell"][:, :lib.MLSCHED_ROW_CELLS] = codes.reshape(n * (n + 1), -1)
        rows["level2_base"] = base.reshape(-1)
    else:
        rows["cell"][:, :lib.MLSCHED_ROW_CELLS] = t.reshape(n * (n + 1), levels * levels)
    return rows.view(np.uint8).reshape(n * (n + 1), ROW_BYTES)
