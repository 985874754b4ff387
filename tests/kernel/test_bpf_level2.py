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
