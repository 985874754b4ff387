"""The in-kernel helper (mlsched_decide) against a user-space reference, on the real kernel.

The reference is written here from the contract, not from the code under test:
q(L) = floor(10 * min(L, 1024) / 1024 + 1/2) in floating point, key valid iff
cpu < N and idle + busy == N, table[cpu, idle, q(src), q(dst)], UNSURE and
off-grid keys -> a request on the ring and STAY.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from mlsched.runtime import wire
from support.tables import LEVELS, MIGRATE, STAY, N, synthetic_table

pytestmark = pytest.mark.bpf

FATE_HIT, FATE_SENT = 0, 1
REASON_UNSURE, REASON_OFF_GRID, REASON_BYPASS = 0, 1, 2
CPU_NONE = 2**32 - 1     # f.cpu of a request about a CPU outside the table


def q_ref(load: int) -> int:
    return math.floor(10 * min(load, 1024) / 1024 + 0.5)


def level_bounds() -> tuple[list[int], list[int]]:
    """Smallest and largest fixed-point load of each level, by brute force over 0..1024."""
    lo, hi = [None] * LEVELS, [None] * LEVELS
    for load in range(1025):
        q = q_ref(load)
        lo[q] = load if lo[q] is None else lo[q]
        hi[q] = load
    return lo, hi


def every_key_records(rng: np.random.Generator) -> np.ndarray:
    """Every (cpu, idle, q(src), q(dst)) of the N-CPU table twice (level bounds), then
    clamped loads and off-grid keys. [n, 5] uint32."""
    lo, hi = level_bounds()
    rows = []
    for bounds in (lo, hi):
        for cpu in range(N):
            for idle in range(N + 1):
                for qs in range(LEVELS):
                    for qd in range(LEVELS):
                        rows.append((cpu, idle, N - idle, bounds[qs], bounds[qd]))
    for _ in range(2000):   # loads above 1.0: clamped to level 10
        rows.append((rng.integers(N), (i := rng.integers(N + 1)), N - i,
                     rng.integers(0, 5000), rng.integers(0, 5000)))
    for cpu, idle, busy in ((N, 0, N), (N + 1, 3, N - 3), (1000, 2, N - 2), (0, N + 1, 0),
                            (3, 2, N - 1), (3, 2, N + 5), (0, 0, 0), (7, 4, 4 + 2**31)):
        for _ in range(5):
            rows.append((cpu, idle, busy, rng.integers(0, 1025), rng.integers(0, 1025)))
    return np.array(rows, dtype=np.uint64).astype(np.uint32)


def reference(table: np.ndarray, rec: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(decision, fate, reason) per record, computed row by row."""
    dec, fate, reason = [], [], []
    for cpu, idle, busy, src, dst in rec.tolist():
        valid = cpu < N and idle <= N and idle + busy == N
        cell = int(table[cpu, idle, q_ref(src), q_ref(dst)]) if valid else None
        if cell in (STAY, MIGRATE):
            dec.append(cell), fate.append(FATE_HIT), reason.append(3)
        else:
            dec.append(STAY), fate.append(FATE_SENT)
            reason.append(REASON_UNSURE if valid else REASON_OFF_GRID)
    return np.array(dec, np.uint8), np.array(fate, np.uint8), np.array(reason, np.uint8)


def drain_all(kp, expected: int) -> np.ndarray:
    """Poll until ``expected`` records arrived (they are already committed) or the ring is empty."""
    parts, got = [], 0
    while got < expected:
        batch = kp.poll(timeout_ms=0, max_records=65536)
        if len(batch) == 0:
            break
        parts.append(batch.copy())
        got += len(batch)
    return np.concatenate(parts) if parts else np.zeros(0, kp.request_dtype)


def test_quantization_reference_is_the_contract():
    # the reference equals the header's integer formula at every fixed-point load
    for load in range(0, 3000):
        assert q_ref(load) == (10 * min(load, 1024) + 512) >> 10


