"""The bundle: everything the runtime needs, in one directory, checked before use.

::

    bundle/
      manifest.json   format version, feature spec (the mapping: which feature each
                      model input reads, ``features.names``; its width) + normalization,
                      the decision rule, table geometry, sha256 and size of every other
                      file, tool versions, cpus
      model.tflite    full-int8 model taking normalized features
      table.bin       uint8 decision table [N, N+1, 11, 11] (see table.py)
      level2.bin      the table's second level: line bytes of every UNSURE cell
                      (see level2.py; optional, described under table.level2)
      report.json     fidelity report of the conversion
      report.png      decision heatmaps (optional)

Format versions. Version 2 (what ``write`` makes) names the model's inputs column by
column, any subset of the known features in any order and zero pads
(``features.names``, see ``features.InputMap``), and says where the source model's
output turns into MIGRATE (``decision``: the output kind, ``output > threshold`` or
``output >= threshold``, and where the threshold came from; the int8 model itself
always answers MIGRATE above ``model.threshold``, 0.5). Version 1, written before,
has the five features in order then pads, width 5 or 10 (no width: 10), and no
``decision``; it reads as it always did.

``mlsched-convert`` writes bundles with ``write``; everything else reads them with
``Bundle.load``, which refuses (``BundleError``, one line) a foreign or newer
format, a manifest of the wrong shape, absurd geometry (checked before anything
is allocated), any file whose size or sha256 differs from the manifest, and —
when running as root — files other users could have replaced. Every number the
runtime reads from the manifest is checked for its type and range first (a boolean is
not a number, an integer past the float range no scale, NaN no figure), so a hostile
value is this one-line error naming its field, never an exception from deeper down.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .features import (
    FEATURE_NAMES,
    FEATURE_WIDTH,
    FEATURE_WIDTHS,
    LOAD_LEVELS,
    LOAD_STEPS,
    MAX_INPUTS,
    InputMap,
    Normalization,
)
from .files import atomic_directory
from .level2 import INPUT_LEVELS, MAX_LINES, Level2, Level2Error
from .table import MODES, table_bytes, table_shape
from .wire import UNSURE

FORMAT = "mlsched-bundle"
FORMAT_VERSION = 2
#: Versions this mlsched reads: 1 (the five features in order, no decision rule) and 2.
READ_VERSIONS = (1, 2)
MANIFEST = "manifest.json"
MODEL_FILE = "model.tflite"
TABLE_FILE = "table.bin"
LEVEL2_FILE = "level2.bin"
#: Largest host a table may describe: 4096 CPUs is 2 GB of table, far past any sane bundle,
#: but keeps a hostile manifest from asking for more.
MAX_CPUS = 1024
MAX_MANIFEST_BYTES = 1 << 20
MAX_MODEL_BYTES = 64 << 20
#: Largest size a file listed in the manifest may claim: what a file size (off_t) can be.
MAX_FILE_BYTES = (1 << 63) - 1
#: Largest magnitude of level 2's quantization integers: they are multiplied in int64.
INT64_MAX = (1 << 63) - 1
#: Largest finite float32: the model computes in float32, so the normalization must fit it.
FLOAT32_MAX = float(np.finfo(np.float32).max)
#: The report's figures the summary prints: finite numbers when present.
REPORT_FIGURES = ("int8_vs_float_agreement", "table_vs_int8_agreement", "table_hit_rate")
#: Longest value an error quotes; longer ones are cut and their length given.
MAX_QUOTED = 40


#: Name of the bundle directory shipped inside the runtime package.
DEFAULT_BUNDLE_DIR = "default_bundle"


class BundleError(ValueError):
    """A bundle that cannot be used; the message is one line that names the problem."""


def default_bundle_path() -> Path:
    """Where the shipped default bundle lives: ``default_bundle`` beside this module."""
    return Path(__file__).resolve().parent / DEFAULT_BUNDLE_DIR


def load_bundle(path: str | os.PathLike | None = None, allow_insecure: bool = False) -> Bundle:
    """Load and check ``path``, or the shipped default bundle when ``path`` is None."""
    if path is None:
        path = default_bundle_path()
        if not (path / MANIFEST).is_file():
            raise BundleError(f"no default bundle at {path}: pass a bundle directory"
                              " (--bundle DIR; make one with mlsched-convert)")
    return Bundle.load(path, allow_insecure=allow_insecure)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass
class Bundle:
    path: Path
    manifest: dict
    normalization: Normalization
    table: np.ndarray
    model_bytes: bytes
    level2: Level2 | None = None

    @property
    def cpus(self) -> int:
        return int(self.manifest["cpus"])

    @property
    def width(self) -> int:
        """Columns the model takes (a version-1 manifest without a width: 10)."""
        return int(self.manifest["features"].get("width", FEATURE_WIDTH))

    @property
    def inputs(self) -> InputMap:
        """Which feature each model input reads: the manifest's ``features.names``; in a
        version-1 manifest always the five features in order, then pads."""
        if self.manifest["format_version"] == 1:
            return InputMap.default(self.width)
        return InputMap(self.manifest["features"]["names"])

    @property
    def decision(self) -> str:
        """Where the source model's output turns into MIGRATE, as text."""
        d = self.manifest.get("decision")
        if not d:
            return "int8 output > 0.5 (a version-1 bundle does not say more)"
        op = ">=" if d["migrate_at_least"] else ">"
        return f"{d['output_kind']} output {op} {d['threshold']:g} ({d['threshold_from']})"

    @property
    def table_mode(self) -> str:
        return self.manifest["table"]["mode"]

    @property
    def model_path(self) -> Path:
        return self.path / MODEL_FILE

    @classmethod
    def load(cls, path: str | os.PathLike, allow_insecure: bool = False) -> Bundle:
        """Open, check and read a bundle directory.

        The directory is opened once (a link to it is followed once, as for the shipped
        default bundle) and every file is read through that handle, once: the bytes
        hashed are the bytes used. As root, unless ``allow_insecure``, the directory, the
        chain of its parents and every file must be safe from other users (``_check_safe``)
        and the files must not be links.
        """
        path = Path(path)
        check = os.geteuid() == 0 and not allow_insecure
        dirfd = _open_dir(path)
        try:
            if check:
                _check_chain(dirfd, path)
            manifest_bytes = _read(dirfd, path, MANIFEST, MAX_MANIFEST_BYTES, check,
                                   missing=f"{path}: no {MANIFEST}: not a bundle made by"
                                           " mlsched-convert")
            manifest, norm = _parse_manifest(manifest_bytes, path / MANIFEST)
            data = {}
            for name, meta in manifest["files"].items():
                blob = _read(dirfd, path, name, max(int(meta["bytes"]), 0) + 1, check,
                             missing=f"{path}: {name} listed in the manifest is missing")
                if len(blob) != meta["bytes"]:
                    raise BundleError(f"{path / name}: {len(blob)} bytes, manifest says"
                                      f" {meta['bytes']} (truncated or replaced): rebuild it"
                                      " with mlsched-convert")
                if hashlib.sha256(blob).hexdigest() != meta["sha256"]:
                    raise BundleError(f"{path / name}: sha256 differs from the manifest"
                                      " (modified): rebuild it with mlsched-convert")
                data[name] = blob
        finally:
            os.close(dirfd)
        cpus = int(manifest["cpus"])
        table = np.frombuffer(data[TABLE_FILE], dtype=np.uint8).reshape(table_shape(cpus)).copy()
        if table.max(initial=0) > 2:
            raise BundleError(f"{path / TABLE_FILE}: cell values outside STAY/MIGRATE/UNSURE")
        level2 = None
        if "level2" in manifest["table"]:
            try:
                level2 = Level2.from_json(manifest["table"]["level2"], data[LEVEL2_FILE])
                level2.check(int((table == UNSURE).sum()))
            except (Level2Error, KeyError) as e:
                raise BundleError(f"{path / LEVEL2_FILE}: {e}: rebuild it with mlsched-convert")\
                    from None
        return cls(path=path, manifest=manifest, normalization=norm, table=table,
                   model_bytes=data[MODEL_FILE], level2=level2)

    def summary(self) -> str:
        m, rep = self.manifest, self.manifest.get("report", {})
        lines = [
            f"bundle        {self.path}",
            f"format        {m['format']} v{m['format_version']}",
            f"created       {m.get('created', '?')} by mlsched {m.get('tool_versions', {}).get('mlsched', '?')}",
            f"source model  {m.get('source', {}).get('model', '?')}",
            f"cpus          {self.cpus}",
            f"input width   {self.width}" + (" (five zero pads)" if self.width == FEATURE_WIDTH
                                               and self.inputs.is_default else ""),
            f"inputs        {self.inputs.describe()}",
            f"MIGRATE when  {self.decision}",
            f"table         {self.table_mode}, {self.table.nbytes} bytes,"
            f" {float((self.table == 2).mean()) * 100:.2f}% UNSURE",
            "level 2       " + (f"{self.level2.nbytes} bytes, {self.level2.cells} cells of"
                                f" {self.level2.lines} lines, {self.level2.ring_lines()} lines"
                                " to user space" if self.level2 else "none"),
            f"normalization {'identity' if self.normalization.is_identity else 'per-feature scale ' + str([round(s, 4) for s in self.normalization.scale[:5]])}",
        ]
        for k in REPORT_FIGURES:
            if k in rep:
                lines.append(f"{k:<24}{float(rep[k]):.4f}")
        for name, meta in m["files"].items():
            lines.append(f"  {name:<14}{meta['bytes']:>9} B  sha256 {meta['sha256'][:16]}…")
        return "\n".join(lines)


