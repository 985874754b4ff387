"""Replay: recorded features through the real kernel side, as a balancer would see them.

Each chunk of raw features is turned into wire records (``wire.to_wire``), run through
``mlsched_decide()`` in the kernel by the injector; what the kernel table cannot
answer travels the ring to the engine, is answered through the ``decisions`` map,
and is read back through the kernel's own check (``mlsched_answer()``). The result
per row is the decision a balancer asking twice would act on, and where it came
from (``WHERE``): the kernel table's first or second level, the ring, or nowhere
(invalid rows, which cannot be represented on the wire — NaN, negative or
fractional counts — and are answered STAY; records the ring dropped).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .engine import Engine
from .wire import MIGRATE, STAY, to_wire

#: Rows per injector call, and a ring four times that size: a chunk never drops.
CHUNK_ROWS = 16384
RING_BYTES = 4 << 20
#: How long to wait for the ring to deliver a chunk's requests.
POLL_TIMEOUT_MS = 1000
#: Where a row's decision came from (``Replayer.where``), and the names ``replay`` prints.
WHERE_INVALID, WHERE_LEVEL1, WHERE_LEVEL2, WHERE_RING, WHERE_DROPPED = range(5)
WHERE_NAMES = np.array(["invalid", "level1", "level2", "ring", "dropped"])


@dataclass
class ReplayTotals:
    rows: int = 0
    invalid: int = 0
    kernel_hits: int = 0
    level2_hits: int = 0
    sent: int = 0
    answered: int = 0
    dropped: int = 0
    migrate: int = 0


class Replayer:
    """A loaded kernel side (no collector) answering through ``engine``."""

    def __init__(self, engine: Engine, bypass_table: bool = False):
        from .injector import Injector  # the compiled extension: only when replaying

        self.engine = engine
        self.bypass_table = bypass_table
        self.kp = Injector()
        self.kp.load(engine.table, level2=engine.level2, ring_size=RING_BYTES,
                     consumer_timeout_ns=0)
        self.totals = ReplayTotals()
        #: WHERE_* of each row of the last decide() call
        self.where = np.zeros(0, dtype=np.uint8)

    def close(self) -> None:
        self.kp.close()

    def __enter__(self) -> Replayer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def decide(self, raw: np.ndarray) -> np.ndarray:
        """Decisions (uint8 [n]) for raw features [n, 5], as the kernel side reads them."""
        ok, wire = to_wire(raw)
        decision = np.full(len(raw), STAY, dtype=np.uint8)
        self.where = np.full(len(raw), WHERE_INVALID, dtype=np.uint8)
        if ok.any():
            decision[ok], self.where[ok] = self.through_kernel(wire[ok])
        t = self.totals
        t.rows += len(raw)
        t.invalid += int((~ok).sum())
        t.migrate += int((decision == MIGRATE).sum())
        return decision

    def through_kernel(self, wire: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(decisions, WHERE_* codes) for wire features [n, 5]."""
        kp = self.kp
        res = kp.inject(wire, bypass_table=self.bypass_table)
        got = 0
        while got < res.sent:
            r = kp.serve_round(lambda batch: self.engine.decide_wire(batch["f"]),
                               timeout_ms=POLL_TIMEOUT_MS, max_records=4 * CHUNK_ROWS)
            if r is None:
                break
            got += len(r.batch)
        d = res.result.copy()
        sent = res.seq != 0
        if sent.any():
            rb = kp.read_decisions(int(res.first_seq), int(res.last_seq - res.first_seq + 1))
            d[sent] = rb.decision[(res.seq[sent] - res.first_seq).astype(np.int64)]
            self.totals.answered += int(rb.answered)
        where = np.where(sent, WHERE_RING, WHERE_DROPPED).astype(np.uint8)
        where[res.level == 1] = WHERE_LEVEL1
        where[res.level == 2] = WHERE_LEVEL2
        t = self.totals
        t.kernel_hits += res.hits
        t.level2_hits += int(np.count_nonzero(res.level == 2))
        t.sent += res.sent
        t.dropped += res.dropped
        return d, where
