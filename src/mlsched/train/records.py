"""Record files the kernel side writes, read and turned into labelled training rows.

Two kinds, told apart by the CSV header:

* **collector** (``mlsched-lite run --record``): the five features, what CFS/EEVDF did
  (``cfs_action``) and, in files of this version, the domain ids of the record's CPU and
  of the CPU CFS moved the task to (``src_domain``, ``dst_domain``; empty when unknown).
  Files of the earlier version end at ``ts_ns``.
* **exploration** (``scx_mlsched --explore PERMILLE --explore-out FILE``): the five
  features, the action the scheduler chose at random, its probability, and what followed:
  ``wait_ns`` until the task next ran, queue lengths, ``push``/``pull``.

Labels (``label_imitate``, ``label_outcome``):

* **imitate**: MIGRATE iff CFS migrated the task *between domains*; a move inside a domain
  is a STAY for the question the model answers. Without domain columns every CFS
  migration counts as MIGRATE.
* **outcome**: cost = wait_ns + action * migration cost. Baseline b = mean cost of the
  rows of the same kind in the same 0.1-cell of (src load, dst load) — the table's cells,
  ``features.load_key`` — or of the kind when the cell holds fewer than
  ``MIN_CELL_ROWS``; advantage A = b - cost; label = action if A >= 0 else the other
  action; weight = |A| / propensity, normalised to mean 1 (the inverse-propensity
  reduction of logged bandit data to weighted classification).

Rows no label can come from are dropped and counted by reason (``Records.dropped``):
among them rows about a CPU outside the table (cpu ``MLSCHED_CPU_NONE``, recorded with
``--cpus`` below the host's), which would otherwise pass for a host as large as a u32
and scale every count to nothing. Files are parsed a chunk of rows at a time into compact
columns (``KEPT``): float32 features, small integer types elsewhere, so what a read holds
grows by a small constant a row.

Bad input raises ``RecordError`` with one line naming the file and line; so does a
propensity that is no probability scx_mlsched logs (``MIN_PROPENSITY`` .. 1), since its
inverse weighs the row.

Why one module of this length: two record formats (the collector's and the exploration's),
with every column's check beside the one reader that fills both.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mlsched.convert.errors import ConvertError
from mlsched.runtime.bundle import sha256_file
from mlsched.runtime.features import BUSY, CPU, FEATURE_NAMES, IDLE, LOAD_COLUMNS, load_key
from mlsched.runtime.recorder import RECORD_HEADER
from mlsched.runtime.wire import MAX_CPUS, lib

log = logging.getLogger(__name__)

COLLECTOR = "collector"
EXPLORATION = "exploration"
IMITATE = "imitate"
OUTCOME = "outcome"
#: The labels each kind of file gives by default.
LABELS_OF = {COLLECTOR: IMITATE, EXPLORATION: OUTCOME}
KIND_OF = {labels: kind for kind, labels in LABELS_OF.items()}

#: mlsched-lite run --record's columns: the domain columns last, absent in older files.
COLLECTOR_COLUMNS = tuple(RECORD_HEADER.strip().split(",")[:-2])
DOMAIN_COLUMNS = tuple(RECORD_HEADER.strip().split(",")[-2:])
EXPLORATION_COLUMNS = ("cpu", "cpu_idle", "cpu_not_idle", "src_dom_load", "dst_dom_load",
                       "action", "propensity", "wait_ns", "src_queued", "dst_queued",
                       "src_queued_after", "dst_queued_after", "kind", "pid", "ts_ns")
#: The headers accepted, and the kind each one means.
HEADERS = {COLLECTOR_COLUMNS: COLLECTOR, COLLECTOR_COLUMNS + DOMAIN_COLUMNS: COLLECTOR,
           EXPLORATION_COLUMNS: EXPLORATION}
#: Exploration ``kind`` values: at wake-up (dst has an idle CPU), or an idle CPU pulling.
EXPLORE_KINDS = ("push", "pull")
#: The ``kind`` column holds the index of the value in EXPLORE_KINDS, or OTHER_KIND.
KIND_CODES = {k: i for i, k in enumerate(EXPLORE_KINDS)}
OTHER_KIND = 255

#: Columns kept past parsing and their types; the five features go to ``features``
#: (float32), columns listed nowhere here (decision, source) are checked and let go. Domain ids are float32 so that an unknown
#: one is NaN; ``has_domains`` says whether the row's file had domain columns at all.
KEPT = {"cfs_action": np.uint8, "src_domain": np.float32, "dst_domain": np.float32,
        "has_domains": np.bool_, "action": np.uint8, "propensity": np.float32,
        "wait_ns": np.float32, "src_queued": np.uint32, "dst_queued": np.uint32,
        "src_queued_after": np.uint32, "dst_queued_after": np.uint32, "kind": np.uint8,
        "pid": np.uint32, "ts_ns": np.uint64}
KEPT_OF = {
    COLLECTOR: ("cfs_action", *DOMAIN_COLUMNS, "has_domains", "pid", "ts_ns"),
    EXPLORATION: ("action", "propensity", "wait_ns", "src_queued", "dst_queued",
                  "src_queued_after", "dst_queued_after", "kind", "pid", "ts_ns"),
}
#: Columns of whole numbers, read exactly (a timestamp in ns is past float64's integers)
#: and refused outside their type's range.
INTEGER_COLUMNS = ("pid", "ts_ns", "src_queued", "dst_queued", "src_queued_after",
                   "dst_queued_after")
#: Rows parsed at a time: their Python numbers are all a read holds besides the columns.
CHUNK_ROWS = 8192

#: cpu of a request about a CPU outside the table (``mlsched-lite run --cpus N`` below the
#: host's CPUs): it has no index and no count of the table covers it, so such rows are
#: dropped (and counted) rather than taken as a host of that many CPUs.
CPU_NONE = lib.MLSCHED_CPU_NONE
OUTSIDE_TABLE = "cpu outside the table (MLSCHED_CPU_NONE)"
#: Largest wait the kernel can log: wait_ns is a u64 there.
U64_MAX = 2**64 - 1
#: The least propensity a row may carry. scx_mlsched logs propensities in permille, so this
#: is the least it can write above zero; a smaller one did not come from it, and as a
#: weight 1 / propensity would let one row outweigh the file (a denormal's overflows).
MIN_PROPENSITY = 1e-3

STAY, MIGRATE = 0, 1
#: The kernel's default sched_migration_cost (µs): the age under which CFS treats a task as
#: cache-hot, i.e. its own estimate of what moving a task costs.
DEFAULT_MIGRATION_COST_US = 500.0
#: A load cell with fewer rows than this takes its kind's mean cost as baseline.
MIN_CELL_ROWS = 20
#: Fewer labelled rows than this cannot be split into training and held-out sets.
MIN_ROWS = 50


class RecordError(ConvertError):
    """Record files that cannot be trained on; the message is one line (exit status 2)."""


@dataclass
class FileInfo:
    path: str
    sha256: str
    kind: str
    rows: int
    domain_columns: bool | None = None       # collector files only


@dataclass
class Records:
    """Rows of one kind from one or more files; per-row columns as compact numpy arrays
    (``KEPT``): what a row costs in memory does not depend on how many there are."""

    kind: str
    files: list[FileInfo]
    features: np.ndarray                      # [n, 5] float32, loads clamped to [0, 1]
    columns: dict[str, np.ndarray]
    dropped: dict[str, int] = field(default_factory=dict)
    clamped_loads: int = 0

    def __len__(self) -> int:
        return int(self.features.shape[0])


def kind_of(path: Path) -> tuple[str, tuple[str, ...]]:
    """(kind, header columns) of a record file, from its header line."""
    if not path.exists():
        raise RecordError(f"{path}: no such file")
    if not path.is_file():
        raise RecordError(f"{path}: not a regular file")
    try:
        with open(path, "rb") as f:
            header = f.readline(4096).decode("ascii")
    except UnicodeDecodeError:
        raise RecordError(f"{path}:1: not a record file header (not ASCII text)") from None
    cols = tuple(c.strip() for c in header.strip().split(","))
    if cols not in HEADERS:
        raise RecordError(f"{path}:1: not a record file header (expected the columns that"
                          f" `mlsched-lite run --record` or `scx_mlsched --explore-out` write)")
    return HEADERS[cols], cols


def read(paths: list[str | Path], labels: str | None = None) -> Records:
    """The rows of every file of the kind ``labels`` needs (all files when None: then they
    must be of one kind). Files of the other kind are skipped, counted in ``dropped``.

    Files are parsed ``CHUNK_ROWS`` rows at a time into columns allocated once for every
    line the files hold, so a read holds the compact rows and one chunk, never a Python
    object per field."""
    kinds = [(Path(p), *kind_of(Path(p))) for p in paths]
    found = {k for _, k, _ in kinds}
    if labels is None:
        if len(found) > 1:
            raise RecordError("collector and exploration files mixed: pass --labels imitate"
                              " (collector files) or --labels outcome (exploration files)")
        kind = found.pop()
    else:
        kind = KIND_OF[labels]
        if kind not in found:
            raise RecordError(f"--labels {labels} needs {kind} records; no file given has them")
    dropped: dict[str, int] = {}
    out = _Columns(kind, sum(_count_lines(path) for path, k, _ in kinds if k == kind))
    files = []
    for path, k, cols in kinds:
        if k != kind:
            info = FileInfo(str(path), sha256_file(path), k, _count_rows(path))
            why = f"{k} file, not used by --labels {labels}"
            dropped[why] = dropped.get(why, 0) + info.rows
            files.append(info)
            continue
        rows, cut = _read_file(path, cols, kind, out, dropped)
        if cut:
            why = "last row cut short (no newline)"
            dropped[why] = dropped.get(why, 0) + cut
        files.append(FileInfo(str(path), sha256_file(path), kind, rows + cut,
                              (DOMAIN_COLUMNS[0] in cols) if kind == COLLECTOR else None))
    features, columns = out.finish()
    return Records(kind, files, features, columns, dropped, out.clamped)


class _Columns:
    """The kept columns of every file read, allocated once for at most ``rows`` rows and
    filled chunk by chunk; ``finish`` gives the memory of the rows not filled back."""

    def __init__(self, kind: str, rows: int):
        self.n = 0
        self.clamped = 0
        self.features = np.empty((rows, len(FEATURE_NAMES)), dtype=np.float32)
        self.columns = {name: np.empty(rows, dtype=KEPT[name]) for name in KEPT_OF[kind]}

    def append(self, features: np.ndarray, columns: dict[str, np.ndarray]) -> None:
        end = self.n + len(features)
        self.features[self.n:end] = features
        for name, col in columns.items():
            self.columns[name][self.n:end] = col
        self.n = end

    def finish(self) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        self.features.resize((self.n, len(FEATURE_NAMES)), refcheck=False)
        for col in self.columns.values():
            col.resize(self.n, refcheck=False)
        return self.features, self.columns


@dataclass
class _Layout:
    """Where a file's fields go: ``floats`` (column indexes, parsed as float; ``optional``
    ones may be empty, NaN), ``ints`` (parsed as whole numbers, at most ``int_max``), the
    ``kind`` field."""

    cols: tuple[str, ...]
    floats: list[int]
    optional: set[int]
    ints: list[int]
    int_max: list[int]
    kind: int | None

    @classmethod
    def of(cls, cols: tuple[str, ...]) -> _Layout:
        ints = [i for i, c in enumerate(cols) if c in INTEGER_COLUMNS]
        floats = [i for i, c in enumerate(cols) if c != "kind" and i not in ints]
        return cls(cols, floats, {i for i in floats if cols[i] in DOMAIN_COLUMNS}, ints,
                   [int(np.iinfo(KEPT[cols[i]]).max) for i in ints],
                   cols.index("kind") if "kind" in cols else None)

    @property
    def float_names(self) -> list[str]:
        return [self.cols[i] for i in self.floats]


def _read_file(path: Path, cols: tuple[str, ...], kind: str, out: _Columns,
               dropped: dict[str, int]) -> tuple[int, int]:
    """Parse every row into ``out``, ``CHUNK_ROWS`` at a time; (rows parsed, rows cut short).
    Unusable rows are counted in ``dropped``; a malformed one raises ``RecordError``."""
    lay = _Layout.of(cols)
    chunk = _Chunk()
    rows = 0
    cut: list[int] = []
    with open(path, "rb") as f:
        next(f)
        reader = csv.reader(_ascii_lines(path, f, cut))
        try:
            for lineno, row in enumerate(reader, start=2):
                if not row:
                    continue
                _parse_row(path, lineno, row, lay, chunk)
                if len(chunk.lines) >= CHUNK_ROWS:
                    rows += _store(path, lay, kind, chunk, out, dropped)
                    chunk = _Chunk()
        except csv.Error:
            raise RecordError(f"{path}:{reader.line_num + 1}: not a CSV line") from None
    rows += _store(path, lay, kind, chunk, out, dropped)
    return rows, len(cut)


@dataclass
class _Chunk:
    """Rows parsed and not yet stored: their fields as Python numbers, and line numbers."""

    floats: list[list[float]] = field(default_factory=list)
    ints: list[list[int]] = field(default_factory=list)
    kinds: list[int] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)


def _ascii_lines(path: Path, f, cut: list[int]):
    """The file's lines from the second on, as text; a line that is not ASCII is an error.
    A last line without its newline is a row cut short (a writer killed mid-row): it is
    left out and its number put in ``cut``."""
    for lineno, raw in enumerate(f, start=2):
        if not raw.endswith(b"\n"):
            cut.append(lineno)
            return
        try:
            yield raw.decode("ascii")
        except UnicodeDecodeError:
            raise RecordError(f"{path}:{lineno}: not ASCII text") from None


def _parse_row(path: Path, lineno: int, row: list[str], lay: _Layout, chunk: _Chunk) -> None:
    """Append one CSV row's fields to ``chunk``: checked as numbers, whole numbers in range."""
    if len(row) != len(lay.cols):
        raise RecordError(f"{path}:{lineno}: {len(row)} fields, the header has {len(lay.cols)}")
    try:
        floats = [float("nan") if (i in lay.optional and not row[i].strip()) else float(row[i])
                  for i in lay.floats]
    except ValueError:
        bad = next(i for i in lay.floats if not _parses(float, row[i], i in lay.optional))
        raise RecordError(f"{path}:{lineno}: {lay.cols[bad]} {row[bad].strip()[:20]!r} is not"
                          " a number") from None
    try:
        ints = [int(row[i]) for i in lay.ints]
    except ValueError:
        bad = next(i for i in lay.ints if not _parses(int, row[i]))
        raise RecordError(f"{path}:{lineno}: {lay.cols[bad]} {row[bad].strip()[:20]!r} is not"
                          " a whole number") from None
    for i, v, most in zip(lay.ints, ints, lay.int_max, strict=True):
        if not 0 <= v <= most:
            raise RecordError(f"{path}:{lineno}: {lay.cols[i]} outside 0..{most}")
    chunk.floats.append(floats)
    chunk.ints.append(ints)
    if lay.kind is not None:
        chunk.kinds.append(KIND_CODES.get(row[lay.kind].strip(), OTHER_KIND))
    chunk.lines.append(lineno)


