"""Hostile input at every entry point: a defined decision or one clear line, never a traceback.

Entry points and what each must do with anything at all:

  library API      MLScheduler.should_migrate(MigrationFeatures(...))   a bool, equal to the
                   engine's decision on the same values (bad values: STAY)
  decide flags     mlsched-lite decide --cpu .. --dst-load ..           exit 0 with one decision
                   (the engine's, on float(flag)), or exit 2 with one line on stderr
  --input CSV/npz  mlsched-lite decide --input FILE                     one decision per non-blank
                   row (bad rows STAY, the rest as the engine decides), or exit 2 with one line
                   for a file-level problem (empty, no header, unreadable .npz)
  calibration      mlsched-convert --calibration FILE (calibration.load) features that obey
                   the documented rules, or CalibrationError with one line
  ring records     the injector's bad_version / bad_size records          skipped and counted
                   ``rejected``; the good records around them delivered in order, answered, read
                   back by the kernel side as the engine's decisions
  bundle manifest  any JSON value anywhere in manifest.json              Bundle.load refuses with
                   BundleError (exit 2, one line) or loads a bundle that verifies

Every property runs 200 examples in the default run and >= 10 000 in the ``slow``
group (``pytest -m slow tests/test_hostile.py``). The examples each property ran are printed
(``-s``) and recorded as junit properties.

TensorFlow is never imported here (it breaks tflite_runtime in the same process):
``mlsched.convert.calibration`` imports numpy only.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from mlsched.runtime.cli import main
from support.cli import HANG_S, wait_for

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
def _report_runs(request, record_property):
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


# ---- 1. the library API ---------------------------------------------------------------------
api_value = st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                      st.integers(min_value=-(10**400), max_value=10**400),
                      st.sampled_from([0, 1, 7, 8, 9, 0.5, 1.0, -0.0, True, False]),
                      st.text(max_size=4), st.none(), st.binary(max_size=3),
                      st.lists(st.integers(0, 3), max_size=2))

_SCHED = []


def check_api(row) -> None:
    from mlsched.runtime import MigrationFeatures, MLScheduler

    counted("api")
    if not _SCHED:
        _SCHED.append(MLScheduler())
    s = _SCHED[0]
    got = s.should_migrate(MigrationFeatures(*row))
    assert got in (True, False)
    assert got == (engine().decide_one(*row).decision == 1)


@FEW_SETTINGS
@given(st.tuples(*[api_value] * 5))
def test_api_values(row):
    check_api(row)


@pytest.mark.slow
@MANY_SETTINGS
@given(st.tuples(*[api_value] * 5))
def test_api_values_many(row):
    check_api(row)


# ---- 2. decide flags ------------------------------------------------------------------------
SPECIAL_TEXT = ["nan", "NaN", "inf", "-inf", "Infinity", "1e999", "-1e999", "1e-400", "-0",
                "0x10", "1_0", " 4 ", "", " ", "+1", "4.", ".5", "\u0664", "1e", "--", "-",
                "--json", "-h", "4,5", "４", "1.7976931348623157e309", "99999999999999999999"]
flag_text = st.one_of(st.floats(allow_nan=True, allow_infinity=True).map(repr),
                      st.integers(min_value=-(10**30), max_value=10**30).map(str),
                      st.sampled_from(SPECIAL_TEXT), st.text(max_size=8))
DECIDE_FLAGS = ("cpu", "idle", "busy", "src-load", "dst-load")


@st.composite
def decide_argv(draw):
    argv = ["decide"]
    values = {}
    for flag in DECIDE_FLAGS:
        if draw(st.integers(0, 9)) == 0:        # sometimes leave one out
            continue
        v = draw(flag_text)
        values[flag] = v
        argv += [f"--{flag}={v}"] if draw(st.booleans()) else [f"--{flag}", v]
    if draw(st.booleans()):
        argv.append("--json")
    order = draw(st.permutations(range(1, len(argv))))
    return ["decide"] + [argv[i] for i in order] if draw(st.integers(0, 4)) == 0 else argv, values


def check_decide_flags(argv, values) -> None:
    counted("decide_flags")
    code, out, err = run_cli(argv)
    if code != 0:
        assert_one_line_error(code, out, err)
        return
    if out.startswith("usage: mlsched-lite decide"):     # a value that reads as -h/--help
        assert {"-h", "--help"} & set(argv), argv
        return
    assert set(values) == set(DECIDE_FLAGS), argv
    lines = out.splitlines()
    assert len(lines) == 1, out
    nums = [float(values[f]) for f in DECIDE_FLAGS]
    want = engine().decide_one(*nums)
    if "--json" in argv:
        got = json.loads(lines[0])
        assert got["decision"] == want.name and got["source"] == want.source
    else:
        assert lines[0] == want.name
    if want.source == "invalid":
        assert err.strip().splitlines() == [
            "mlsched-lite: invalid features (NaN/inf or a negative count): answered STAY"]
    else:
        assert err == ""


@FEW_SETTINGS
@given(decide_argv())
def test_decide_flags(case):
    check_decide_flags(*case)


@pytest.mark.slow
@MANY_SETTINGS
@given(decide_argv())
def test_decide_flags_many(case):
    check_decide_flags(*case)


# ---- 3. --input files -----------------------------------------------------------------------
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


def oracle_row(line: str, header: list[str]) -> list[float] | None:
    """Features of a data line as documented: exactly the header's number of fields, each a
    number float() reads; None for a line with a quote (CSV quoting; checked loosely)."""
    if '"' in line:
        return None
    names = [h.strip() for h in next(csv.reader([",".join(header)]), [])]
    fields = line.split(",")
    if len(fields) != len(names):
        return [math.nan] * 5
    try:
        return [float(fields[names.index(n)]) for n in FEATURES]
    except ValueError:
        return [math.nan] * 5


def check_input_csv(header, lines, chunk_rows, ending, tmp: Path, via_stdin=False) -> None:
    counted("input_csv")
    text = ",".join(header) + "\n" + "".join(ln + ending for ln in lines)
    data = text.encode("utf-8", errors="surrogatepass")
    argv = ["decide", "--input", "-" if via_stdin else str(tmp / "in.csv")]
    if chunk_rows:
        argv += ["--chunk-rows", str(chunk_rows)]
    if not via_stdin:
        (tmp / "in.csv").write_bytes(data)
    code, out, err = run_cli(argv, stdin=data if via_stdin else None)
    names = [h.strip() for h in next(csv.reader([",".join(header)]), [])]
    if code != 0:
        assert_one_line_error(code, out, err)
        assert any(n not in names for n in FEATURES), (header, err)
        return
    assert all(n in names for n in FEATURES), header
    rows = [ln for ln in lines if (ln + ending).strip()]
    got = out.splitlines()
    assert len(got) == len(rows), (lines, out)
    assert set(got) <= {"STAY", "MIGRATE"}
    expect = [oracle_row(ln, header) for ln in rows]
    known = [i for i, e in enumerate(expect) if e is not None]
    if known:
        want = engine().decide(np.array([expect[i] for i in known], dtype=np.float64))
        assert [got[i] for i in known] == [("STAY", "MIGRATE")[d] for d in want.decisions], \
            [(rows[i], got[i]) for i in known]
    summary = err.strip().splitlines()
    assert len(summary) == 1 and summary[0].startswith(f"mlsched-lite: {len(rows)} rows"), err


csv_case = st.tuples(csv_file(), st.sampled_from([0, 0, 1, 2, 3, 7]),
                     st.sampled_from(["\n", "\n", "\r\n"]), st.booleans())


@FEW_SETTINGS
@given(csv_case)
def test_input_csv(tmp_path, case):
    (header, lines), chunk, ending, stdin = case
    check_input_csv(header, lines, chunk, ending, tmp_path, via_stdin=stdin)


@pytest.mark.slow
@MANY_SETTINGS
@given(csv_case)
def test_input_csv_many(tmp_path, case):
    (header, lines), chunk, ending, stdin = case
    check_input_csv(header, lines, chunk, ending, tmp_path, via_stdin=stdin)


# arrays for .npz files: any dtype numpy saves without pickling, any shape
npz_dtype = st.sampled_from([np.float64, np.float32, np.float16, np.int64, np.int8, np.uint64,
                             np.uint8, np.bool_, np.complex64, "<U3", "S2", ">f8", ">i4",
                             np.dtype([("a", "<f8"), ("b", "<i4")])])


@st.composite
def npz_array(draw):
    dt = np.dtype(draw(npz_dtype))
    shape = draw(st.one_of(st.tuples(st.integers(0, 12), st.sampled_from([5, 10])),
                           hnp.array_shapes(min_dims=0, max_dims=3, max_side=6)))
    return draw(hnp.arrays(dt, shape))


def check_input_npz(arr, name: str, fortran: bool, tmp: Path) -> None:
    counted("input_npz")
    p = tmp / "in.npz"
    a = np.asfortranarray(arr) if fortran else arr
    np.savez(p, **{name: a})
    code, out, err = run_cli(["decide", "--input", str(p)])
    fortran_saved = a.flags.f_contiguous and not a.flags.c_contiguous
    usable = (name == "features" and arr.ndim == 2 and arr.shape[1] in (5, 10)
              and arr.dtype.kind in "biuf" and not fortran_saved)
    if code != 0:
        assert_one_line_error(code, out, err)
        assert not usable, (arr.dtype, arr.shape, err)
        return
    assert name == "features" and arr.ndim == 2 and arr.dtype.kind in "biuf"
    got = out.splitlines()
    assert len(got) == arr.shape[0]
    want = engine().decide(arr[:, :5].astype(np.float64)) if arr.shape[0] else None
    if want is not None:
        assert got == [("STAY", "MIGRATE")[d] for d in want.decisions]


npz_case = st.tuples(npz_array(), st.sampled_from(["features", "features", "x"]),
                     st.integers(0, 5).map(lambda v: v == 0))


@FEW_SETTINGS
@given(npz_case)
def test_input_npz(tmp_path, case):
    check_input_npz(*case, tmp_path)


@pytest.mark.slow
@MANY_SETTINGS
@given(npz_case)
def test_input_npz_many(tmp_path, case):
    check_input_npz(*case, tmp_path)


def check_input_garbage(data: bytes, suffix: str, tmp: Path) -> None:
    counted("input_bytes")
    p = tmp / f"in{suffix}"
    p.write_bytes(data)
    code, out, err = run_cli(["decide", "--input", str(p)])
    if code != 0:
        assert_one_line_error(code, out, err)
    else:
        assert set(out.splitlines()) <= {"STAY", "MIGRATE"}


garbage = st.tuples(st.one_of(st.binary(max_size=300),
                              st.binary(max_size=200).map(lambda b: FEATURE_HEADER.encode()
                                                          + b"\n" + b),
                              st.binary(max_size=200).map(lambda b: b"PK\x03\x04" + b)),
                    st.sampled_from([".csv", ".npz", ""]))


@FEW_SETTINGS
@given(garbage)
def test_input_garbage_bytes(tmp_path, case):
    check_input_garbage(*case, tmp_path)


@pytest.mark.slow
@MANY_SETTINGS
@given(garbage)
def test_input_garbage_bytes_many(tmp_path, case):
    check_input_garbage(*case, tmp_path)


def test_input_file_level_problems(tmp_path):
    """Empty file, no header, a directory, a missing file, huge values, one long line."""
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    assert_one_line_error(*run_cli(["decide", "--input", str(empty)]))
    assert_one_line_error(*run_cli(["decide", "--input", "-"], stdin=b""))
    nohead = tmp_path / "nohead.csv"
    nohead.write_text("4,2,6,0.9,0.2\n")
    assert_one_line_error(*run_cli(["decide", "--input", str(nohead)]))
    assert_one_line_error(*run_cli(["decide", "--input", str(tmp_path)]))
    assert_one_line_error(*run_cli(["decide", "--input", str(tmp_path / "nope.csv")]))
    assert_one_line_error(*run_cli(["decide", "--input", str(nohead), "--cpu", "1"]))
    huge = tmp_path / "huge.csv"
    huge.write_text(FEATURE_HEADER + "\n" + "\n".join([
        "1e308,2,6,0.9,0.2", "4,1e308,1e308,0.9,0.2", "4,2,6,1e308,-1e308",
        "99999999999999999999999999999,2,6,0.9,0.2", "4,2,6," + "9" * 5000 + ",0.2",
        "4,2,6,0.9,0.2" + ",0" * 100000]) + "\n")
    code, out, err = run_cli(["decide", "--input", str(huge)])
    assert code == 0, err
    assert out.split() == [("STAY", "MIGRATE")[d] for d in engine().decide(
        [[1e308, 2, 6, .9, .2], [4, 1e308, 1e308, .9, .2], [4, 2, 6, 1e308, -1e308],
         [1e29, 2, 6, .9, .2], [4, 2, 6, math.inf, .2], [math.nan] * 5]).decisions]


@pytest.mark.parametrize("case", ["text", "columns", "empty", "nan-flag", "huge"])
def test_decide_subprocess(tmp_path, case):
    """The installed entry point as a shell runs it: same answers, one line, no traceback."""
    f = tmp_path / "in.csv"
    if case == "text":
        f.write_text(FEATURE_HEADER + "\nfour,two,six,high,low\n4,2,6,0.9,0.2\n")
        argv = ["decide", "--input", str(f)]
    elif case == "columns":
        f.write_text(FEATURE_HEADER + "\n4,2,6,0.9\n4,2,6,0.9,0.2,1\n4,2,6,0.9,0.2\n")
        argv = ["decide", "--input", str(f)]
    elif case == "empty":
        f.write_text("")
        argv = ["decide", "--input", str(f)]
    elif case == "nan-flag":
        argv = ["decide", "--cpu", "nan", "--idle", "2", "--busy", "6", "--src-load", "0.9",
                "--dst-load", "0.2"]
    else:
        argv = ["decide", "--cpu", "4", "--idle", "2", "--busy", "6", "--src-load", "1e999",
                "--dst-load=-1e999"]
    r = subprocess.run([*LITE, *argv], capture_output=True, text=True, timeout=60)
    assert "Traceback" not in r.stderr
    if case == "empty":
        assert r.returncode == 2 and r.stdout == "" and len(r.stderr.splitlines()) == 1
        return
    assert r.returncode == 0, r.stderr
    want = {"text": ["STAY", "MIGRATE"], "columns": ["STAY", "STAY", "MIGRATE"],
            "nan-flag": ["STAY"], "huge": ["STAY"]}[case]
    assert r.stdout.split() == want
    assert len(r.stderr.strip().splitlines()) <= 1


# ---- 4. calibration files for mlsched-convert -------------------------------------------------
def check_calibration(path: Path) -> None:
    from mlsched.convert.calibration import CalibrationError, load

    counted("calibration")
    try:
        x = load(path)
    except CalibrationError as e:
        msg = str(e)
        assert msg and "\n" not in msg and str(path) in msg, msg
        return
    assert x.dtype == np.float32 and x.ndim == 2 and x.shape[1] == 10 and x.shape[0] > 0
    assert np.isfinite(x).all()
    assert (x[:, :3] >= 0).all() and ((x[:, 3:5] >= 0) & (x[:, 3:5] <= 1)).all()


@st.composite
def calibration_csv(draw):
    header, lines = draw(csv_file())
    return ",".join(header) + "\n" + "".join(ln + "\n" for ln in lines)


def _padding_within_float32(a: np.ndarray) -> np.ndarray:
    """Padding columns beyond float32 are test_calibration_padding_beyond_float32's case."""
    if a.ndim == 2 and a.shape[1] == 10 and a.dtype.kind == "f" and a.dtype.itemsize > 4:
        a = a.copy()
        with np.errstate(invalid="ignore"):
            big = np.isfinite(a[:, 5:]) & (np.abs(a[:, 5:]) > np.finfo(np.float32).max)
        a[:, 5:][big] = 0.0
    return a


