"""Both table levels in the kernel: what share of requests it decides exactly, how fast, how big.

For each host size (the default model converted for 8, 64 and 128 CPUs; bundles other
than the shipped 8-CPU one are converted once into ``bench/bundles/`` and reused while the
SavedModel is unchanged), two kinds of in-geometry traffic go through the real BPF helper
(``mlsched_decide()`` under the injector):

* ``uniform`` — cpu, idle count and both wire loads uniform;
* ``busy`` — a busy host: each CPU idle with probability 0.3, loads skewed high
  (1024 x Beta(5, 2)).

A request counts as *kernel exact* when a table level answered it in the kernel and the
answer equals the int8 interpreter's decision on the same wire features. Per-decision time
is the injector's clock read before and after each ``mlsched_decide()`` (``time_each``):
over uniform traffic, whose keys are spread over the whole table (every call a likely cache
miss once the table outgrows the caches), and over one host state (cpu and idle fixed,
loads uniform: the rows a balancer asks about while the host's idle count holds);
``clock_pair_ns`` is the two clock reads alone, included in both.

Any bundle the same way (its own host size; ``ring`` is the share of in-geometry
requests that leave the kernel for the interpreter)::

    python -m bench.levels --bundle DIR [--records N]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SAVED_MODEL = ROOT / "models" / "default" / "saved_model"
DEFAULT_BUNDLE = ROOT / "models" / "default" / "bundle"
CACHE = ROOT / "bench" / "bundles"
#: Share of a busy host's CPUs that are idle, and the Beta law of its loads.
BUSY_IDLE_P = 0.3
BUSY_LOAD_AB = (5.0, 2.0)


def bundle_for(cpus: int, log=print) -> Path:
    """The default model's bundle for ``cpus`` CPUs: the shipped one for 8, else converted
    into bench/bundles/ (again when the SavedModel is newer than it)."""
    if cpus == 8:
        return DEFAULT_BUNDLE
    out = CACHE / f"cpus{cpus}"
    newest = max(p.stat().st_mtime for p in SAVED_MODEL.rglob("*") if p.is_file())
    manifest = out / "manifest.json"
    if manifest.is_file() and manifest.stat().st_mtime >= newest:
        return out
    log(f"converting the default model for {cpus} CPUs into {out} (once) ...")
    CACHE.mkdir(parents=True, exist_ok=True)
    p = subprocess.run([sys.executable, "-m", "mlsched.convert.cli", str(SAVED_MODEL), "-o",
                        str(out), "--cpus", str(cpus), "--force"], capture_output=True,
                       text=True)
    if p.returncode:
        raise RuntimeError(f"mlsched-convert --cpus {cpus} failed: {p.stderr.strip()[-300:]}")
    return out


def traffic(kind: str, n: int, cpus: int, rng: np.random.Generator) -> np.ndarray:
    """[n, 5] uint32 wire features of in-geometry requests (see the module doc)."""
    if kind == "uniform":
        idle = rng.integers(0, cpus + 1, n)
        loads = rng.integers(0, 1025, (n, 2))
    elif kind == "busy":
        idle = rng.binomial(cpus, BUSY_IDLE_P, n)
        loads = np.rint(rng.beta(*BUSY_LOAD_AB, (n, 2)) * 1024)
    else:
        raise ValueError(kind)
    return np.column_stack([rng.integers(0, cpus, n), idle, cpus - idle, loads]).astype(np.uint32)


def measure(cpus: int, records: int, reps: int = 1, log=print, path: Path | None = None) -> dict:
    """Exact fractions, level shares, per-decision times and sizes for one host size (the
    default model's bundle for it, or ``path``'s bundle and its own host size)."""
    from mlsched.runtime.bundle import Bundle
    from mlsched.runtime.injector import Injector
    from mlsched.runtime.interp import Model
    from mlsched.runtime.wire import ROW_BYTES, from_wire

    path = bundle_for(cpus, log) if path is None else path
    b = Bundle.load(path, allow_insecure=True)
    cpus = b.cpus
    report = json.loads((path / "report.json").read_text())
    model = Model(b.model_bytes, width=b.width)
    rng = np.random.default_rng(cpus)
    out: dict = {"bundle": str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path),
                 "level1_bytes": int(b.table.nbytes),
                 "level2_bytes": b.level2.nbytes if b.level2 is not None else 0,
                 "kernel_table_bytes": (b.cpus * (b.cpus + 1) * ROW_BYTES
                                        + (b.level2.kernel_words * 8 if b.level2 else 0)),
                 "convert_seconds": report.get("seconds"),
                 "table_seconds": report.get("table_seconds")}
    with Injector().load(b.table, level2=b.level2, consumer_timeout_ns=0,
                           ring_size=1 << 22) as kp:
        for kind in ("uniform", "busy"):
            f = traffic(kind, records, cpus, rng)
            r = kp.inject(f, ignore_consumer=True)
            ref = model.decide(b.normalization.apply(b.inputs.select(from_wire(f))))
            inside = r.level > 0
            out[kind] = {
                "kernel_exact_fraction": float(np.mean(inside & (r.result == ref))),
                "level1": float(np.mean(r.level == 1)), "level2": float(np.mean(r.level == 2)),
                "ring": float(np.mean(~inside)),
                "wrong_in_kernel": int(np.count_nonzero(inside & (r.result != ref)))}
            kp.drain(target=int(r.sent), idle_timeout_ms=50)
        f = traffic("uniform", min(records, 1 << 16), cpus, rng)
        one = f.copy()
        one[:, :3] = f[0, :3]                                        # one (cpu, idle, busy)
        out["decide_ns_reps"] = [_decide_times(kp, f, one) for _ in range(reps)]
    out["decide_ns"] = out["decide_ns_reps"][0]
    return out


def _timed(kp, f: np.ndarray):
    """The injector's result for ``f``, each decision timed (after a warm-up pass)."""
    w = kp.inject(f, time_each=True, ignore_consumer=True)
    t = kp.inject(f, time_each=True, ignore_consumer=True)
    kp.drain(target=int(w.sent + t.sent), idle_timeout_ms=50)
    return t