def _parses(conv, text: str, empty_ok: bool = False) -> bool:
    if empty_ok and not text.strip():
        return True
    try:
        conv(text)
    except ValueError:
        return False
    return True


def _store(path: Path, lay: _Layout, kind: str, chunk: _Chunk, out: _Columns,
           dropped: dict[str, int]) -> int:
    """Check a chunk's rows as columns, drop the unusable ones (counted by reason), and
    append the rest to ``out`` in their kept types; the rows parsed."""
    n = len(chunk.lines)
    if n == 0:
        return 0
    names = lay.float_names
    a = np.array(chunk.floats, dtype=np.float64).reshape(n, len(names))
    c = {name: a[:, j] for j, name in enumerate(names)}
    c |= dict(zip([lay.cols[i] for i in lay.ints],
                  np.array(chunk.ints, dtype=np.uint64).reshape(n, len(lay.ints)).T, strict=True))
    lines = np.array(chunk.lines)

    def refuse(bad: np.ndarray, what: Callable[[int], str]) -> None:
        if bad.any():
            row = int(np.argmax(bad))
            raise RecordError(f"{path}:{lines[row]}: {what(row)}")

    if "propensity" in c:
        p = c["propensity"]
        refuse(~((p >= MIN_PROPENSITY) & (p <= 1.0)),
               lambda r: f"propensity {p[r]!r} outside [{MIN_PROPENSITY:g}, 1]: not a"
                         " probability scx_mlsched logs")
    required = [j for j, i in enumerate(lay.floats) if i not in lay.optional]
    refuse(~np.isfinite(a[:, required]).all(axis=1), lambda r: "NaN or infinite value")

    x = a[:, [names.index(f) for f in FEATURE_NAMES]]
    if kind == EXPLORATION:
        c["kind"] = np.array(chunk.kinds, dtype=np.uint8)
    keep = ~_drop_invalid(kind, x, c, dropped)
    x = x[keep]
    loads = x[:, list(LOAD_COLUMNS)]
    out.clamped += int(np.count_nonzero(loads > 1.0))
    x[:, list(LOAD_COLUMNS)] = np.minimum(loads, 1.0)
    kept = {name: c[name][keep] for name in KEPT_OF[kind] if name in c}
    if kind == COLLECTOR:
        for name in DOMAIN_COLUMNS:
            kept.setdefault(name, np.full(len(x), np.nan))
        kept["has_domains"] = np.full(len(x), DOMAIN_COLUMNS[0] in lay.cols)
    out.append(x, kept)
    return n