calibration_case = st.one_of(
    calibration_csv().map(lambda t: ("csv", t.encode("utf-8", errors="surrogatepass"))),
    npz_array().map(lambda a: ("npz", _padding_within_float32(a))),
    st.binary(max_size=200).map(lambda b: ("bytes", b)))


def run_calibration_case(case, tmp: Path) -> None:
    kind, payload = case
    if kind == "npz":
        p = tmp / "cal.npz"
        np.savez(p, features=payload)
    else:
        p = tmp / ("cal.csv" if kind == "csv" else "cal.npz")
        p.write_bytes(payload)
    check_calibration(p)


@FEW_SETTINGS
@given(calibration_case)
def test_calibration_files(tmp_path, case):
    run_calibration_case(case, tmp_path)


@pytest.mark.slow
@MANY_SETTINGS
@given(calibration_case)
def test_calibration_files_many(tmp_path, case):
    run_calibration_case(case, tmp_path)


@pytest.mark.parametrize("kind", ["npz", "csv"])
def test_calibration_counts_beyond_float32(tmp_path, kind):
    if kind == "npz":
        p = tmp_path / "cal.npz"
        np.savez(p, features=np.array([[3.5e38, 0, 8, 0.5, 0.5]]))
    else:
        p = tmp_path / "cal.csv"
        p.write_text(FEATURE_HEADER + "\n3.5e38,0,8,0.5,0.5\n")
    check_calibration(p)


