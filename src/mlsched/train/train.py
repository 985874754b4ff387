"""Train the default migration model from the teacher policy (train/teacher.py).

One command, fixed seeds, same result on the same software::

    python -m mlsched.train.train -o models/default/saved_model

Data: hosts of N CPUs (N drawn log-uniformly from 2..MAX_TRAIN_CPUS, so small hosts
are as well covered as big ones), cpu uniform in 0..N-1, idle uniform in 0..N,
busy = N - idle, loads uniform in [0, 1]; labels from the teacher. Training runs on
features divided by MAX_TRAIN_CPUS (counts) for well-conditioned gradients; that
scale is folded into the first dense layer afterwards, so the saved model takes
the reference design's raw features: ``[batch, 10]`` float32 -> Dense 64 ReLU -> Dense 64 ReLU
-> Dense 1 sigmoid.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from mlsched.runtime.features import COUNT_COLUMNS, FEATURE_WIDTH, pad
from mlsched.runtime.files import atomic_directory

from . import teacher

SEED = 20261125
MAX_TRAIN_CPUS = 128
TRAIN_SAMPLES = 600_000
TEST_SAMPLES = 200_000
EPOCHS = 60
BATCH = 1024


def sample(n: int, rng: np.random.Generator, max_cpus: int = MAX_TRAIN_CPUS,
           ncpus: int | None = None) -> np.ndarray:
    """Raw features [n, 10] of healthy hosts (busy = N - idle)."""
    if ncpus is None:
        hosts = np.floor(np.exp(rng.uniform(np.log(2), np.log(max_cpus + 1), n))).astype(np.int64)
    else:
        hosts = np.full(n, ncpus, dtype=np.int64)
    cpu = np.floor(rng.uniform(0, 1, n) * hosts)
    idle = rng.integers(0, hosts + 1)
    busy = hosts - idle
    loads = rng.uniform(0.0, 1.0, (n, 2))
    return pad(np.column_stack([cpu, idle, busy, loads]))


def build_model(tf):
    keras = tf.keras
    return keras.Sequential([
        keras.Input(shape=(FEATURE_WIDTH,), dtype="float32", name="features"),
        keras.layers.Dense(64, activation="relu", name="dense_1"),
        keras.layers.Dense(64, activation="relu", name="dense_2"),
        keras.layers.Dense(1, activation="sigmoid", name="migrate"),
    ])


def feature_scale(count_scale: float) -> np.ndarray:
    """Per-column training scale [10]: the counts divided by ``count_scale``, the rest as is."""
    scale = np.ones(FEATURE_WIDTH, dtype=np.float32)
    scale[list(COUNT_COLUMNS)] = count_scale
    return scale


def fold_scale(model, scale: np.ndarray) -> None:
    """Fold a training scale into the first layer, so the model takes raw features:
    relu((x / s) W + b) = relu(x (W / s) + b)."""
    first = model.layers[0]
    kernel, bias = first.get_weights()
    first.set_weights([kernel / scale[:, None], bias])


def train(out: Path, samples: int = TRAIN_SAMPLES, epochs: int = EPOCHS, seed: int = SEED,
          verbose: bool = False) -> dict:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")   # oneDNN reorders float sums: not reproducible
    import tensorflow as tf

    tf.keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()
    rng = np.random.default_rng(seed)
    x = sample(samples, rng)
    y = teacher.decide(x).astype(np.float32)
    x_test = sample(TEST_SAMPLES, rng)
    y_test = teacher.decide(x_test)

    scale = feature_scale(MAX_TRAIN_CPUS)
    model = build_model(tf)
    steps = epochs * int(np.ceil(samples / BATCH))
    lr = tf.keras.optimizers.schedules.CosineDecay(3e-3, steps, alpha=0.01)
    model.compile(optimizer=tf.keras.optimizers.Adam(lr), loss="binary_crossentropy",
                  metrics=["accuracy"])
    t0 = time.time()
    model.fit(x / scale, y, batch_size=BATCH, epochs=epochs, shuffle=True,
              verbose=2 if verbose else 0)
    seconds = time.time() - t0

    fold_scale(model, scale)

    def accuracy(xs, ys):
        p = model.predict(xs, batch_size=8192, verbose=0)[:, 0]
        return float(((p > 0.5).astype(np.uint8) == ys).mean())

    per_host = {}
    for n in (2, 8, 64, 128):
        xs = sample(50_000, rng, ncpus=n)
        per_host[str(n)] = accuracy(xs, teacher.decide(xs))
    stats = {
        "seed": seed, "train_samples": samples, "epochs": epochs, "train_seconds": round(seconds, 1),
        "test_samples": TEST_SAMPLES, "accuracy_vs_teacher": accuracy(x_test, y_test),
        "accuracy_vs_teacher_by_host_cpus": per_host,
        "tensorflow": tf.__version__,
    }
    _save(model, out, stats, tf)
    return stats


def export_saved_model(model, path: Path) -> None:
    """The model as the SavedModel ``mlsched-convert`` reads: a Keras export, ``serve``."""
    model.export(str(path), format="tf_saved_model", verbose=False)


def _save(model, out: Path, stats: dict, tf) -> None:
    with atomic_directory(out, replace=True) as tmp:
        export_saved_model(model, tmp)
        (tmp / "training.json").write_text(json.dumps(stats, indent=2, sort_keys=True) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mlsched.train.train", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-o", "--output", type=Path, required=True, help="SavedModel directory to write")
    ap.add_argument("--samples", type=int, default=TRAIN_SAMPLES)
    ap.add_argument("--epochs", type=int, default=EPOCHS)
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument("--force", action="store_true", help="replace an existing output directory")
    ap.add_argument("-v", "--verbose", action="store_true")
    a = ap.parse_args(argv)
    if a.output.exists() and not a.force:
        print(f"mlsched-train: {a.output} exists: pass --force to replace it", file=sys.stderr)
        return 2
    stats = train(a.output, a.samples, a.epochs, a.seed, a.verbose)
    print(json.dumps(stats, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
