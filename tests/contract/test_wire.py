"""The Python owner of the wire contract (src/mlsched/runtime/wire.py) against bpf/mlsched.h itself.

Expected values come from the header's text and from exact rational arithmetic, not
from the code under test.
"""

from __future__ import annotations

import re
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from mlsched.runtime import features, wire

HEADER = Path(__file__).resolve().parents[2] / "bpf" / "mlsched.h"


def header_defines() -> dict[str, int]:
    text = HEADER.read_text()
    out = {m[1]: int(m[2], 0) for m in re.finditer(r"^#define\s+(MLSCHED_\w+)\s+(0x[0-9a-fA-F]+|\d+)\b",
                                                  text, re.M)}
    for m in re.finditer(r"^\s*(MLSCHED_\w+)\s*=\s*(\d+)\s*,", text, re.M):
        out[m[1]] = int(m[2])
    return out


def struct_fields(name: str) -> list[str]:
    body = re.search(rf"struct {name} \{{(.*?)\}};", HEADER.read_text(), re.S)[1]
    return re.findall(r"__u\d+\s+(\w+)(?:\[\w+\])?;", body)


def test_constants_are_the_headers():
    d = header_defines()
    assert (wire.STAY, wire.MIGRATE, wire.UNSURE) == (d["MLSCHED_STAY"], d["MLSCHED_MIGRATE"],
                                                      d["MLSCHED_UNSURE"])
    assert wire.NONE == d["MLSCHED_NONE"]
    assert wire.LOAD_ONE == d["MLSCHED_LOAD_ONE"] == 1 << d["MLSCHED_LOAD_SHIFT"]
    assert wire.LOAD_STEPS == d["MLSCHED_LOAD_STEPS"]
    assert wire.LOAD_LEVELS == d["MLSCHED_LOAD_LEVELS"] == d["MLSCHED_LOAD_STEPS"] + 1
    assert wire.REASON_HIT == d["MLSCHED_REASON_HIT"]
    assert wire.MAX_DOMAINS == d["MLSCHED_MAX_DOMAINS"]
    assert wire.ABI_VERSION == d["MLSCHED_ABI_VERSION"]
    assert wire.DECISION_NAMES[wire.MIGRATE] == "MIGRATE"


def test_layouts_are_the_headers():
    assert wire.FEATURE_FIELDS == tuple(struct_fields("mlsched_features"))
    assert wire.FEATURES_DTYPE.itemsize == 4 * len(wire.FEATURE_FIELDS)
    assert wire.REQUEST_DTYPE.itemsize == 56                # _Static_assert in the header
    assert [n for n in wire.REQUEST_DTYPE.names if n != "f"] == struct_fields("mlsched_request")
    assert wire.REQUEST_DTYPE.fields["seq"][1] == 8          # after 2 + 2 + 4 x u8
    stats = [n for n in header_defines() if n.startswith("MLSCHED_STAT_") and n != "MLSCHED_STAT_COUNT"]
    assert len(wire.stat_names()) == header_defines()["MLSCHED_STAT_COUNT"] == len(stats)
    assert "kernel_hits" in wire.stat_names()


def q_exact(load: int) -> int:
    """floor(STEPS * min(L, ONE) / ONE + 1/2), in rationals."""
    x = Fraction(min(load, 1024), 1024) * 10 + Fraction(1, 2)
    return x.numerator // x.denominator


def test_every_wire_load_quantizes_the_same_on_every_path():
    loads = np.arange(0, 4097, dtype=np.uint32)      # 0..1.0 exactly, then clamped values
    expected = np.array([q_exact(int(v)) for v in loads])
    assert (wire.load_level(loads) == expected).all()
    raw = wire.from_wire(np.stack([np.zeros_like(loads)] * 3 + [loads, loads], axis=1))
    assert (features.load_key(raw[:, 3]) == expected).all()       # the float path
    assert (raw[:1025, 3] == loads[:1025] / 1024.0).all()
    assert (raw[1025:, 3] == 1.0).all()