def test_calibration_padding_is_zeroed(tmp_path):
    from mlsched.convert.calibration import load

    p = tmp_path / "cal.npz"
    np.savez(p, features=np.array([[3, 0, 8, 0.5, 0.5, 3.5e38, np.nan, 1, 0, 0]]))
    check_calibration(p)
    assert not load(p)[:, 5:].any()


def test_calibration_accepts_what_run_records(tmp_path):
    from mlsched.convert.calibration import load
    from mlsched.runtime.recorder import RECORD_HEADER

    p = tmp_path / "rec.csv"
    p.write_text(RECORD_HEADER + "3,2,6,0.25,0.75,1,0,1,42,123,0,1\n"
                 "4,1,7,0.5,0.125,0,0,2,43,124,1,\n")
    x = load(p)
    np.testing.assert_array_equal(x[:, :5], np.float32([[3, 2, 6, 0.25, 0.75],
                                                        [4, 1, 7, 0.5, 0.125]]))


def test_calibration_accepts_records_without_domain_columns(tmp_path):
    """Files recorded before the domain columns existed stay calibration input."""
    from mlsched.convert.calibration import load

    p = tmp_path / "old.csv"
    p.write_text("cpu,cpu_idle,cpu_not_idle,src_dom_load,dst_dom_load,cfs_action,decision,"
                 "source,pid,ts_ns\n3,2,6,0.25,0.75,1,0,1,42,123\n")
    x = load(p)
    np.testing.assert_array_equal(x[0, :5], np.float32([3, 2, 6, 0.25, 0.75]))


# ---- 5. bundles: what tests/test_bundle.py does not already cover -----------------------------
json_value = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(min_value=-(10**20), max_value=10**20),
              st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=6),
              st.sampled_from([0, 1, 8, 9, 10, 1024, 10**9, "uint8", "boundary", "table.bin",
                               "model.tflite", "mlsched-bundle", [8, 9, 11, 11], [1.0] * 10])),
    lambda children: st.one_of(st.lists(children, max_size=4),
                               st.dictionaries(st.text(max_size=5), children, max_size=4)),
    max_leaves=8).map(lambda v: json.loads(json.dumps(v)))      # fresh objects, never shared


