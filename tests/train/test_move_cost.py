"""The measured move-cost curve (bench/movecost.json) read back: interpolation between the
measured sizes on a log scale, clamping past them, malformed files refused in one line.
Every expected value is worked out by hand from the curve written here."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from mlsched.convert.errors import ConvertError
from mlsched.train import move_cost
from mlsched.train.move_cost import MoveCostCurve, MoveCostError

KIB = 1024

#: 16, 64 and 256 KiB: 2**14, 2**16, 2**18 bytes, two doublings apart.
CURVE = {
    "what": "hand-written",
    "host": {"cpu_model": "Test CPU", "kernel": "6.18.0"},
    "sizes": [
        {"working_set_bytes": 16 * KIB, "cost_ns": 100.0, "cost_ci95_ns": [80.0, 130.0]},
        {"working_set_bytes": 64 * KIB, "cost_ns": 400.0, "cost_ci95_ns": [300.0, 500.0]},
        {"working_set_bytes": 256 * KIB, "cost_ns": 1000.0, "cost_ci95_ns": [900.0, 1300.0]},
    ],
}


def write(tmp_path, obj, name="movecost.json"):
    p = tmp_path / name
    p.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return p


@pytest.fixture
def curve(tmp_path) -> MoveCostCurve:
    return MoveCostCurve.load(write(tmp_path, CURVE))


@pytest.mark.parametrize("size, cost, low, high", [
    (16 * KIB, 100, 80, 130),               # a measured size: its own figures
    (64 * KIB, 400, 300, 500),
    (32 * KIB, 250, 190, 315),              # halfway between 2**14 and 2**16 on the log scale
    (128 * KIB, 700, 600, 900),             # halfway between 2**16 and 2**18
    (2**14 * 2**0.5, 175, 135, 222.5),      # a quarter of the way from 16 to 64 KiB
])
def test_cost_is_interpolated_on_a_log_scale(curve, size, cost, low, high):
    assert curve.cost_ns(size) == pytest.approx(cost)
    assert curve.interval_ns(size) == pytest.approx((low, high))
    assert not curve.outside(size)


@pytest.mark.parametrize("size, cost, low, high", [
    (0, 100, 80, 130),
    (4 * KIB, 100, 80, 130),
    (16 * KIB - 1, 100, 80, 130),
    (256 * KIB + 1, 1000, 900, 1300),
    (1 << 30, 1000, 900, 1300),
])
def test_cost_is_clamped_past_the_measured_sizes(curve, size, cost, low, high):
    assert curve.cost_ns(size) == pytest.approx(cost)
    assert curve.interval_ns(size) == pytest.approx((low, high))
    assert curve.outside(size)


def test_many_sizes_at_once(curve):
    got = curve.cost_ns(np.array([8 * KIB, 32 * KIB, 128 * KIB, 1 << 20]))
    np.testing.assert_allclose(got, [100, 250, 700, 1000])


def test_a_negative_working_set_is_refused(curve):
    with pytest.raises(MoveCostError, match="working set -1"):
        curve.cost_ns(-1)


def test_facts_of_the_file(curve, tmp_path):
    assert curve.path == str(tmp_path / "movecost.json")
    assert curve.sizes_bytes == [16 * KIB, 64 * KIB, 256 * KIB]
    assert curve.host["cpu_model"] == "Test CPU"
    assert len(curve.sha256) == 64


def bad(mutate):
    obj = json.loads(json.dumps(CURVE))
    mutate(obj)
    return obj


@pytest.mark.parametrize("content, words", [
    ("{not json", ("not JSON",)),
    ("[1, 2]", ("not a JSON object",)),
    (bad(lambda o: o.pop("sizes")), ("sizes",)),
    (bad(lambda o: o.update(sizes=[])), ("sizes", "empty")),
    (bad(lambda o: o["sizes"][1].pop("cost_ns")), ("sizes[1]", "cost_ns")),
    (bad(lambda o: o["sizes"][2].update(cost_ns="many")), ("sizes[2]", "cost_ns")),
    (bad(lambda o: o["sizes"][0].update(cost_ns=float("nan"))), ("sizes[0]", "cost_ns")),
    (bad(lambda o: o["sizes"][0].update(cost_ns=True)), ("sizes[0]", "cost_ns")),
    (bad(lambda o: o["sizes"][1].update(working_set_bytes=0)), ("sizes[1]", "working_set_bytes")),
    (bad(lambda o: o["sizes"][1].update(working_set_bytes=16.5)),
     ("sizes[1]", "working_set_bytes")),
    (bad(lambda o: o["sizes"][2].update(working_set_bytes=64 * KIB)),
     ("sizes[2]", "not above")),
    (bad(lambda o: o["sizes"][1].update(cost_ci95_ns=[500.0, 300.0])),
     ("sizes[1]", "cost_ci95_ns")),
    (bad(lambda o: o["sizes"][1].update(cost_ci95_ns=[300.0])), ("sizes[1]", "cost_ci95_ns")),
    (bad(lambda o: o["sizes"].__setitem__(0, 7)), ("sizes[0]",)),
    (bad(lambda o: o.update(host="Test CPU")), ("host",)),
])
def test_malformed_files_are_refused_in_one_line(tmp_path, content, words):
    p = write(tmp_path, content)
    with pytest.raises(MoveCostError) as e:
        MoveCostCurve.load(p)
    msg = str(e.value)
    assert isinstance(e.value, ConvertError) and e.value.code == 2
    assert len(msg.splitlines()) == 1 and msg.startswith(str(p)), msg
    for w in words:
        assert w in msg, msg


def test_a_missing_file_and_a_directory_are_refused(tmp_path):
    with pytest.raises(MoveCostError, match="no such file"):
        MoveCostCurve.load(tmp_path / "nope.json")
    with pytest.raises(MoveCostError, match="not a regular file"):
        MoveCostCurve.load(tmp_path)


@pytest.mark.parametrize("text, value", [("1048576", 1 << 20), ("16K", 16 * KIB),
                                         ("2M", 2 << 20), ("1G", 1 << 30), ("64k", 64 * KIB)])
def test_byte_counts_with_binary_suffixes(text, value):
    assert move_cost.parse_bytes(text) == value


@pytest.mark.parametrize("text", ["", "K", "1.5M", "-4K", "12Q", "0x10"])
def test_byte_counts_that_are_not(text):
    with pytest.raises(MoveCostError):
        move_cost.parse_bytes(text)


def test_the_reader_imports_neither_tensorflow_nor_the_bpf_extension():
    code = ("import sys, mlsched.train.move_cost as m; "
            "bad = [n for n in sys.modules if n.startswith('tensorflow')"
            " or n == 'mlsched.runtime._bpf']; print(bad)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"