def test_helper_equals_reference_for_every_key(kernel_path):
    rng = np.random.default_rng(11)
    table = synthetic_table()
    kp = kernel_path(table, ring_size=4 << 20, consumer_timeout_ns=0)
    rec = every_key_records(rng)
    want_dec, want_fate, want_reason = reference(table, rec)

    res = kp.inject(rec, pid=4242)

    assert res.done == len(rec)
    np.testing.assert_array_equal(res.result, want_dec)
    np.testing.assert_array_equal(res.fate, want_fate)
    np.testing.assert_array_equal(res.reason, want_reason)
    assert res.hits == int((want_fate == FATE_HIT).sum())
    assert res.sent == int((want_fate == FATE_SENT).sum())
    assert res.dropped == 0 and res.no_consumer == 0

    # exactly the misses are on the ring, in order, with their features and distinct seqs
    ring = drain_all(kp, res.sent)
    sent = want_fate == FATE_SENT
    assert len(ring) == res.sent
    f = np.stack([ring["f"][n] for n in ("cpu", "idle", "busy", "src_load", "dst_load")], axis=1)
    want_f = rec[sent].copy()
    want_f[want_f[:, 0] >= N, 0] = CPU_NONE     # a CPU outside the table has no index
    np.testing.assert_array_equal(f, want_f)
    np.testing.assert_array_equal(ring["raw_cpu"], rec[sent][:, 0])
    np.testing.assert_array_equal(ring["seq"], res.seq[sent])
    assert len(np.unique(ring["seq"])) == len(ring)
    assert (res.seq[~sent] == 0).all()
    np.testing.assert_array_equal(ring["reason"], want_reason[sent])
    assert (ring["version"] == wire.ABI_VERSION).all() and (ring["size"] == kp.request_dtype.itemsize).all()
    assert (ring["kernel_decision"] == 255).all() and (ring["cfs_action"] == 255).all()
    assert (ring["pid"] == 4242).all() and (ring["source"] == 0).all()

    st = kp.stats()
    assert st["kernel_hits"] == res.hits
    assert st["misses_sent"] == st["produced"] == res.sent
    assert st["invalid"] == int((want_reason == REASON_OFF_GRID).sum())
    assert st["clamped"] == int((rec[:, 3] > 1024).sum() + (rec[:, 4] > 1024).sum())
    assert st["dropped"] == 0


def test_bypass_sends_every_record_with_exact_features(kernel_path):
    from support.traffic import generated_features

    table = synthetic_table()
    kp = kernel_path(table, ring_size=4 << 20, consumer_timeout_ns=0)
    res = kp.inject(generate=20000, seed=123456789, gen_ncpus=N, invalid_pct=10,
                    bypass_table=True)
    assert res.sent == 20000 and res.hits == 0 and res.migrate == 0
    ring = drain_all(kp, res.sent)
    want = generated_features(123456789, 20000, N, invalid_pct=10)
    got = np.stack([ring["f"][n] for n in ("cpu", "idle", "busy", "src_load", "dst_load")], axis=1)
    np.testing.assert_array_equal(ring["raw_cpu"], want[:, 0])
    want[want[:, 0] >= N, 0] = CPU_NONE
    np.testing.assert_array_equal(got, want)
    assert (ring["reason"] == REASON_BYPASS).all()
    np.testing.assert_array_equal(ring["seq"], np.arange(res.first_seq, res.last_seq + 1))
    assert kp.stats()["kernel_hits"] == 0


def test_generated_traffic_hits_like_the_reference(kernel_path):
    from support.traffic import generated_features

    table = synthetic_table(seed=3)
    kp = kernel_path(table, consumer_timeout_ns=0)
    res = kp.inject(generate=30000, seed=99, gen_ncpus=N, invalid_pct=5)
    _, fate, _ = reference(table, generated_features(99, 30000, N, invalid_pct=5))
    assert res.hits == int((fate == FATE_HIT).sum())
    assert res.sent == int((fate == FATE_SENT).sum())
    assert res.done == 30000