def _paths(node, prefix=()):
    """Every path (tuple of keys/indices) into a JSON tree."""
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, (*prefix, i))


@st.composite
def manifest_edit(draw, manifest: dict):
    """The shipped manifest with 1..3 edits: a value replaced, a key deleted or added."""
    m = json.loads(json.dumps(manifest))
    for _ in range(draw(st.integers(1, 3))):
        paths = list(_paths(m))
        path = draw(st.sampled_from(paths))
        action = draw(st.sampled_from(["replace", "replace", "delete", "add"]))
        if not path:
            if action == "replace":
                m = draw(json_value)
            continue
        parent = m
        for k in path[:-1]:
            parent = parent[k]
        key = path[-1]
        if action == "replace":
            parent[key] = draw(json_value)
        elif action == "delete":
            del parent[key]
        elif isinstance(parent, dict):
            parent[draw(st.text(max_size=6))] = draw(json_value)
        if not isinstance(m, (dict, list)):
            break
    return m


def check_manifest(m, work: Path) -> None:
    from mlsched.runtime.bundle import MANIFEST, Bundle, BundleError

    counted("manifest")
    (work / MANIFEST).write_text(json.dumps(m))
    try:
        Bundle.load(work)
    except BundleError as e:
        assert "\n" not in str(e), str(e)
        return
    # accepted: the bundle must then verify, or be refused by verify with one line
    code, out, err = run_cli(["bundle", "verify", str(work), "--cpus", "8"])
    if code != 0:
        assert_one_line_error(code, out, err)
    else:
        assert out.strip().endswith("OK") and err == ""


_SHIPPED: dict = {}


def shipped_manifest() -> dict:
    if not _SHIPPED:
        from conftest import DEFAULT_BUNDLE

        _SHIPPED.update(json.loads((DEFAULT_BUNDLE / "manifest.json").read_text()))
    return _SHIPPED


@pytest.fixture(scope="module")
def bundle_work():
    """One private copy of the default bundle; examples rewrite only its manifest."""
    from conftest import DEFAULT_BUNDLE

    d = Path(tempfile.mkdtemp(prefix="hostile-bundle-"))
    shutil.copytree(DEFAULT_BUNDLE, d / "b")
    yield d / "b"
    shutil.rmtree(d)


@FEW_SETTINGS
@given(st.data())
def test_manifest_values(bundle_work, data):
    check_manifest(data.draw(manifest_edit(shipped_manifest())), bundle_work)


@pytest.mark.slow
@MANY_SETTINGS
@given(st.data())
def test_manifest_values_many(bundle_work, data):
    check_manifest(data.draw(manifest_edit(shipped_manifest())), bundle_work)


@pytest.mark.parametrize("text", ["[" * 200_000 + "]" * 200_000, '{"a":' * 100_000 + "1"
                                  + "}" * 100_000])
def test_manifest_nested_too_deep(capfd, bundle_copy, text):
    from mlsched.runtime.bundle import MANIFEST, Bundle, BundleError

    (bundle_copy / MANIFEST).write_text(text)
    with pytest.raises(BundleError, match="nested too deeply"):
        Bundle.load(bundle_copy)
    assert_one_line_error(*run_cli(["bundle", "verify", str(bundle_copy)]))


@pytest.mark.parametrize("where", ["offset", "scale"])
def test_normalization_outside_float32_refused(bundle_copy, where):
    """1e-300 is a fine float64 scale, but 1/scale is inf in the float32 the model sees."""
    from mlsched.runtime.bundle import MANIFEST

    m = json.loads((bundle_copy / MANIFEST).read_text())
    norm = m["features"]["normalization"]
    if where == "offset":
        norm["offset"] = [1e300] * 10
    else:
        norm["scale"] = [1e-300] * 10
    (bundle_copy / MANIFEST).write_text(json.dumps(m))
    code, out, err = run_cli(["decide", "--bundle", str(bundle_copy), "--cpu", "4", "--idle",
                              "2", "--busy", "6", "--src-load", "0.9", "--dst-load", "0.2"])
    assert_one_line_error(code, out, err)
    assert "float32" in err


@pytest.mark.skipif(os.geteuid() != 0, reason="the ownership rule applies when running as root")
@pytest.mark.parametrize("target", ["file", "dir"])
def test_insecure_bundle_behind_a_symlink_refused_as_root(bundle_copy, tmp_path, target):
    """A root-owned link to a file or directory others may write is as unsafe as the file."""
    from mlsched.runtime.bundle import Bundle, BundleError

    elsewhere = tmp_path / "elsewhere"
    if target == "file":
        elsewhere.mkdir()
        shutil.move(bundle_copy / "model.tflite", elsewhere / "model.tflite")
        os.chmod(elsewhere / "model.tflite", 0o666)
        (bundle_copy / "model.tflite").symlink_to(elsewhere / "model.tflite")
        link = bundle_copy
    else:
        shutil.move(bundle_copy, elsewhere)
        os.chmod(elsewhere, 0o777)
        link = tmp_path / "link"
        link.symlink_to(elsewhere)
    # a linked file is refused as a link (its target's directory is nobody's business here)
    why = "writable by users other than root" if target == "dir" else "a symbolic link"
    with pytest.raises(BundleError, match=why):
        Bundle.load(link)
    assert_one_line_error(*run_cli(["bundle", "verify", str(link), "--cpus", "8"]))
    assert Bundle.load(link, allow_insecure=True).cpus == 8


def test_tampered_bundle_refused_by_run_and_replay(bundle_copy, tmp_path):
    (bundle_copy / "table.bin").write_bytes(b"\x01" * (bundle_copy / "table.bin").stat().st_size)
    for argv in (["run", "--duration", "1"], ["replay", str(tmp_path / "x.csv")]):
        code, out, err = run_cli(["--bundle", str(bundle_copy), *argv])
        assert_one_line_error(code, out, err)
        assert "sha256" in err or "BPF" in err or "CAP_BPF" in err, err


# ---- 6. ring-buffer records on the real kernel --------------------------------------------------
def _bpf_or_skip():
    from conftest import REQUIRE_BPF_ENV, bpf_unavailable_reason

    reason = bpf_unavailable_reason()
    if reason is not None:
        if os.environ.get(REQUIRE_BPF_ENV) == "1":
            pytest.fail(f"BPF required but unavailable: {reason}")
        pytest.skip(f"BPF unavailable: {reason}")


