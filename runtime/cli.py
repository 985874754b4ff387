"""``mlsched-lite``: migration decisions from an mlsched bundle, on the command line.

Subcommands come from ``COMMANDS``: each entry is an object (or the name of a module,
imported only when it is installed) with ``add_parser(subparsers)``, which adds one or
more subparsers, and ``run(args) -> int``. ``main`` gives every parser it added the
common options (``--bundle``/``--model-path``, ``--backend``, ``--allow-insecure-bundle``,
``-v``) and dispatches to the ``run`` of the entry that added the chosen subcommand.

Errors a user can fix (a refused bundle, an unreadable input file, a bad flag) print
one line on stderr and exit 2; a bad row inside a batch file is not an error: it is
answered STAY and counted ``invalid`` in the summary.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import importlib
import importlib.util
import io
import itertools
import json
import logging
import math
import os
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from .. import __version__
from .bundle import FORMAT_VERSION, BundleError
from .engine import EngineError
from .features import DECISION_NAMES, FEATURE_NAMES, STAY, UNSURE, host_features
from .files import atomic_writer
from .interp import BACKENDS, BackendError

PROG = "mlsched-lite"
log = logging.getLogger("mlsched.runtime.cli")

EXIT_OK, EXIT_ERROR, EXIT_BAD_INPUT = 0, 1, 2
#: Rows per engine batch when reading --input: bounds memory (1 M rows stay under 50 MB RSS
#: with tflite-runtime); larger chunks are no faster, parsing dominates.
INPUT_CHUNK_ROWS = 4096
#: Sure cells `bundle verify` re-checks against the interpreter at their centres (sampled above).
VERIFY_MAX_CELLS = 200_000

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

exit status: 0 done, 2 bad input or unusable bundle (one line on stderr), 1 internal error
"""

DECIDE_EPILOG = """\
examples:
  mlsched-lite decide --cpu 4 --idle 2 --busy 6 --src-load 0.9 --dst-load 0.2
  mlsched-lite decide --cpu 4 --idle 2 --busy 6 --src-load 0.9 --dst-load 0.2 --json
  mlsched-lite decide --input features.csv --output decisions.txt
  mlsched-lite decide --input - < features.csv
  mlsched-lite decide --input trace.npz --cpus 2 -v

Rows with NaN/inf values, negative counts, text or the wrong number of fields are
answered STAY and counted as invalid; loads outside [0, 1] are clamped.
"""

BUNDLE_EPILOG = """\
examples:
  mlsched-lite bundle verify models/default/bundle
  mlsched-lite bundle verify /tmp/bundle --cpus 64 --backend tflite-runtime
"""


