"""A minimal ring consumer in its own process: poll -> Engine.decide_wire -> answer.

The benchmark measures ``mlsched-lite run`` when it is installed; on a checkout without
it, this stand-in takes its place so the pipeline figures exist, and they are labelled
as the stand-in's in ``results.json``. It takes the daemon's options the benchmark uses
and writes the same summary keys:

    python -m bench.consumer --pin-dir DIR --duration S --summary-json PATH
                             [--bundle DIR] [--batch N] [--max-wait-us U] [--ring-size B]

Latency is taken per record as (time the batch's answers were stored) - request ts_ns,
both CLOCK_MONOTONIC, into a 1 µs histogram.
"""

from __future__ import annotations

import argparse
import json
import resource
import signal
import sys
import time

import numpy as np

from mlsched.runtime.bundle import load_bundle
from mlsched.runtime.engine import Engine
from mlsched.runtime.kernel import DEFAULT_RING_BYTES, KernelPath

from .common import write_json_atomic

#: Latency histogram range: 1 µs bins up to this; slower answers land in the last bin.
LATENCY_BINS_US = 1 << 14
POLL_TIMEOUT_MS = 50


def percentile_us(hist: np.ndarray, q: float) -> float | None:
    total = int(hist.sum())
    if not total:
        return None
    return float(np.searchsorted(np.cumsum(hist), q / 100.0 * total, side="left"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.consumer", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", default=None)
    ap.add_argument("--pin-dir", required=True)
    ap.add_argument("--duration", type=float, required=True)
    ap.add_argument("--summary-json", required=True)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--max-wait-us", type=int, default=0)
    ap.add_argument("--ring-size", type=int, default=DEFAULT_RING_BYTES)
    args = ap.parse_args(argv)

    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    engine = Engine(load_bundle(args.bundle))
    kp = KernelPath().load(engine.table, pin=True, pin_dir=args.pin_dir,
                           ring_size=args.ring_size)
    hist = np.zeros(LATENCY_BINS_US, np.int64)
    dec = np.empty(args.batch, np.uint8)
    records = answered = 0
    busy_s = 0.0
    first = last = None
    try:
        deadline = time.monotonic() + args.duration
        while not stop and time.monotonic() < deadline:
            r = kp.serve_round(lambda batch: engine.decide_wire(batch["f"], out=dec[:len(batch)]),
                               timeout_ms=POLL_TIMEOUT_MS, max_records=args.batch,
                               linger_us=args.max_wait_us)
            if r is None:
                continue
            batch, n, t0 = r.batch, len(r.batch), r.polled_at
            answered += r.stored
            done_ns = time.monotonic_ns()
            busy_s += r.answered_at - t0
            lat = (done_ns - batch["ts_ns"].astype(np.int64)) // 1000
            np.clip(lat, 0, LATENCY_BINS_US - 1, out=lat)
            hist += np.bincount(lat, minlength=LATENCY_BINS_US)
            records += n
            first = first if first is not None else t0
            last = time.perf_counter()
        stats = kp.stats()
    finally:
        kp.close()
    span = (last - first) if first is not None and last > first else 0.0
    summary = {
        "consumer": "bench.consumer",
        "records": records,
        "answered": answered,
        "decisions_per_s": records / span if span else 0.0,
        "decide_s": busy_s,
        "latency_p50_us": percentile_us(hist, 50),
        "latency_p99_us": percentile_us(hist, 99),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "engine": engine.counters.as_dict(),
        "kernel": stats,
    }
    write_json_atomic(args.summary_json, summary)
    json.dump({"records": records}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
