"""Hostile ring records on the real kernel: the injector's bad_version / bad_size records are
skipped and counted rejected; the good records around them are delivered in order, answered and
read back by the kernel side as the engine's decisions. Shared parts: support/hostile.py.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from support.hostile import (  # noqa: F401 - report_runs: the autouse fixture
    FEW_SETTINGS,
    MANY_SETTINGS,
    counted,
    engine,
    report_runs,
)


# ---- ring-buffer records on the real kernel --------------------------------------------------
def _bpf_or_skip():
    from conftest import REQUIRE_BPF_ENV, bpf_unavailable_reason

    reason = bpf_unavailable_reason()
    if reason is not None:
        if os.environ.get(REQUIRE_BPF_ENV) == "1":
            pytest.fail(f"BPF required but unavailable: {reason}")
        pytest.skip(f"BPF unavailable: {reason}")


@pytest.fixture(scope="module")
def ring():
    """One kernel path for every example: 1 MiB ring, no consumer timeout."""
    _bpf_or_skip()
    from mlsched.runtime.injector import Injector

    kp = Injector().load(engine().table, consumer_timeout_ns=0)
    yield kp
    kp.close()


def poll_all(kp) -> np.ndarray:
    parts = []
    while True:
        batch = kp.poll(timeout_ms=0, max_records=4096)
        if len(batch) == 0:
            return np.concatenate(parts) if parts else np.zeros(0, kp.request_dtype)
        parts.append(batch.copy())


u32 = st.one_of(st.integers(0, 2**32 - 1),
                st.sampled_from([0, 1, 7, 8, 9, 512, 1023, 1024, 1025, 2**31, 2**32 - 1]))
wire_rows = st.integers(1, 12).flatmap(
    lambda n: hnp.arrays(np.uint32, (n, 5), elements=u32))
ring_op = st.tuples(st.sampled_from(["good", "good", "bad_version", "bad_size", "bad_both"]),
                    wire_rows, st.booleans())


def check_ring(kp, ops) -> None:
    """Malformed records vanish (counted ``rejected``); the good ones around them arrive in
    order with their features intact, and the answers the kernel reads back are the engine's."""
    counted("ring_records")
    e = engine()
    before = kp.stats()
    good_seq, good_feats, bad = [], [], 0
    for kind, feats, bypass in ops:
        r = kp.inject(feats, bypass_table=bypass or kind != "good",
                      bad_version=kind in ("bad_version", "bad_both"),
                      bad_size=kind in ("bad_size", "bad_both"))
        assert r.dropped == 0 and r.no_consumer == 0
        if kind != "good":
            bad += len(feats)
            continue
        hit = r.fate == 0
        # kernel table hits equal the engine on the same wire features, whatever the values
        np.testing.assert_array_equal(r.result[hit], e.decide_wire(feats[hit]))
        sent = r.seq != 0
        good_seq.append(r.seq[sent])
        good_feats.append(feats[sent])
    batch = poll_all(kp)
    after = kp.stats()
    assert after["rejected"] - before["rejected"] == bad
    seqs = np.concatenate(good_seq) if good_seq else np.zeros(0, np.uint64)
    feats = np.concatenate(good_feats) if good_feats else np.zeros((0, 5), np.uint32)
    np.testing.assert_array_equal(batch["seq"], seqs)
    got = np.stack([batch["f"][k] for k in ("cpu", "idle", "busy", "src_load", "dst_load")], 1)
    np.testing.assert_array_equal(batch["raw_cpu"], feats[:, 0])
    # the table covers CPUs 0..N-1 (this host's online CPUs have no gap): their index is
    # their id; any other CPU has none
    want = feats.astype(np.uint32).reshape(-1, 5)
    want[want[:, 0] >= e.ncpus, 0] = 2**32 - 1
    np.testing.assert_array_equal(got.reshape(-1, 5), want)
    if len(batch):
        d = e.decide_wire(batch["f"])
        assert kp.answer(batch, d) == len(batch)
        first = int(seqs.min())
        rb = kp.read_decisions(first, int(seqs.max()) - first + 1)
        idx = (seqs - first).astype(np.int64)
        assert (rb.status[idx] == 0).all()
        np.testing.assert_array_equal(rb.decision[idx], d)


@FEW_SETTINGS
@given(st.lists(ring_op, min_size=1, max_size=6))
def test_ring_records(ring, ops):
    check_ring(ring, ops)


@pytest.mark.slow
@MANY_SETTINGS
@given(st.lists(ring_op, min_size=1, max_size=6))
def test_ring_records_many(ring, ops):
    check_ring(ring, ops)


#: Injector calls of 200,000 misses each beside the heartbeating thread: a count, not a window.
LIVE_CONSUMER_CALLS = 6


def test_live_consumer_is_never_taken_for_gone(require_bpf):
    """A consumer that heartbeats constantly while requests pour in: no miss may count
    ``no_consumer`` (a heartbeat newer than the producer's clock reading must not wrap)."""
    import threading

    from mlsched.runtime.injector import Injector

    with Injector() as kp:
        kp.load(engine().table, consumer_timeout_ns=1_000_000_000)
        kp.heartbeat()
        stop = threading.Event()

        def beat():
            while not stop.is_set():
                kp.heartbeat()
        t = threading.Thread(target=beat)
        t.start()
        kp.load_injector()
        done = nc = 0
        try:
            for seed in range(1, 1 + LIVE_CONSUMER_CALLS):
                r = kp.inject(generate=200_000, seed=seed, gen_ncpus=8, bypass_table=True)
                done, nc = done + r.done, nc + r.no_consumer
                kp.drain(idle_timeout_ms=0)
        finally:
            stop.set()
            t.join()
        print(f"\n{done} misses beside a heartbeating consumer: {nc} counted no_consumer")
        assert done == LIVE_CONSUMER_CALLS * 200_000
        assert nc == 0 and kp.stats()["no_consumer"] == 0