class CliError(Exception):
    """A user-fixable problem: printed as one line, exit 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise CliError(f"{self.prog}: {message} (see {self.prog} -h)")


# ---- common options -------------------------------------------------------------------------
def _add_common(p: argparse.ArgumentParser, top: bool) -> None:
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


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        v = 0
    if v < 1:
        raise argparse.ArgumentTypeError(f"not a positive integer: {text!r}")
    return v


def _load(args, ncpus: int | None = None):
    """Bundle + engine as the common options say."""
    from .api import load_bundle
    from .engine import Engine

    bundle = load_bundle(args.bundle, allow_insecure=args.allow_insecure_bundle)
    engine = Engine(bundle, ncpus=ncpus, backend=args.backend)
    log.debug("engine: %s", engine.describe())
    return bundle, engine


# ---- decide ---------------------------------------------------------------------------------
class DecideCommand:
    """``decide``: one decision from flags, or one per row of --input."""

    FLAGS = (("cpu", "cpu"), ("idle", "idle"), ("busy", "busy"), ("src_load", "src-load"),
             ("dst_load", "dst-load"))

    @staticmethod
    def add_parser(subparsers) -> None:
        p = subparsers.add_parser(
            "decide", help="decide one migration, or every row of a CSV/.npz file",
            description="Answer MIGRATE or STAY: the table first, the int8 model on misses.",
            epilog=DECIDE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
        one = p.add_argument_group("one decision")
        one.add_argument("--cpu", type=_number, help="CPU id the task runs on")
        one.add_argument("--idle", type=_number, help="idle CPUs on the host")
        one.add_argument("--busy", type=_number, help="busy CPUs on the host")
        one.add_argument("--src-load", type=_number, help="source domain load, 0..1")
        one.add_argument("--dst-load", type=_number, help="destination domain load, 0..1")
        many = p.add_argument_group("a file of decisions")
        many.add_argument("--input", metavar="FILE",
                          help="CSV with a header naming the five features, .npz with 'features'"
                               " [n, 10], or - for CSV on stdin")
        many.add_argument("--output", metavar="FILE",
                          help="where decisions go, one per row (default: stdout)")
        many.add_argument("--chunk-rows", type=_positive_int, default=INPUT_CHUNK_ROWS,
                          metavar="N", help="rows per engine batch (default %(default)s)")
        p.add_argument("--json", action="store_true",
                       help='print {"decision", "probability", "source"} (one JSON line per row)')
        p.add_argument("--cpus", type=_positive_int, metavar="N",
                       help="derive a table for an N-CPU host from model.tflite (default: the bundle's)")

    @classmethod
    def run(cls, args) -> int:
        given = [flag for dest, flag in cls.FLAGS if getattr(args, dest) is not None]
        if args.input is not None:
            if given:
                raise CliError(f"{PROG} decide: give --input or the feature flags, not both"
                               f" (got --{', --'.join(given)})")
            return cls._batch(args)
        for dest, flag in cls.FLAGS:
            # argparse drops a bare "--" value (--cpu=--) and hands over [] instead of a number
            if getattr(args, dest) is not None and not isinstance(getattr(args, dest), float):
                raise CliError(f"{PROG} decide: --{flag}: expected a number (see -h)")
        if len(given) != len(cls.FLAGS):
            missing = [flag for dest, flag in cls.FLAGS if getattr(args, dest) is None]
            raise CliError(f"{PROG} decide: missing --{', --'.join(missing)}"
                           " (or give --input FILE; see -h)")
        if args.output is not None:
            raise CliError(f"{PROG} decide: --output goes with --input")
        _, engine = _load(args, args.cpus)
        d = engine.decide_one(args.cpu, args.idle, args.busy, args.src_load, args.dst_load,
                              probability=args.json)
        if d.source == "invalid":
            print(f"{PROG}: invalid features (NaN/inf or a negative count): answered STAY",
                  file=sys.stderr)
        if args.json:
            print(json.dumps({"decision": d.name, "probability": d.probability, "source": d.source}))
        else:
            print(d.name)
        return EXIT_OK

    @staticmethod
    def _batch(args) -> int:
        _, engine = _load(args, args.cpus)
        chunks = read_features(args.input, args.chunk_rows)
        t0 = time.perf_counter()
        with _output(args.output) as out:
            for x in chunks:
                r = engine.decide(x, probabilities=args.json)
                out.write(format_decisions(r, args.json))
        seconds = time.perf_counter() - t0
        c = engine.counters
        rate = c.requests / seconds if seconds > 0 else 0.0
        print(f"{PROG}: {c.requests} rows, table hit rate {c.hit_rate:.1%} ({c.hits}),"
              f" interpreter rows {c.misses}, invalid {c.invalid}, clamped {c.clamped},"
              f" {rate:,.0f} rows/s ({seconds:.2f} s)", file=sys.stderr)
        return EXIT_OK


_NAMES = np.array([DECISION_NAMES[STAY], DECISION_NAMES[1], DECISION_NAMES[UNSURE]])


def format_decisions(r, as_json: bool) -> str:
    """Text for one batch: decision names, or JSON lines, one per row."""
    if len(r) == 0:
        return ""
    if not as_json:
        return "\n".join(_NAMES[r.decisions].tolist()) + "\n"
    from .engine import SOURCE_NAMES

    lines = []
    for d, s, p in zip(r.decisions.tolist(), r.source.tolist(), r.probability.tolist(),
                       strict=True):
        prob = None if math.isnan(p) else round(p, 6)
        lines.append(json.dumps({"decision": DECISION_NAMES[d], "probability": prob,
                                 "source": SOURCE_NAMES[s]}))
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def _output(path: str | None):
    """stdout, or a file written beside its final name and renamed into place when complete."""
    if path is None or path == "-":
        yield sys.stdout
        sys.stdout.flush()
        return
    target = Path(path)
    if target.is_dir():
        raise CliError(f"{PROG}: --output {path}: is a directory")
    with contextlib.ExitStack() as stack:
        try:
            f = stack.enter_context(atomic_writer(target))
        except OSError as e:
            raise CliError(f"{PROG}: --output {path}: {e.strerror}") from None
        yield f


# ---- reading --input ------------------------------------------------------------------------
def read_features(path: str, chunk_rows: int = INPUT_CHUNK_ROWS) -> Iterator[np.ndarray]:
    """Yield raw features [m, 5] float64 from a CSV (path or '-') or .npz, ``chunk_rows`` at a time.

    File-level problems (missing, empty, no header, no 'features') raise CliError before
    the first chunk; a bad row becomes a row of NaN, which the engine answers as invalid.
    """
    if path == "-":
        stream = io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8", errors="replace", newline="")
        return _csv_chunks(stream, "<stdin>", chunk_rows)
    p = Path(path)
    if not p.exists():
        raise CliError(f"{PROG}: --input {path}: no such file")
    if p.is_dir():
        raise CliError(f"{PROG}: --input {path}: is a directory")
    if p.suffix == ".npz":
        return _npz_chunks(p, chunk_rows)
    try:
        stream = open(p, encoding="utf-8", errors="replace", newline="")
    except OSError as e:
        raise CliError(f"{PROG}: --input {path}: {e.strerror}") from None
    return _csv_chunks(stream, path, chunk_rows)


def _csv_chunks(stream, name: str, chunk_rows: int) -> Iterator[np.ndarray]:
    header_line = stream.readline()
    if not header_line:
        stream.close()
        raise CliError(f"{PROG}: --input {name}: empty (expected a CSV header naming"
                       f" {', '.join(FEATURE_NAMES)})")
    header = [h.strip() for h in next(csv.reader([header_line]), [])]
    missing = [n for n in FEATURE_NAMES if n not in header]
    if missing:
        stream.close()
        raise CliError(f"{PROG}: --input {name}: header lacks {', '.join(missing)}"
                       f" (needs {', '.join(FEATURE_NAMES)}; .npz files need the .npz suffix)")
    cols = [header.index(n) for n in FEATURE_NAMES]
    return _csv_rows(stream, cols, len(header), chunk_rows)


def _csv_rows(stream, cols: list[int], width: int, chunk_rows: int) -> Iterator[np.ndarray]:
    with stream:
        while True:
            lines = list(itertools.islice(stream, chunk_rows))
            if not lines:
                return
            yield _parse_lines(lines, cols, width)


def _parse_lines(lines: list[str], cols: list[int], width: int) -> np.ndarray:
    """CSV lines -> [m, 5]: one row per non-blank line, NaN where a line is malformed.

    Fast path: numpy's C parser over the whole chunk (plain numbers, no quotes). If any
    line defeats it, the chunk is parsed line by line, each line on its own, so a stray
    quote cannot swallow the lines after it.
    """
    lines = [ln for ln in lines if ln.strip()]
    if not lines:
        return np.zeros((0, len(cols)))
    try:
        with np.errstate(all="ignore"), warnings_as_errors():
            a = np.loadtxt(lines, delimiter=",", comments=None, quotechar=None, ndmin=2,
                           dtype=np.float64)
        if a.shape == (len(lines), width):
            return a[:, cols]
    except ValueError:
        pass
    out = np.full((len(lines), len(cols)), np.nan)
    for i, line in enumerate(lines):
        try:
            row = next(csv.reader([line]), [])
        except csv.Error:
            continue
        if len(row) != width:
            continue
        for j, c in enumerate(cols):
            try:
                out[i, j] = float(row[c])
            except ValueError:
                pass
    return out


@contextlib.contextmanager
def warnings_as_errors():
    """loadtxt warns (instead of failing) on some malformed input; treat that as malformed."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            yield
        except Warning as w:
            raise ValueError(str(w)) from None


