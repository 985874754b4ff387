"""``mlsched-lite decide``: one decision from flags, or one per row of a feature file."""

from __future__ import annotations

import argparse
import json
import sys
import time

from ..errors import UsageError
from ..featureio import INPUT_CHUNK_ROWS, format_decisions, open_output, read_features
from .common import PROG, number, open_engine, positive_int

NAME = "decide"
EPILOG = """\
examples:
  mlsched-lite decide --cpu 4 --idle 2 --busy 6 --src-load 0.9 --dst-load 0.2
  mlsched-lite decide --cpu 4 --idle 2 --busy 6 --src-load 0.9 --dst-load 0.2 --json
  mlsched-lite decide --input features.csv --output decisions.txt
  mlsched-lite decide --input - < features.csv
  mlsched-lite decide --input trace.npz --cpus 2 -v

Rows with NaN/inf values, negative counts, text or the wrong number of fields are
answered STAY and counted as invalid; loads outside [0, 1] are clamped.
"""
#: (argparse dest, flag) of the five features.
FLAGS = (("cpu", "cpu"), ("idle", "idle"), ("busy", "busy"), ("src_load", "src-load"),
         ("dst_load", "dst-load"))


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        NAME, help="decide one migration, or every row of a CSV/.npz file",
        description="Answer MIGRATE or STAY: the table first, the int8 model on misses.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    one = p.add_argument_group("one decision")
    one.add_argument("--cpu", type=number, help="CPU id the task runs on")
    one.add_argument("--idle", type=number, help="idle CPUs on the host")
    one.add_argument("--busy", type=number, help="busy CPUs on the host")
    one.add_argument("--src-load", type=number, help="source domain load, 0..1")
    one.add_argument("--dst-load", type=number, help="destination domain load, 0..1")
    many = p.add_argument_group("a file of decisions")
    many.add_argument("--input", metavar="FILE",
                      help="CSV with a header naming the five features, .npz with 'features'"
                           " [n, 10], or - for CSV on stdin")
    many.add_argument("--output", metavar="FILE",
                      help="where decisions go, one per row (default: stdout)")
    many.add_argument("--chunk-rows", type=positive_int, default=INPUT_CHUNK_ROWS,
                      metavar="N", help="rows per engine batch (default %(default)s)")
    p.add_argument("--json", action="store_true",
                   help='print {"decision", "probability", "source"} (one JSON line per row)')
    p.add_argument("--cpus", type=positive_int, metavar="N",
                   help="derive a table for an N-CPU host from model.tflite (default: the bundle's)")
    return p


def run(args) -> int:
    given = [flag for dest, flag in FLAGS if getattr(args, dest) is not None]
    if args.input is not None:
        if given:
            raise UsageError(f"{PROG} decide: give --input or the feature flags, not both"
                             f" (got --{', --'.join(given)})")
        return decide_file(args)
    for dest, flag in FLAGS:
        # argparse drops a bare "--" value (--cpu=--) and hands over [] instead of a number
        if getattr(args, dest) is not None and not isinstance(getattr(args, dest), float):
            raise UsageError(f"{PROG} decide: --{flag}: expected a number (see -h)")
    if len(given) != len(FLAGS):
        missing = [flag for dest, flag in FLAGS if getattr(args, dest) is None]
        raise UsageError(f"{PROG} decide: missing --{', --'.join(missing)}"
                         " (or give --input FILE; see -h)")
    if args.output is not None:
        raise UsageError(f"{PROG} decide: --output goes with --input")
    engine = open_engine(args, args.cpus)
    d = engine.decide_one(args.cpu, args.idle, args.busy, args.src_load, args.dst_load,
                          probability=args.json)
    if d.source == "invalid":
        print(f"{PROG}: invalid features (NaN/inf or a negative count): answered STAY",
              file=sys.stderr)
    if args.json:
        print(json.dumps({"decision": d.name, "probability": d.probability, "source": d.source}))
    else:
        print(d.name)
    return 0


def decide_file(args) -> int:
    engine = open_engine(args, args.cpus)
    chunks = read_features(args.input, args.chunk_rows)
    t0 = time.perf_counter()
    with open_output(args.output) as out:
        for x in chunks:
            out.write(format_decisions(engine.decide(x, probabilities=args.json), args.json))
    seconds = time.perf_counter() - t0
    c = engine.counters
    rate = c.requests / seconds if seconds > 0 else 0.0
    print(f"{PROG}: {c.requests} rows, table hit rate {c.hit_rate:.1%} ({c.hits}: level 1"
          f" {c.hits - c.level2_hits}, level 2 {c.level2_hits}),"
          f" interpreter rows {c.misses}, invalid {c.invalid}, clamped {c.clamped},"
          f" {rate:,.0f} rows/s ({seconds:.2f} s)", file=sys.stderr)
    return 0
