"""The BPF helper's two table levels against the int8 interpreter, over the whole 8-CPU geometry.

Expected decisions come from the interpreter alone: for each (cpu, idle) row the test asks
the model about every pair of input levels, and maps wire loads to input levels through
the model's own float input path (``Model.quantize_input``). Nothing of the table code or
the integer quantization in the kernel is used to make them.
"""

from __future__ import annotations

import numpy as np
import pytest

from mlsched.runtime.features import host_features, pad
from mlsched.runtime.interp import Model
from mlsched.runtime.wire import LOAD_ONE, MIGRATE, STAY, load_level
from support.tables import unsure_cell_traffic

N = 8
L = np.arange(LOAD_ONE + 1)


@pytest.fixture(scope="module")
def model(bundle8):
    return Model(bundle8.model_bytes, width=bundle8.width)


def quantize(bundle8, model, x):
    return model.quantize_input(bundle8.normalization.apply(pad(x[:, :5], model.width)))


def boundary_loads(levels: np.ndarray) -> np.ndarray:
    """Wire loads where the input level or the 0.1 band changes, and the loads just before."""
    band = load_level(L)
    edge = np.flatnonzero((np.diff(levels) != 0) | (np.diff(band) != 0)) + 1
    return np.unique(np.concatenate([[0, LOAD_ONE], edge, edge - 1]))


def test_every_key_of_the_geometry_matches_the_interpreter(bundle8, model, kernel_path):
    assert bundle8.level2 is not None, "the default bundle has a table level 2"
    x = host_features(N, 0, 0, L / LOAD_ONE, L / LOAD_ONE)
    lv = quantize(bundle8, model, x).astype(np.int64) + 128
    lv_src, lv_dst = lv[:, 3], lv[:, 4]
    dst = boundary_loads(lv_dst)
    assert 500 < dst.size < LOAD_ONE          # every level edge of dst, and every band edge
    kp = kernel_path(bundle8.table, level2=bundle8.level2, consumer_timeout_ns=0)
    s, d = np.meshgrid(L, dst, indexing="ij")
    s, d = s.ravel(), d.ravel()
    levels = np.arange(256) - 128
    answered = level2 = wrong = total = 0
    for cpu in range(N):
        for idle in range(N + 1):
            # the model's picture of this row: every (src level, dst level) pair
            base = quantize(bundle8, model, host_features(N, cpu, idle, 0.0, 0.0))[0]
            grid = np.repeat(base[None, :], 256 * 256, axis=0)
            grid[:, 3] = np.repeat(levels, 256)
            grid[:, 4] = np.tile(levels, 256)
            pic = model.decide(grid, quantized=True).reshape(256, 256)
            want = pic[lv_src[s], lv_dst[d]]
            f = np.stack([np.full(s.size, cpu), np.full(s.size, idle),
                          np.full(s.size, N - idle), s, d], axis=1)
            r = kp.inject(f, ignore_consumer=True)
            inside = r.level > 0
            wrong += int(np.count_nonzero(r.result[inside] != want[inside]))
            answered += int(np.count_nonzero(inside))
            level2 += int(np.count_nonzero(r.level == 2))
            total += s.size
            assert np.isin(r.result, (STAY, MIGRATE)).all()
            # what the levels leave goes to the ring, answered STAY for now
            assert (r.seq[~inside] != 0).all() and (r.result[~inside] == STAY).all()
    print(f"{total} keys: {answered / total:.5%} answered in the kernel,"
          f" {level2 / total:.2%} by level 2, {wrong} wrong")
    assert wrong == 0
    assert level2 > 0
    assert answered / total >= 0.999


def test_level2_follows_its_table_through_swaps(bundle8, model, kernel_path):
    """Published with its table into either half, and gone with a table that has none."""
    from mlsched.runtime.wire import from_wire

    f = unsure_cell_traffic(bundle8.table, 20_000, seed=4)
    want = model.decide(bundle8.normalization.apply(pad(from_wire(f), model.width)))
    kp = kernel_path(bundle8.table, level2=bundle8.level2, consumer_timeout_ns=0,
                     ring_size=1 << 22)
    for step in range(5):
        with_level2 = step % 2 == 0
        if step:
            kp.set_table(bundle8.table, bundle8.level2 if with_level2 else None)
        half = int(kp.control["table_sel"][0]) >> 16
        r = kp.inject(f, ignore_consumer=True)
        if with_level2:
            assert (r.level == 2).mean() > 0.99, (step, half)
            inside = r.level > 0
            np.testing.assert_array_equal(r.result[inside], want[inside])
        else:
            assert (r.level == 0).all() and (r.seq != 0).all(), (step, half)
        kp.drain(target=int(r.sent), idle_timeout_ms=50)