def _drop_invalid(kind: str, x: np.ndarray, c: dict[str, np.ndarray],
                  dropped: dict[str, int]) -> np.ndarray:
    """Rows no label can come from, counting each reason (a row counts for its first);
    the mask of them."""
    cpu, hosts = x[:, CPU], x[:, IDLE] + x[:, BUSY]
    reasons = [
        (OUTSIDE_TABLE, cpu == CPU_NONE),
        ("cpu or CPU count past MLSCHED_MAX_CPUS", (cpu >= MAX_CPUS) | (hosts > MAX_CPUS)),
        ("negative count or load", np.any(x < 0, axis=1)),
    ]
    if kind == COLLECTOR:
        moved = c["cfs_action"] == MIGRATE
        reasons += [("cfs_action neither STAY nor MIGRATE",
                     ~np.isin(c["cfs_action"], (STAY, MIGRATE)))]
        if DOMAIN_COLUMNS[0] in c:
            reasons += [("migration between unknown domains",
                         moved & (np.isnan(c["src_domain"]) | np.isnan(c["dst_domain"])))]
    else:
        reasons += [
            ("action neither 0 nor 1", ~np.isin(c["action"], (STAY, MIGRATE))),
            ("negative wait_ns", c["wait_ns"] < 0),
            ("wait_ns past what a u64 holds", c["wait_ns"] > U64_MAX),
            ("kind neither push nor pull", c["kind"] == OTHER_KIND),
        ]
    bad = np.zeros(len(x), dtype=bool)
    for why, mask in reasons:
        mask = mask & ~bad
        if mask.any():
            dropped[why] = dropped.get(why, 0) + int(mask.sum())
        bad |= mask
    return bad


