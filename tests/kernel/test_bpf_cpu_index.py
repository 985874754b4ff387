"""The kernel table is keyed on a CPU's place among the table's CPUs, not on its id:
with a gap in the online mask (online "0,2-3": N = 3) CPU 3 is answered from the table,
and with ``--cpus`` below the host's count the collector counts only the table's CPUs
idle or busy, so idle + busy == N can hold. Real kernel, real injector and tracepoints."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

pytestmark = pytest.mark.bpf

LEVELS = 11


def _sysfs_with_online(root, online: str):
    """A sysfs CPU directory whose online mask is ``online`` (no caches: one domain per CPU)."""
    root.mkdir(exist_ok=True)
    (root / "online").write_text(online + "\n")
    return str(root)


def test_a_cpu_past_a_gap_is_answered_from_the_table(kernel_path, tmp_path):
    from mlsched.runtime._bpf import lib

    from mlsched.runtime import wire

    sysfs = _sysfs_with_online(tmp_path / "cpu", "0,2-3")
    n = 3
    table = np.full((n, n + 1, LEVELS, LEVELS), wire.STAY, dtype=np.uint8)
    table[2] = wire.MIGRATE             # the third online CPU: CPU 3
    table[2, 1, 10, 10] = wire.UNSURE   # ... but ask user space at full loads
    kp = kernel_path(table, ncpus=n, sysfs=sysfs, consumer_timeout_ns=0)
    # CPU 3 with 1 of 3 CPUs idle; CPU 0 likewise; CPU 1 is offline: not in the table
    feats = np.array([[3, 1, 2, 512, 0], [0, 1, 2, 512, 0], [1, 1, 2, 512, 0],
                      [3, 1, 2, 1024, 1024]], dtype=np.int64)
    r = kp.inject(feats, ignore_consumer=True)
    assert list(r.reason[:2]) == [wire.REASON_HIT, wire.REASON_HIT], \
        f"reasons {list(r.reason)}: CPU 3 of online 0,2-3 missed the 3-CPU table"
    assert list(r.result[:2]) == [wire.MIGRATE, wire.STAY]
    assert r.reason[2] == lib.MLSCHED_REASON_OFF_GRID, "an offline CPU was answered"
    assert r.reason[3] == lib.MLSCHED_REASON_UNSURE
    batch = kp.poll(timeout_ms=200)
    got = {int(rec["raw_cpu"]): (int(rec["f"]["cpu"]), int(rec["reason"])) for rec in batch}
    # user space is asked about CPU 3 as the table's third CPU; CPU 1 has no place
    assert got == {3: (2, lib.MLSCHED_REASON_UNSURE),
                   1: (lib.MLSCHED_CPU_NONE, lib.MLSCHED_REASON_OFF_GRID)}


def _spin_for(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(0.0005)      # switch often, so every CPU is seen


def test_cpus_below_the_host_count_idle_plus_busy_is_n(kernel_path):
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip("needs two CPUs")
    n = len(cpus) - 1
    kp = kernel_path(None, ncpus=n, consumer_timeout_ns=0)
    affinity = os.sched_getaffinity(0)
    kp.attach_collector(report_hits=False)
    try:
        for cpu in cpus:            # run on every CPU so each one switches at least once
            os.sched_setaffinity(0, {cpu})
            _spin_for(0.05)
        host = kp.host()
    finally:
        os.sched_setaffinity(0, affinity)
        kp.detach_collector()
    assert host["idle_cpus"] + host["busy_cpus"] == n, \
        f"idle {host['idle_cpus']} + busy {host['busy_cpus']} under --cpus {n}"


def test_a_short_or_bad_cpu_list_is_refused(kernel_path):
    from mlsched.runtime._bpf import ffi, lib

    kp = kernel_path(None, table_capacity=4)
    k = kp._handle()
    cpus = np.array([0, 1, 2, 3], np.uint32)
    assert lib.mls_set_cpu_index(k, ffi.from_buffer("uint32_t[]", cpus), 3, 4) < 0
    assert "entries" in ffi.string(lib.mls_last_error()).decode()
    twice = np.array([0, 1, 1, 3], np.uint32)
    assert lib.mls_set_cpu_index(k, ffi.from_buffer("uint32_t[]", twice), 4, 4) < 0
    assert "twice" in ffi.string(lib.mls_last_error()).decode()
    far = np.array([0, 1, 2, lib.MLSCHED_MAX_CPUS], np.uint32)
    assert lib.mls_set_cpu_index(k, ffi.from_buffer("uint32_t[]", far), 4, 4) < 0
    assert lib.mls_set_cpu_index(k, ffi.from_buffer("uint32_t[]", cpus), 4, 4) == 0


def test_table_cpus_follow_the_online_mask(tmp_path):
    from mlsched.runtime import topology

    sysfs = _sysfs_with_online(tmp_path / "cpu", "0,2-3")
    assert topology.table_cpus(None, sysfs) == [0, 2, 3]
    assert topology.table_cpus(2, sysfs) == [0, 2]
    assert topology.table_cpus(5, sysfs) == [0, 2, 3, 4, 5]
