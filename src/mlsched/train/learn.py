"""``mlsched-train``: the 10->64->64->1 TensorFlow MLP learned from the kernel side's records.

Steps, one function each::

    record files ─► read (records.py: kind from the header, rows checked, loads clamped)
                 ─► label: imitate (what CFS did between domains) or outcome (explored costs, a move
              charged a flat cost or the one measured on this host: move_cost.py)
                 ─► split: a random held-out part, the same for the same --seed
                 ─► fit: counts scaled to the host's CPUs, the scale folded into the first layer
                 ─► evaluate on the held-out rows (accuracy, MIGRATE rate, IPS cost table)
                 ─► OUTDIR/{saved_model, report.json, report.png}, written whole or not at all

The SavedModel is what ``mlsched-convert OUTDIR/saved_model -o BUNDLE`` reads, exactly
like models/default/saved_model. The model builder and the scale folding are
train/train.py's.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mlsched.convert.errors import EXIT_BAD_INPUT, ConvertError
from mlsched.runtime.features import FEATURE_NAMES, THRESHOLD, host_features, pad
from mlsched.runtime.files import atomic_directory

from . import records as rec_mod
from .move_cost import (
    Charge,
    MoveCostCurve,
    MoveCostError,
    flat_charge,
    measured_charge,
    parse_bytes,
)
from .records import (
    COLLECTOR,
    DEFAULT_MIGRATION_COST_US,
    IMITATE,
    LABELS_OF,
    MIN_ROWS,
    OUTCOME,
    RecordError,
    Records,
)
from .train import build_model, export_saved_model, feature_scale, fold_scale

log = logging.getLogger(__name__)

PROG = "mlsched-train"
SEED = 20261129
EPOCHS = 30
HOLDOUT = 0.2
LEARNING_RATE = 3e-3
#: Minibatch: about a hundred steps per epoch, within these bounds.
MIN_BATCH, MAX_BATCH = 32, 1024
#: Points per axis of the decision map in report.png.
MAP_STEPS = 101
#: The working set charged with --move-cost when --working-set is not given: half a core's
#: L2 on the development host, a task whose data its core's private caches hold, so that a
#: move loses them. The records carry no column that tells a task's working set.
DEFAULT_WORKING_SET = 1 << 20

DESCRIPTION = ("Train the reference design, the 10->64->64->1 TensorFlow MLP, from the kernel"
               " side's record files; write a SavedModel mlsched-convert reads, and a report.")
EPILOG = f"""\
examples:
  mlsched-lite run --record r.csv --duration 600      # collect what CFS does
  {PROG} r.csv -o learned --labels imitate
  mlsched-convert learned/saved_model -o bundle
  mlsched-lite run --bundle bundle

  scx_mlsched --explore 100 --explore-out x.csv       # explore, log outcomes
  {PROG} x.csv -o learned --labels outcome --migration-cost-us 500
  {PROG} x.csv -o learned --move-cost bench/movecost.json --working-set 1M