def label_imitate(rec: Records) -> np.ndarray:
    """1 (MIGRATE) iff CFS migrated the task between domains; uint8 [n]. Rows of files
    without domain columns: iff CFS migrated it at all."""
    c = rec.columns
    moved = c["cfs_action"] == MIGRATE
    across = c["src_domain"] != c["dst_domain"]      # NaN != anything: True
    return (moved & (across | ~c["has_domains"])).astype(np.uint8)


@dataclass
class Outcome:
    """Outcome labels of exploration rows: cost (µs), baseline, advantage, label, weight."""

    cost_us: np.ndarray
    baseline_us: np.ndarray
    advantage_us: np.ndarray
    labels: np.ndarray            # uint8
    weights: np.ndarray           # mean 1 over the rows labelled
    cells_fallen_back: int        # (kind, cell) groups that took the kind's mean


def costs_us(rec: Records, migration_cost_us: float) -> np.ndarray:
    """Cost of each logged decision in µs: the wait until the task ran, plus the migration's."""
    return (rec.columns["wait_ns"].astype(np.float64) / 1000.0
            + rec.columns["action"] * migration_cost_us)


def label_outcome(rec: Records, migration_cost_us: float = DEFAULT_MIGRATION_COST_US,
                  fit: np.ndarray | None = None, min_cell_rows: int = MIN_CELL_ROWS) -> Outcome:
    """Labels and weights by the inverse-propensity reduction (see the module doc).
    Baselines come from the rows ``fit`` selects (all when None) and apply to every row.
    Costs whose sums leave the float range make weights that are not finite: refused."""
    with np.errstate(over="ignore", invalid="ignore"):
        return _label_outcome(rec, migration_cost_us, fit, min_cell_rows)


