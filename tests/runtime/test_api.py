"""The library API: MLScheduler / MigrationFeatures, default bundle, counters, no TensorFlow."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlsched.runtime import (
    BundleError,
    EngineError,
    MigrationFeatures,
    MLScheduler,
    default_bundle_path,
)
from mlsched.runtime.bundle import Bundle
from mlsched.runtime.wire import MIGRATE, STAY
from support.scenarios import SCENARIOS, teacher_decisions


@pytest.fixture(scope="module")
def sched() -> MLScheduler:
    return MLScheduler()


def test_readme_example():
    s = MLScheduler()
    assert s.should_migrate(MigrationFeatures(cpu=4, cpu_idle=2, cpu_not_idle=6,
                                              src_dom_load=0.9, dst_dom_load=0.2)) is True


@pytest.mark.parametrize("use_path", [False, True])
def test_reference_scenarios(bundle8_path, use_path):
    s = MLScheduler(bundle8_path if use_path else None)
    expected = [d == MIGRATE for d in teacher_decisions(SCENARIOS)]
    got = [s.should_migrate(MigrationFeatures(*row)) for row in SCENARIOS]
    assert got == expected == [True, False, False]
    assert list(s.should_migrate_batch([MigrationFeatures(*r) for r in SCENARIOS])) == expected
    assert list(s.should_migrate_batch(np.array(SCENARIOS))) == expected


def test_default_bundle_is_the_shipped_one(bundle8_path):
    p = default_bundle_path()
    assert p.name == "default_bundle" and p.parent.name == "runtime"
    assert Bundle.load(p).manifest["files"] == Bundle.load(bundle8_path).manifest["files"]


def test_batch_equals_single_and_counters(bundle8_path):
    s = MLScheduler(bundle8_path)
    rng = np.random.default_rng(7)
    idle = rng.integers(0, 9, 300)
    x = np.stack([rng.integers(0, 8, 300), idle, 8 - idle, rng.random(300), rng.random(300)], 1)
    x[::10, 2] += 1                         # some misses
    x[5, 3] = np.nan                        # one invalid
    x[6, 4] = 1.5                           # one clamped
    batch = s.should_migrate_batch(x)
    single = [s.should_migrate(MigrationFeatures(*row)) for row in x.tolist()]
    assert list(batch) == single
    st_ = s.stats
    assert st_.requests == 600
    assert st_.invalid == 2 and st_.clamped == 2
    assert st_.hits + st_.misses + st_.invalid == st_.requests
    assert st_.misses >= 60 and st_.interpreter_rows == st_.misses
    r = s.decide_batch(x)
    assert r.source.shape == (300,)
    before = s.stats
    s.should_migrate(MigrationFeatures(4, 2, 6, 0.9, 0.2))
    assert s.stats.requests == before.requests + 1       # stats is a snapshot
    assert before.requests == 900


def test_decide_gives_source_and_probability(sched):
    d = sched.decide(MigrationFeatures(4, 2, 6, 0.9, 0.2), probability=True)
    assert d.decision == MIGRATE and d.name == "MIGRATE" and d.migrate
    assert d.source in ("table", "interpreter") and 0.5 < d.probability <= 1.0
    assert sched.decide((1, 7, 1, 0.1, 0.1)).decision == STAY


def test_missing_bundle_and_too_many_cpus(tmp_path, bundle8_path):
    with pytest.raises(BundleError, match="no such bundle"):
        MLScheduler(tmp_path / "nope")
    with pytest.raises(EngineError, match="converted for 8"):
        MLScheduler(bundle8_path, ncpus=64)
    s = MLScheduler(bundle8_path, ncpus=2)
    assert s.engine.derived and s.engine.ncpus == 2


value = st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                  st.integers(min_value=-(10**400), max_value=10**400),
                  st.text(max_size=4), st.none())


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.tuples(value, value, value, value, value))
def test_bad_values_never_raise(row):
    s = _shared()
    assert s.should_migrate(MigrationFeatures(*row)) in (True, False)


_SCHED: list[MLScheduler] = []


def _shared() -> MLScheduler:
    if not _SCHED:
        _SCHED.append(MLScheduler())
    return _SCHED[0]


NO_TF_SCRIPT = r"""
import json, sys
from mlsched.runtime import MLScheduler, MigrationFeatures
from mlsched.runtime.cli import main
s = MLScheduler(backend=sys.argv[1])
a = s.should_migrate(MigrationFeatures(4, 2, 6, 0.9, 0.2))
b = s.should_migrate(MigrationFeatures(4, 2, 7, 0.9, 0.2))      # off-grid: interpreter
code = main(["decide", "--backend", sys.argv[1], "--cpu", "4", "--idle", "2", "--busy", "6",
             "--src-load", "0.9", "--dst-load", "0.2", "--json"])
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras", "tf_keras"))
print(json.dumps({"a": a, "b": b, "code": code, "heavy": heavy, "misses": s.stats.misses}))
"""


@pytest.mark.parametrize("backend", ["auto", "litert", "tflite-runtime"])
def test_runtime_never_loads_tensorflow(backend):
    from mlsched.runtime.interp import available_backends

    if backend != "auto" and backend not in available_backends():
        pytest.skip(f"{backend} not installed")
    p = subprocess.run([sys.executable, "-c", NO_TF_SCRIPT, backend], capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out["heavy"] == []
    assert out["a"] is True and out["code"] == 0 and out["misses"] == 1
