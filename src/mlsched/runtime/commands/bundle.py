"""``mlsched-lite bundle verify``: is this bundle intact, readable here and fit for this host?"""

from __future__ import annotations

import argparse
import os

from ..bundle import BundleError, load_bundle
from ..engine import Engine
from ..errors import UsageError
from ..table import check_centres
from .common import PROG, Parser, add_common, positive_int

NAME = "bundle"
EPILOG = """\
examples:
  mlsched-lite bundle verify models/default/bundle
  mlsched-lite bundle verify /tmp/bundle --cpus 64 --backend tflite-runtime
"""
#: Sure cells `bundle verify` re-checks against the interpreter at their centres (a sample
#: of that many when the table has more).
VERIFY_MAX_CELLS = 200_000


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        NAME, help="inspect bundles (verify)", epilog=EPILOG,
        description="Bundle tools.", formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="bundle_command", metavar="ACTION", parser_class=Parser)
    sub.required = True
    v = sub.add_parser(
        "verify", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        help="check hashes, format and fit for this host; print the manifest summary",
        description="Check a bundle: format version, manifest, sha256 and size of every file,"
                    " file ownership (as root), the model under this interpreter, every sure"
                    " table cell against the model at its centre, and the host's CPU count.")
    v.add_argument("dir", nargs="?", metavar="DIR",
                   help="bundle directory (default: --bundle, else the shipped default)")
    v.add_argument("--cpus", type=positive_int, metavar="N",
                   help=f"CPUs of the host it is for (default: this host's, {os.cpu_count()})")
    add_common(v, top=False)
    return p


def run(args) -> int:
    path = args.dir if args.dir is not None else args.bundle
    try:
        bundle = load_bundle(path, allow_insecure=args.allow_insecure_bundle)
    except BundleError as e:
        raise UsageError(f"{PROG}: bundle verify: {e}") from None
    engine = Engine(bundle, backend=args.backend)
    model = engine.model
    lines = [bundle.summary(),
             f"interpreter   {engine.backend}: input {model.input_dtype} [n, {model.width}],"
             f" output {model.output_dtype} [n, 1]"]
    checked, wrong = check_centres(engine.table, engine.interpreter_decide, VERIFY_MAX_CELLS)
    if wrong:
        raise UsageError(f"{PROG}: bundle verify: {bundle.path}: {wrong} of {checked} sure table"
                         f" cells differ from model.tflite under {engine.backend}: rebuild the"
                         " bundle with mlsched-convert, or try the other --backend")
    lines.append(f"table check   {checked} sure cells equal the model at their centres")
    host = args.cpus or os.cpu_count() or 1
    if host > bundle.cpus:
        raise UsageError(f"{PROG}: bundle verify: {bundle.path} is for {bundle.cpus} CPUs, the"
                         f" host has {host}: convert with mlsched-convert --cpus {host}")
    how = "uses the bundle's table" if host == bundle.cpus else \
        f"derives a {host}-CPU table from model.tflite at start-up"
    lines.append(f"host          {host} CPUs: mlsched-lite {how}")
    lines.append("OK")
    print("\n".join(lines))
    return 0