def _label_outcome(rec: Records, migration_cost_us: float, fit: np.ndarray | None,
                   min_cell_rows: int) -> Outcome:
    cost = costs_us(rec, migration_cost_us)
    fit = np.ones(len(rec), dtype=bool) if fit is None else fit
    kinds = rec.columns["kind"]
    cell = load_key(rec.features[:, 3]) * 100 + load_key(rec.features[:, 4])
    baseline = np.full(len(rec), np.nan)
    fallen = 0
    for k, code in KIND_CODES.items():
        of_kind = kinds == code
        fit_kind = of_kind & fit
        if not of_kind.any():
            continue
        if not fit_kind.any():
            raise RecordError(f"no {k} rows to take a baseline cost from")
        kind_mean = cost[fit_kind].mean()
        for c in np.unique(cell[of_kind]):
            rows = of_kind & (cell == c)
            fit_rows = rows & fit
            if fit_rows.sum() >= min_cell_rows:
                baseline[rows] = cost[fit_rows].mean()
            else:
                baseline[rows] = kind_mean
                fallen += 1
    advantage = baseline - cost
    action = rec.columns["action"].astype(np.uint8)
    labels = np.where(advantage >= 0, action, 1 - action).astype(np.uint8)
    weights = np.abs(advantage) / rec.columns["propensity"]
    mean = weights.mean() if len(weights) else 0.0
    if not (np.isfinite(mean) and np.isfinite(weights).all()):
        raise RecordError(f"inverse-propensity weights are not finite: costs past the float"
                          f" range (wait_ns up to {rec.columns['wait_ns'].max():g} ns,"
                          f" migration cost {migration_cost_us:g} us)")
    if not mean > 0:
        raise RecordError("every logged decision cost exactly its baseline: nothing to learn")
    return Outcome(cost, baseline, advantage, labels, weights / mean, fallen)


