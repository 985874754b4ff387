"""The manifest's feature mapping, honoured by every path: table building, the engine's float
and wire paths, the kernel's table, the API, decide and replay (no TensorFlow here).

The bundles under test are the default bundle's model with its inputs named anew
(support/remap.py): the loads swapped, or the dst load not read (a pad, reading zero). What
they must answer comes from the default bundle's own interpreter, fed by hand the columns
the mapping says: the default model's answer with the loads swapped, or with dst = 0.
"""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest

from mlsched.runtime import MigrationFeatures, MLScheduler
from mlsched.runtime.bundle import MANIFEST, Bundle, BundleError
from mlsched.runtime.cli import main as lite_main
from mlsched.runtime.engine import Engine
from mlsched.runtime.features import FEATURE_NAMES, InputMap, pad
from mlsched.runtime.interp import Model
from mlsched.runtime.wire import to_wire
from support.remap import NO_DST_LOAD, SWAPPED_LOADS, remapped

N = 8
ROWS = 20000


def traffic(rows: int, seed: int) -> np.ndarray:
    """Raw features [rows, 5] of an 8-CPU host, loads on the wire's 1/1024 grid."""
    rng = np.random.default_rng(seed)
    idle = rng.integers(0, N + 1, rows)
    loads = rng.integers(0, 1025, (rows, 2)) / 1024
    return np.column_stack([rng.integers(0, N, rows), idle, N - idle, loads])


def original(bundle8, x: np.ndarray) -> np.ndarray:
    """The default bundle's interpreter on raw features, fed as a version-1 bundle feeds it:
    the five features in order, five zero pads, counts / 8."""
    model = Model(bundle8.model_bytes, width=10)
    return model.decide(bundle8.normalization.apply(pad(x, 10)))


@pytest.fixture(scope="module")
def swapped(bundle8_path, tmp_path_factory) -> Path:
    return remapped(bundle8_path, SWAPPED_LOADS, tmp_path_factory.mktemp("map") / "swapped")


@pytest.fixture(scope="module")
def no_dst(bundle8_path, tmp_path_factory) -> Path:
    return remapped(bundle8_path, NO_DST_LOAD, tmp_path_factory.mktemp("map") / "no_dst")


def swap_loads(x: np.ndarray) -> np.ndarray:
    return x[:, [0, 1, 2, 4, 3]]


def zero_dst(x: np.ndarray) -> np.ndarray:
    y = x.copy()
    y[:, 4] = 0.0
    return y


# ---- the names table and the mapping --------------------------------------------------------

def test_names_table_is_the_api_and_the_request():
    """MigrationFeatures has a field per known name, in the request's order: a name added to
    the table without the API fails here."""
    assert tuple(f.name for f in fields(MigrationFeatures)) == FEATURE_NAMES


@pytest.mark.parametrize("spec,needle", [
    ("cpu,cpus", "unknown feature 'cpus'"),
    ("src_dom_load,cpu,src_dom_load", "'src_dom_load' named more than once"),
    ("cpu,,src_dom_load", "empty name"),
    ("pad,pad", "no known feature"),
    ("cpu,pad3", "write pad for a zero column"),
])
def test_bad_feature_names_refused(spec, needle):
    with pytest.raises(ValueError, match=needle):
        InputMap.parse(spec)


def test_mapping_selects_and_scales_by_name():
    m = InputMap.parse("dst_dom_load,pad,cpu_idle,src_dom_load")
    assert m.names == ("dst_dom_load", "pad0", "cpu_idle", "src_dom_load")
    assert m.reads == ("dst_dom_load", "cpu_idle", "src_dom_load")
    raw = np.array([[3, 5, 3, 0.25, 0.75]])
    np.testing.assert_array_equal(m.select(raw), np.float32([[0.75, 0, 5, 0.25]]))
    assert list(m.host_normalization(8).scale) == [1, 1, 8, 1]
    assert (m.input_of(3), m.input_of(4), m.input_of(0)) == (3, 0, None)
    assert not m.is_default and InputMap.default(10).is_default


# ---- an old bundle: as it always was ---------------------------------------------------------

def test_old_bundle_loads_and_answers_as_before(bundle8, bundle8_path, capfd):
    """The shipped bundle is version 1, with no mapping and no decision rule: it reads the
    five features in order, then pads, and its engine answers exactly its interpreter."""
    assert bundle8.manifest["format_version"] == 1 and "decision" not in bundle8.manifest
    assert bundle8.inputs == InputMap.default(10)
    x = traffic(ROWS, 1)
    got = Engine(bundle8).decide(x).decisions
    np.testing.assert_array_equal(got, original(bundle8, x))
    assert lite_main(["bundle", "verify", str(bundle8_path), "--cpus", "8"]) == 0
    out = capfd.readouterr().out
    assert "format        mlsched-bundle v1" in out and "input width   10 (five zero pads)" in out


def test_old_bundle_pads_need_no_names(bundle_copy):
    """A version-1 manifest's columns after the five were never read by name."""
    m = json.loads((bundle_copy / MANIFEST).read_text())
    m["features"]["names"][5:] = ["zero"] * 5
    (bundle_copy / MANIFEST).write_text(json.dumps(m))
    assert Bundle.load(bundle_copy).inputs == InputMap.default(10)


# ---- a remapped bundle: every path ----------------------------------------------------------

def test_swapped_table_is_the_original_transposed(swapped, bundle8):
    """Level 1 over (src, dst) of the swapped model is the original's over (dst, src)."""
    b = Bundle.load(swapped)
    assert b.manifest["format_version"] == 2 and b.inputs.names == tuple(SWAPPED_LOADS)
    np.testing.assert_array_equal(b.table, bundle8.table.transpose(0, 1, 3, 2))
    assert b.level2 is not None


