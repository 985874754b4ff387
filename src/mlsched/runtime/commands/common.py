"""What the subcommands share: the program name, the common options, argparse value types
(each value parses one way everywhere) and the engine the common options ask for."""

from __future__ import annotations

import argparse
import logging

from .. import topology
from ..bundle import load_bundle
from ..engine import Engine
from ..errors import UsageError
from ..interp import BACKENDS

PROG = "mlsched-lite"
log = logging.getLogger("mlsched.runtime.cli")


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (UsageError, exit 2), not a usage dump."""

    def error(self, message):
        raise UsageError(f"{self.prog}: {message} (see {self.prog} -h)")


def add_common(p: argparse.ArgumentParser, top: bool) -> None:
    """The options every subcommand accepts, before or after its name."""
    dflt = (lambda v: v) if top else (lambda v: argparse.SUPPRESS)
    g = p.add_argument_group("common options")
    g.add_argument("--bundle", "--model-path", dest="bundle", metavar="DIR", default=dflt(None),
                   help="bundle directory made by mlsched-convert (default: the shipped default bundle)")
    g.add_argument("--backend", choices=("auto", *BACKENDS), default=dflt("auto"),
                   help="TFLite interpreter package (default: auto, litert first)")
    g.add_argument("--allow-insecure-bundle", action="store_true", default=dflt(False),
                   help="as root, accept a bundle that users other than root could modify")
    g.add_argument("-v", "--verbose", action="store_true", default=dflt(False),
                   help="debug logging, tracebacks on internal errors")


def open_engine(args, ncpus: int | None = None) -> Engine:
    """The bundle and engine the common options name."""
    bundle = load_bundle(args.bundle, allow_insecure=args.allow_insecure_bundle)
    engine = Engine(bundle, ncpus=ncpus, backend=args.backend)
    log.debug("engine: %s", engine.describe())
    return engine


def number(text: str) -> float:
    """Any float (the engine decides what is a valid feature value)."""
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


def positive_int(text: str) -> int:
    """A decimal (or 0x-prefixed hexadecimal) integer >= 1."""
    s = text.strip()
    try:
        v = int(s, 16) if s[:2].lower() == "0x" else int(s, 10)
    except ValueError:
        v = 0
    if v < 1:
        raise argparse.ArgumentTypeError(f"not a positive integer: {text!r}")
    return v


def seconds(text: str) -> float:
    """A finite number of seconds >= 0."""
    try:
        v = float(text)
    except ValueError:
        v = -1.0
    if not v >= 0 or v == float("inf"):
        raise argparse.ArgumentTypeError(f"not a number of seconds >= 0: {text!r}")
    return v


def ring_bytes(text: str) -> int:
    """A ring size: a power of two of at least one page."""
    v = positive_int(text)
    if v & (v - 1) or v < 4096:
        raise argparse.ArgumentTypeError(f"--ring-size {text}: a power of two >= 4096 bytes")
    return v


def domains(text: str) -> list[list[int]]:
    """``--domains`` (syntax in topology.py)."""
    try:
        return topology.parse_domains(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


DOMAINS_HELP = ("CPU domains: comma-separated CPU lists, '+' joins ranges inside one"
                " (0-3,4-7 or 0-1+4-5,2-3+6-7); default: CPUs sharing a last-level cache,"
                " one domain per CPU when there is a single LLC")
