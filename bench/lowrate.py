"""Where a request's time goes at a low rate: wake-up, waiting, deciding, answering.

    python -m bench.lowrate [--rate 1000] [--seconds 5] [--traffic miss|hit] [--load N]
                            [--rt-priority P] [--daemon]

The injector (this process) offers ``--rate`` requests/s, one per call, through the
real ring to a consumer process that does what ``mlsched-lite run`` does with a batch
(the daemon's backend, its warm-up, ``Engine.decide_wire``, ``KernelPath.answer``) and
stamps each batch with CLOCK_MONOTONIC as it goes:

  wake     request ts_ns -> poll() returns, for batches that found the consumer asleep
  queued   the same for batches that arrived while it was busy with the one before
  decide   poll() returned -> decisions made (the engine's time for the batch)
  answer   decisions made -> answers stored
  total    request ts_ns -> answers stored (what the daemon's latency figures measure)

``--load N`` starts the daemon's ``--load`` workers beside it, ``--rt-priority P`` runs
the consumer at SCHED_FIFO as the daemon's flag does, and ``--daemon`` also runs
``mlsched-lite run`` itself under the same conditions and prints its own p50/p99.
``--consume`` is the consumer's entry point (the pipeline session starts it).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time

import numpy as np

#: Columns of the per-batch record the consumer keeps.
STAMPS = ("oldest_ts", "polled", "decided", "answered", "records")
PERCENTILES = (50, 90, 99, 99.9)


def consume(argv: list[str]) -> int:
    """The instrumented consumer: poll, decide, answer, stamp; stamps into the summary."""
    from mlsched.runtime import serve
    from mlsched.runtime.bundle import load_bundle
    from mlsched.runtime.commands.run import serve_realtime
    from mlsched.runtime.engine import Engine
    from mlsched.runtime.kernel import KernelPath

    from .common import write_json_atomic

    ap = argparse.ArgumentParser(prog="python -m bench.lowrate --consume", allow_abbrev=False)
    ap.add_argument("--pin-dir", required=True)
    ap.add_argument("--duration", type=float, required=True)
    ap.add_argument("--summary-json", required=True)
    ap.add_argument("--bundle", default=None)
    ap.add_argument("--ring-size", type=int, required=True)
    ap.add_argument("--rt-priority", type=int)
    args = ap.parse_args(argv)

    stop: list[int] = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    engine = Engine(load_bundle(args.bundle), backend=serve.daemon_backend("auto"))
    kp = KernelPath().load(None, pin=True, pin_dir=args.pin_dir, ring_size=args.ring_size,
                           table_capacity=engine.ncpus)
    stamps = []
    try:
        kp.set_table(engine.table)
        serve.warm_up(engine)
        if args.rt_priority is not None:
            serve_realtime(args.rt_priority)
        # the round's perf_counter stamps, on the request clock (CLOCK_MONOTONIC, ns)
        to_ns = time.monotonic_ns() - int(time.perf_counter() * 1e9)
        deadline = time.monotonic() + args.duration
        while not stop and time.monotonic() < deadline:
            r = kp.serve_round(lambda batch: engine.decide_wire(batch["f"]),
                               timeout_ms=serve.POLL_TIMEOUT_MS, max_records=serve.DEFAULT_BATCH)
            if r is None:
                continue
            stamps.append((int(r.batch["ts_ns"].min()), to_ns + int(r.polled_at * 1e9),
                           to_ns + int(r.decided_at * 1e9), to_ns + int(r.answered_at * 1e9),
                           len(r.batch)))
    finally:
        kp.close()
    write_json_atomic(args.summary_json, {"stamps": stamps, "backend": engine.backend,
                                          "engine": engine.counters.as_dict()})
    return 0


def stages(stamps: np.ndarray) -> dict[str, np.ndarray]:
    """Per-batch stage durations (ns) from the consumer's stamps (one row per batch)."""
    ts, polled, decided, answered = (stamps[:, i] for i in range(4))
    busy_before = np.r_[False, ts[1:] <= answered[:-1]]
    return {"wake": (polled - ts)[~busy_before], "queued": (polled - ts)[busy_before],
            "decide": decided - polled, "answer": answered - decided, "total": answered - ts}


def report(name: str, got: dict[str, np.ndarray]) -> None:
    print(f"{name:8s} " + " ".join(f"{'p' + format(q, 'g'):>8s}" for q in PERCENTILES)
          + "  batches (µs)")
    for stage, ns in got.items():
        if len(ns) == 0:
            print(f"{stage:8s} {'-':>8s}")
            continue
        cells = " ".join(f"{np.percentile(ns, q) / 1000:8.1f}" for q in PERCENTILES)
        print(f"{stage:8s} {cells}  {len(ns)}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--consume" in argv:
        return consume([a for a in argv if a != "--consume"])
    ap = argparse.ArgumentParser(prog="python -m bench.lowrate", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, default=1000.0, help="requests/s (default 1000)")
    ap.add_argument("--seconds", type=float, default=5.0, help="per session (default 5)")
    ap.add_argument("--traffic", choices=("miss", "hit"), default="miss",
                    help="miss: every request answered by the interpreter; hit: by the table")
    ap.add_argument("--load", type=int, default=0, help="--load workers beside the consumer")
    ap.add_argument("--rt-priority", type=int, help="consumer at SCHED_FIFO priority P")
    ap.add_argument("--daemon", action="store_true",
                    help="also measure mlsched-lite run under the same conditions")
    args = ap.parse_args(argv)

    from mlsched.runtime import loadgen
    from mlsched.runtime.bundle import load_bundle
    from mlsched.runtime.engine import Engine

    from . import micro
    from .pipeline import Session
    from .run import BUNDLE

    engine = Engine(load_bundle(BUNDLE))
    features = micro.traffic(engine, args.traffic, 1 << 16, seed=22)
    extra = [] if args.rt_priority is None else ["--rt-priority", str(args.rt_priority)]
    workers = loadgen.start(args.load)
    try:
        with Session(BUNDLE, engine.table, 1 << 20, ["--consume", *extra], duration_s=600,
                     use_daemon=False, consumer_module="bench.lowrate") as s:
            r = s.paced(features, args.rate, args.seconds, 1)
        if "stamps" not in s.summary:
            raise SystemExit(f"the consumer wrote no stamps: {s.stderr.strip()[-500:]}")
        stamps = np.array(s.summary["stamps"], dtype=np.int64).reshape(-1, len(STAMPS))
        print(f"{r['sent']} requests at {r['offered_per_s']:.0f}/s (traffic {args.traffic}, backend"
              f" {s.summary['backend']}), {len(stamps)} batches, load {args.load},"
              f" rt-priority {args.rt_priority or '-'}; ticks late {r['late_ticks']}")
        report("stage", stages(stamps))
        if args.daemon:
            with Session(BUNDLE, engine.table, 1 << 20, extra, duration_s=600) as d:
                d.paced(features, args.rate, args.seconds, 1)
            print(json.dumps({"mlsched-lite run": {k: d.summary.get(k) for k in
                                                   ("latency_p50_us", "latency_p99_us",
                                                    "latency_samples")}}))
    finally:
        loadgen.stop(workers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