def test_engine_paths_follow_the_mapping(swapped, bundle8):
    b = Bundle.load(swapped)
    e = Engine(b)
    x = traffic(ROWS, 2)
    want = original(bundle8, swap_loads(x))
    assert 0.2 < want.mean() < 0.8
    np.testing.assert_array_equal(e.decide(x).decisions, want)
    np.testing.assert_array_equal(e.interpreter_decide(x), want)
    ok, wire = to_wire(x)
    assert ok.all()
    np.testing.assert_array_equal(e.decide_wire(wire), want)
    np.testing.assert_array_equal(e.decide_wire(wire[:5]), want[:5])      # the per-row path
    assert e.counters.hits > 0.95 * e.counters.requests


def test_api_and_decide_follow_the_mapping(swapped, tmp_path, capfd):
    """The default model says MIGRATE for src .9, dst .2; the swapped one for src .2, dst .9."""
    s = MLScheduler(swapped)
    assert s.reads == ("cpu", "cpu_idle", "cpu_not_idle", "dst_dom_load", "src_dom_load")
    assert s.should_migrate(MigrationFeatures(cpu=4, cpu_idle=2, cpu_not_idle=6,
                                              src_dom_load=0.2, dst_dom_load=0.9)) is True
    assert s.should_migrate(MigrationFeatures(4, 2, 6, 0.9, 0.2)) is False
    code = lite_main(["decide", "--bundle", str(swapped), "--cpu", "4", "--idle", "2", "--busy",
                      "6", "--src-load", "0.2", "--dst-load", "0.9"])
    assert (code, capfd.readouterr().out.strip()) == (0, "MIGRATE")
    code = lite_main(["bundle", "verify", str(swapped), "--cpus", "8"])
    out = capfd.readouterr().out
    assert code == 0 and "format        mlsched-bundle v2" in out
    assert "inputs        cpu, cpu_idle, cpu_not_idle, dst_dom_load, src_dom_load" in out
    assert "MIGRATE when  probability output > 0.5" in out


def test_a_load_not_read_leaves_the_table_constant_along_it(no_dst, bundle8):
    b = Bundle.load(no_dst)
    assert b.inputs.reads == ("cpu", "cpu_idle", "cpu_not_idle", "src_dom_load")
    assert (b.table == b.table[:, :, :, :1]).all()
    assert b.level2 is not None
    x = traffic(ROWS, 3)
    want = original(bundle8, zero_dst(x))
    assert 0.05 < want.mean() < 0.95
    e = Engine(b)
    np.testing.assert_array_equal(e.decide(x).decisions, want)
    assert e.counters.hits == ROWS


def test_derived_table_follows_the_mapping(swapped, bundle8):
    """A table derived at start-up for a smaller host goes through the mapping too."""
    e = Engine(Bundle.load(swapped), ncpus=4)
    rng = np.random.default_rng(4)
    idle = rng.integers(0, 5, 4000)
    x = np.column_stack([rng.integers(0, 4, 4000), idle, 4 - idle,
                         rng.integers(0, 1025, (4000, 2)) / 1024])
    np.testing.assert_array_equal(e.decide(x).decisions, original(bundle8, swap_loads(x)))


@pytest.mark.parametrize("which", ["swapped", "no_dst"])
def test_replay_through_the_kernel_follows_the_mapping(which, swapped, no_dst, bundle8,
                                                      require_bpf):
    from mlsched.runtime.replay import Replayer

    path, expect = (swapped, swap_loads) if which == "swapped" else (no_dst, zero_dst)
    x = traffic(ROWS, 5)
    with Replayer(Engine(Bundle.load(path))) as r:
        got = r.decide(x)
        totals = r.totals
    np.testing.assert_array_equal(got, original(bundle8, expect(x)))
    assert totals.kernel_hits > 0.99 * ROWS and totals.dropped == 0


# ---- a version-2 manifest, checked ----------------------------------------------------------

def edit(path: Path, fn) -> None:
    m = json.loads((path / MANIFEST).read_text())
    fn(m)
    (path / MANIFEST).write_text(json.dumps(m))


BAD_V2 = {
    "unknown name": (lambda m: m["features"]["names"].__setitem__(0, "cpus"),
                     "unknown feature 'cpus'"),
    "name twice": (lambda m: m["features"]["names"].__setitem__(3, "src_dom_load"),
                   "'src_dom_load' named more than once"),
    "name not text": (lambda m: m["features"]["names"].__setitem__(0, 7), "must be strings"),
    "no width": (lambda m: m["features"].pop("width"), "feature width None"),
    "no decision": (lambda m: m.pop("decision"), "decision must be an object"),
    "threshold NaN": (lambda m: m["decision"].update(threshold=float("nan")),
                      "decision.threshold is nan"),
    "at least as text": (lambda m: m["decision"].update(migrate_at_least="yes"),
                         "decision.migrate_at_least"),
}


@pytest.mark.parametrize("case", sorted(BAD_V2))
def test_bad_version2_manifest_refused_in_one_line(case, swapped, tmp_path, capfd):
    import shutil

    path = tmp_path / "b"
    shutil.copytree(swapped, path)
    fn, needle = BAD_V2[case]
    edit(path, fn)
    with pytest.raises(BundleError, match=needle):
        Bundle.load(path)
    assert lite_main(["bundle", "verify", str(path), "--cpus", "8"]) == 2
    out, err = capfd.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1 and "Traceback" not in err