def _npz_chunks(path: Path, chunk_rows: int) -> Iterator[np.ndarray]:
    """Stream the 'features' array of an .npz (stored or deflated) without loading it whole."""
    def bad(what: str) -> CliError:
        return CliError(f"{PROG}: --input {path}: {what}")

    try:
        z = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise bad(f"not a readable .npz ({e})") from None
    if "features.npy" not in z.namelist():
        z.close()
        raise bad(f"no 'features' array (has {', '.join(n[:-4] for n in z.namelist()) or 'nothing'})")
    try:
        f = z.open("features.npy")
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise ValueError(f".npy format {version[0]}.{version[1]}: save it with numpy.savez")
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
        z.close()
        raise bad(f"'features' is not a readable array ({e})") from None
    if len(shape) != 2 or shape[1] not in (5, 10):
        z.close()
        raise bad(f"'features' has shape {list(shape)}, expected [n, 10] or [n, 5]")
    if dtype.hasobject or dtype.kind not in "biuf":
        z.close()
        raise bad(f"'features' is {dtype}, not real numbers")
    if fortran:
        z.close()
        raise bad("'features' is Fortran-ordered: save np.ascontiguousarray(features)")
    return _npz_rows(z, f, shape, dtype, chunk_rows, bad)


def _npz_rows(z, f, shape, dtype, chunk_rows, bad) -> Iterator[np.ndarray]:
    n, width = shape
    row_bytes = width * dtype.itemsize
    with z, f:
        done = 0
        while done < n:
            take = min(chunk_rows, n - done)
            try:
                buf = f.read(take * row_bytes)
            except (OSError, zipfile.BadZipFile, EOFError) as e:
                raise bad(f"'features' unreadable after {done} rows ({e})") from None
            if len(buf) != take * row_bytes:
                raise bad(f"'features' truncated after {done + len(buf) // row_bytes} of {n} rows")
            yield np.frombuffer(buf, dtype=dtype).reshape(take, width)[:, :5].astype(np.float64)
            done += take