def test_a_level2_without_room_is_refused_and_level1_still_loads(bundle8, kernel_path):
    from mlsched.runtime.bpfenv import KernelPathError

    kp = kernel_path(None, table_capacity=N, consumer_timeout_ns=0)
    with pytest.raises(KernelPathError) as e:
        kp.set_table(bundle8.table, bundle8.level2)
    assert e.value.errno == 7 and "exceeds" in str(e.value)          # E2BIG
    kp.set_table(bundle8.table)
    r = kp.inject(unsure_cell_traffic(bundle8.table, 100, seed=5), ignore_consumer=True)
    assert (r.level == 0).all()


def test_a_level2_description_outside_its_bytes_is_refused(bundle8, kernel_path):
    from mlsched.runtime._bpf import ffi, lib

    from mlsched.runtime.wire import table_rows

    lv = bundle8.level2
    kp = kernel_path(bundle8.table, level2=lv, consumer_timeout_ns=0)
    rows = np.ascontiguousarray(table_rows(bundle8.table, refined=True))
    img = lv.kernel_image()

    def publish(image, nbytes, **fields):
        g = ffi.new("struct mlsched_level2 *")
        g.lines, g.cells, g.word_base = lv.lines, lv.cells, lv.index_words
        for k, v in fields.items():
            setattr(g, k, v)
        rc = lib.mls_set_table(kp._handle(), ffi.from_buffer("uint8_t[]", rows), rows.nbytes,
                               N, image, nbytes, g)
        return rc, ffi.string(lib.mls_last_error()).decode()

    rc, msg = publish(ffi.NULL, 0)
    assert rc < 0 and "no bytes" in msg
    buf = ffi.from_buffer("uint8_t[]", img)
    rc, msg = publish(buf, img.nbytes, word_base=1)                  # index overlaps lines
    assert rc < 0 and "outside" in msg
    rc, msg = publish(buf, img.nbytes, word_base=img.nbytes // 8)    # lines past the end
    assert rc < 0 and "outside" in msg
    rc, msg = publish(buf, img.nbytes, lines=200)
    assert rc < 0 and "at most" in msg
    assert publish(buf, img.nbytes)[0] == 0


def test_pinned_maps_of_another_size_are_reused_not_refused(bundle8, pin_dir, require_bpf):
    """A consumer restarted on pins made for a smaller (or no) level 2 opens them; the
    larger level 2 is refused with one line, and level 1 serves."""
    from mlsched.runtime.bpfenv import KernelPathError
    from mlsched.runtime.injector import Injector

    with Injector() as kp:                      # pins made without a level 2
        kp.load(bundle8.table, pin=True, pin_dir=str(pin_dir), consumer_timeout_ns=0)
    with Injector() as kp:                      # restart asking for room for one
        kp.load(None, pin=True, pin_dir=str(pin_dir), table_capacity=N,
                level2_capacity=bundle8.level2.kernel_words * 8, consumer_timeout_ns=0)
        with pytest.raises(KernelPathError, match="exceeds"):
            kp.set_table(bundle8.table, bundle8.level2)
        kp.set_table(bundle8.table)
        assert kp.inject(unsure_cell_traffic(bundle8.table, 10, seed=6), ignore_consumer=True).done == 10
    with Injector() as kp:                      # pins with room, a restart without a level 2
        kp.load(None, pin=True, pin_dir=str(pin_dir), table_capacity=N, consumer_timeout_ns=0)
        kp.set_table(bundle8.table)


def test_a_table_with_no_unsure_cell_loads_with_its_empty_level2(bundle8, kernel_path):
    """A model that says the same in every cell (a constant policy, say) has a level 2 of
    no cells: the table loads with it, at start-up and in a swap, and level 1 answers."""
    from mlsched.runtime.level2 import Level2
    from mlsched.runtime.wire import UNSURE

    table = np.where(bundle8.table == UNSURE, STAY, bundle8.table).astype(np.uint8)
    l2 = bundle8.level2
    empty = Level2.from_cells(l2.lines, l2.src, l2.dst, np.zeros((0, l2.lines), np.uint8))
    assert empty.cells == 0
    f = unsure_cell_traffic(bundle8.table, 2_000, seed=5)
    kp = kernel_path(table, level2=empty, consumer_timeout_ns=0)
    for step in range(2):
        if step:
            kp.set_table(table, empty)
        r = kp.inject(f, ignore_consumer=True)
        assert (r.level == 1).all() and (r.seq == 0).all(), step
        assert (r.result == STAY).all(), step
