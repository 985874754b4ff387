"""Answers from two writers on one pinned `decisions` map: each seq is stored at most once and
a slot never goes back to an older seq. Real kernel, two handles on one private BPF
filesystem, two threads storing at once (the C calls run without the GIL)."""

from __future__ import annotations

import threading

import numpy as np
import pytest

pytestmark = pytest.mark.bpf

N = 2_000_000
ROUNDS = 6


def test_racing_writers_store_each_seq_once(kernel_path, bpffs):
    from mlsched.runtime.kernel import KernelPath

    pin_dir = str(bpffs / "mlsched")
    owner = KernelPath().load(None, pin=True, pin_dir=pin_dir, consumer_timeout_ns=0)
    joined = KernelPath().load(None, pin=True, pin_dir=pin_dir, share=True)
    try:
        slots = owner.decision_slots
        decisions = owner._view(0)          # lib.MLS_MAP_DECISIONS, read directly
        barrier = threading.Barrier(2)
        stored: dict[str, list[int]] = {"owner": [], "joined": []}

        def writer(name, kp, seqs):
            d = np.zeros(len(seqs), np.uint8)
            barrier.wait()
            stored[name].append(kp.write_back(seqs, d))

        excess = []
        for r in range(ROUNDS):
            # every seq lands in slot 1, in ascending order, written by both
            seqs = (1 + slots * (r * N + np.arange(N))).astype(np.uint64)
            threads = [threading.Thread(target=writer, args=("owner", owner, seqs)),
                       threading.Thread(target=writer, args=("joined", joined, seqs))]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            both = stored["owner"][-1] + stored["joined"][-1]
            excess.append(both - N)
            assert int(decisions[1]) >> 8 == int(seqs[-1]), "the slot went back to an older seq"
        assert max(excess) <= 0, f"seqs stored twice: {excess}"
    finally:
        joined.close()
        owner.unpin()
        owner.close()
