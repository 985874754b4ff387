"""bench.lowrate: the stage split of its stamps, and one short run through the real ring."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]


def test_stages_split_waking_from_queued_batches():
    from bench.lowrate import stages

    # oldest_ts, polled, decided, answered, records (ns)
    stamps = np.array([
        [1_000, 1_050, 1_450, 1_470, 1],    # consumer asleep: woken after 50
        [1_300, 1_480, 1_900, 1_920, 2],    # came at 1300 while the first was decided
        [5_000, 5_070, 5_400, 5_410, 1],    # asleep again: woken after 70
    ], dtype=np.int64)
    got = stages(stamps)
    assert got["wake"].tolist() == [50, 70]
    assert got["queued"].tolist() == [180]
    assert got["decide"].tolist() == [400, 420, 330]
    assert got["answer"].tolist() == [20, 20, 10]
    assert got["total"].tolist() == [470, 620, 410]


def test_short_run_prints_every_stage(require_bpf):
    p = subprocess.run([sys.executable, "-m", "bench.lowrate", "--seconds", "0.3"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    lines = p.stdout.splitlines()
    assert lines[0].startswith("300 requests at ") and "traffic miss" in lines[0], p.stdout
    rows = {ln.split()[0]: ln.split()[1:] for ln in lines[2:]}
    assert set(rows) == {"wake", "queued", "decide", "answer", "total"}, p.stdout
    for stage in ("wake", "decide", "answer", "total"):
        p50, p90, p99, p999, batches = rows[stage]
        assert 0 < float(p50) <= float(p99) <= float(p999), (stage, rows[stage])
    assert int(rows["decide"][-1]) == int(rows["total"][-1]) <= 300