# ---- bundle ---------------------------------------------------------------------------------
class BundleCommand:
    """``bundle verify``: is this bundle intact, readable here and fit for this host?"""

    @staticmethod
    def add_parser(subparsers) -> None:
        p = subparsers.add_parser(
            "bundle", help="inspect bundles (verify)", epilog=BUNDLE_EPILOG,
            description="Bundle tools.", formatter_class=argparse.RawDescriptionHelpFormatter)
        sub = p.add_subparsers(dest="bundle_command", metavar="ACTION", parser_class=_Parser)
        sub.required = True
        v = sub.add_parser(
            "verify", epilog=BUNDLE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
            help="check hashes, format and fit for this host; print the manifest summary",
            description="Check a bundle: format version, manifest, sha256 and size of every file,"
                        " file ownership (as root), the model under this interpreter, every sure"
                        " table cell against the model at its centre, and the host's CPU count.")
        v.add_argument("dir", nargs="?", metavar="DIR",
                       help="bundle directory (default: --bundle, else the shipped default)")
        v.add_argument("--cpus", type=_positive_int, metavar="N",
                       help=f"CPUs of the host it is for (default: this host's, {os.cpu_count()})")
        _add_common(v, top=False)

    @staticmethod
    def run(args) -> int:
        from .api import load_bundle
        from .engine import Engine

        path = args.dir if args.dir is not None else args.bundle
        try:
            bundle = load_bundle(path, allow_insecure=args.allow_insecure_bundle)
        except BundleError as e:
            raise CliError(f"{PROG}: bundle verify: {e}") from None
        engine = Engine(bundle, backend=args.backend)
        model = engine.model
        lines = [bundle.summary(),
                 f"interpreter   {engine.backend}: input {model.input_dtype} [n, 10],"
                 f" output {model.output_dtype} [n, 1]"]
        checked, wrong = _check_table(engine)
        if wrong:
            raise CliError(f"{PROG}: bundle verify: {bundle.path}: {wrong} of {checked} sure table"
                           f" cells differ from model.tflite under {engine.backend}: rebuild the"
                           " bundle with mlsched-convert, or try the other --backend")
        lines.append(f"table check   {checked} sure cells equal the model at their centres")
        host = args.cpus or os.cpu_count() or 1
        if host > bundle.cpus:
            raise CliError(f"{PROG}: bundle verify: {bundle.path} is for {bundle.cpus} CPUs, the host"
                           f" has {host}: convert with mlsched-convert --cpus {host}")
        how = "uses the bundle's table" if host == bundle.cpus else \
            f"derives a {host}-CPU table from model.tflite at start-up"
        lines.append(f"host          {host} CPUs: mlsched-lite {how}")
        lines.append("OK")
        print("\n".join(lines))
        return EXIT_OK


