"""A KernelPath after close(): numpy views of its memory-mapped maps stay safe to touch, the
handle loads again and polls, and the C entry points refuse a buffer shorter than the
geometry they are told. Real kernel; the view test runs in a child, since the failure is
a SIGSEGV."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytestmark = pytest.mark.bpf

CHILD = textwrap.dedent("""
    from mlsched.runtime.injector import Injector
    kp = Injector().load(None, table_capacity=4)
    ctl = kp.control
    host = kp._view(2)
    table = kp._view(3)
    kp.close()
    del kp
    ctl["flags"] = 3
    table[0, :] = 7
    print(int(ctl["flags"][0]), int(host["seq"][0]), int(table[0, 5]))
""")


def test_views_outlive_close(require_bpf):
    r = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, f"exit {r.returncode}: {r.stderr[-500:]}"
    assert r.stdout.split() == ["3", "0", "7"]


def test_load_after_close_polls(kernel_path):
    from mlsched.runtime.injector import Injector

    kp = Injector().load(None, consumer_timeout_ns=0)
    try:
        assert len(kp.poll(timeout_ms=0)) == 0
        kp.close()
        kp.load(None, table_capacity=2, consumer_timeout_ns=0)
        kp.inject(np.array([[0, 1, 1, 512, 512]]), bypass_table=True)
        batch = kp.poll(timeout_ms=100)
        assert len(batch) == 1 and int(batch["f"]["src_load"][0]) == 512
    finally:
        kp.close()


def test_short_buffers_are_refused(kernel_path):
    from mlsched.runtime._bpf import ffi, lib

    kp = kernel_path(None, table_capacity=4)
    k = kp._handle()
    rows = np.zeros(4 * 5 * lib.MLSCHED_ROW_BYTES, np.uint8)
    short = ffi.from_buffer("uint8_t[]", rows[:-1])
    assert lib.mls_set_table(k, short, len(rows) - 1, 4, ffi.NULL, 0, ffi.NULL) < 0
    assert "bytes" in ffi.string(lib.mls_last_error()).decode()
    assert lib.mls_set_table(k, ffi.from_buffer("uint8_t[]", rows), len(rows), 4,
                             ffi.NULL, 0, ffi.NULL) == 0
    dom = np.zeros(4, np.uint32)
    assert lib.mls_set_domains(k, ffi.from_buffer("uint32_t[]", dom), 3, 4, 1) < 0
    assert lib.mls_set_domains(k, ffi.from_buffer("uint32_t[]", dom), 4, 4, 1) == 0
