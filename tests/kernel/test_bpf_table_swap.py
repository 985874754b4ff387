"""Table swaps while the kernel side decides: a reader never combines the old table's geometry
with the new table's cells. Real kernel: the injector decides in one thread while another
swaps two tables of different sizes as fast as it can."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

pytestmark = pytest.mark.bpf

STAY, MIGRATE = 0, 1
#: The injector decides until the other thread has swapped this often: a count of swaps,
#: however long a busy machine takes to make them. HANG_S only catches a hang.
MIN_SWAPS = 2000
MIN_INJECTIONS = 20
HANG_S = 300.0


def test_reader_never_mixes_two_tables(kernel_path):
    from mlsched.runtime.wire import table_rows

    # A: 4 CPUs, every cell STAY. B: 2 CPUs, every cell MIGRATE. Records on A's grid are off
    # B's (idle + busy = 4), so the only way to read MIGRATE is B's cells under A's geometry.
    a = np.full((4, 5, 11, 11), STAY, np.uint8)
    b = np.full((2, 3, 11, 11), MIGRATE, np.uint8)
    rows_a, rows_b = table_rows(a), table_rows(b)
    kp = kernel_path(a, consumer_timeout_ns=0)
    feats = np.zeros((65536, 5), np.uint32)
    feats[:, 1] = np.arange(len(feats)) % 5         # cpu 0, idle 0..4: keys inside B's rows
    feats[:, 2] = 4 - feats[:, 1]
    feats[:, 3] = feats[:, 4] = 512

    stop = threading.Event()
    swaps = [0]

    def swapper():
        while not stop.is_set():
            kp.set_table(b, _rows=rows_b)
            kp.set_table(a, _rows=rows_a)
            swaps[0] += 2

    t = threading.Thread(target=swapper)
    t.start()
    mixed = hits = done = 0
    try:
        end = time.monotonic() + HANG_S
        calls = 0
        while swaps[0] < MIN_SWAPS or calls < MIN_INJECTIONS:
            assert time.monotonic() < end, f"{swaps[0]} swaps, {calls} calls in {HANG_S} s"
            calls += 1
            r = kp.inject(feats, ignore_consumer=True)
            mixed += int(np.count_nonzero(r.result == MIGRATE))
            hits += r.hits
            done += r.done
            kp.poll(timeout_ms=0, max_records=65536)
    finally:
        stop.set()
        t.join()
    assert hits > 0, (swaps, hits)
    assert mixed == 0, f"{mixed} of {done} decisions read B's cells under A's geometry " \
                       f"({swaps[0]} swaps)"
