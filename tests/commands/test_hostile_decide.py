"""Hostile input to mlsched-lite decide: flags give exit 0 with one decision (the engine's, on
float(flag)) or exit 2 with one line; --input CSV/npz gives one decision per non-blank row
(bad rows STAY) or exit 2 with one line for a file-level problem. Shared parts:
support/hostile.py.
"""

from __future__ import annotations

import csv
import json
import math
import subprocess
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from support.hostile import (  # noqa: F401 - report_runs: the autouse fixture
    FEATURE_HEADER,
    FEATURES,
    FEW_SETTINGS,
    LITE,
    MANY_SETTINGS,
    SPECIAL_TEXT,
    assert_one_line_error,
    counted,
    csv_file,
    engine,
    npz_array,
    report_runs,
    run_cli,
)

# ---- decide flags ------------------------------------------------------------------------
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


# ---- --input files -----------------------------------------------------------------------
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
