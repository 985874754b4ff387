"""Producers on the kernel path: the injector and the reader, for replay, tests and benches.

``mlsched-lite run`` consumes what the kernel side produces; this module produces instead.
``Injector`` is a ``KernelPath`` that also runs the injector object's two SEC("syscall")
programs through ``bpf_prog_test_run`` on the same maps (bpf/mlsched_inject.bpf.c):

* ``inject()`` sends feature records (a batch, or N generated from a seed) through
  ``mlsched_decide()`` in the kernel, as a balancer would; table hits are answered there,
  misses go on the ring;
* ``read_decisions()`` reads answers back the way a balancer does (``mlsched_answer()``);
* ``load_injector()`` loads the object ahead of the first use, so nothing timed waits on
  the verifier.

The daemon's ``KernelPath`` carries none of this: a process that never injects never loads
the injector object. ``mlsched-lite replay`` (replay.py), the tests, the soak and the bench
use ``Injector``.

One thread at a time: a batch ``inject()`` fills the injector's one shared batch buffer and
``read_decisions()`` its one readback buffer, so threads that share an ``Injector`` take turns.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .kernel import KernelPath, check_call, ffi, lib
from .wire import as_wire_array

__all__ = ["InjectResult", "Injector", "ReadResult"]


@dataclass
class InjectResult:
    """What one ``inject()`` did; per-record arrays only for batch (not generated) input."""
    done: int
    hits: int
    sent: int
    dropped: int
    no_consumer: int
    migrate: int
    first_seq: int
    last_seq: int
    elapsed_ns: int
    result: np.ndarray | None = None    # uint8 decision returned by mlsched_decide()
    reason: np.ndarray | None = None    # uint8 enum mlsched_reason
    fate: np.ndarray | None = None      # uint8 enum mlsched_fate
    seq: np.ndarray | None = None       # uint64 seq sent (0: none)
    level: np.ndarray | None = None     # uint8 table level that answered (1, 2; 0: none)
    decide_ns: np.ndarray | None = None  # uint32 per-record time (time_each), else zeros


@dataclass
class ReadResult:
    """Answers as the kernel side sees them for seqs first_seq .. first_seq + n - 1."""
    first_seq: int
    answered: int
    missing: int
    overwritten: int
    migrate: int
    decision: np.ndarray                 # uint8, STAY where not answered
    status: np.ndarray                   # uint8 enum mlsched_answer_status


class Injector(KernelPath):
    """A ``KernelPath`` that also injects requests and reads answers back (see the module)."""

    def load_injector(self) -> Injector:
        """Load the injector now rather than on the first ``inject()``: a bench or a test
        that times injection, or a consumer thread that waits for records, starts only once
        the injector is ready. Returns ``self``."""
        check_call(lib.mls_load_injector(self._handle()), "loading the injector")
        return self

    def inject(self, features: np.ndarray | None = None, *, generate: int = 0, seed: int = 1,
               gen_ncpus: int | None = None, invalid_pct: int = 0, bypass_table: bool = False,
               pid: int = 0, ignore_consumer: bool = False, bad_version: bool = False,
               bad_size: bool = False, time_each: bool = False,
               time_clock_only: bool = False) -> InjectResult:
        """Run records through mlsched_decide() in the kernel.

        ``features``: [n, 5] integers (cpu, idle, busy, src_load, dst_load; loads in 1/1024)
        or a structured array with those fields; or ``generate`` > 0 records from ``seed``
        for a ``gen_ncpus``-CPU host (default: the table's). ``bypass_table`` sends every
        record to the ring; ``bad_version``/``bad_size`` emit malformed records.
        ``time_each`` (batch input): each decide() timed between two clock reads, into
        ``decide_ns``; ``time_clock_only``: the two clock reads alone, no decide().
        """
        k = self._handle()
        flags = ((lib.MLSCHED_INJ_BYPASS_TABLE if bypass_table else 0)
                 | (lib.MLSCHED_INJ_NO_CONSUMER_CHECK if ignore_consumer else 0)
                 | (lib.MLSCHED_INJ_BAD_VERSION if bad_version else 0)
                 | (lib.MLSCHED_INJ_BAD_SIZE if bad_size else 0)
                 | (lib.MLSCHED_INJ_TIME_EACH if time_each or time_clock_only else 0)
                 | (lib.MLSCHED_INJ_TIME_CLOCK if time_clock_only else 0))
        args = ffi.new("struct mlsched_inject_args *")
        args.pid = pid
        if generate:
            args.flags = flags | lib.MLSCHED_INJ_GENERATE
            args.count = generate
            args.seed = seed & (2**64 - 1)
            args.gen_ncpus = gen_ncpus or self.table_ncpus or 1
            args.gen_invalid_pct = invalid_pct
            check_call(lib.mls_inject(k, args), "injecting")
            return _inject_result(args)
        feats = as_wire_array(features)
        slots = self._view(lib.MLS_MAP_INJECT_BUF)
        total = InjectResult(0, 0, 0, 0, 0, 0, 0, 0, 0)
        parts = []
        for start in range(0, len(feats), len(slots)):
            chunk = feats[start:start + len(slots)]
            n = len(chunk)
            for i, name in enumerate(("cpu", "idle", "busy", "src_load", "dst_load")):
                slots["f"][name][:n] = chunk[:, i]
            args.flags, args.count = flags, n
            check_call(lib.mls_inject(k, args), "injecting")
            r = _inject_result(args)
            parts.append((slots["result"][:n].copy(), slots["reason"][:n].copy(),
                          slots["fate"][:n].copy(), slots["seq"][:n].copy(),
                          slots["level"][:n].copy(), slots["decide_ns"][:n].copy()))
            for f in ("done", "hits", "sent", "dropped", "no_consumer", "migrate", "elapsed_ns"):
                setattr(total, f, getattr(total, f) + getattr(r, f))
            total.first_seq = total.first_seq or r.first_seq
            total.last_seq = r.last_seq or total.last_seq
        if parts:
            (total.result, total.reason, total.fate, total.seq, total.level,
             total.decide_ns) = (np.concatenate([p[i] for p in parts]) for i in range(6))
        else:
            empty = np.zeros(0, np.uint8)
            (total.result, total.reason, total.fate, total.seq, total.level,
             total.decide_ns) = (empty, empty, empty, np.zeros(0, np.uint64), empty,
                                 np.zeros(0, np.uint32))
        return total

    def read_decisions(self, first_seq: int, count: int) -> ReadResult:
        """Read the answers to seqs first_seq .. first_seq + count - 1 through the kernel's
        own check (mlsched_answer()); counts answered/stale in the kernel stats."""
        k = self._handle()
        view = self._view(lib.MLS_MAP_READBACK)
        args = ffi.new("struct mlsched_read_args *")
        res = ReadResult(first_seq, 0, 0, 0, 0, np.zeros(count, np.uint8),
                         np.zeros(count, np.uint8))
        for start in range(0, count, len(view)):
            n = min(len(view), count - start)
            args.first_seq, args.count = first_seq + start, n
            check_call(lib.mls_read_decisions(k, args), "reading decisions")
            res.decision[start:start + n] = view["decision"][:n]
            res.status[start:start + n] = view["status"][:n]
            res.answered += args.answered
            res.missing += args.missing
            res.overwritten += args.overwritten
            res.migrate += args.migrate
        return res


def _inject_result(a) -> InjectResult:
    return InjectResult(done=a.done, hits=a.hits, sent=a.sent, dropped=a.dropped,
                        no_consumer=a.no_consumer, migrate=a.migrate, first_seq=a.first_seq,
                        last_seq=a.last_seq, elapsed_ns=a.elapsed_ns)
