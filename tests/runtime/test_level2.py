"""Table level 2: the integer load quantization, the line bytes, and both levels built from a
model's complete picture.

Expected values come from outside the code under test: the model's float input path
(``Model.quantize_input``), hand-written line cases, and synthetic models whose decision
is known in closed form.
"""

import numpy as np
import pytest

from mlsched.runtime import level2 as l2
from mlsched.runtime import table as table_mod
from mlsched.runtime.interp import Model
from mlsched.runtime.wire import LOAD_ONE, UNSURE

L = np.arange(LOAD_ONE + 1)


def float_path_levels(scale: float, zero: int = -128) -> np.ndarray:
    """Input levels (0..255) as TFLite's input quantization computes them, in float32."""
    u = (L / LOAD_ONE).astype(np.float32)
    q = np.rint(u / np.float32(scale)) + zero
    return np.clip(q, -128, 127).astype(np.int64) + 128


def test_the_default_models_load_levels_have_an_exact_integer_form(bundle8):
    m = Model(bundle8.model_bytes, width=bundle8.width)
    norm = bundle8.normalization
    x = np.zeros((L.size, bundle8.width), np.float32)
    x[:, 3] = x[:, 4] = L / LOAD_ONE
    want = m.quantize_input(norm.apply(x)).astype(np.int64) + 128
    for col in (3, 4):
        q = l2.fit_load_quant(want[:, col])
        assert q is not None
        assert np.array_equal(q.levels(L), want[:, col])          # all 1025 wire values


@pytest.mark.parametrize("scale", [1 / 255, 0.0037, 1 / 510, 0.0041])
def test_integer_form_matches_the_float32_path_including_its_ties(scale):
    want = float_path_levels(scale)
    q = l2.fit_load_quant(want)
    assert q is not None, scale
    assert np.array_equal(q.levels(L), want)
    assert np.array_equal(q.levels(L + LOAD_ONE * 3)[-1:], want[-1:])   # loads past 1.0 clamp


def test_the_tie_at_half_a_step_follows_float32_not_exact_arithmetic():
    want = float_path_levels(np.float32(1 / 255))
    assert want[512] == 127            # 0.5 / float32(1/255) is just below 127.5
    q = l2.fit_load_quant(want)
    assert q.levels(np.array([511, 512, 513])).tolist() == [127, 127, 128]


@pytest.mark.parametrize("scale", [1 / 256, 1 / 100])
def test_exact_ties_rounded_to_even_have_no_integer_form(scale):
    # L * scale lands on k + 1/2 for many L, and half of those round down: no line does that
    assert l2.fit_load_quant(float_path_levels(scale)) is None


def test_levels_that_fall_have_no_integer_form():
    want = float_path_levels(1 / 255)
    want[700] -= 2
    assert l2.fit_load_quant(want) is None


@pytest.mark.parametrize("decisions, valid, byte", [
    ([1, 1, 0, 0], True, 2 | 128),                    # MIGRATE below offset 2
    ([0, 0, 0, 1], True, 3),                          # STAY below offset 3
    ([1, 1, 1, 1], True, 4 | 128),                    # all MIGRATE: threshold past the end
    ([0, 0, 0, 0], True, 4),
    ([0, 1, 0, 0], True, 127),                        # flips twice: RING
    ([1, 1, 0, 0], False, 127),                       # padding line: RING
])
def test_line_bytes(decisions, valid, byte):
    assert l2.encode_lines(np.array([decisions]), np.array([valid])).tolist() == [byte]


# ---- both levels from a synthetic model --------------------------------------------------------
N = 3


def synthetic(rule):
    """(quantize, decide_quantized) of a model that sees loads at 1/255 and decides by ``rule``
    on (cpu, idle, src level, dst level), levels 0..255."""
    def quantize(x):
        x = np.asarray(x, np.float64)
        q = np.zeros((len(x), 10), np.int8)
        q[:, 0] = x[:, 0]
        q[:, 1] = x[:, 1]
        q[:, 3:5] = np.clip(np.rint(x[:, 3:5].astype(np.float32) / np.float32(1 / 255)) - 128,
                            -128, 127)
        return q

    def decide(q):
        q = np.asarray(q, np.int64)
        return rule(q[:, 0], q[:, 1], q[:, 3] + 128, q[:, 4] + 128).astype(np.uint8)
    return quantize, decide