@pytest.fixture(scope="module")
def ring():
    """One kernel path for every example: 1 MiB ring, no consumer timeout."""
    _bpf_or_skip()
    from mlsched.runtime.kernel import KernelPath

    kp = KernelPath().load(engine().table, consumer_timeout_ns=0)
    yield kp
    kp.close()


def poll_all(kp) -> np.ndarray:
    parts = []
    while True:
        batch = kp.poll(timeout_ms=0, max_records=4096)
        if len(batch) == 0:
            return np.concatenate(parts) if parts else np.zeros(0, kp.request_dtype)
        parts.append(batch.copy())


u32 = st.one_of(st.integers(0, 2**32 - 1),
                st.sampled_from([0, 1, 7, 8, 9, 512, 1023, 1024, 1025, 2**31, 2**32 - 1]))
wire_rows = st.integers(1, 12).flatmap(
    lambda n: hnp.arrays(np.uint32, (n, 5), elements=u32))
ring_op = st.tuples(st.sampled_from(["good", "good", "bad_version", "bad_size", "bad_both"]),
                    wire_rows, st.booleans())


def check_ring(kp, ops) -> None:
    """Malformed records vanish (counted ``rejected``); the good ones around them arrive in
    order with their features intact, and the answers the kernel reads back are the engine's."""
    counted("ring_records")
    e = engine()
    before = kp.stats()
    good_seq, good_feats, bad = [], [], 0
    for kind, feats, bypass in ops:
        r = kp.inject(feats, bypass_table=bypass or kind != "good",
                      bad_version=kind in ("bad_version", "bad_both"),
                      bad_size=kind in ("bad_size", "bad_both"))
        assert r.dropped == 0 and r.no_consumer == 0
        if kind != "good":
            bad += len(feats)
            continue
        hit = r.fate == 0
        # kernel table hits equal the engine on the same wire features, whatever the values
        np.testing.assert_array_equal(r.result[hit], e.decide_wire(feats[hit]))
        sent = r.seq != 0
        good_seq.append(r.seq[sent])
        good_feats.append(feats[sent])
    batch = poll_all(kp)
    after = kp.stats()
    assert after["rejected"] - before["rejected"] == bad
    seqs = np.concatenate(good_seq) if good_seq else np.zeros(0, np.uint64)
    feats = np.concatenate(good_feats) if good_feats else np.zeros((0, 5), np.uint32)
    np.testing.assert_array_equal(batch["seq"], seqs)
    got = np.stack([batch["f"][k] for k in ("cpu", "idle", "busy", "src_load", "dst_load")], 1)
    np.testing.assert_array_equal(batch["raw_cpu"], feats[:, 0])
    # the table covers CPUs 0..N-1 (this host's online CPUs have no gap): their index is
    # their id; any other CPU has none
    want = feats.astype(np.uint32).reshape(-1, 5)
    want[want[:, 0] >= e.ncpus, 0] = 2**32 - 1
    np.testing.assert_array_equal(got.reshape(-1, 5), want)
    if len(batch):
        d = e.decide_wire(batch["f"])
        assert kp.answer(batch, d) == len(batch)
        first = int(seqs.min())
        rb = kp.read_decisions(first, int(seqs.max()) - first + 1)
        idx = (seqs - first).astype(np.int64)
        assert (rb.status[idx] == 0).all()
        np.testing.assert_array_equal(rb.decision[idx], d)


@FEW_SETTINGS
@given(st.lists(ring_op, min_size=1, max_size=6))
def test_ring_records(ring, ops):
    check_ring(ring, ops)


@pytest.mark.slow
@MANY_SETTINGS
@given(st.lists(ring_op, min_size=1, max_size=6))
def test_ring_records_many(ring, ops):
    check_ring(ring, ops)


#: Injector calls of 200,000 misses each beside the heartbeating thread: a count, not a window.
LIVE_CONSUMER_CALLS = 6


def test_live_consumer_is_never_taken_for_gone(require_bpf):
    """A consumer that heartbeats constantly while requests pour in: no miss may count
    ``no_consumer`` (a heartbeat newer than the producer's clock reading must not wrap)."""
    import threading

    from mlsched.runtime.kernel import KernelPath

    with KernelPath() as kp:
        kp.load(engine().table, consumer_timeout_ns=1_000_000_000)
        kp.heartbeat()
        stop = threading.Event()

        def beat():
            while not stop.is_set():
                kp.heartbeat()
        t = threading.Thread(target=beat)
        t.start()
        kp.load_injector()
        done = nc = 0
        try:
            for seed in range(1, 1 + LIVE_CONSUMER_CALLS):
                r = kp.inject(generate=200_000, seed=seed, gen_ncpus=8, bypass_table=True)
                done, nc = done + r.done, nc + r.no_consumer
                kp.drain(idle_timeout_ms=0)
        finally:
            stop.set()
            t.join()
        print(f"\n{done} misses beside a heartbeating consumer: {nc} counted no_consumer")
        assert done == LIVE_CONSUMER_CALLS * 200_000
        assert nc == 0 and kp.stats()["no_consumer"] == 0