def _open_dir(path: Path) -> int:
    """The bundle directory, opened once; a link to it is followed, the directory itself
    must be one."""
    real = os.path.realpath(path)
    try:
        return os.open(real, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise BundleError(f"{path}: no such bundle directory") from None
    except NotADirectoryError:
        raise BundleError(f"{path}: not a directory (a bundle is a directory made by"
                          " mlsched-convert)") from None
    except OSError as e:
        raise BundleError(f"{path}: cannot open ({e.strerror})") from None


def _unsafe(st: os.stat_result, allow_sticky: bool = False) -> str | None:
    """Why another user could change what this inode holds (None: only root can)."""
    if st.st_uid != 0:
        return f"uid {st.st_uid}"
    writable = st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    if writable and not (allow_sticky and st.st_mode & stat.S_ISVTX):
        return f"mode {stat.S_IMODE(st.st_mode):o}"
    return None


def _refuse(where, why: str) -> BundleError:
    return BundleError(f"{where}: writable by users other than root ({why}): chown root and"
                       " chmod go-w it, or pass --allow-insecure-bundle")


def _check_chain(dirfd: int, path: Path) -> None:
    """The opened directory and every parent up to / must be root's and closed to others
    (a sticky parent is fine: others cannot move root's entries out of it)."""
    why = _unsafe(os.fstat(dirfd))
    if why:
        raise _refuse(path, why)
    fd = os.open("..", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=dirfd)
    where = Path(os.path.realpath(path)).parent
    try:
        while True:
            st = os.fstat(fd)
            why = _unsafe(st, allow_sticky=True)
            if why:
                raise _refuse(where, why)
            up = os.open("..", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=fd)
            top = os.fstat(up)
            if (top.st_dev, top.st_ino) == (st.st_dev, st.st_ino):
                os.close(up)
                return
            os.close(fd)
            fd, where = up, where.parent
    finally:
        os.close(fd)


def _read(dirfd: int, path: Path, name: str, limit: int, check: bool, missing: str) -> bytes:
    """One file of the bundle, read once through the directory handle (at most ``limit``
    bytes). With ``check``: a regular file, not a link, that only root can change."""
    if "/" in name or name in ("", ".", ".."):
        raise BundleError(f"{path}: manifest names {name!r}, not a file of the bundle")
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | (os.O_NOFOLLOW if check else 0)
    try:
        fd = os.open(name, flags, dir_fd=dirfd)
    except FileNotFoundError:
        raise BundleError(missing) from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise BundleError(f"{path / name}: a symbolic link; as root a bundle's files must be"
                              " regular files in its directory (or pass"
                              " --allow-insecure-bundle)") from None
        raise BundleError(f"{path / name}: cannot open ({e.strerror})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise BundleError(f"{path / name}: not a regular file")
        why = _unsafe(st) if check else None
        if why:
            raise _refuse(path / name, why)
        if st.st_size > limit:
            raise BundleError(f"{path / name}: larger than {limit} bytes")
        chunks, left = [], limit
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _parse_manifest(blob: bytes, where: Path) -> tuple[dict, Normalization]:
    if len(blob) > MAX_MANIFEST_BYTES:
        raise BundleError(f"{where}: larger than {MAX_MANIFEST_BYTES} bytes: not a manifest")
    try:
        manifest = json.loads(blob.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError(f"{where}: not valid JSON ({e})") from None
    except RecursionError:
        raise BundleError(f"{where}: JSON nested too deeply: not a manifest") from None
    except ValueError as e:         # e.g. an integer past the interpreter's digit limit
        raise BundleError(f"{where}: not a manifest ({e})") from None
    return manifest, _check_manifest(manifest, where)


def _check_manifest(m, where: Path) -> Normalization:
    def bad(what: str) -> BundleError:
        return BundleError(f"{where}: {what}")

    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise bad(f"not an {FORMAT} manifest")
    ver = m.get("format_version")
    if not isinstance(ver, int) or isinstance(ver, bool):
        raise bad("format_version is not an integer")
    if ver not in READ_VERSIONS:
        raise bad(f"format version {_quote(ver)}, this mlsched reads"
                  f" {' and '.join(map(str, READ_VERSIONS))}: use a matching mlsched")
    cpus = m.get("cpus")
    if not _is_int(cpus) or not 1 <= cpus <= MAX_CPUS:
        raise bad(f"cpus must be an integer in 1..{MAX_CPUS}, got {_quote(cpus)}")
    feats = m.get("features")
    if not isinstance(feats, dict) or not isinstance(feats.get("names"), list):
        raise bad("feature spec must list names, one per model input")
    if ver == 1 and feats["names"][:len(FEATURE_NAMES)] != list(FEATURE_NAMES):
        raise bad(f"feature spec must name {', '.join(FEATURE_NAMES)}")
    width = feats.get("width", FEATURE_WIDTH if ver == 1 else None)
    widths = FEATURE_WIDTHS if ver == 1 else range(1, MAX_INPUTS + 1)
    if not _is_int(width) or width not in widths or len(feats["names"]) != width:
        raise bad(f"feature width {_quote(width)} with {len(feats['names'])} names: expected"
                  + (f" {len(FEATURE_NAMES)} (the features) or {FEATURE_WIDTH} (padded)"
                     if ver == 1 else f" 1..{MAX_INPUTS}") + ", one name per column")
    if ver > 1:
        if not all(isinstance(n, str) for n in feats["names"]):
            raise bad("feature names must be strings")
        try:
            InputMap(feats["names"])
        except ValueError as e:
            raise bad(f"feature names: {e}") from None
        _check_decision(m.get("decision"), bad)
    _check_normalization(feats.get("normalization"), bad)
    try:
        with np.errstate(over="ignore", divide="ignore"):
            norm = Normalization.from_json(feats["normalization"])
            in_range = np.isfinite(np.float32(1.0 / norm.scale)).all() \
                and np.isfinite(norm.offset.astype(np.float32)).all()
    except (KeyError, TypeError, ValueError) as e:
        raise bad(f"bad feature normalization ({e})") from None
    if not in_range:
        raise bad("bad feature normalization (scale or offset outside float32 range)")
    if norm.width != width:
        raise bad(f"feature normalization has {norm.width} columns, the model takes {width}")
    for key in ("report", "source", "tool_versions"):
        if not isinstance(m.get(key, {}), dict):
            raise bad(f"{key} must be an object")
    report = m.get("report", {})
    for key in REPORT_FIGURES:
        if key in report and not _is_finite(report[key]):
            raise bad(f"report.{key} is {_quote(report[key])}, not a finite number")
    tab = m.get("table")
    if not isinstance(tab, dict) or tab.get("file") != TABLE_FILE or tab.get("mode") not in MODES:
        raise bad(f"table must be {{file: {TABLE_FILE}, mode: {'|'.join(MODES)}, ...}}")
    if tab.get("shape") != list(table_shape(cpus)) or tab.get("load_steps") != LOAD_STEPS \
            or tab.get("dtype") != "uint8":
        raise bad(f"table geometry {tab.get('shape')!r} does not match cpus={cpus}"
                  f" (expected uint8 {list(table_shape(cpus))}, load_steps {LOAD_STEPS})")
    if "level2" in tab and (not isinstance(tab["level2"], dict)
                            or tab["level2"].get("file") != LEVEL2_FILE):
        raise bad(f"table.level2 must be {{file: {LEVEL2_FILE}, lines, src, dst}}")
    if "level2" in tab:
        _check_level2(tab["level2"], cpus, bad)
    model = m.get("model")
    if not isinstance(model, dict) or model.get("file") != MODEL_FILE:
        raise bad(f"model must be {{file: {MODEL_FILE}, ...}}")
    files = m.get("files")
    if not isinstance(files, dict) or MODEL_FILE not in files or TABLE_FILE not in files:
        raise bad(f"files must list {MODEL_FILE} and {TABLE_FILE} with sizes and hashes")
    for name, meta in files.items():
        if not isinstance(name, str) or "/" in name or name.startswith(".") or name == MANIFEST:
            raise bad(f"file name {name!r} not allowed in a bundle")
        if not isinstance(meta, dict) or not isinstance(meta.get("sha256"), str) \
                or not _is_int(meta.get("bytes")):
            raise bad(f"files[{name!r}] needs sha256 (string) and bytes (integer)")
        _check_int(meta["bytes"], 0, MAX_FILE_BYTES, f"files[{name!r}].bytes", bad)
    if "level2" in tab and LEVEL2_FILE not in files:
        raise bad(f"files must list {LEVEL2_FILE}, which table.level2 describes")
    if files[TABLE_FILE]["bytes"] != table_bytes(cpus):
        raise bad(f"table.bin listed as {files[TABLE_FILE]['bytes']} bytes, geometry needs {table_bytes(cpus)}")
    if files[MODEL_FILE]["bytes"] > MAX_MODEL_BYTES:
        raise bad(f"model.tflite listed as {files[MODEL_FILE]['bytes']} bytes: larger than {MAX_MODEL_BYTES}")
    assert LOAD_LEVELS == LOAD_STEPS + 1
    return norm


def _is_int(v) -> bool:
    """A JSON integer (a boolean is not one)."""
    return isinstance(v, int) and not isinstance(v, bool)


def _is_finite(v) -> bool:
    """A JSON number a float holds, not NaN or infinite."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    try:
        return math.isfinite(float(v))
    except OverflowError:
        return False


def _quote(v) -> str:
    """``v`` as an error quotes it: a long integer by its digits, anything long cut short."""
    text = repr(v)
    if len(text) <= MAX_QUOTED:
        return text
    if _is_int(v):
        return f"an integer of {len(str(abs(v)))} digits"
    return f"{text[:MAX_QUOTED]}... ({len(text)} characters)"


def _check_normalization(d, bad) -> None:
    """Scale and offset: lists of numbers a float32 holds, each checked by name (their
    lengths and signs are ``Normalization``'s to judge)."""
    if not isinstance(d, dict):
        raise bad("bad feature normalization (features.normalization must be an object)")
    for key in ("scale", "offset"):
        values = d.get(key)
        if values is None and key == "offset":
            continue
        if not isinstance(values, list):
            raise bad(f"bad feature normalization (features.normalization.{key} must be a list"
                      " of numbers)")
        for i, v in enumerate(values):
            if not _is_finite(v) or abs(float(v)) > FLOAT32_MAX:
                raise bad(f"bad feature normalization (features.normalization.{key}[{i}] is"
                          f" {_quote(v)}, not a finite float32)")


def _check_decision(d, bad) -> None:
    """The decision rule of a version-2 manifest: what the summary prints, each field checked."""
    if not isinstance(d, dict):
        raise bad("decision must be an object {output_kind, threshold, migrate_at_least,"
                  " threshold_from}")
    if not isinstance(d.get("output_kind"), str) or not isinstance(d.get("threshold_from"), str):
        raise bad("decision.output_kind and decision.threshold_from must be text")
    if not _is_finite(d.get("threshold")):
        raise bad(f"decision.threshold is {_quote(d.get('threshold'))}, not a finite number")
    if not isinstance(d.get("migrate_at_least"), bool):
        raise bad(f"decision.migrate_at_least is {_quote(d.get('migrate_at_least'))}, not true"
                  " or false")


def _check_level2(d: dict, cpus: int, bad) -> None:
    """The integers of table.level2, each in the range its use allows; what they must
    agree with (the table, level2.bin) is ``Level2``'s to check."""
    ranges = {"lines": (1, MAX_LINES), "cells": (0, table_bytes(cpus))}   # a cell, a byte
    for key, (low, high) in ranges.items():
        _check_int(d.get(key), low, high, f"table.level2.{key}", bad)
    for side in ("src", "dst"):
        q = d.get(side)
        if not isinstance(q, dict) or not isinstance(q.get("band_start"), list):
            raise bad(f"table.level2.{side} must be {{mul, add, band_start: [integers]}}")
        for key in ("mul", "add"):
            _check_int(q.get(key), -INT64_MAX, INT64_MAX, f"table.level2.{side}.{key}", bad)
        for i, v in enumerate(q["band_start"]):
            _check_int(v, 0, INPUT_LEVELS - 1, f"table.level2.{side}.band_start[{i}]", bad)


def _check_int(v, low: int, high: int, where: str, bad) -> None:
    if not _is_int(v) or not low <= v <= high:
        raise bad(f"{where} is {_quote(v)}, not an integer in {low}..{high}")


def write(target: str | os.PathLike, files: dict[str, bytes], manifest: dict,
          force: bool = False) -> Path:
    """Write a bundle atomically: build it in a temporary directory beside ``target``, then rename.

    ``files`` maps names to contents; the manifest gains ``files`` (size + sha256 of each).
    An existing ``target`` is refused unless ``force``; then it is replaced only once the
    new bundle is complete.
    """
    target = Path(target)
    with atomic_directory(target, replace=force) as tmp:
        listing = {}
        for name, data in files.items():
            fp = tmp / name
            fp.write_bytes(data)
            os.chmod(fp, 0o644)
            listing[name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        manifest = {**manifest, "format": FORMAT, "format_version": FORMAT_VERSION, "files": listing}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        os.chmod(tmp / MANIFEST, 0o644)
    return target
