"""One reference lookup, its specialisations held to it.

``table.TwoLevels.lookup`` is the reference in Python of the kernel's ``mlsched_lookup()``
and ``mlsched_level2()``. The engine answers from faster specialisations of it: the wire
batch path (flat keys, ``_wire_keys`` + ``_level2_wire``), the per-row path for small
batches (``_decide_small``) and the float path (``decide``). Every path must answer what the
reference answers wherever the reference answers, from the level it names, and send to the
interpreter exactly what the reference leaves open.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlsched.runtime.engine import (
    SMALL_BATCH,
    SOURCE_INTERPRETER,
    SOURCE_LEVEL2,
    SOURCE_TABLE,
    Engine,
)
from mlsched.runtime.table import TwoLevels
from mlsched.runtime.wire import UNSURE
from support.tables import unsure_cell_traffic

N = 8
SETTINGS = settings(max_examples=150, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])
WHERE = {1: SOURCE_TABLE, 2: SOURCE_LEVEL2}


@pytest.fixture(scope="module")
def engine():
    from mlsched.runtime.bundle import Bundle
    from support.paths import DEFAULT_BUNDLE

    e = Engine(Bundle.load(DEFAULT_BUNDLE))
    assert e.level2 is not None, "the default bundle has both levels"
    return e


def traffic(engine: Engine, n: int, seed: int) -> np.ndarray:
    """[n, 5] uint32 wire rows: under UNSURE cells (level 2's ground), anywhere on the grid,
    off the grid, loads above 1.0."""
    rng = np.random.default_rng(seed)
    k = rng.integers(0, 4, n)
    rows = unsure_cell_traffic(engine.table, n, seed).astype(np.int64)
    anywhere = rng.integers(0, [N, N + 1, 1, 1025, 1025], (n, 5))
    anywhere[:, 2] = N - anywhere[:, 1]
    rows[k == 1] = anywhere[k == 1]
    off = anywhere.copy()
    off[:, 2] += rng.integers(1, 3, n)                          # idle + busy != N
    off[:, 0] = np.where(rng.random(n) < 0.3, N + rng.integers(0, 5, n), off[:, 0])
    rows[k == 2] = off[k == 2]
    big = anywhere.copy()
    big[:, 3:5] += rng.integers(0, 3000, (n, 2))                # clamped to 1.0
    rows[k == 3] = big[k == 3]
    return rows.astype(np.uint32)


def reference(engine: Engine, wire: np.ndarray):
    w = wire.astype(np.int64)
    return TwoLevels(engine.table, engine.level2).lookup(w[:, 0], w[:, 1], w[:, 2], w[:, 3],
                                                         w[:, 4])


def check_against_reference(engine: Engine, wire: np.ndarray, out: np.ndarray,
                            source: np.ndarray) -> None:
    vals, level, _ = reference(engine, wire)
    answered = level > 0
    np.testing.assert_array_equal(out[answered], vals[answered])
    np.testing.assert_array_equal(source[answered], [WHERE[v] for v in level[answered]])
    assert (source[~answered] == SOURCE_INTERPRETER).all()
    assert (vals[~answered] == UNSURE).all()


def check_wire_path(engine: Engine, seed: int, n: int) -> None:
    wire = traffic(engine, n, seed)
    src = np.empty(n, np.uint8)
    out = engine.decide_wire(wire, source=src)
    check_against_reference(engine, wire, out, src)


@SETTINGS
@given(seed=st.integers(0, 2**31), n=st.integers(SMALL_BATCH + 1, 600))
def test_wire_batch_path_is_the_reference(engine, seed, n):
    check_wire_path(engine, seed, n)


@SETTINGS
@given(seed=st.integers(0, 2**31), n=st.integers(1, SMALL_BATCH))
def test_small_batch_path_is_the_reference(engine, seed, n):
    check_wire_path(engine, seed, n)


@SETTINGS
@given(seed=st.integers(0, 2**31), n=st.integers(1, 300))
def test_float_path_is_the_reference(engine, seed, n):
    wire = traffic(engine, n, seed)
    floats = wire.astype(np.float64)
    floats[:, 3:5] /= 1024                  # the same requests as floats (clamped as wire)
    r = engine.decide(floats)
    check_against_reference(engine, wire, r.decisions, r.source)


def test_every_level_and_the_interpreter_are_exercised(engine):
    """The traffic above reaches level 1, level 2 and the interpreter, so the properties
    compare something on each."""
    vals, level, ok = reference(engine, traffic(engine, 20_000, 1))
    assert (level == 1).any() and (level == 2).any()
    assert (~ok).any(), "off-grid keys, which go to the interpreter"
