"""``mlsched-lite run``: serve the kernel side until stopped, then print the summary.

Flags become a ``ServeConfig``; ``serve.Server`` does the work. This module adds what
belongs to a process rather than to the serving loop: signal handling, the scheduling
policy (``--rt-priority``), the optional ``--load`` workers, the summary on stdout and in
``--summary-json`` (a stdout that refuses the summary, like one that refused the interval
lines, does not fail the run).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys

from .. import bpfenv, loadgen, serve
from ..errors import UsageError
from ..files import write_atomic
from ..stats import summary_text
from .common import DOMAINS_HELP, PROG, domains, positive_int, ring_bytes, seconds

NAME = "run"
EPILOG = """\
examples:
  mlsched-lite run --duration 15
        shadow mode beside CFS: decide every task migration CFS makes, report agreement
  mlsched-lite run --interval 10 --stats-file /run/mlsched/mlsched.prom
        as the systemd unit runs it: a stats line and a Prometheus textfile every 10 s
  mlsched-lite run --record live.csv --duration 60
        keep the live features; then: mlsched-convert MODEL -o BUNDLE --calibration live.csv
  mlsched-lite run --no-collector --pin --pin-dir /sys/fs/bpf/mlsched
        serve producers that share the pinned maps (a scheduler's balancer, the injector)
  mlsched-lite run --rt-priority 10 --load 3
        serve at SCHED_FIFO priority 10: CPU-bound tasks no longer delay the answers

needs CAP_BPF and CAP_PERFMON (root); stops on SIGINT/SIGTERM or after --duration.
--backend auto prefers tflite-runtime here (batches only: faster and smaller than litert).
With --pin, maps pinned by a run of another geometry (another --ring-size, a CPU less)
are replaced when no other process holds them; when one does, the run is refused.

exit status: 0 done, 2 bad input (one line on stderr), 3 pinned maps of another geometry
still held by another process (one line naming the pin and the fix; a systemd unit lists
it in RestartPreventExitStatus=3: restarting cannot help), 1 internal error
"""
#: Exit status when --pin finds maps of another geometry that another process holds.
EXIT_PINNED_IN_USE = 3
#: Longest batch linger accepted (µs).
MAX_WAIT_US_LIMIT = 1_000_000
#: SCHED_FIFO priorities (sched(7)).
RT_PRIORITY_MIN, RT_PRIORITY_MAX = 1, 99


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        NAME, help="serve the kernel side: ring buffer in, decisions back, live stats",
        description="Load the BPF side, attach the live collector (shadow mode beside CFS),"
                    " answer every request the kernel table cannot, report what happened.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=seconds, default=0.0, metavar="S",
                   help="stop after S seconds (default: run until SIGINT/SIGTERM)")
    p.add_argument("--interval", type=seconds, default=5.0, metavar="S",
                   help="seconds between stats lines and textfile writes (default 5; 0: none)")
    p.add_argument("--stats-file", metavar="PATH",
                   help="write the counters as a Prometheus textfile (atomic rename)")
    p.add_argument("--summary-json", metavar="PATH", help="write the final summary as JSON")
    p.add_argument("--record", metavar="FILE",
                   help="append live features, CFS action and model decision as CSV")
    p.add_argument("--batch", type=positive_int, default=serve.DEFAULT_BATCH, metavar="N",
                   help="records per batch (default %(default)s)")
    p.add_argument("--max-wait-us", type=int, default=serve.DEFAULT_MAX_WAIT_US, metavar="U",
                   help="keep a batch open this long after its first record (default %(default)s)")
    p.add_argument("--ring-size", type=ring_bytes, default=bpfenv.DEFAULT_RING_BYTES,
                   metavar="BYTES", help="request ring size, a power of two (default %(default)s)")
    p.add_argument("--domains", type=domains, metavar="SPEC", help=DOMAINS_HELP)
    p.add_argument("--cpus", type=positive_int, metavar="N",
                   help="host CPUs the table covers (default: online CPUs with the collector,"
                        " the bundle's without)")
    p.add_argument("--no-collector", action="store_true",
                   help="do not attach the tracepoint collector; serve other producers only")
    p.add_argument("--load", type=int, default=0, metavar="N",
                   help="also start N worker processes that alternate spinning and sleeping,"
                        " so CFS has tasks to migrate (demonstration; stopped at exit)")
    p.add_argument("--rt-priority", type=int, metavar="P",
                   help="serve at SCHED_FIFO priority P (1..99) once started: a request then"
                        " waits for no CPU-bound task; --load workers and other children keep"
                        " the normal policy (default: the normal policy)")
    p.add_argument("--pin", action="store_true",
                   help="keep the maps pinned under --pin-dir (reused and kept after exit)")
    p.add_argument("--pin-dir", default=bpfenv.PIN_DIR, metavar="DIR",
                   help="where --pin keeps the maps (default %(default)s)")
    return p


def config_from(args) -> serve.ServeConfig:
    """Check the flags that argparse cannot and turn them into a ServeConfig."""
    if not 0 <= args.load <= loadgen.MAX_WORKERS:
        raise UsageError(f"--load {args.load}: expected 0..{loadgen.MAX_WORKERS} workers")
    for path, flag in ((args.stats_file, "--stats-file"), (args.summary_json, "--summary-json"),
                       (args.record, "--record")):
        serve.check_writable(path, flag)
    if not 0 <= args.max_wait_us <= MAX_WAIT_US_LIMIT:
        raise UsageError(f"--max-wait-us {args.max_wait_us}: expected 0..{MAX_WAIT_US_LIMIT}")
    if args.rt_priority is not None and not (
            RT_PRIORITY_MIN <= args.rt_priority <= RT_PRIORITY_MAX):
        raise UsageError(f"--rt-priority {args.rt_priority}: expected"
                         f" {RT_PRIORITY_MIN}..{RT_PRIORITY_MAX}")
    return serve.ServeConfig(
        bundle=args.bundle, backend=args.backend,
        allow_insecure_bundle=args.allow_insecure_bundle, cpus=args.cpus,
        collector=not args.no_collector, domains=args.domains, ring_size=args.ring_size,
        pin=args.pin, pin_dir=args.pin_dir, batch=args.batch, max_wait_us=args.max_wait_us,
        duration=args.duration, interval=args.interval, stats_file=args.stats_file,
        record=args.record)


def serve_realtime(priority: int) -> None:
    """Put this thread (the one that serves) under SCHED_FIFO at ``priority``.

    Woken by the ring, a normal-policy daemon waits until the CPU-bound task in its place
    has used its slice; a FIFO one runs at once. The reset-on-fork bit gives children
    (the --load workers) the normal policy back.
    """
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO | os.SCHED_RESET_ON_FORK,
                              os.sched_param(priority))
    except PermissionError as e:
        raise UsageError(f"--rt-priority {priority}: SCHED_FIFO refused ({e.strerror}):"
                         f" run as root with CAP_SYS_NICE or raise RLIMIT_RTPRIO to"
                         f" {priority}") from None


def run(args) -> int:
    config = config_from(args)
    try:
        server = serve.Server(config)
    except bpfenv.PinnedMapsInUse as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return EXIT_PINNED_IN_USE
    previous = {}

    def on_signal(signum, frame):
        server.stop = True

    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.signal(sig, on_signal)
    workers = []
    try:
        if args.rt_priority is not None:
            serve_realtime(args.rt_priority)
        workers = loadgen.start(args.load)
        summary = server.serve()
    finally:
        loadgen.stop(workers)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        server.close()
    server.print_line(summary_text(summary))
    if args.summary_json:
        write_atomic(args.summary_json, json.dumps(summary, indent=1, sort_keys=True) + "\n")
    return 0
