"""What the hostile-input tests share: example counts, the default engine, the CLI in
process, and the one-line-error check.

Hostile input at every entry point must give a defined decision or one clear line, never a
traceback. The tests live with their layer (``tests/runtime/test_hostile_*.py``,
``tests/commands/test_hostile_*.py``, ``tests/convert/test_hostile_calibration.py``,
``tests/kernel/test_hostile_ring.py``); every property runs ``FEW`` examples in the
default run and ``MANY`` in the ``slow`` group (``pytest -m slow``). The examples each property
ran are printed (``-s``) and recorded as junit properties (``report_runs``).

TensorFlow is never imported here (it breaks tflite_runtime in the same process).
"""

from __future__ import annotations

import contextlib
import io
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

FEW = 200
MANY = 10_000
HEALTH = [HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
          HealthCheck.data_too_large, HealthCheck.filter_too_much]
FEW_SETTINGS = settings(max_examples=FEW, deadline=None, suppress_health_check=HEALTH,
                        database=None)
MANY_SETTINGS = settings(max_examples=MANY, deadline=None, suppress_health_check=HEALTH,
                         database=None)
FEATURE_HEADER = "cpu,cpu_idle,cpu_not_idle,src_dom_load,dst_dom_load"
FEATURES = FEATURE_HEADER.split(",")
LITE = [sys.executable, "-m", "mlsched.runtime.cli"]

#: Examples run per entry point in this process: {property name: count}.
RUNS: dict[str, int] = {}


def counted(name: str):
    RUNS[name] = RUNS.get(name, 0) + 1


@pytest.fixture(autouse=True)
def report_runs(request, record_property):
    before = dict(RUNS)
    yield
    for name, n in RUNS.items():
        if n != before.get(name, 0):
            record_property(f"examples_{name}", n - before.get(name, 0))
            print(f"\n{request.node.name}: {n - before.get(name, 0)} examples of {name}")


# ---- shared fixtures (module-wide so hypothesis examples can use them) ----------------------
_ENGINE = []


def engine():
    """One engine over the shipped default bundle (what decide uses without --bundle)."""
    if not _ENGINE:
        from mlsched.runtime.bundle import load_bundle
        from mlsched.runtime.engine import Engine

        _ENGINE.append(Engine(load_bundle(None)))
    return _ENGINE[0]


def run_cli(argv: list[str], stdin: bytes | None = None) -> tuple[int, str, str]:
    """mlsched-lite in this process: (exit status, stdout, stderr)."""
    from mlsched.runtime.cli import main

    out, err = io.StringIO(), io.StringIO()
    saved = sys.stdin
    if stdin is not None:
        sys.stdin = io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8")
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(argv)
    finally:
        sys.stdin = saved
    return code, out.getvalue(), err.getvalue()


def assert_one_line_error(code: int, out: str, err: str) -> None:
    assert code == 2, (code, out, err)
    assert out == "", out
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mlsched-lite"), err
    assert "Traceback" not in err and "internal error" not in err, err


# ---- hostile values shared by several entry points ---------------------------------------
SPECIAL_TEXT = ["nan", "NaN", "inf", "-inf", "Infinity", "1e999", "-1e999", "1e-400", "-0",
                "0x10", "1_0", " 4 ", "", " ", "+1", "4.", ".5", "\u0664", "1e", "--", "-",
                "--json", "-h", "4,5", "４", "1.7976931348623157e309", "99999999999999999999"]

# fields never hold a line break: \r and \n end lines, in the file as in the reader
field = st.one_of(st.floats(allow_nan=True, allow_infinity=True).map(repr),
                  st.integers(min_value=-(10**25), max_value=10**25).map(str),
                  st.sampled_from(SPECIAL_TEXT + ['"1"', '"', '"4,2"', "\x00", "1\x00"]),
                  st.text(st.characters(blacklist_characters="\r\n",
                                        blacklist_categories=("Cs",)), max_size=6))
healthy_row = st.tuples(st.integers(0, 7), st.integers(0, 8), st.floats(0, 1), st.floats(0, 1)
                        ).map(lambda t: [str(t[0]), str(t[1]), str(8 - t[1]), repr(t[2]),
                                         repr(t[3])])


@st.composite
def csv_file(draw):
    """(header fields, data lines): mostly healthy rows among hostile ones."""
    kind = draw(st.integers(0, 9))
    if kind == 0:
        header = draw(st.lists(field, max_size=6))
    else:
        extra = draw(st.lists(st.sampled_from(["x", "ts_ns", "pid", "", " y "]), max_size=3))
        header = list(draw(st.permutations(FEATURES + extra)))
    lines = []
    for _ in range(draw(st.integers(0, 25))):
        if draw(st.integers(0, 2)) == 0:
            row = draw(healthy_row)
            row = dict(zip(FEATURES, row, strict=True))
            lines.append(",".join(row.get(h.strip(), "0") for h in header))
        else:
            lines.append(",".join(draw(st.lists(field, max_size=max(8, len(header) + 2)))))
    return header, lines

npz_dtype = st.sampled_from([np.float64, np.float32, np.float16, np.int64, np.int8, np.uint64,
                             np.uint8, np.bool_, np.complex64, "<U3", "S2", ">f8", ">i4",
                             np.dtype([("a", "<f8"), ("b", "<i4")])])


@st.composite
def npz_array(draw):
    dt = np.dtype(draw(npz_dtype))
    shape = draw(st.one_of(st.tuples(st.integers(0, 12), st.sampled_from([5, 10])),
                           hnp.array_shapes(min_dims=0, max_dims=3, max_side=6)))
    return draw(hnp.arrays(dt, shape))
