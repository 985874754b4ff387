"""Hostile calibration files for mlsched-convert --calibration (calibration.load): features that
obey the documented rules, or CalibrationError with one line. numpy only, no TensorFlow.
Shared parts: support/hostile.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from support.hostile import (  # noqa: F401 - report_runs: the autouse fixture
    FEATURE_HEADER,
    FEW_SETTINGS,
    MANY_SETTINGS,
    counted,
    csv_file,
    npz_array,
    report_runs,
)


# ---- calibration files for mlsched-convert -------------------------------------------------
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