def _decide_times(kp, uniform: np.ndarray, one_state: np.ndarray) -> dict:
    t, o = _timed(kp, uniform), _timed(kp, one_state)
    ns, ons = t.decide_ns.astype(np.float64), o.decide_ns.astype(np.float64)
    clock = kp.inject(uniform, time_clock_only=True).decide_ns
    return {"p50": float(np.percentile(ns, 50)), "p99": float(np.percentile(ns, 99)),
            "level2_p99": float(np.percentile(ns[t.level == 2], 99))
            if (t.level == 2).any() else None,
            "one_state_p50": float(np.percentile(ons, 50)),
            "one_state_p99": float(np.percentile(ons, 99)),
            "clock_pair_ns": float(np.percentile(clock, 50))}


def run(cpus_list: tuple[int, ...], records: int, reps: int, log=print) -> dict:
    """``measure`` for each host size; the timing ``reps`` times over one loaded table (the
    fractions are exact counts over fixed traffic and do not vary)."""
    got = {}
    for cpus in cpus_list:
        t0 = time.perf_counter()
        got[str(cpus)] = measure(cpus, records, reps, log)
        log(f"levels, {cpus} CPUs: {time.perf_counter() - t0:.1f} s")
    return got


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.levels", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, metavar="DIR",
                    help="measure this bundle (default: the default model for 8 CPUs)")
    ap.add_argument("--records", type=int, default=20000, help="requests of each traffic kind")
    a = ap.parse_args(argv)
    if a.bundle is None:
        got = run((8,), a.records, 1)
    else:
        got = {"bundle": measure(0, a.records, 1, path=a.bundle.resolve())}
    print(json.dumps(got, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
