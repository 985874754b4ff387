"""The record file ``run --record`` writes: its columns, domains included, without the kernel."""

from __future__ import annotations

import numpy as np
import pytest

from mlsched.runtime.errors import UsageError
from mlsched.runtime.recorder import RECORD_HEADER, Recorder
from mlsched.runtime.wire import LOAD_ONE, REQUEST_DTYPE

CPU_NONE = 0xFFFFFFFF


def batch(rows):
    """Ring records from (raw_cpu, cpu_index, idle, busy, src, dst, cfs_action, dst_cpu)."""
    b = np.zeros(len(rows), dtype=REQUEST_DTYPE)
    for i, (raw, index, idle, busy, src, dst, cfs, dst_cpu) in enumerate(rows):
        b[i]["raw_cpu"], b[i]["dst_cpu"], b[i]["cfs_action"] = raw, dst_cpu, cfs
        b[i]["f"]["cpu"], b[i]["f"]["idle"], b[i]["f"]["busy"] = index, idle, busy
        b[i]["f"]["src_load"], b[i]["f"]["dst_load"] = src, dst
        b[i]["source"], b[i]["pid"], b[i]["ts_ns"] = 1, 100 + i, 5000 + i
    return b


def test_rows_carry_the_domains_of_cpu_and_destination(tmp_path):
    path = tmp_path / "r.csv"
    rec = Recorder(str(path))
    rec.set_domains([[0, 1], [2, 3]])
    rec.add(batch([(1, 1, 2, 2, LOAD_ONE // 2, LOAD_ONE // 4, 1, 3),     # across domains
                   (2, 2, 2, 2, LOAD_ONE, 0, 1, 3),                      # inside domain 1
                   (0, 0, 1, 3, 0, LOAD_ONE, 0, CPU_NONE),               # stay: no destination
                   (9, 0, 1, 3, 0, 0, 1, 1)]),                           # cpu in no domain
            np.array([1, 0, 0, 1], dtype=np.uint8))
    rec.close()
    lines = path.read_text().splitlines()
    assert lines[0] == ("cpu,cpu_idle,cpu_not_idle,src_dom_load,dst_dom_load,cfs_action,"
                        "decision,source,pid,ts_ns,src_domain,dst_domain")
    assert lines[0] + "\n" == RECORD_HEADER
    assert lines[1:] == ["1,2,2,0.5,0.25,1,1,1,100,5000,0,1",
                         "2,2,2,1,0,1,0,1,101,5001,1,1",
                         "0,1,3,0,1,0,0,1,102,5002,0,",
                         "0,1,3,0,0,1,1,1,103,5003,,0"]


def test_without_domains_the_domain_fields_are_empty(tmp_path):
    path = tmp_path / "r.csv"
    rec = Recorder(str(path))
    rec.add(batch([(1, 1, 2, 2, 0, 0, 1, 3)]), np.array([0], dtype=np.uint8))
    rec.close()
    assert path.read_text().splitlines()[1] == "1,2,2,0,0,1,0,1,100,5000,,"


def test_a_file_with_another_header_is_not_appended_to(tmp_path):
    path = tmp_path / "old.csv"
    path.write_text("cpu,cpu_idle,cpu_not_idle,src_dom_load,dst_dom_load,cfs_action,decision,"
                    "source,pid,ts_ns\n3,2,6,0.25,0.75,1,0,1,42,123\n")
    before = path.read_bytes()
    with pytest.raises(UsageError, match="header"):
        Recorder(str(path))
    assert path.read_bytes() == before