def ips_costs(rec: Records, cost_us: np.ndarray, decisions: dict[str, np.ndarray]) -> dict:
    """Inverse-propensity estimates of each policy's mean cost (µs) over ``rec``'s rows:
    mean(1[policy = action] * cost / propensity), and the self-normalised form. The logged
    policy's own mean cost is measured, not estimated."""
    action, p = rec.columns["action"], rec.columns["propensity"]
    out = {"logged (random)": {"mean_cost_us": float(cost_us.mean()), "matched_rows": len(rec)}}
    for name, d in decisions.items():
        match = (np.broadcast_to(d, action.shape) == action).astype(np.float64)
        w = match / p
        out[name] = {"ips_mean_cost_us": float((w * cost_us).mean()),
                     "snips_mean_cost_us": (float((w * cost_us).sum() / w.sum())
                                            if w.sum() > 0 else None),
                     "matched_rows": int(match.sum())}
    return out


def _count_rows(path: Path) -> int:
    with open(path, "rb") as f:
        return max(sum(1 for line in f if line.strip()) - 1, 0)


def _count_lines(path: Path) -> int:
    """Lines after the header that end in a newline: at least the file's rows."""
    with open(path, "rb") as f:
        return max(sum(block.count(b"\n") for block in iter(lambda: f.read(1 << 20), b"")) - 1,
                   0)
