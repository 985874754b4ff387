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

Bad input raises ``RecordError`` with one line naming the file and line.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from mlsched.runtime.bundle import sha256_file
from mlsched.runtime.features import FEATURE_NAMES, load_key
from mlsched.runtime.recorder import RECORD_HEADER

from .errors import ConvertError

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
    """Rows of one kind from one or more files; per-row columns as numpy arrays."""

    kind: str
    files: list[FileInfo]
    features: np.ndarray                      # [n, 5] float64, loads clamped to [0, 1]
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
    must be of one kind). Files of the other kind are skipped, counted in ``dropped``."""
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
    files, parts = [], []
    for path, k, cols in kinds:
        if k != kind:
            info = FileInfo(str(path), sha256_file(path), k, _count_rows(path))
            dropped[f"{k} file, not used by --labels {labels}"] = (
                dropped.get(f"{k} file, not used by --labels {labels}", 0) + info.rows)
            files.append(info)
            continue
        part = _read_file(path, cols, kind)
        cut = int(part.pop("cut_rows")[0])
        if cut:
            why = "last row cut short (no newline)"
            dropped[why] = dropped.get(why, 0) + cut
        files.append(FileInfo(str(path), sha256_file(path), kind, len(part["features"]) + cut,
                              (DOMAIN_COLUMNS[0] in cols) if kind == COLLECTOR else None))
        parts.append(part)
    features = np.concatenate([p["features"] for p in parts])
    columns = {name: np.concatenate([p[name] for p in parts])
               for name in parts[0] if name != "features"}
    clamped = int(np.count_nonzero(features[:, 3:5] > 1.0))
    features[:, 3:5] = np.minimum(features[:, 3:5], 1.0)
    rec = Records(kind, files, features, columns, dropped, clamped)
    _drop_invalid(rec)
    return rec


def _read_file(path: Path, cols: tuple[str, ...], kind: str) -> dict[str, np.ndarray]:
    """Parse every row: numbers everywhere but in ``kind``; empty domain fields are NaN."""
    numeric = [i for i, c in enumerate(cols) if c != "kind"]
    optional = {cols.index(c) for c in DOMAIN_COLUMNS if c in cols}
    values: list[list[float]] = []
    kinds: list[str] = []
    cut: list[int] = []
    with open(path, "rb") as f:
        next(f)
        reader = csv.reader(_ascii_lines(path, f, cut))
        try:
            for lineno, row in enumerate(reader, start=2):
                _parse_row(path, lineno, row, cols, numeric, optional, values, kinds)
        except csv.Error:
            raise RecordError(f"{path}:{reader.line_num + 1}: not a CSV line") from None
    out = _columns(values, kinds, cols, numeric, kind)
    out["cut_rows"] = np.array([len(cut)])
    return out


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


def _parse_row(path: Path, lineno: int, row: list[str], cols: tuple[str, ...],
               numeric: list[int], optional: set[int], values: list, kinds: list) -> None:
    """Append one CSV row's numbers to ``values`` (and its ``kind`` to ``kinds``)."""
    if not row:
        return
    if len(row) != len(cols):
        raise RecordError(f"{path}:{lineno}: {len(row)} fields, the header has {len(cols)}")
    try:
        vals = [float("nan") if (i in optional and not row[i].strip()) else float(row[i])
                for i in numeric]
    except ValueError:
        raise RecordError(f"{path}:{lineno}: a field is not a number") from None
    if not all(np.isfinite(v) for i, v in zip(numeric, vals, strict=True) if i not in optional):
        raise RecordError(f"{path}:{lineno}: NaN or infinite value")
    values.append(vals)
    if "kind" in cols:
        kinds.append(row[cols.index("kind")].strip())


def _columns(values: list, kinds: list, cols: tuple[str, ...], numeric: list[int],
             kind: str) -> dict[str, np.ndarray]:
    """The parsed rows as columns: ``features`` [n, 5] and one array per other column."""
    names = [cols[i] for i in numeric]
    a = np.array(values, dtype=np.float64).reshape(-1, len(numeric))
    out = {"features": a[:, [names.index(n) for n in FEATURE_NAMES]].copy()}
    for n in names:
        if n not in FEATURE_NAMES:
            out[n] = a[:, names.index(n)]
    if kind == COLLECTOR:
        for n in DOMAIN_COLUMNS:
            out.setdefault(n, np.full(len(a), np.nan))
        out["has_domains"] = np.full(len(a), DOMAIN_COLUMNS[0] in cols)
    else:
        out["kind"] = np.array(kinds, dtype=object)
    return out


def _drop_invalid(rec: Records) -> None:
    """Remove rows no label can come from, counting each reason."""
    x, c = rec.features, rec.columns
    reasons = [("negative count or load", np.any(x < 0, axis=1))]
    if rec.kind == COLLECTOR:
        moved = c["cfs_action"] == MIGRATE
        reasons += [
            ("cfs_action neither STAY nor MIGRATE", ~np.isin(c["cfs_action"], (STAY, MIGRATE))),
            ("migration between unknown domains", moved & c["has_domains"]
             & (np.isnan(c["src_domain"]) | np.isnan(c["dst_domain"]))),
        ]
    else:
        reasons += [
            ("action neither 0 nor 1", ~np.isin(c["action"], (STAY, MIGRATE))),
            ("propensity outside (0, 1]", ~((c["propensity"] > 0) & (c["propensity"] <= 1))),
            ("negative wait_ns", c["wait_ns"] < 0),
            ("kind neither push nor pull", ~np.isin(c["kind"], EXPLORE_KINDS)),
        ]
    bad = np.zeros(len(rec), dtype=bool)
    for why, mask in reasons:
        mask = mask & ~bad
        if mask.any():
            rec.dropped[why] = rec.dropped.get(why, 0) + int(mask.sum())
        bad |= mask
    if bad.any():
        keep = ~bad
        rec.features = rec.features[keep]
        rec.columns = {k: v[keep] for k, v in rec.columns.items()}


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
    return rec.columns["wait_ns"] / 1000.0 + rec.columns["action"] * migration_cost_us


def label_outcome(rec: Records, migration_cost_us: float = DEFAULT_MIGRATION_COST_US,
                  fit: np.ndarray | None = None, min_cell_rows: int = MIN_CELL_ROWS) -> Outcome:
    """Labels and weights by the inverse-propensity reduction (see the module doc).
    Baselines come from the rows ``fit`` selects (all when None) and apply to every row."""
    cost = costs_us(rec, migration_cost_us)
    fit = np.ones(len(rec), dtype=bool) if fit is None else fit
    kinds = rec.columns["kind"]
    cell = load_key(rec.features[:, 3]) * 100 + load_key(rec.features[:, 4])
    baseline = np.full(len(rec), np.nan)
    fallen = 0
    for k in EXPLORE_KINDS:
        of_kind = kinds == k
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
