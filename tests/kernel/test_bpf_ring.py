"""Injector -> ring -> poll -> write-back -> the kernel's reader, on the real kernel."""

from __future__ import annotations

import time

import numpy as np
import pytest

from support.tables import STAY, N, synthetic_table

pytestmark = pytest.mark.bpf

ANSWERED, MISSING, OVERWRITTEN = 0, 1, 2


def poll_all(kp, max_records=4096):
    """Every record currently in the ring, in batches of at most max_records."""
    parts = []
    while True:
        batch = kp.poll(timeout_ms=0, max_records=max_records)
        if len(batch) == 0:
            return np.concatenate(parts) if parts else np.zeros(0, kp.request_dtype)
        assert len(batch) <= max_records
        parts.append(batch.copy())


def test_written_decisions_are_what_the_kernel_reads(kernel_path):
    kp = kernel_path(synthetic_table(), ring_size=4 << 20, consumer_timeout_ns=0)
    res = kp.inject(generate=30000, seed=5, gen_ncpus=N, bypass_table=True)
    assert res.sent == 30000

    seqs, decided = [], []
    while True:
        batch = kp.poll(timeout_ms=0, max_records=1000)
        if len(batch) == 0:
            break
        # a decision that depends on the record: MIGRATE when src is busier than dst
        d = (batch["f"]["src_load"] > batch["f"]["dst_load"]).astype(np.uint8)
        assert kp.answer(batch, d) == len(batch)
        seqs.append(batch["seq"].copy())
        decided.append(d)
    seqs, decided = np.concatenate(seqs), np.concatenate(decided)
    assert len(seqs) == 30000 and len(np.unique(seqs)) == 30000
    np.testing.assert_array_equal(np.sort(seqs), np.arange(res.first_seq, res.last_seq + 1))

    read = kp.read_decisions(res.first_seq, res.last_seq - res.first_seq + 1)
    order = np.argsort(seqs)
    np.testing.assert_array_equal(read.decision, decided[order])
    assert read.answered == 30000 and read.missing == 0 and read.overwritten == 0
    assert (read.status == ANSWERED).all()
    assert read.migrate == int(decided.sum())

    # answering again changes nothing and is counted, never stored twice
    before = kp.stats()
    flipped = 1 - decided
    assert kp.write_back(seqs, flipped) == 0
    after = kp.stats()
    assert after["double_answers"] - before["double_answers"] == 30000
    assert after["written"] == before["written"] == 30000
    np.testing.assert_array_equal(kp.read_decisions(res.first_seq, 30000).decision,
                                  decided[order])
    assert kp.stats()["answered"] == 60000   # two reads of 30000


def test_unanswered_and_aliased_seqs_read_as_stay(kernel_path):
    kp = kernel_path(synthetic_table(), consumer_timeout_ns=0, decision_slots=64)
    res = kp.inject(generate=200, seed=9, gen_ncpus=N, bypass_table=True)
    batch = poll_all(kp)
    assert len(batch) == 200
    # answer only the last 64 (they fill every slot); the older ones were aliased away
    last = batch[-64:]
    kp.write_back(last["seq"], np.ones(64, np.uint8))
    read = kp.read_decisions(res.first_seq, 200)
    assert read.answered == 64 and read.overwritten == 136 and read.missing == 0
    assert (read.decision[:136] == STAY).all() and (read.decision[136:] == 1).all()
    # answering an old seq now is refused: its slot belongs to a newer one
    before = kp.stats()["late_answers"]
    assert kp.write_back(batch["seq"][:10], np.ones(10, np.uint8)) == 0
    assert kp.stats()["late_answers"] - before == 10
    # a seq not yet issued reads as missing
    ahead = kp.read_decisions(res.last_seq + 1, 5)
    assert ahead.missing == 5 and ahead.answered == 0
    stats = kp.stats()
    assert stats["stale"] == 136 + 5


def test_overflow_counts_drops_and_answers_the_rest(kernel_path):
    # one page of ring: 4096 bytes / 64 per record -> fewer than 64 records fit
    kp = kernel_path(synthetic_table(), ring_size=4096, consumer_timeout_ns=0)
    burst = 5000
    res = kp.inject(generate=burst, seed=77, gen_ncpus=N, bypass_table=True)
    assert res.sent + res.dropped == burst
    assert 0 < res.sent < 64 and res.dropped > burst - 64
    stats = kp.stats()
    assert stats["dropped"] == res.dropped and stats["produced"] == res.sent

    batch = poll_all(kp)
    assert len(batch) == res.sent
    kp.answer(batch, np.ones(len(batch), np.uint8))
    read = kp.read_decisions(res.first_seq, res.last_seq - res.first_seq + 1)
    assert read.answered == res.sent == res.last_seq - res.first_seq + 1

    # the drained ring takes the next burst
    again = kp.inject(generate=burst, seed=78, gen_ncpus=N, bypass_table=True)
    assert again.sent == res.sent and again.first_seq == res.last_seq + 1
    assert len(poll_all(kp)) == again.sent