Labels: imitate = MIGRATE iff CFS moved the task to another domain (collector
records); outcome = the cheaper action by wait until the task ran plus the
migration cost, weighted by |advantage| / propensity (exploration records). The
migration cost is flat (--migration-cost-us, default the kernel's 500 us) or,
with --move-cost, what `make movecost` measured a move costs on this host for a
task of --working-set bytes (default {DEFAULT_WORKING_SET >> 20} MiB).
exit status: 0 done, 2 bad input (nothing written).
"""


@dataclass
class Labelled:
    """Rows ready to fit: raw features [n, 10], labels, weights, and how they came about."""

    x: np.ndarray
    y: np.ndarray
    w: np.ndarray
    before: dict[str, int]
    notes: list[str]
    outcome: rec_mod.Outcome | None = None


def label(records: Records, labels: str, train_rows: np.ndarray, charge: Charge) -> Labelled:
    """Labels and weights of every row; outcome baselines from ``train_rows`` only, each
    MIGRATE row charged ``charge.us``."""
    x = pad(records.features)
    notes: list[str] = []
    taken = records.columns["cfs_action" if labels == IMITATE else "action"]
    before = {"STAY": int((taken == 0).sum()), "MIGRATE": int((taken == 1).sum())}
    if labels == IMITATE:
        for f in records.files:
            if f.kind == COLLECTOR and f.domain_columns is False:
                notes.append(f"{f.path} has no domain columns: every CFS migration in it counts"
                             " as MIGRATE, also one inside a domain")
        y = rec_mod.label_imitate(records)
        return Labelled(x, y, np.ones(len(y), dtype=np.float32), before, notes)
    out = rec_mod.label_outcome(records, charge.us, fit=train_rows)
    notes.append(charge.note)
    notes.append(f"{out.cells_fallen_back} (kind, load cell) groups had fewer than"
                 f" {rec_mod.MIN_CELL_ROWS} training rows and took their kind's mean cost as"
                 " baseline")
    return Labelled(x, out.labels, out.weights.astype(np.float32), before, notes, out)


def check_rows(records: Records) -> None:
    if len(records) < MIN_ROWS:
        why = "; ".join(f"{n} dropped: {reason}" for reason, n in records.dropped.items())
        raise RecordError(f"too few rows: {len(records)} usable, at least {MIN_ROWS} needed"
                          + (f" ({why})" if why else ""))


def check_classes(d: Labelled, train_rows: np.ndarray) -> None:
    """Both classes, with weight, among all rows and among the training rows."""
    for name, mask in (("", np.ones(len(d.y), dtype=bool)), ("training ", train_rows)):
        ys = d.y[mask & (d.w > 0)]
        if ys.size == 0:
            raise RecordError(f"every {name}row has weight 0: nothing to learn")
        if ys.min() == ys.max():
            raise RecordError(f"every {name}row is labelled {('STAY', 'MIGRATE')[int(ys[0])]}:"
                              " a model needs both classes to learn from")


def split(n: int, holdout: float, seed: int) -> np.ndarray:
    """Boolean mask of training rows; the rest (``holdout`` of them, at least one) held out."""
    order = np.random.default_rng(seed).permutation(n)
    held = max(1, int(round(n * holdout)))
    train = np.ones(n, dtype=bool)
    train[order[:held]] = False
    return train


def host_cpus(x: np.ndarray) -> int:
    """The largest host the rows describe: CPUs counted idle + busy, or a CPU id + 1. Rows
    about a CPU outside the table (cpu MLSCHED_CPU_NONE) never get here: the reader drops
    them, as it drops counts past MLSCHED_MAX_CPUS."""
    return max(1, int(np.max(np.maximum(x[:, 1] + x[:, 2], x[:, 0] + 1))))


def fit(tf, d: Labelled, train_rows: np.ndarray, epochs: int, seed: int, count_scale: int,
        verbose: bool = False) -> tuple[object, dict[str, list[float]], int]:
    """(model, loss/accuracy per epoch, batch): trained on the training rows, validated on
    the held-out ones, the count scale folded into its first layer."""
    tf.keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()
    scale = feature_scale(count_scale)
    held = ~train_rows
    n_train = int(train_rows.sum())
    batch = int(np.clip(n_train // 100, MIN_BATCH, MAX_BATCH))
    steps = epochs * int(np.ceil(n_train / batch))
    model = build_model(tf)
    lr = tf.keras.optimizers.schedules.CosineDecay(LEARNING_RATE, steps, alpha=0.01)
    model.compile(optimizer=tf.keras.optimizers.Adam(lr), loss="binary_crossentropy",
                  weighted_metrics=["accuracy"])
    history = model.fit(
        d.x[train_rows] / scale, d.y[train_rows].astype(np.float32),
        sample_weight=d.w[train_rows], batch_size=batch, epochs=epochs, shuffle=True,
        validation_data=(d.x[held] / scale, d.y[held].astype(np.float32), d.w[held]),
        verbose=2 if verbose else 0)
    fold_scale(model, scale)
    per_epoch = {k: [float(v) for v in vs] for k, vs in history.history.items()}
    check_trained(per_epoch, model.get_weights())
    return model, per_epoch, batch


def check_trained(history: dict[str, list[float]], weights: list[np.ndarray]) -> None:
    """A model whose loss or weights are not finite is refused, never saved."""
    for key in ("loss", "val_loss"):
        if not np.isfinite(history.get(key, [])).all():
            raise ConvertError(f"training diverged: {key} is not finite; nothing written")
    if not all(np.isfinite(w).all() for w in weights):
        raise ConvertError("training diverged: the model's weights are not finite;"
                           " nothing written")


def evaluate(model, records: Records, d: Labelled, train_rows: np.ndarray) -> dict:
    """Held-out accuracy (weighted for outcome labels), MIGRATE rate, IPS cost table."""
    held = ~train_rows
    p = model.predict(d.x[held], batch_size=8192, verbose=0)[:, 0]
    decision = (p > THRESHOLD).astype(np.uint8)
    w = d.w[held].astype(np.float64)
    out = {"rows": int(held.sum()),
           "accuracy": float(((decision == d.y[held]) * w).sum() / w.sum()),
           "accuracy_weighted": d.outcome is not None,
           "float_migrate_rate": float(decision.mean())}
    if d.outcome is not None:
        sub = _subset(records, held)
        out["ips_mean_cost_us"] = rec_mod.ips_costs(
            sub, d.outcome.cost_us[held],
            {"learned": decision, "always STAY": np.uint8(0), "always MIGRATE": np.uint8(1)})
    return out


def _subset(records: Records, mask: np.ndarray) -> Records:
    return Records(records.kind, records.files, records.features[mask],
                   {k: v[mask] for k, v in records.columns.items()})


def typical_host(x: np.ndarray) -> tuple[float, float, float]:
    """(cpu, idle, busy) at their medians: where report.png draws the decision map."""
    return tuple(float(np.median(x[:, k])) for k in range(3))


def plot(path: Path, history: dict, model, at: tuple[float, float, float], title: str) -> None:
    """Loss and accuracy per epoch, and the decision over (src load, dst load) at ``at``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cpu, idle, busy = at
    grid = np.linspace(0.0, 1.0, MAP_STEPS)
    src, dst = np.meshgrid(grid, grid, indexing="xy")
    x = host_features(int(idle + busy), cpu, idle, src, dst)
    prob = model.predict(x, batch_size=8192, verbose=0)[:, 0].reshape(src.shape)
    acc = "accuracy"
    fig, ax = plt.subplots(1, 3, figsize=(15, 4.4))
    for key, style in (("loss", "-"), ("val_loss", "--")):
        ax[0].plot(history[key], style, label=key)
    for key, style in ((acc, "-"), (f"val_{acc}", "--")):
        ax[1].plot(history[key], style, label=key)
    for a, name in zip(ax[:2], ("loss (weighted binary cross-entropy)", "accuracy (weighted)"),
                       strict=True):
        a.set_xlabel("epoch")
        a.set_title(name)
        a.legend()
    im = ax[2].imshow(prob, origin="lower", extent=(0, 1, 0, 1), vmin=0, vmax=1, cmap="coolwarm")
    ax[2].contour(grid, grid, prob, levels=[THRESHOLD], colors="k")
    ax[2].set_xlabel("src_dom_load")
    ax[2].set_ylabel("dst_dom_load")
    ax[2].set_title(f"P(MIGRATE) at cpu={cpu:g} idle={idle:g} busy={busy:g}")
    fig.colorbar(im, ax=ax[2])
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write_output(out: Path, force: bool, model, report: dict, history: dict,
                 at: tuple[float, float, float]) -> None:
    """OUTDIR whole: built in a temporary directory beside it, then renamed into place (a
    previous OUTDIR, with --force, stays as it was until the new one is complete)."""
    if out.exists() and not force:
        raise ConvertError(f"{out} exists: pass --force to replace it")
    with atomic_directory(out, replace=force) as tmp:
        export_saved_model(model, tmp / "saved_model")
        (tmp / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        plot(tmp / "report.png", history, model, at,
             f"{PROG}: {report['labels']} labels, {report['rows']['used']} rows")


def learn(paths: list[str], out: Path, labels: str | None = None, epochs: int = EPOCHS,
          seed: int = SEED, migration_cost_us: float = DEFAULT_MIGRATION_COST_US,
          holdout: float = HOLDOUT, force: bool = False, verbose: bool = False,
          charge: Charge | None = None) -> dict:
    """The whole pipeline (see the module doc); returns the report. A MIGRATE row of
    outcome labels is charged ``charge`` (a flat ``migration_cost_us`` when None)."""
    charge = charge or flat_charge(migration_cost_us, explicit=False)
    records = rec_mod.read(paths, labels)
    labels = labels or LABELS_OF[records.kind]
    check_rows(records)
    train_rows = split(len(records), holdout, seed)
    d = label(records, labels, train_rows, charge)
    check_classes(d, train_rows)

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")   # oneDNN reorders float sums
    import tensorflow as tf

    cpus = host_cpus(d.x)
    t0 = time.time()
    log.info("%d rows (%d for training), %s labels, counts scaled by %d", len(d.y),
             int(train_rows.sum()), labels, cpus)
    model, history, batch = fit(tf, d, train_rows, epochs, seed, cpus, verbose)
    seconds = time.time() - t0
    read_rows = sum(f.rows for f in records.files)
    report = {
        "labels": labels, "kind": records.kind,
        "files": [{"path": f.path, "sha256": f.sha256, "kind": f.kind, "rows": f.rows,
                   **({"domain_columns": f.domain_columns} if f.domain_columns is not None
                      else {})} for f in records.files],
        "rows": {"read": read_rows, "used": len(records), "dropped": records.dropped,
                 "loads_clamped_to_1": records.clamped_loads},
        "class_balance": {
            "before": d.before | {"what": "what CFS did" if labels == IMITATE
                                 else "the logged (random) action"},
            "after": {"STAY": int((d.y == 0).sum()), "MIGRATE": int((d.y == 1).sum())}},
        "notes": d.notes,
        "held_out": {"fraction": holdout,
                     **evaluate(model, records, d, train_rows)},
        **({"migration_cost_us": charge.us, "move_cost": charge.report}
           if labels == OUTCOME else {}),
        "features": list(FEATURE_NAMES), "count_scale_folded": cpus,
        "epochs": epochs, "batch": batch, "seed": seed, "train_seconds": round(seconds, 1),
        "tensorflow": tf.__version__, "history": history,
    }
    write_output(out, force, model, report, history, typical_host(d.x))
    return report


def _args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog=PROG, description=DESCRIPTION,
                                 epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("records", nargs="+", metavar="RECORDS",
                    help="CSV record files (run --record, or scx_mlsched --explore-out)")
    ap.add_argument("-o", "--output", type=Path, required=True, metavar="OUTDIR",
                    help="directory to write: saved_model/, report.json, report.png")
    ap.add_argument("--labels", choices=(IMITATE, OUTCOME),
                    help="default: imitate for collector records, outcome for exploration ones")
    ap.add_argument("--epochs", type=int, default=EPOCHS, help="default %(default)s")
    ap.add_argument("--seed", type=int, default=SEED, help="default %(default)s")
    ap.add_argument("--migration-cost-us", type=float, metavar="U",
                    help="flat cost of a migration for outcome labels (default"
                    f" {DEFAULT_MIGRATION_COST_US:g}: the kernel's default sched_migration_cost)")
    ap.add_argument("--move-cost", type=Path, metavar="FILE",
                    help="charge instead what `make movecost` measured a move costs on this"
                    " host (bench/movecost.json), at the task's --working-set")
    ap.add_argument("--working-set", metavar="BYTES",
                    help="the working set (bytes, or with K/M/G) whose measured cost"
                    f" --move-cost charges (default {DEFAULT_WORKING_SET >> 20} MiB)")
    ap.add_argument("--holdout", type=float, default=HOLDOUT, metavar="F",
                    help="fraction of rows held out for evaluation (default %(default)s)")
    ap.add_argument("--force", action="store_true", help="replace an existing OUTDIR")
    ap.add_argument("-v", "--verbose", action="store_true", help="progress, and a line per epoch")
    return ap.parse_args(argv)


def _check_args(a: argparse.Namespace) -> Charge:
    """The arguments checked; what a MIGRATE row of outcome labels is charged."""
    if a.epochs < 1:
        raise ConvertError(f"--epochs {a.epochs}: at least 1")
    if not 0 < a.holdout < 1:
        raise ConvertError(f"--holdout {a.holdout:g}: a fraction between 0 and 1")
    if a.migration_cost_us is not None and not (np.isfinite(a.migration_cost_us)
                                                and a.migration_cost_us >= 0):
        raise ConvertError(f"--migration-cost-us {a.migration_cost_us:g}: a cost >= 0")
    charge = _charge(a)
    if a.output.exists() and not a.force:
        raise ConvertError(f"{a.output} exists: pass --force to replace it")
    if not a.output.parent.is_dir():
        raise ConvertError(f"{a.output}: directory {a.output.parent} does not exist")
    return charge


def _charge(a: argparse.Namespace) -> Charge:
    if a.move_cost is None:
        if a.working_set is not None:
            raise ConvertError("--working-set picks a point of the measured curve: it needs"
                               " --move-cost FILE")
        if a.migration_cost_us is None:
            return flat_charge(DEFAULT_MIGRATION_COST_US, explicit=False)
        return flat_charge(a.migration_cost_us, explicit=True)
    if a.migration_cost_us is not None:
        raise ConvertError("--move-cost and --migration-cost-us are two costs for the same"
                           " move: give one")
    working_set = DEFAULT_WORKING_SET
    if a.working_set is not None:
        try:
            working_set = parse_bytes(a.working_set)
        except MoveCostError as e:
            raise ConvertError(f"--working-set: {e}") from None
    return measured_charge(MoveCostCurve.load(a.move_cost), working_set)


def main(argv: list[str] | None = None) -> int:
    a = _args(argv)
    logging.basicConfig(level=logging.INFO if a.verbose else logging.WARNING,
                        format=f"{PROG}: %(message)s")
    try:
        charge = _check_args(a)
        report = learn(a.records, a.output, a.labels, a.epochs, a.seed, charge.us, a.holdout,
                       a.force, a.verbose, charge)
    except ConvertError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return e.code
    except OSError as e:
        print(f"{PROG}: {e.filename or ''}: {e.strerror}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted, nothing written", file=sys.stderr)
        return 130
    keys = ("labels", "rows", "class_balance", "held_out", "train_seconds")
    print(json.dumps({"output": str(a.output), **{k: report[k] for k in keys}}, indent=2))
    for why, rows in report["rows"]["dropped"].items():
        print(f"{PROG}: {rows} rows dropped: {why}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