def _check_table(engine) -> tuple[int, int]:
    """Compare sure cells with the interpreter at their centres: (cells checked, cells differing)."""
    t = engine.table
    cpu, idle, qs, qd = np.nonzero(t != UNSURE)
    if cpu.size > VERIFY_MAX_CELLS:
        pick = np.random.default_rng(0).choice(cpu.size, VERIFY_MAX_CELLS, replace=False)
        cpu, idle, qs, qd = cpu[pick], idle[pick], qs[pick], qd[pick]
    if cpu.size == 0:
        return 0, 0
    n = t.shape[0]
    feats = host_features(n, cpu, idle, qs / 10.0, qd / 10.0)
    expected = engine.interpreter_decide(feats)
    return int(cpu.size), int((expected != t[cpu, idle, qs, qd]).sum())


# ---- main -----------------------------------------------------------------------------------
#: Subcommands, in -h order: objects, or module names imported when installed. Each has
#: add_parser(subparsers), adding one or more subparsers, and run(args) -> exit status.
COMMANDS: list = [DecideCommand, BundleCommand, "mlsched.runtime.daemon"]


def _commands():
    for entry in COMMANDS:
        if isinstance(entry, str):
            if importlib.util.find_spec(entry) is None:
                continue
            entry = importlib.import_module(entry)
        yield entry


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
                description="Machine-learned task-migration decisions from an mlsched bundle:"
                            " table first, batched int8 TFLite on misses, no TensorFlow.")
    p.add_argument("--version", action="store_true", help="print versions and exit")
    _add_common(p, top=True)
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for cmd in _commands():
        before = set(sub.choices)
        cmd.add_parser(sub)
        for name in set(sub.choices) - before:
            sp = sub.choices[name]
            sp.set_defaults(_command=cmd)
            if not any(a.dest == "bundle" for a in sp._actions):
                _add_common(sp, top=False)
    return p


def version_text() -> str:
    from .interp import available_backends, quiet_stderr

    with quiet_stderr():
        found = available_backends()
    py = ".".join(map(str, sys.version_info[:3]))
    return (f"{PROG} {__version__} (bundle format {FORMAT_VERSION}, Python {py},"
            f" interpreters: {', '.join(found) or 'none: pip install ai-edge-litert'})")


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
            raise CliError(f"{PROG}: choose a command ({', '.join(sorted(_command_names()))};"
                           f" see {PROG} -h)")
        return cmd.run(args)
    except (CliError, BundleError, BackendError, EngineError) as e:
        msg = str(e)
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


def _command_names() -> list[str]:
    names: list[str] = []
    for action in build_parser()._subparsers._group_actions:
        names.extend(action.choices)
    return names


if __name__ == "__main__":
    sys.exit(main())
