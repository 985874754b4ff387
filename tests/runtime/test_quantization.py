"""One quantization rule on every path: a float load and the same load on the wire land in
the same table cell and get the same answer.

The rule (bpf/mlsched.h): a load travels as L = round(x * 1024); its cell is
(10 * min(L, 1024) + 512) >> 10. ``decide`` (floats, the library API and the CLI) and the
daemon's wire path must agree on it for every value, including the cell boundaries
0.05, 0.15, ... where float64 and float32 round differently.
"""

from __future__ import annotations

import numpy as np
import pytest

from mlsched.runtime import stats
from mlsched.runtime.engine import Engine
from mlsched.runtime.wire import to_wire


def boundary_loads() -> np.ndarray:
    """Every cell boundary and its float64/float32 neighbours, the decimals 0.00..1.00 in
    both precisions, and values just off the 1/1024 grid."""
    b = (np.arange(10) + 0.5) / 10
    vals = [b, np.nextafter(b, 0), np.nextafter(b, 1), b.astype(np.float32).astype(np.float64),
            np.arange(101) / 100, (np.arange(101) / 100).astype(np.float32).astype(np.float64),
            (np.arange(1025) + 0.5) / 1024, np.arange(1025) / 1024]
    return np.unique(np.concatenate(vals))


@pytest.fixture(scope="module")
def engine(bundle8):
    return Engine(bundle8)


def test_float_and_wire_paths_pick_the_same_cell_everywhere(engine):
    loads = boundary_loads()
    rng = np.random.default_rng(5)
    src = rng.choice(loads, 40000)
    dst = rng.choice(loads, 40000)
    src[: loads.size], dst[-loads.size:] = loads, loads          # every value on both axes
    cpu = rng.integers(0, 8, src.size)
    idle = rng.integers(0, 9, src.size)
    raw = np.stack([cpu, idle, 8 - idle, src, dst], axis=1).astype(np.float64)
    ok, wire = to_wire(raw)
    assert ok.all()
    by_float = engine.decide(raw)
    source = np.empty(len(raw), np.uint8)
    by_wire = engine.decide_wire(wire, source=source)
    differ = np.flatnonzero((by_float.decisions != by_wire) | (by_float.source != source))
    assert differ.size == 0, f"{differ.size} rows differ, e.g. {raw[differ[:3]].tolist()}"


@pytest.mark.parametrize("x", [0.05, 0.35, 0.45, 0.65, 0.95])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_named_boundaries(engine, x, dtype):
    v = float(dtype(x))
    raw = np.array([[c, i, 8 - i, v, d] for c in range(8) for i in range(9)
                    for d in (v, 1 - v, 0.5)], dtype=np.float64)
    _, wire = to_wire(raw)
    np.testing.assert_array_equal(engine.decide(raw).decisions, engine.decide_wire(wire))


def test_unreadable_peak_rss_is_none_not_nan():
    assert stats.peak_rss_bytes(pid=2**31 - 1) is None
    text = stats.prometheus_text({"rss_bytes": stats.peak_rss_bytes(pid=2**31 - 1),
                                  "records": 3})
    assert "peak_rss_bytes" not in text and "mlsched_requests_total 3" in text