# ---- 7. the daemon under overload, death and restart -------------------------------------------
def start_daemon(*args, env=None, cwd=None, prefix=()) -> subprocess.Popen:
    return subprocess.Popen([*prefix, *LITE, *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=cwd)


def wait_pinned(daemon, pin_dir: Path) -> None:
    wait_for(lambda: (pin_dir / "control").exists() or daemon.poll() is not None,
             what="the daemon's pinned maps")
    assert daemon.poll() is None, daemon.communicate()


def wait_serving(daemon, kp) -> None:
    """Until the daemon polls: its heartbeat in the shared control map is fresh."""
    from mlsched.runtime.kernel import now_ns

    def fresh():
        assert daemon.poll() is None, daemon.communicate()
        beat = int(kp.control["heartbeat_ns"][0])
        return beat != 0 and now_ns() - beat < 300_000_000
    wait_for(fresh, what="the daemon to serve")


def stop_daemon(daemon, sig=signal.SIGTERM) -> tuple[str, str]:
    if daemon.poll() is None:
        daemon.send_signal(sig)
    return daemon.communicate(timeout=60)


def bpf_fd_ids(pid: int) -> dict[str, list[int]]:
    """Kernel ids of the BPF programs, maps and links a process holds (/proc/PID/fdinfo)."""
    ids = {"progs": [], "maps": [], "links": []}
    for fd in os.listdir(f"/proc/{pid}/fdinfo"):
        try:
            text = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
        if "link_id" in fields:
            ids["links"].append(int(fields["link_id"]))
        elif "prog_id" in fields:
            ids["progs"].append(int(fields["prog_id"]))
        elif "map_id" in fields:
            ids["maps"].append(int(fields["map_id"]))
    return ids


@pytest.fixture
def pin_dir(bpffs):
    d = bpffs / "mlsched"
    yield d
    if d.exists():
        subprocess.run([*LITE, "unpin", "--pin-dir", str(d)], capture_output=True)


def hostile_wire(n: int, seed: int) -> np.ndarray:
    """Mostly healthy 8-CPU wire records, some off-grid, some with absurd values."""
    from support.traffic import generated_features

    f = generated_features(seed, n, 8, invalid_pct=5).astype(np.uint32)
    rng = np.random.default_rng(seed)
    wild = rng.random(n) < 0.03
    f[wild] = rng.integers(0, 2**32, (int(wild.sum()), 5), dtype=np.uint64).astype(np.uint32)
    return f


def prometheus(path: Path) -> dict[str, float]:
    values = {}
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            name, value = line.split(" ")
            values[name] = float(value)
    return values


def test_overload_counts_drops_keeps_serving_and_never_misanswers(pin_dir, tmp_path,
                                                                  record_property):
    """Bursts far larger than a 16 KiB ring (227 records, 1024 decision slots) into a running
    daemon: the kernel counts every drop, the daemon reports them and keeps serving, every
    record that got through is answered once with its own decision, the backlog drains, and
    a paced producer afterwards loses nothing."""
    from mlsched.runtime.kernel import KernelPath

    ring = 16384
    summary, prom = tmp_path / "s.json", tmp_path / "m.prom"
    daemon = start_daemon("run", "--no-collector", "--pin", "--pin-dir", pin_dir, "--ring-size",
                          ring, "--interval", "0.2", "--summary-json", summary,
                          "--stats-file", prom)
    e = engine()
    kp = None
    sent = dropped = bad = aliased = checked = 0
    try:
        wait_pinned(daemon, pin_dir)
        kp = KernelPath().load(None, pin=True, pin_dir=str(pin_dir), ring_size=ring,
                               share=True)
        wait_serving(daemon, kp)
        k0 = kp.stats()
        slots = kp.decision_slots
        for burst in range(6):
            feats = hostile_wire(65536, 1000 + burst)
            r = kp.inject(feats, bypass_table=True)
            assert r.sent + r.dropped == len(feats) and r.no_consumer == 0
            assert r.dropped > 0, "the burst should overflow the ring"
            sent, dropped = sent + r.sent, dropped + r.dropped
            last = int(r.last_seq)
            wait_for(lambda s=last: kp.read_decisions(s, 1).answered == 1,
                     what="the backlog to drain")
            if burst == 2:                          # malformed records in the middle
                # the drain above means room in the ring, but the daemon may still be
                # busy: whatever the kernel drops of these is counted as a drop
                for m in (kp.inject(feats[:100], bad_version=True),
                          kp.inject(feats[:50], bad_size=True)):
                    bad, dropped = bad + m.sent, dropped + m.dropped
            ok = r.seq != 0
            seqs, want = r.seq[ok], e.decide_wire(feats[ok])
            rb = kp.read_decisions(int(r.first_seq), int(r.last_seq - r.first_seq + 1))
            idx = (seqs - r.first_seq).astype(np.int64)
            status = rb.status[idx]
            # every record that got through was answered: its own answer, or the slot was
            # taken over by a newer answered request (aliasing, > slots sent in one burst)
            assert (status != 1).all(), "an answer is missing after the drain"
            answered = status == 0
            np.testing.assert_array_equal(rb.decision[idx][answered], want[answered])
            assert answered[-min(len(seqs), slots):].all()
            aliased += int((~answered).sum())
            checked += int(answered.sum())
            assert daemon.poll() is None, "the daemon died under overload"
        # paced afterwards: nothing lost
        before = kp.stats()["dropped"]
        for i in range(40):
            feats = hostile_wire(100, 5000 + i)
            r = kp.inject(feats, bypass_table=True)
            assert r.dropped == 0 and r.sent == 100
            sent += r.sent
            time.sleep(0.01)
        wait_for(lambda s=int(r.last_seq): kp.read_decisions(s, 1).answered == 1,
                 what="the paced requests to be answered")
        assert kp.stats()["dropped"] == before
        k1 = kp.stats()
        assert k1["dropped"] - k0["dropped"] == dropped
        wait_for(lambda: prom.exists() and prometheus(prom)["mlsched_requests_total"] >= sent,
                 what="the textfile to catch up")
    finally:
        if kp is not None:
            kp.close()
        out, err = stop_daemon(daemon)
    assert daemon.returncode == 0, err
    s = json.loads(summary.read_text())
    p = prometheus(prom)
    print(f"\noverload: {sent} sent, {dropped} dropped, {bad} malformed; {checked} answers"
          f" checked, {aliased} taken over by newer answers in their slot; daemon: {s}")
    record_property("overload_dropped", dropped)
    record_property("overload_sent", sent)
    assert s["dropped"] == dropped and p["mlsched_dropped_total"] == dropped
    assert s["records"] == s["answered"] == sent
    assert bad > 0 and s["rejected"] == bad and p["mlsched_rejected_total"] == bad
    assert s["double_answers"] == 0 and s["late_answers"] == 0
    assert s["no_consumer"] == 0
    import re

    per_interval = [int(v) for v in re.findall(r"\| drops (\d+) stale", out)]
    assert sum(per_interval) > 0 and sum(per_interval) <= dropped, out
    assert f"dropped {dropped}," in out


def test_daemon_killed_mid_stream_then_restarted(pin_dir, tmp_path, record_property):
    """kill -9 while requests flow: the kernel keeps answering table hits, misses get STAY
    and count ``no_consumer`` once the heartbeat is 1 s old; requests sent to the dead
    daemon before that read back STAY and count ``stale``. A restarted ``--pin`` daemon
    takes over the same maps: counters and sequence numbers carry on, answers resume."""
    import threading

    from mlsched.runtime.kernel import DEFAULT_CONSUMER_TIMEOUT_NS, KernelPath

    e = engine()
    timeout_s = DEFAULT_CONSUMER_TIMEOUT_NS / 1e9
    daemon = start_daemon("run", "--no-collector", "--pin", "--pin-dir", pin_dir,
                          "--interval", "0")
    kp = None
    log: list[tuple[float, np.ndarray, object]] = []
    try:
        wait_pinned(daemon, pin_dir)
        kp = KernelPath().load(None, pin=True, pin_dir=str(pin_dir), share=True)
        wait_serving(daemon, kp)
        stop = threading.Event()

        def flow():
            i = 0
            while not stop.is_set():
                feats = hostile_wire(500, 20_000 + i)
                log.append((time.monotonic(), feats, kp.inject(feats)))
                i += 1
                time.sleep(0.005)

        kp.load_injector()
        t = threading.Thread(target=flow)
        t.start()
        # the daemon has answered the flow before it dies (however slow this machine is)
        wait_for(lambda: len(log) >= 20 and log[-1][2].sent
                 and kp.read_decisions(int(log[-1][2].last_seq), 1).answered == 1,
                 timeout=HANG_S, what="the daemon to answer the flow")
        daemon_ids = bpf_fd_ids(daemon.pid)
        killed_at = time.monotonic()
        daemon.kill()                                   # SIGKILL: no clean-up at all
        daemon.wait()
        # at once, while the heartbeat is still young: these go to the ring and go stale
        feats = hostile_wire(500, 19_999)
        log.append((time.monotonic(), feats, kp.inject(feats)))
        # until the flow has run well past the heartbeat's timeout
        wait_for(lambda: log[-1][0] > killed_at + timeout_s + 0.5, timeout=HANG_S,
                 what="the flow to pass the consumer timeout")
        stop.set()
        t.join()
        stats_dead = kp.stats()

        hits = sent_before = no_consumer = 0
        pending = []
        for at, feats, r in log:
            hit = r.fate == 0
            np.testing.assert_array_equal(r.result[hit], e.decide_wire(feats[hit]))
            assert (r.result[~hit] == 0).all(), "a miss must be answered STAY at once"
            hits += int(hit.sum())
            no_consumer += r.no_consumer
            if at > killed_at + timeout_s + 0.1:
                # heartbeat too old: nothing goes to the ring any more
                assert r.sent == 0 and r.no_consumer == int((~hit).sum())
            elif at < killed_at - 0.2:
                assert r.no_consumer == 0
            if r.sent:
                pending.append(r.seq[r.seq != 0])
            if at < killed_at - 0.2:
                sent_before += r.sent
        assert hits > 0 and no_consumer > 0
        assert stats_dead["no_consumer"] == no_consumer
        # read back every request that reached the ring: answered before the kill, or STAY
        seqs = np.concatenate(pending)
        first = int(seqs.min())
        before = kp.stats()["stale"]
        rb = kp.read_decisions(first, int(seqs.max()) - first + 1)
        idx = (seqs - first).astype(np.int64)
        status, decision = rb.status[idx], rb.decision[idx]
        missing = status != 0
        stale = int(missing.sum())
        assert stale > 0, "requests sent after the kill should have gone unanswered"
        assert (decision[missing] == 0).all()
        assert kp.stats()["stale"] - before == stale
        assert (status[seqs < seqs.max() - 50_000] == 0).all()
        print(f"\nkilled: {hits} kernel hits answered throughout, {no_consumer} misses answered"
              f" STAY as no_consumer, {stale} requests sent to the dead daemon read back STAY"
              " and counted stale")
        record_property("death_no_consumer", no_consumer)
        record_property("death_stale", stale)
        # programs and links die with the process; the pinned maps stay
        from support.leaks import eventually_gone

        left = eventually_gone({**daemon_ids, "maps": []})
        assert left == set(), left
        assert (pin_dir / "stats").exists()

        # restart: the same maps, counters and sequence numbers carry on
        last_seq = kp.host()["seq"]
        summary = tmp_path / "s2.json"
        daemon = start_daemon("run", "--no-collector", "--pin", "--pin-dir", pin_dir,
                              "--interval", "0", "--summary-json", summary)
        wait_pinned(daemon, pin_dir)
        wait_serving(daemon, kp)
        stats_back = kp.stats()
        for name in ("produced", "no_consumer", "stale", "kernel_hits", "misses_sent"):
            assert stats_back[name] >= stats_dead[name], name
        feats = hostile_wire(2000, 99)
        r = kp.inject(feats, bypass_table=True)
        assert r.no_consumer == 0 and r.sent == 2000 and r.first_seq == last_seq + 1
        wait_for(lambda: kp.read_decisions(int(r.last_seq), 1).answered == 1,
                 what="the restarted daemon to answer")
        rb = kp.read_decisions(int(r.first_seq), 2000)
        np.testing.assert_array_equal(rb.decision, e.decide_wire(feats))
        out, err = stop_daemon(daemon)
        assert daemon.returncode == 0, err
        s = json.loads(summary.read_text())
        # the new daemon also answered what the dead one left on the ring
        assert 2000 <= s["records"] <= 2000 + stale
    finally:
        if kp is not None:
            kp.close()
        if daemon.poll() is None:
            stop_daemon(daemon)


def test_killed_unpinned_daemon_leaves_nothing(require_bpf):
    daemon = start_daemon("run", "--no-collector", "--interval", "0")
    try:
        # loaded: the production object's three collector programs (a daemon that never
        # injects never loads the injector)
        wait_for(lambda: daemon.poll() is not None or len(bpf_fd_ids(daemon.pid)["progs"]) >= 3,
                 what="the daemon to load")
        time.sleep(0.3)
        ids = bpf_fd_ids(daemon.pid)
    finally:
        daemon.kill()
        daemon.wait()
    from support.leaks import eventually_gone

    assert ids["progs"] and ids["maps"]
    assert eventually_gone(ids) == set()


# ---- 8. no surprise surfaces ---------------------------------------------------------------------
WRITE_FLAGS = ("O_WRONLY", "O_RDWR", "O_CREAT", "O_TRUNC", "O_APPEND")
TRACED = ("open,openat,openat2,creat,rename,renameat,renameat2,unlink,unlinkat,mkdir,mkdirat,"
          "rmdir,link,linkat,symlink,symlinkat,truncate,chmod,fchmodat,chown,fchownat,mknod,"
          "mknodat,socket,bind,listen")


def written_paths(trace: str) -> tuple[list[tuple[str, str]], list[str]]:
    """(call, path) of every successful call that creates, changes or removes a file, and the
    socket/bind/listen calls, from an ``strace -f`` log."""
    import re

    writes, sockets = [], []
    for line in trace.splitlines():
        m = re.match(r"^\d+\s+(\w+)\((.*)\)\s+=\s+(-?\d+)", line)
        if not m or int(m.group(3)) < 0:
            continue
        call, args = m.group(1), m.group(2)
        if call in ("socket", "bind", "listen"):
            sockets.append(line)
            continue
        paths = re.findall(r'"((?:[^"\\]|\\.)*)"', args)
        if call.startswith("open") or call == "creat":
            if call != "creat" and not any(f in args for f in WRITE_FLAGS):
                continue
            if "O_TMPFILE" in args:                 # anonymous: never has a name
                continue
        for p in paths[:1] if not call.startswith(("rename", "link", "symlink")) else paths:
            writes.append((call, p))
    return writes, sockets


def socket_inodes(pid: int) -> set[int]:
    out = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                out.add(int(target[8:-1]))
    return out


def net_inodes() -> dict[str, set[int]]:
    """Socket inodes per /proc/net table (tcp, tcp6, udp, udp6, raw, raw6, unix)."""
    tables = {}
    for name in ("tcp", "tcp6", "udp", "udp6", "raw", "raw6", "unix"):
        inodes = set()
        with contextlib.suppress(OSError):
            lines = Path(f"/proc/net/{name}").read_text().splitlines()[1:]
            col = 6 if name == "unix" else 9
            for ln in lines:
                parts = ln.split()
                if len(parts) > col and parts[col].isdigit():
                    inodes.add(int(parts[col]))
        tables[name] = inodes
    return tables


def snapshot(d: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(d)): (p.stat().st_mode, p.stat().st_size)
            for p in sorted(d.rglob("*"))}


