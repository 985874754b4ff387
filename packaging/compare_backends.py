"""Compare the two TFLite backends for the tarball: size on disk and speed on the decision path.

    .venv/bin/python packaging/compare_backends.py [--bundle models/default/bundle]

For each backend installed here, a fresh interpreter process imports it through
``mlsched.runtime.interp`` and reports:

* the packages its import pulls in beyond numpy (what the tarball would have to vendor),
  their size on disk and gzip-compressed (level 9, as the tarball is written);
* import time, the RSS after building the engine, and the miss path's speed:
  ``Model.raw`` on one 8192-row batch (ns/row) and on a single row (µs/call),
  the median of several repetitions.
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PROBE = r"""
import json, sys, time
t0 = time.perf_counter()
before = set(sys.modules)
import numpy as np
after_numpy = set(sys.modules)
from mlsched.runtime.interp import Model, BACKENDS
import importlib
importlib.import_module(BACKENDS[sys.argv[1]])
t_import = time.perf_counter() - t0
pulled = sorted({m.split(".")[0] for m in set(sys.modules) - after_numpy})
model = Model(sys.argv[2] + "/model.tflite", backend=sys.argv[1])
rng = np.random.default_rng(0)
big = rng.random((8192, 10), dtype=np.float32)
one = big[:1]
model.raw(big); model.raw(one)

def median(f, reps):
    ts = []
    for _ in range(reps):
        t = time.perf_counter(); f(); ts.append(time.perf_counter() - t)
    ts.sort()
    return ts[len(ts) // 2]

batch_s = median(lambda: model.raw(big), 50)
single_s = median(lambda: [model.raw(one) for _ in range(100)], 21) / 100
rss_kb = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS"))
mods = {m: getattr(sys.modules.get(m), "__file__", None) for m in pulled}
print(json.dumps({"import_s": t_import, "batch_ns_per_row": batch_s / 8192 * 1e9,
                  "single_us": single_s * 1e6, "rss_mb": rss_kb / 1024, "modules": mods}))
"""


def package_root(file: str | None) -> Path | None:
    if not file:
        return None
    p = Path(file)
    return p.parent if p.name == "__init__.py" else p


def sizes(paths: list[Path]) -> tuple[int, int]:
    """(bytes on disk, bytes gzip -9 tar) of files under paths, __pycache__ left out."""
    buf = io.BytesIO()
    raw = 0
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=9) as tar:
        for p in paths:
            files = [p] if p.is_file() else sorted(q for q in p.rglob("*") if q.is_file())
            for f in files:
                if "__pycache__" in f.parts:
                    continue
                raw += f.stat().st_size
                tar.add(f, arcname=str(f), recursive=False)
    return raw, len(buf.getvalue())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, default=ROOT / "models" / "default" / "bundle")
    a = ap.parse_args(argv)
    rows = []
    for backend in ("tflite-runtime", "litert"):
        p = subprocess.run([sys.executable, "-c", PROBE, backend, str(a.bundle)],
                           capture_output=True, text=True, env={"OPENBLAS_NUM_THREADS": "1",
                                                                "PATH": "/usr/bin:/bin"})
        if p.returncode:
            print(f"{backend}: not usable here: {p.stderr.strip().splitlines()[-1:]}")
            continue
        r = json.loads(p.stdout.strip().splitlines()[-1])
        roots = [package_root(f) for m, f in r["modules"].items() if m != "mlsched"]
        roots = [q for q in roots if q is not None and "site-packages" in q.parts]
        # Shared libraries the wheel keeps beside the package (<name>.libs) come along too.
        roots += [q.parent / f"{q.name}.libs" for q in roots if (q.parent / f"{q.name}.libs").is_dir()]
        raw, gz = sizes(roots)
        rows.append((backend, raw, gz, r, sorted(q.name for q in roots)))
    print(f"{'backend':15} {'disk MB':>8} {'gz MB':>7} {'import s':>9} {'RSS MB':>7}"
          f" {'batch ns/row':>13} {'single us':>10}  vendored")
    for backend, raw, gz, r, names in rows:
        print(f"{backend:15} {raw / 1e6:8.1f} {gz / 1e6:7.1f} {r['import_s']:9.3f}"
              f" {r['rss_mb']:7.1f} {r['batch_ns_per_row']:13.1f} {r['single_us']:10.1f}"
              f"  {' '.join(names)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
