"""TensorFlow per-request latency of the default SavedModel (the reference design's way).

Runs in its own process: TensorFlow carries its own TFLite runtime, and once it is
loaded tflite_runtime's interpreter in the same process breaks, so the parent never
imports it. One request per signature call, features cycling through a few rows so
no call sees a cached input. Prints one JSON object on stdout:

    {"us": [per-repetition microseconds per decision], "rss_mb": ..., "tensorflow": "2.x"}

or ``{"error": "..."}`` when TensorFlow is not installed.

    python -m bench.tf_probe MODEL_DIR CALLS REPS
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

#: Calls before timing: the first calls trace and allocate.
WARMUP_CALLS = 50
#: Raw feature rows (cpu, idle, busy, src, dst, padding) for an 8-CPU host.
ROWS = ((4, 2, 6, 0.9, 0.2), (2, 4, 4, 0.5, 0.5), (1, 7, 1, 0.1, 0.1), (7, 0, 8, 0.3, 0.8))


def main(argv: list[str]) -> int:
    model_dir, calls, reps = argv[0], int(argv[1]), int(argv[2])
    try:
        import numpy as np
        import tensorflow as tf
    except ImportError as e:
        print(json.dumps({"error": f"tensorflow is not installed ({e}):"
                                   " pip install 'mlsched[convert]'"}))
        return 0
    fn = tf.saved_model.load(model_dir).signatures["serving_default"]
    inputs = [tf.constant(np.array([list(r) + [0.0] * 5], dtype=np.float32)) for r in ROWS]
    for i in range(WARMUP_CALLS):
        fn(inputs[i % len(inputs)])
    runs = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for i in range(calls):
            fn(inputs[i & 3])
        runs.append((time.perf_counter() - t0) / calls * 1e6)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"us": runs, "rss_mb": rss, "tensorflow": tf.__version__}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
