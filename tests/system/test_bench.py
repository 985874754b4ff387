"""``make bench`` cannot rot: the whole benchmark at tiny sizes, every key present and sane."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _figures_ok(key: str, fig: dict) -> None:
    med = fig.get("median")
    if med is None:
        assert fig.get("reason"), f"{key} is null without a reason"
        return
    assert isinstance(med, (int, float)) and math.isfinite(med) and med > 0, (key, fig)
    if "min" in fig:
        assert fig["min"] <= med <= fig["max"], (key, fig)
        assert len(fig["reps"]) >= 1


def test_bench_tiny_run_writes_every_key(tmp_path):
    """Every key present and sane. How fast any of it is belongs to ``make bench``'s targets,
    not to this test: the timeout only catches a hang."""
    from bench import run

    out = tmp_path / "results.json"
    mounts_before = _bench_mounts()
    md = tmp_path / "PERFORMANCE.md"
    p = subprocess.run([sys.executable, "-m", "bench.run", "--profile", "tiny", "--out", str(out),
                        "--markdown", str(md)], cwd=ROOT, capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    res = json.loads(out.read_text())
    for key in ("cpu_model", "cores", "kernel", "python", "packages"):
        assert res["machine"][key], key
    for key in run.KEYS:
        assert key in res, key
        fig = res["figures"][key]
        if "median" in fig:
            _figures_ok(key, fig)
        else:                               # per backend
            assert fig, key
            for backend, f in fig.items():
                _figures_ok(f"{key}/{backend}", f)
    # with BPF here, the kernel figures must be real numbers, not reasons
    from conftest import bpf_unavailable_reason

    if bpf_unavailable_reason() is None:
        for key in ("kernel_lookup_ns_per_decision", "raw_ring_drain_per_s",
                    "pipeline_decisions_per_s", "pipeline_miss_decisions_per_s",
                    "latency_p50_us", "latency_p99_us", "latency_1k_p50_us",
                    "latency_1k_p99_us", "daemon_rss_mb"):
            assert res[key] is not None, (key, res["figures"][key])
        assert res["latency_p50_us"] <= res["latency_p99_us"]
        assert res["latency_1k_p50_us"] <= res["latency_1k_p99_us"]
        # the low-rate sessions send one request per injector call, answered by the interpreter
        low = res["details"]["pipeline"]["latency_1k"]
        assert low["inject_batch"] == 1
        for rep in low["reps"]:
            assert rep["summary"]["interpreter"] == rep["summary"]["records"] > 0
    # the markdown table names every key and the targets
    text = md.read_text()
    assert all(f"`{k}" in text for k in run.KEYS)
    assert "## Performance" in text and "| figure |" in p.stdout
    # nothing left behind: no private bpffs mount of this run
    assert _bench_mounts() <= mounts_before


def _bench_mounts() -> set[str]:
    return {line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()
            if "mlsched-bench-bpffs" in line}


# ---- the producer loop cannot hang ---------------------------------------------------------
SMALL_RING = 1 << 16                # 1024 records of 64 bytes


def _ring_path(kernel_path):
    return kernel_path(None, consumer_timeout_ns=0, ring_size=SMALL_RING).load_injector()


def _inject(kp, chunk=256):
    return lambda i: kp.inject(generate=chunk, seed=1 + i * chunk, gen_ncpus=4,
                               bypass_table=True)


def test_send_all_stops_when_the_consumer_stopped(kernel_path):
    """The consumer drains 2,000 records and returns; the producer must send 50,000 through a
    1,024-record ring. It ends with an error naming what happened, not an endless loop."""
    import threading

    from bench.common import RingStuck, send_all

    kp = _ring_path(kernel_path)
    got = {}
    th = threading.Thread(target=lambda: got.setdefault("n", kp.drain(target=2000,
                                                                      idle_timeout_ms=60_000)))
    th.start()
    with pytest.raises(RingStuck, match="raw ring: the consumer stopped after"):
        send_all(_inject(kp), 50_000, th.is_alive, "raw ring")
    th.join()
    assert got["n"] >= 2000


def test_send_all_stops_when_the_ring_stays_full(kernel_path):
    """No one drains, the consumer claims to be alive: the ring fills and the loop gives up
    once it has taken nothing for ``stuck_s``."""
    from bench.common import RingStuck, send_all

    kp = _ring_path(kernel_path)
    with pytest.raises(RingStuck, match="the ring took no record for"):
        send_all(_inject(kp), 50_000, lambda: True, "pipeline", stuck_s=0.2)
    assert kp.stats()["dropped"] > 0


def test_send_all_counts_what_the_ring_took(kernel_path):
    """With a consumer that keeps up, every record is sent exactly once and the seqs run on."""
    import threading

    from bench.common import send_all

    kp = _ring_path(kernel_path)
    got = {}
    th = threading.Thread(target=lambda: got.setdefault("n", kp.drain(target=20_000,
                                                                      idle_timeout_ms=60_000)))
    th.start()
    out = send_all(_inject(kp, chunk=500), 20_000, th.is_alive, "raw ring")
    th.join()
    rest = kp.drain(idle_timeout_ms=100)
    assert got["n"] >= 20_000 and got["n"] + rest == out.sent, "each record sent once"
    assert 20_000 <= out.sent < 20_000 + 500, "sent counts only what the ring took"
    assert out.calls * 500 == out.sent + out.dropped
