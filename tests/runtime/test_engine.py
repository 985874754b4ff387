"""The decision engine: fidelity to the interpreter, hygiene, one interpreter call per batch,
the daemon's wire fast path, derived tables for small hosts, backend parity.

Expectations come from outside the engine: the teacher rule for the reference scenarios, a
separate interpreter instance on exact features for everything else, and a table lookup
written out here in integer arithmetic for the wire path.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from mlsched.runtime.engine import (
    SOURCE_INTERPRETER,
    SOURCE_INVALID,
    SOURCE_LEVEL2,
    SOURCE_TABLE,
    Engine,
    EngineError,
)
from mlsched.runtime.features import pad
from mlsched.runtime.interp import Model, available_backends
from mlsched.runtime.wire import MIGRATE, STAY, UNSURE, from_wire
from support.scenarios import SCENARIOS, teacher_decisions
from support.tables import unsure_cell_traffic

N = 8
HYPO = settings(max_examples=2000, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
HYPO_SLOW = settings(max_examples=20000, deadline=None,
                     suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def engine(bundle8) -> Engine:
    return Engine(bundle8)


@pytest.fixture(scope="module")
def oracle(bundle8):
    """The interpreter alone, on exact raw features: decisions uint8 [n]."""
    model = Model(bundle8.model_bytes)

    def decide(x):
        x = np.asarray(x, dtype=np.float64)
        return model.decide(bundle8.normalization.apply(pad(x[:, :5])))
    return decide


def healthy_traffic(n: int, seed: int, ncpus: int = N) -> np.ndarray:
    rng = np.random.default_rng(seed)
    idle = rng.integers(0, ncpus + 1, n)
    return np.stack([rng.integers(0, ncpus, n), idle, ncpus - idle,
                     rng.uniform(0, 1, n), rng.uniform(0, 1, n)], axis=1)


def on_wire_grid(x: np.ndarray) -> np.ndarray:
    """The loads as the wire carries them: rounded to 1/1024 (bpf/mlsched.h)."""
    y = np.array(x, dtype=np.float64)
    y[:, 3:5] = np.rint(np.clip(y[:, 3:5], 0, 1) * 1024) / 1024
    return y


def wire_traffic(n: int, seed: int, ncpus: int = N) -> np.ndarray:
    """uint32 [n, 5] wire records: mostly healthy, some off-grid, some loads above 1.0."""
    rng = np.random.default_rng(seed)
    idle = rng.integers(0, ncpus + 1, n)
    busy = ncpus - idle
    off = rng.random(n) < 0.05
    busy[off] += rng.integers(1, 4, off.sum())                 # idle + busy != N
    cpu = rng.integers(0, ncpus, n)
    cpu[rng.random(n) < 0.02] = ncpus + 3                        # cpu outside the table
    loads = rng.integers(0, 1025, (n, 2))
    big = rng.random((n, 2)) < 0.02
    loads[big] = rng.integers(1025, 1 << 20, big.sum())         # > 1.0: clamped
    return np.stack([cpu, idle, busy, loads[:, 0], loads[:, 1]], axis=1).astype(np.uint32)


# ---- reference scenarios ---------------------------------------------------------------------------
def test_reference_scenarios_match_teacher(engine):
    expected = teacher_decisions(SCENARIOS)
    assert expected == [MIGRATE, STAY, STAY]
    got = [engine.decide_one(*row).decision for row in SCENARIOS]
    assert got == expected
    assert list(engine.decide(SCENARIOS).decisions) == expected


# ---- fidelity ----------------------------------------------------------------------------------
def test_boundary_engine_equals_interpreter_on_random_traffic(bundle8, oracle, record_property):
    assert bundle8.table_mode == "boundary"
    e = Engine(bundle8)
    x = healthy_traffic(200_000, seed=1)
    r = e.decide(x)
    agreement = float((r.decisions == oracle(x)).mean())
    hit_rate = e.counters.hit_rate
    record_property("agreement", agreement)
    record_property("table_hit_rate", hit_rate)
    print(f"engine vs interpreter agreement {agreement:.5f}, table hit rate {hit_rate:.4f}")
    assert agreement >= 0.999
    assert 0.5 < hit_rate <= 1.0          # the table levels answer most
    assert (r.source == SOURCE_TABLE).mean() < 0.95       # level 1 alone leaves UNSURE cells
    assert e.counters.hits == int(np.isin(r.source, (SOURCE_TABLE, SOURCE_LEVEL2)).sum())
    assert e.counters.level2_hits == int((r.source == SOURCE_LEVEL2).sum()) > 0


def test_misses_equal_interpreter_exactly(engine, oracle):
    """Off-grid rows and UNSURE cells are answered by the interpreter on their exact features
    (loads as the wire carries them)."""
    x = healthy_traffic(20_000, seed=2)
    x[::3, 2] += 1                                  # idle + busy != N
    x[1::7, 0] = N + 5                              # cpu beyond the table
    x[2::11, 1] += 0.5                              # fractional count
    r = engine.decide(x)
    miss = r.source == SOURCE_INTERPRETER
    assert miss[::3].all() and miss[1::7].all() and miss[2::11].all()
    np.testing.assert_array_equal(r.decisions[miss], oracle(on_wire_grid(x[miss])))


def test_sure_hits_are_table_cells(engine, bundle8):
    x = healthy_traffic(20_000, seed=3)
    r = engine.decide(x)
    # the cell by hand: loads on the wire's 1/1024 grid, q = floor((10 L + 512) / 1024)
    w = on_wire_grid(x)
    q = ((10 * np.rint(w[:, 3:5] * 1024).astype(np.int64) + 512) >> 10)
    assert (w[:, 1] + w[:, 2] == N).all(), "healthy traffic lies on the grid"
    vals = bundle8.table[w[:, 0].astype(int), w[:, 1].astype(int), q[:, 0], q[:, 1]]
    hit = r.source == SOURCE_TABLE
    assert ((vals != UNSURE) == hit).all()
    np.testing.assert_array_equal(r.decisions[hit], vals[hit])


def test_probabilities_come_from_the_interpreter(engine, bundle8):
    x = healthy_traffic(5000, seed=4)
    r = engine.decide(x, probabilities=True)
    model = Model(bundle8.model_bytes)
    p = model.probability(bundle8.normalization.apply(pad(on_wire_grid(x))))
    np.testing.assert_array_equal(r.probability, p)
    miss = r.source == SOURCE_INTERPRETER
    np.testing.assert_array_equal(r.decisions[miss], (p[miss] > 0.5).astype(np.uint8))


def test_one_interpreter_call_per_batch(bundle8):
    e = Engine(bundle8)
    for k, n in enumerate((1, 7, 1000, 20_000)):
        before = e.counters.snapshot()
        x = healthy_traffic(n, seed=10 + k)
        x[0, 2] += 1                                # at least one miss
        e.decide(x)
        assert e.counters.interpreter_calls - before.interpreter_calls == 1
        assert e.counters.interpreter_rows - before.interpreter_rows == \
            e.counters.misses - before.misses


def test_padding_columns_are_ignored(engine):
    x = healthy_traffic(2000, seed=5)
    x10 = pad(x).astype(np.float64)
    noisy = x10.copy()
    noisy[:, 5:] = 7.0
    a, b, c = engine.decide(x), engine.decide(x10), engine.decide(noisy)
    np.testing.assert_array_equal(a.decisions, b.decisions)
    np.testing.assert_array_equal(a.decisions, c.decisions)


# ---- hygiene -----------------------------------------------------------------------------------
def test_hygiene_rules(engine):
    rows = [
        (4, 2, 6, 0.9, 0.2),                        # valid MIGRATE
        (math.nan, 2, 6, 0.9, 0.2),                 # NaN -> invalid
        (4, 2, 6, math.inf, 0.2),                   # inf -> invalid
        (4, -1, 9, 0.9, 0.2),                       # negative count -> invalid
        (4, 2, 6, 1.7, -0.3),                       # loads clamped to (1, 0)
        (4, 2, 6, -0.0, 0.0),                       # -0.0 is not out of range
    ]
    e = Engine(engine.bundle, model=engine.model)
    r = e.decide(rows)
    assert list(r.source[1:4]) == [SOURCE_INVALID] * 3
    assert list(r.decisions[1:4]) == [STAY] * 3
    clamped = e.decide_one(4, 2, 6, 1.0, 0.0)
    assert r.decisions[4] == clamped.decision
    c = e.counters
    assert (c.invalid, c.clamped) == (3, 1)
    assert c.requests == c.hits + c.misses + c.invalid


def test_non_numbers_are_invalid_not_errors(engine):
    d = engine.decide_one("four", None, 6, 0.9, 0.2)
    assert d.decision == STAY and d.source == "invalid"
    d = engine.decide_one(10**400, 2, 6, 0.9, 0.2)          # beyond float: +inf
    assert d.source == "invalid"
    r = engine.decide([[4, 2, 6, "x", 0.2], [4, 2, 6, 0.9, 0.2]])
    assert list(r.source) == [SOURCE_INVALID, SOURCE_TABLE]


def test_wrong_shapes_raise_value_error(engine):
    for bad in ([1, 2, 3], np.zeros((3, 4)), np.zeros((2, 2, 5)), [[1, 2, 3, 4, 5], [1, 2]]):
        with pytest.raises(ValueError):
            engine.decide(bad)
    assert len(engine.decide(np.zeros((0, 5)))) == 0


floats = st.floats(allow_nan=True, allow_infinity=True, width=64)
feature = st.one_of(floats, st.integers(min_value=-(10**30), max_value=10**30),
                    st.sampled_from([0, 1, 2, 7, 8, 9, 0.5, 1.0, -1.0, 1e308, -1e-320]))


def _check_batch(engine, rows):
    before = engine.counters.snapshot()
    r = engine.decide(rows)
    x = np.array(rows, dtype=np.float64).reshape(-1, 5)
    invalid = ~np.isfinite(x).all(axis=1) | (x[:, :3] < 0).any(axis=1)
    assert set(np.unique(r.decisions)) <= {STAY, MIGRATE}
    np.testing.assert_array_equal(r.source == SOURCE_INVALID, invalid)
    assert (r.decisions[invalid] == STAY).all()
    c = engine.counters
    n = len(rows)
    assert c.requests - before.requests == n
    assert (c.hits - before.hits) + (c.misses - before.misses) + (c.invalid - before.invalid) == n
    assert c.interpreter_calls - before.interpreter_calls <= 1


@HYPO
@given(st.lists(st.tuples(feature, feature, feature, feature, feature), min_size=0, max_size=40))
def test_bad_feature_values_never_raise(engine, rows):
    _check_batch(engine, rows)


@pytest.mark.slow
@HYPO_SLOW
@given(st.lists(st.tuples(feature, feature, feature, feature, feature), min_size=0, max_size=40))
def test_bad_feature_values_never_raise_slow(engine, rows):
    _check_batch(engine, rows)


@HYPO
@given(hnp.arrays(np.float32, st.tuples(st.integers(0, 30), st.sampled_from([5, 10])),
                  elements=st.floats(width=32, allow_nan=True, allow_infinity=True)))
def test_float32_arrays_never_raise(engine, x):
    r = engine.decide(x)
    assert len(r) == x.shape[0]
    assert set(np.unique(r.decisions)) <= {STAY, MIGRATE}


@HYPO
@given(st.lists(st.one_of(feature, st.text(max_size=5), st.none(), st.booleans()),
                min_size=5, max_size=5))
def test_decide_one_never_raises(engine, row):
    d = engine.decide_one(*row)
    assert d.decision in (STAY, MIGRATE)
    assert d.source in ("table", "interpreter", "invalid")


# ---- the daemon's wire fast path ----------------------------------------------------------------
def wire_oracle(table: np.ndarray, w: np.ndarray, interp_decide) -> np.ndarray:
    """Expected decisions for wire records, written out independently of the engine."""
    n = table.shape[0]
    cpu, idle, busy, src, dst = (w[:, k].astype(np.int64) for k in range(5))
    src, dst = np.minimum(src, 1024), np.minimum(dst, 1024)
    qs, qd = (10 * src + 512) >> 10, (10 * dst + 512) >> 10
    ok = (cpu < n) & (idle + busy == n)
    cell = np.full(len(w), UNSURE, dtype=np.uint8)
    cell[ok] = table[cpu[ok], idle[ok], qs[ok], qd[ok]]
    out = cell.copy()
    miss = cell == UNSURE
    exact = np.stack([cpu, idle, busy, src / 1024, dst / 1024], axis=1)[miss]
    out[miss] = interp_decide(exact)
    return out


def test_wire_path_equals_oracle(bundle8, oracle):
    e = Engine(bundle8)
    w = wire_traffic(100_000, seed=20)
    got = e.decide_wire(w)
    np.testing.assert_array_equal(got, wire_oracle(bundle8.table, w, oracle))
    c = e.counters
    assert c.requests == len(w) and c.invalid == 0
    assert c.clamped == int(((w[:, 3] > 1024) | (w[:, 4] > 1024)).sum())
    assert c.interpreter_calls == 1 and c.interpreter_rows == c.misses
    assert c.off_grid == int(((w[:, 0] >= N) | (w[:, 1] + w[:, 2] != N)).sum())


def test_wire_path_matches_float_path(bundle8):
    """Integer quantization of L equals load_key(L / 1024): same decisions, sources and counters."""
    a, b = Engine(bundle8), Engine(bundle8)
    w = wire_traffic(50_000, seed=21)
    src = np.empty(len(w), dtype=np.uint8)
    got = a.decide_wire(w, source=src)
    r = b.decide(from_wire(w))
    np.testing.assert_array_equal(got, r.decisions)
    np.testing.assert_array_equal(src, r.source)
    for k in ("requests", "hits", "misses", "off_grid", "interpreter_rows", "invalid"):
        assert getattr(a.counters, k) == getattr(b.counters, k), k


def test_wire_path_on_ring_records_and_out_buffer(bundle8):
    """A structured batch like struct mlsched_request (features strided inside), written into out."""
    feats = np.dtype([(k, "<u4") for k in ("cpu", "idle", "busy", "src_load", "dst_load")])
    rec = np.dtype([("version", "<u2"), ("size", "<u2"), ("source", "u1"), ("reason", "u1"),
                    ("cfs_action", "u1"), ("kernel_decision", "u1"), ("seq", "<u8"),
                    ("ts_ns", "<u8"), ("pid", "<u4"), ("dst_cpu", "<u4"), ("f", feats),
                    ("raw_cpu", "<u4")])
    w = wire_traffic(8192, seed=22)
    batch = np.zeros(len(w), dtype=rec)
    for k, name in enumerate(feats.names):
        batch["f"][name] = w[:, k]
    out = np.full(len(w) + 10, 99, dtype=np.uint8)
    e = Engine(bundle8)
    res = e.decide_wire(batch["f"], out=out[:len(w)])
    assert res.base is out or res is out[:len(w)].base or np.shares_memory(res, out)
    np.testing.assert_array_equal(out[:len(w)], Engine(bundle8).decide_wire(w))
    assert (out[len(w):] == 99).all()


def test_wire_signed_negative_is_invalid(bundle8):
    e = Engine(bundle8)
    w = np.array([[4, 2, 6, 922, 205], [4, -2, 10, 922, 205], [4, 2, 6, -5, 205],
                  [-1, 2, 6, 922, 205]], dtype=np.int32)
    src = np.empty(4, np.uint8)
    got = e.decide_wire(w, source=src)
    assert list(src) == [SOURCE_TABLE, SOURCE_INVALID, SOURCE_INVALID, SOURCE_INVALID]
    assert list(got[1:]) == [STAY] * 3
    assert e.counters.invalid == 3 and e.counters.requests == 4
    assert e.counters.hits + e.counters.misses + e.counters.invalid == 4


def test_wire_extreme_integers(bundle8, oracle):
    e = Engine(bundle8)
    big = np.iinfo(np.uint32).max
    w = np.array([[big, 2, 6, 100, 100], [4, big, 6, 100, 100], [4, 2, big, 100, 100],
                  [4, 2, 6, big, big], [0, 0, 8, 0, 0]], dtype=np.uint32)
    got = e.decide_wire(w)
    np.testing.assert_array_equal(got, wire_oracle(bundle8.table, w, oracle))
    w64 = w.astype(np.uint64)
    w64[0, 0] = np.iinfo(np.uint64).max
    got64 = e.decide_wire(w64)
    assert set(np.unique(got64)) <= {STAY, MIGRATE}
    assert len(e.decide_wire(np.zeros((0, 5), np.uint32))) == 0


def test_wire_rejects_non_integer_layouts(engine):
    with pytest.raises(ValueError):
        engine.decide_wire(np.zeros((3, 5), np.float32))
    with pytest.raises(ValueError):
        engine.decide_wire(np.zeros((3, 4), np.uint32))


# ---- derived tables for smaller hosts -----------------------------------------------------------
def test_derived_table_for_a_two_cpu_host(bundle8, oracle, caplog):
    with caplog.at_level("INFO", logger="mlsched.runtime.engine"):
        e = Engine(bundle8, ncpus=2)
    assert e.derived and e.ncpus == 2 and e.table.shape == (2, 3, 11, 11)
    assert "derived a 2-CPU" in caplog.text
    # every sure cell equals the interpreter at the cell centre
    c, i, qs, qd = np.nonzero(e.table != UNSURE)
    centres = np.stack([c, i, 2 - i, qs / 10, qd / 10], axis=1)
    np.testing.assert_array_equal(e.table[c, i, qs, qd], oracle(centres))
    # 2-CPU traffic now hits the table, and agrees with the interpreter
    x = healthy_traffic(50_000, seed=30, ncpus=2)
    r = e.decide(x)
    assert e.counters.hit_rate > 0.5
    assert float((r.decisions == oracle(x)).mean()) >= 0.999
    w = wire_traffic(20_000, seed=31, ncpus=2)
    np.testing.assert_array_equal(e.decide_wire(w), wire_oracle(e.table, w, oracle))


def test_more_cpus_than_the_bundle_is_refused(bundle8):
    with pytest.raises(EngineError, match="converted for 8 CPUs.*--cpus 16"):
        Engine(bundle8, ncpus=16)
    with pytest.raises(EngineError):
        Engine(bundle8, ncpus=0)


# ---- backend parity -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def both_backends():
    found = available_backends()
    if set(found) != {"litert", "tflite-runtime"}:
        pytest.skip(f"needs both interpreter packages, found {found}")


def test_backend_parity_over_table_centres_and_traffic(bundle8, both_backends):
    lite = Model(bundle8.model_bytes, backend="litert")
    tfl = Model(bundle8.model_bytes, backend="tflite-runtime")
    c, i, qs, qd = (a.ravel() for a in np.indices(bundle8.table.shape))
    centres = np.stack([c, i, N - i, qs / 10, qd / 10], axis=1)
    x = np.concatenate([centres, healthy_traffic(100_000, seed=40)])
    u = bundle8.normalization.apply(pad(x))
    np.testing.assert_array_equal(lite.decide(u), tfl.decide(u))
    np.testing.assert_array_equal(lite.raw(u), tfl.raw(u))
    a = Engine(bundle8, backend="litert").decide(x)
    b = Engine(bundle8, backend="tflite-runtime").decide(x)
    np.testing.assert_array_equal(a.decisions, b.decisions)


def test_unknown_backend_is_refused(bundle8):
    from mlsched.runtime.interp import BackendError

    with pytest.raises(BackendError):
        Engine(bundle8, backend="tensorflow")


# ---- table level 2 ---------------------------------------------------------------------------
def test_level2_answers_unsure_cells_without_the_interpreter(bundle8, oracle):
    assert bundle8.level2 is not None
    e = Engine(bundle8)
    w = unsure_cell_traffic(bundle8.table, 20_000, seed=7)
    src = np.zeros(len(w), np.uint8)
    got = e.decide_wire(w, source=src)
    np.testing.assert_array_equal(got, oracle(from_wire(w)))
    c = e.counters
    assert c.level2_hits == int((src == SOURCE_LEVEL2).sum()) > 0.99 * len(w)
    # only what level 2 leaves (lines that flip twice in a cell) reaches the interpreter
    assert c.interpreter_rows == int((src == SOURCE_INTERPRETER).sum()) < 0.01 * len(w)
    # the float path and decide_one agree, row by row
    r = e.decide(from_wire(w))
    np.testing.assert_array_equal(r.decisions, got)
    np.testing.assert_array_equal(r.source, src)
    one = e.decide_one(*from_wire(w[:1])[0])
    assert one.source == ("level2" if src[0] == SOURCE_LEVEL2 else "interpreter")


def test_a_derived_table_has_both_levels(bundle8):
    e = Engine(bundle8, ncpus=3)
    assert e.derived and e.level2 is not None
    rng = np.random.default_rng(3)
    n = 30_000
    idle = rng.integers(0, 4, n)
    w = np.stack([rng.integers(0, 3, n), idle, 3 - idle, rng.integers(0, 1025, n),
                  rng.integers(0, 1025, n)], axis=1).astype(np.uint32)
    got = e.decide_wire(w)
    np.testing.assert_array_equal(got, e.interpreter_decide(from_wire(w)))
    assert e.counters.level2_hits > 0
    assert e.counters.interpreter_rows < 0.001 * n


def test_a_level2_that_quantizes_loads_unlike_the_model_is_refused(bundle_copy):
    import json

    from mlsched.runtime.bundle import Bundle

    m = json.loads((bundle_copy / "manifest.json").read_text())
    q = m["table"]["level2"]["src"]
    q["add"] -= 1 << 26          # shifts the edges of some input levels, not the band starts
    (bundle_copy / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(EngineError, match="quantizes loads unlike its model"):
        Engine(Bundle.load(bundle_copy, allow_insecure=True))


@pytest.mark.parametrize("dtype", [np.uint32, np.int64])
def test_small_batches_take_the_same_steps_as_large_ones(bundle8, dtype):
    """A batch of a few rows is decided row by row in Python integers; every row must get
    the decision, source and counters a large (numpy) batch gives it."""
    from mlsched.runtime.engine import SMALL_BATCH, Counters

    rng = np.random.default_rng(11)
    w = np.concatenate([unsure_cell_traffic(bundle8.table, 300, seed=12),
                        np.stack([rng.integers(0, N + 2, 300), rng.integers(0, N + 2, 300),
                                  rng.integers(0, N + 2, 300), rng.integers(0, 1300, 300),
                                  rng.integers(0, 1300, 300)], axis=1)]).astype(dtype)
    if dtype == np.int64:
        w[::17, 1] = -1                                   # invalid rows
    big = Engine(bundle8)
    want_src = np.zeros(len(w), np.uint8)
    want = big.decide_wire(w, source=want_src)
    small = Engine(bundle8)
    got, got_src = np.zeros(len(w), np.uint8), np.zeros(len(w), np.uint8)
    for start in range(0, len(w), SMALL_BATCH):
        part = slice(start, start + SMALL_BATCH)
        small.decide_wire(w[part], out=got[part], source=got_src[part])
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(got_src, want_src)
    keys = [f for f in Counters.__dataclass_fields__ if f not in ("batches", "interpreter_calls")]
    assert {k: getattr(small.counters, k) for k in keys} == \
        {k: getattr(big.counters, k) for k in keys}
    assert small.counters.level2_hits > 0 and small.counters.off_grid > 0