def test_malformed_records_are_rejected_not_delivered(kernel_path):
    kp = kernel_path(synthetic_table(), consumer_timeout_ns=0)
    rec = np.array([[0, 1, N - 1, 100, 900]] * 7, np.uint32)
    kp.inject(rec, bypass_table=True, bad_version=True)
    kp.inject(rec, bypass_table=True, bad_size=True)
    good = kp.inject(rec[:3], bypass_table=True)
    batch = poll_all(kp)
    assert len(batch) == 3
    np.testing.assert_array_equal(batch["seq"], good.seq)
    assert kp.stats()["rejected"] == 14


def test_without_consumer_misses_are_stay_and_hits_still_answered(kernel_path):
    table = synthetic_table()
    kp = kernel_path(table, consumer_timeout_ns=1_000_000)   # 1 ms
    kp.heartbeat()
    time.sleep(0.05)                                         # heartbeat now 50x too old
    rec = np.array([[c, i, N - i, s, d] for c in range(N) for i in range(N + 1)
                    for s in (0, 512, 1024) for d in (0, 512, 1024)], np.uint32)
    res = kp.inject(rec)
    sure = np.isin(table[rec[:, 0], rec[:, 1], rec[:, 3] * 10 // 1024, rec[:, 4] * 10 // 1024],
                   (0, 1))
    assert res.hits == int(sure.sum())
    assert res.no_consumer == len(rec) - res.hits and res.sent == 0
    assert (res.result[~sure] == STAY).all()
    assert kp.stats()["no_consumer"] == res.no_consumer
    assert len(poll_all(kp)) == 0
    # poll() is a heartbeat: the consumer is back
    assert kp.inject(rec).sent == len(rec) - res.hits


def test_engine_answers_reach_the_kernel(kernel_path):
    """Kernel hits, engine decisions written back and the interpreter all agree."""
    from mlsched.runtime.bundle import load_bundle
    from mlsched.runtime.engine import Engine

    try:
        engine = Engine(load_bundle(None))
    except Exception as exc:  # no bundle / no interpreter backend in this checkout
        pytest.skip(f"default bundle unusable here: {exc}")
    n = engine.ncpus
    kp = kernel_path(engine.table, consumer_timeout_ns=0)
    from support.traffic import generated_features

    feats = generated_features(2024, 20000, n, invalid_pct=5)
    res = kp.inject(feats)
    hits = res.fate == 0
    # kernel hits equal the engine's answer for the same wire features
    np.testing.assert_array_equal(res.result[hits], engine.decide_wire(feats[hits]))

    batch = poll_all(kp)
    assert len(batch) == res.sent
    d = engine.decide_wire(batch["f"])
    kp.answer(batch, d)
    raw = np.stack([batch["f"][c].astype(np.float64) for c in ("cpu", "idle", "busy")]
                   + [batch["f"][c] / 1024.0 for c in ("src_load", "dst_load")], axis=1)
    np.testing.assert_array_equal(d, engine.interpreter_decide(raw))

    read = kp.read_decisions(res.first_seq, res.last_seq - res.first_seq + 1)
    assert read.answered == res.sent
    np.testing.assert_array_equal(read.decision, d[np.argsort(batch["seq"])])


def test_serve_round_polls_decides_and_answers_one_batch(kernel_path):
    """The one step every consumer is built of: what decide() returns is what the kernel
    side reads back, for exactly the batch poll() returned; nothing on the ring: None."""
    from mlsched.runtime.wire import MIGRATE, STAY

    kp = kernel_path(None, consumer_timeout_ns=0)
    assert kp.serve_round(lambda b: np.zeros(len(b), np.uint8), timeout_ms=0) is None
    sent = kp.inject(generate=300, seed=5, gen_ncpus=4, bypass_table=True)
    assert sent.sent == 300
    seen = []

    def decide(batch):
        seen.append(batch["seq"].copy())
        return np.where(batch["seq"] % 2 == 0, MIGRATE, STAY).astype(np.uint8)

    r = kp.serve_round(decide, timeout_ms=1000, max_records=4096)
    assert r is not None and r.stored == len(r.batch) == 300
    assert list(seen[0]) == list(range(sent.first_seq, sent.last_seq + 1))
    assert r.polled_at <= r.decided_at <= r.answered_at
    rb = kp.read_decisions(sent.first_seq, 300)
    assert rb.answered == 300
    want = [MIGRATE if s % 2 == 0 else STAY for s in range(sent.first_seq, sent.last_seq + 1)]
    assert list(rb.decision) == want
