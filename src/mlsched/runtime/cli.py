"""``mlsched-lite``: migration decisions from an mlsched bundle, on the command line.

This module is the entry point only: it builds the parser from the subcommand
modules in ``COMMANDS`` (``runtime/commands/``, one module per subcommand), gives
every subcommand the common options (``--bundle``/``--model-path``, ``--backend``,
``--allow-insecure-bundle``, ``-v``), runs the chosen one and turns errors into exit
statuses.

Errors a user can fix (a bad flag, an unreadable input file, a refused bundle, the
kernel side refusing to load) print one line on stderr and exit 2; a bad row inside a
batch file is not an error: it is answered STAY and counted ``invalid``. Anything
else is a bug: one line, exit 1, the traceback with ``-v``.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys

from .. import __version__
from .bpfenv import KernelPathError, VerifierError
from .bundle import READ_VERSIONS, BundleError
from .commands import bundle, decide, replay, run, unpin
from .commands.common import PROG, Parser, add_common
from .engine import EngineError
from .errors import UsageError
from .interp import BackendError, available_backends, quiet_stderr

EXIT_OK, EXIT_ERROR, EXIT_BAD_INPUT = 0, 1, 2
#: Subcommand modules, in -h order.
COMMANDS = (decide, bundle, run, replay, unpin)

EPILOG = """\
examples:
  mlsched-lite decide --cpu 4 --idle 2 --busy 6 --src-load 0.9 --dst-load 0.2
        one decision from the shipped default bundle: prints MIGRATE or STAY
  mlsched-lite decide --bundle bundle/ --cpu 1 --idle 7 --busy 1 --src-load .1 --dst-load .1 --json
        {"decision": "STAY", "probability": ..., "source": "table"}
  mlsched-lite decide --input features.csv --output decisions.txt
        one decision per row of a CSV whose header names cpu, cpu_idle, cpu_not_idle,
        src_dom_load, dst_dom_load (any order, extra columns ignored); summary on stderr
  cat features.csv | mlsched-lite decide --input - --json > decisions.jsonl
  mlsched-lite decide --input features.npz --backend tflite-runtime
        .npz with an array 'features' [n, 10] (or [n, 5])
  mlsched-lite bundle verify bundle/
        check hashes, format version and fit for this host; print the manifest summary
  mlsched-lite run --duration 15
        serve the kernel side in shadow mode beside CFS for 15 s, then a summary

exit status: 0 done, 2 bad input or unusable bundle (one line on stderr), 3 run --pin:
pinned maps of another geometry still held by another process, 1 internal error
"""


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog=PROG, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
               description="Machine-learned task-migration decisions from an mlsched bundle:"
                           " table first, batched int8 TFLite on misses, no TensorFlow.")
    p.add_argument("--version", action="store_true", help="print versions and exit")
    add_common(p, top=True)
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for cmd in COMMANDS:
        sp = cmd.add_parser(sub)
        sp.set_defaults(_command=cmd)
        if not any(a.dest == "bundle" for a in sp._actions):
            add_common(sp, top=False)
    return p


def version_text() -> str:
    with quiet_stderr():
        found = available_backends()
    py = ".".join(map(str, sys.version_info[:3]))
    formats = ", ".join(map(str, READ_VERSIONS))
    return (f"{PROG} {__version__} (bundle formats {formats}, Python {py},"
            f" interpreters: {', '.join(found) or 'none: pip install ai-edge-litert'})")


def kernel_error_text(e: KernelPathError, verbose: bool) -> str:
    """One line for the kernel side's refusal; with -v its captured log goes first."""
    msg = str(e)
    if verbose and e.log:
        print(e.log.rstrip(), file=sys.stderr)
    elif isinstance(e, VerifierError) and "-v" not in msg:
        msg += " (run with -v for the verifier log)"
    return msg


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    verbose = "-v" in argv or "--verbose" in argv
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format=f"{PROG}: %(message)s")
    try:
        try:
            args = build_parser().parse_args(argv)
        except SystemExit as e:       # -h
            return e.code if isinstance(e.code, int) else EXIT_OK
        if args.version:
            print(version_text())
            return EXIT_OK
        cmd = getattr(args, "_command", None)
        if cmd is None:
            names = ", ".join(sorted(c.NAME for c in COMMANDS))
            raise UsageError(f"{PROG}: choose a command ({names}; see {PROG} -h)")
        return cmd.run(args)
    except (UsageError, BundleError, BackendError, EngineError, KernelPathError) as e:
        msg = kernel_error_text(e, verbose) if isinstance(e, KernelPathError) else str(e)
        print(msg if msg.startswith(PROG) else f"{PROG}: {msg}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as e:
        if verbose:
            raise
        where = f" {e.filename}:" if getattr(e, "filename", None) else ""
        if isinstance(e, BrokenPipeError):
            with contextlib.suppress(OSError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return EXIT_ERROR
        print(f"{PROG}:{where} {e.strerror or e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:            # a bug: one line, the traceback with -v
        if verbose:
            raise
        print(f"{PROG}: internal error: {type(e).__name__}: {e} (run with -v for the traceback)",
              file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
