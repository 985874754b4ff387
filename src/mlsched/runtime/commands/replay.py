"""``mlsched-lite replay``: a feature file through the kernel side; the decision per row."""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from .. import bpfenv
from ..featureio import open_output, read_features
from ..replay import CHUNK_ROWS, WHERE_NAMES, Replayer
from ..wire import DECISION_NAMES, MIGRATE, STAY
from .common import PROG, open_engine

NAME = "replay"
EPILOG = """\
examples:
  mlsched-lite replay features.csv
        every row through the in-kernel helper (injector), misses through the ring to
        the engine, and the decision the kernel side then reads, one per row
  mlsched-lite replay trace.npz --bypass-table --output decisions.txt
"""
_NAMES = np.array([DECISION_NAMES[STAY], DECISION_NAMES[MIGRATE]])


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        NAME, help="run a feature file through the kernel side and the engine",
        description="Inject every row into the in-kernel helper; misses go through the ring to"
                    " the engine; print the decision the kernel side reads back, one per row.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", metavar="FILE", help="CSV with the feature header, .npz, or -")
    p.add_argument("--output", metavar="FILE", help="decisions, one per row (default: stdout)")
    p.add_argument("--bypass-table", action="store_true",
                   help="send every row through the ring, not only table misses")
    p.add_argument("--where", action="store_true",
                   help="print where each decision came from after it: level1 / level2 (the"
                        " kernel table's levels), ring (answered by the engine), invalid, dropped")
    return p


def run(args) -> int:
    bpfenv.check_environment()
    engine = open_engine(args)
    chunks = read_features(args.input, CHUNK_ROWS)
    t0 = time.perf_counter()
    with Replayer(engine, bypass_table=args.bypass_table) as rp, open_output(args.output) as out:
        for x in chunks:
            decision = rp.decide(x)
            if len(decision):
                lines = _NAMES[decision]
                if args.where:
                    lines = np.char.add(np.char.add(lines, " "), WHERE_NAMES[rp.where])
                out.write("\n".join(lines.tolist()) + "\n")
    t = rp.totals
    print(f"{PROG}: {t.rows} rows: kernel table level 1 {t.kernel_hits - t.level2_hits},"
          f" level 2 {t.level2_hits},"
          f" sent to the engine {t.sent}, answered {t.answered},"
          f" dropped {t.dropped}, invalid {t.invalid} (STAY),"
          f" MIGRATE {t.migrate} ({time.perf_counter() - t0:.2f} s)", file=sys.stderr)
    return 0