def test_to_wire_round_trips_every_fixed_point_load():
    loads = np.arange(1025) / 1024.0
    raw = np.stack([np.full(1025, 3.0), np.full(1025, 2.0), np.full(1025, 6.0), loads, loads[::-1]],
                   axis=1)
    ok, w = wire.to_wire(raw)
    assert ok.all()
    assert (w[:, 3] == np.arange(1025)).all() and (w[:, 4] == np.arange(1025)[::-1]).all()
    assert (wire.from_wire(w) == raw).all()


@pytest.mark.parametrize("row", [
    (float("nan"), 1, 1, 0.5, 0.5), (1, -1, 1, 0.5, 0.5), (1.5, 1, 1, 0.5, 0.5),
    (1, 1, 1, -0.1, 0.5), (1, 1, 1, 0.5, float("inf")), (2.0**32, 1, 1, 0.5, 0.5),
])
def test_to_wire_refuses_what_the_wire_cannot_carry(row):
    ok, w = wire.to_wire(np.array([row, (1, 2, 3, 0.25, 0.75)], dtype=np.float64))
    assert ok.tolist() == [False, True]
    assert w[0].tolist() == [0, 0, 0, 0, 0] and w[1].tolist() == [1, 2, 3, 256, 768]


def test_wire_columns_take_records_and_matrices_alike():
    rec = np.zeros(3, dtype=wire.FEATURES_DTYPE)
    rec["cpu"], rec["dst_load"] = [1, 2, 3], [10, 20, 30]
    cols = wire.wire_columns(rec)
    assert cols[0].tolist() == [1, 2, 3] and cols[4].tolist() == [10, 20, 30]
    m = np.array([[1, 0, 0, 0, 10]], dtype=np.int64)
    assert [c.tolist() for c in wire.wire_columns(m)] == [[1], [0], [0], [0], [10]]
    with pytest.raises(ValueError, match="integers"):
        wire.wire_columns(np.zeros((1, 5), dtype=np.float32))
    with pytest.raises(ValueError, match=r"\[n, 5\]"):
        wire.wire_columns(np.zeros((1, 4), dtype=np.uint32))
    with pytest.raises(ValueError, match="0..2\\*\\*32-1"):
        wire.as_wire_array(np.array([[1, 0, 0, 0, -1]]))


def test_table_rows_is_the_kernel_layout():
    t = np.zeros((2, 3, 11, 11), dtype=np.uint8)
    t[1, 2, 4, 7] = wire.MIGRATE
    rows = wire.table_rows(t)
    assert rows.shape == (6, 128)
    assert rows[1 * 3 + 2, 4 * 11 + 7] == wire.MIGRATE
    assert (rows[:, 121:124] == wire.UNSURE).all()        # cells past the 121 are never sure
    assert (rows[:, 124:] == 0).all()                     # level2_base: no second level


def test_refined_rows_number_the_unsure_cells_of_each_row():
    t = np.zeros((1, 2, 11, 11), dtype=np.uint8)
    t[0, 0, 0, 5] = t[0, 0, 3, 3] = wire.UNSURE           # row 0: two refined cells
    t[0, 1, 10, 10] = wire.UNSURE                         # row 1: one, after row 0's two
    rows = wire.table_rows(t, refined=True)
    assert rows[0, 5] == 3 and rows[0, 3 * 11 + 3] == 4   # MLSCHED_CELL_LEVEL2 + rank
    assert rows[1, 120] == 3
    assert rows[0, 124:].view("<u4")[0] == 0
    assert rows[1, 124:].view("<u4")[0] == 2
    assert (rows[:, 121:124] == wire.UNSURE).all()
    with pytest.raises(ValueError, match="shape"):
        wire.table_rows(np.zeros((2, 2, 11, 11), dtype=np.uint8))