def all_wire_pairs(built, cpu, idle):
    s, d = np.meshgrid(L, L, indexing="ij")
    n = s.size
    return table_mod.TwoLevels(built.table, built.level2).lookup(
        np.full(n, cpu), np.full(n, idle), np.full(n, N - idle), s.ravel(), d.ravel())


def levels_of(wire):
    return float_path_levels(1 / 255)[wire]


def test_a_monotone_model_is_answered_exactly_at_every_wire_pair():
    rule = lambda c, i, s, d: s > d + 20 * i + 7 * c                       # noqa: E731
    quantize, decide = synthetic(rule)
    built = table_mod.build_exact(N, quantize, [decide])
    assert built.reason is None and built.ring_lines == 0
    assert (built.table == UNSURE).any()
    s, d = np.meshgrid(L, L, indexing="ij")
    for cpu, idle in [(0, 0), (2, 1), (1, 3)]:
        vals, level, ok = all_wire_pairs(built, cpu, idle)
        want = rule(cpu, idle, levels_of(s.ravel()), levels_of(d.ravel()))
        assert ok.all() and (level > 0).all()
        assert np.array_equal(vals, want.astype(np.uint8))
        assert (level == 2).any() and (level == 1).any()


def test_lines_that_are_not_monotone_go_to_user_space_and_nothing_else_is_wrong():
    # a stripe of MIGRATE inside a STAY region: lines through it flip twice
    rule = lambda c, i, s, d: (d >= 100 + 3 * c) & (d < 110 + 3 * c) & (s > 40)   # noqa: E731
    quantize, decide = synthetic(rule)
    built = table_mod.build_exact(N, quantize, [decide])
    assert built.ring_lines > 0
    s, d = np.meshgrid(L, L, indexing="ij")
    vals, level, _ = all_wire_pairs(built, 0, 1)     # cpu 0: the stripe lies inside one band
    want = rule(0, 1, levels_of(s.ravel()), levels_of(d.ravel())).astype(np.uint8)
    answered = level > 0
    assert np.array_equal(vals[answered], want[answered])
    assert (vals[~answered] == UNSURE).all() and (~answered).any()


def test_a_band_wider_than_a_line_byte_allows_leaves_no_level_2():
    def quantize(x):
        q = np.zeros((len(x), 10), np.int8)
        q[:, 3:5] = np.clip(np.rint(np.asarray(x)[:, 3:5] * 2550) - 128, -128, 127)
        return q
    built = table_mod.build_exact(1, quantize, [lambda q: (q[:, 3] > q[:, 4]).astype(np.uint8)])
    assert built.level2 is None and "more than" in built.reason
    assert (built.table != UNSURE).any()


def test_level2_bytes_of_the_wrong_size_are_refused(bundle8):
    lv = bundle8.level2
    assert lv is not None
    unsure = int((bundle8.table == UNSURE).sum())
    lv.check(unsure)
    with pytest.raises(l2.Level2Error, match="need"):
        l2.Level2(lv.lines, lv.src, lv.dst, lv.index[:-1], lv.data).check(unsure)
    with pytest.raises(l2.Level2Error, match="whole cells"):
        l2.Level2(lv.lines, lv.src, lv.dst, lv.index, lv.data[:-1]).check(unsure)
    far = lv.index.copy()
    far[0] = lv.distinct
    with pytest.raises(l2.Level2Error, match="names line set"):
        l2.Level2(lv.lines, lv.src, lv.dst, far, lv.data).check(unsure)


@pytest.mark.parametrize("level", [0, 255, 100])
def test_a_load_column_the_model_sees_as_one_level_has_a_small_integer_form(level):
    q = l2.fit_load_quant(np.full(L.size, level))
    assert q is not None and np.array_equal(q.levels(L), np.full(L.size, level))
    assert l2.LoadQuant.from_json(q.to_json()) == q          # the bundle reads it back