def test_daemon_surfaces(require_bpf, tmp_path, record_property):
    """The collector daemon with every output on, in fresh HOME/TMPDIR/cwd, under strace:
    no socket at all, files only at the stats, summary and record paths (0644, the stats
    file replaced by rename so a reader never sees half of it), nothing left elsewhere."""
    if shutil.which("strace") is None:
        pytest.skip("strace not installed")
    home, tmp, cwd, out = (tmp_path / n for n in ("home", "tmp", "cwd", "out"))
    for d in (home, tmp, cwd, out):
        d.mkdir()
    before = {d: snapshot(d) for d in (home, tmp, cwd)}
    trace = tmp_path / "trace.txt"
    prom, rec, summ = out / "m.prom", out / "rec.csv", out / "s.json"
    env = {**os.environ, "HOME": str(home), "TMPDIR": str(tmp)}
    daemon = start_daemon("run", "--duration", "4", "--interval", "0.1", "--load", "1",
                          "--stats-file", prom, "--record", rec, "--summary-json", summ,
                          env=env, cwd=cwd,
                          prefix=["strace", "-f", "-qq", "-o", str(trace), "-e",
                                  f"trace={TRACED}"])
    reads = partial = 0
    inodes_seen, sock_seen, net_hits = set(), set(), {}
    try:
        end = time.monotonic() + 60
        while daemon.poll() is None and time.monotonic() < end:
            children = Path(f"/proc/{daemon.pid}/task/{daemon.pid}/children")
            with contextlib.suppress(OSError):
                for pid in map(int, children.read_text().split()):
                    sock_seen |= socket_inodes(pid)
            if sock_seen:
                for name, inodes in net_inodes().items():
                    if inodes & sock_seen:
                        net_hits[name] = sorted(inodes & sock_seen)
            with contextlib.suppress(FileNotFoundError):
                with open(prom) as f:
                    inodes_seen.add(os.fstat(f.fileno()).st_ino)
                    text = f.read()
                reads += 1
                if not (text.endswith("\n") and "mlsched_peak_rss_bytes" in text):
                    partial += 1
            time.sleep(0.01)
    finally:
        o, e = stop_daemon(daemon)
    assert daemon.returncode == 0, e
    writes, sockets = written_paths(trace.read_text())
    import re

    shapes = sorted({(c, re.sub(r"\.(m\.prom|s\.json)\.\w+$", r".\1.XXXXXXXX",
                                p.replace(str(tmp_path), "T"))) for c, p in writes})
    print(f"\nsurfaces: {reads} reads of the textfile ({len(inodes_seen)} versions, {partial}"
          f" partial), sockets {sorted(sock_seen)}, {len(writes)} writes: {shapes}")
    record_property("textfile_reads", reads)
    assert sockets == [] and sock_seen == set() and net_hits == {}
    assert reads > 10 and partial == 0 and len(inodes_seen) > 1
    # every file the daemon and its workers created, changed or removed
    allowed_exact = {str(prom), str(rec), str(summ), "/dev/null", "/proc/self/clear_refs"}
    transient = set()
    for call, p in writes:
        if call.startswith("unlink") and p.startswith(str(tmp) + "/"):
            transient.add(p)
    unexpected = []
    for call, p in writes:
        name = Path(p).name
        if p in allowed_exact or p in transient:
            continue
        if Path(p).parent == out and name.startswith((".m.prom.", ".s.json.")):
            continue
        unexpected.append((call, p))
    assert unexpected == []
    # what is left: exactly the three outputs, 0644; HOME, TMPDIR and cwd as they were
    assert sorted(p.name for p in out.iterdir()) == ["m.prom", "rec.csv", "s.json"]
    for p in out.iterdir():
        assert p.stat().st_mode & 0o777 == 0o644, p
    assert {d: snapshot(d) for d in (home, tmp, cwd)} == before
    s = json.loads(summ.read_text())
    assert s["records"] > 0 and s["recorded"] > 0


def test_record_path_symlink_and_fifo_refused(require_bpf, tmp_path):
    """As root a --record link must not lead the daemon to append to (or chmod) its target;
    a FIFO there must not hang it."""
    target = tmp_path / "target"
    target.write_text("keep\n")
    os.chmod(target, 0o600)
    link = tmp_path / "link"
    link.symlink_to(target)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for path, why in ((link, "symbolic link"), (fifo, "not a regular file")):
        r = subprocess.run([*LITE, "run", "--duration", "1", "--no-collector", "--record",
                            str(path)], capture_output=True, text=True, timeout=60)
        assert r.returncode == 2 and why in r.stderr.strip().splitlines()[-1], r.stderr
        assert "Traceback" not in r.stderr
    assert target.read_text() == "keep\n" and target.stat().st_mode & 0o777 == 0o600
