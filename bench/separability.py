"""How well could ANY function of the features predict what the incumbent scheduler did?

    python -m bench.separability RECORDS.csv [--holdout 0.2] [--seed 1]

Reads collector records (`mlsched-lite run --record`), labels them as `mlsched-train
--labels imitate` does (MIGRATE iff the task moved between domains), and fits the best
possible lookup classifier — the majority label of every distinct input — on a random
training part, scoring it on the rest (an input not seen in training gets the overall
majority). Inputs:

* ``five features, table cells``: cpu, idle, busy and both loads at the table's 0.1 steps;
* ``five features, as recorded``: the same with the loads at the wire's 1/1024;
* ``+ task history``: the cells plus two things about the task the five features do not
  carry: how long since its previous record (log2 buckets of µs) and whether that record
  was a move between domains.

No model of the five features can beat the first two rows by much on held-out rows: they
bound what imitation learning can reach with these inputs. The third row shows what a
richer input would buy.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from mlsched.runtime.features import load_key
from mlsched.train import records


def lookup_accuracy(keys: np.ndarray, y: np.ndarray, train: np.ndarray) -> float:
    """Held-out accuracy of the per-key majority label fitted on the ``train`` rows."""
    uniq, inv = np.unique(keys, axis=0, return_inverse=True)
    inv = inv.ravel()
    migrate = np.bincount(inv[train], weights=y[train], minlength=len(uniq))
    seen = np.bincount(inv[train], minlength=len(uniq))
    default = int(y[train].mean() > 0.5)
    guess = np.where(seen > 0, (migrate * 2 > seen).astype(int), default)
    test = ~train
    return float((guess[inv[test]] == y[test]).mean())


def history(rec: records.Records, y: np.ndarray) -> np.ndarray:
    """Per row: (log2 µs since the task's previous record, previous label); -1s if none."""
    pid, ts = rec.columns["pid"], rec.columns["ts_ns"]
    order = np.lexsort((ts, pid))
    gap = np.full(len(y), -1, dtype=np.int64)
    prev = np.full(len(y), -1, dtype=np.int64)
    same = pid[order][1:] == pid[order][:-1]
    dt_us = np.maximum((ts[order][1:] - ts[order][:-1]) / 1000.0, 1.0)
    after = order[1:][same]
    gap[after] = np.floor(np.log2(dt_us[same])).astype(np.int64)
    prev[after] = y[order[:-1][same]]
    return np.stack([gap, prev], axis=1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("records", type=Path, help="collector records (run --record)")
    ap.add_argument("--holdout", type=float, default=0.2)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    try:
        rec = records.read([args.records], labels=records.IMITATE)
    except records.RecordError as exc:
        print(f"separability: {exc}", file=sys.stderr)
        return 2
    y = records.label_imitate(rec).astype(np.int64)
    f = rec.features
    cells = np.stack([f[:, 0], f[:, 1], f[:, 2], load_key(f[:, 3]), load_key(f[:, 4])],
                     axis=1).astype(np.int64)
    exact = np.stack([f[:, 0], f[:, 1], f[:, 2], np.round(f[:, 3] * 1024),
                      np.round(f[:, 4] * 1024)], axis=1).astype(np.int64)
    train = np.random.default_rng(args.seed).random(len(y)) >= args.holdout
    majority = max(y[~train].mean(), 1 - y[~train].mean())
    out = {
        "rows": len(y), "migrate_fraction": float(y.mean()),
        "held_out_rows": int((~train).sum()),
        "held_out_accuracy": {
            "always the majority": float(majority),
            "five features, table cells": lookup_accuracy(cells, y, train),
            "five features, as recorded": lookup_accuracy(exact, y, train),
            "+ task history": lookup_accuracy(np.hstack([cells, history(rec, y)]), y, train),
        },
    }
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
