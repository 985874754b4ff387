"""Single-path figures: interpreter, engine, the kernel helper, the bare ring.

Each function returns per-repetition values; ``bench.run`` turns them into figures.
Traffic is built from the engine's own table so "all hits" and "all misses" are
exactly that:

* hits   — wire features whose key is a sure cell of the table;
* misses — wire features whose key is UNSURE or off the table's grid (idle + busy != N),
           so the interpreter answers with the exact features.
"""

from __future__ import annotations

import threading
import time
from functools import partial

import numpy as np

from bench.common import RingStuck, send_all
from mlsched.runtime import table as table_mod
from mlsched.runtime.engine import SOURCE_INTERPRETER, SOURCE_TABLE, Engine
from mlsched.runtime.injector import Injector
from mlsched.runtime.interp import BUCKETS, Model, available_backends
from mlsched.runtime.wire import from_wire
from support.traffic import generated_features

#: Share of generated records made off-grid before picking misses: both kinds of miss appear.
MISS_OFF_GRID_PCT = 50
#: Records per ``inject()`` call when generating traffic in the kernel (one bpf_loop run);
#: the raw ring writes at most half its ring per call.
GENERATE_CHUNK = 1 << 16
#: Ring bytes per record (56-byte request + 8-byte ring header).
RING_RECORD_BYTES = 64


def traffic(engine: Engine, kind: str, count: int, seed: int = 1) -> np.ndarray:
    """[count, 5] uint32 wire features (loads in 1/1024) that all hit or all miss ``engine``."""
    want = SOURCE_TABLE if kind == "hit" else SOURCE_INTERPRETER
    pct = 0 if kind == "hit" else MISS_OFF_GRID_PCT
    parts, have, s = [], 0, seed
    while have < count:
        f = generated_features(s, max(4 * count, 4096), engine.ncpus, invalid_pct=pct)
        src = np.empty(len(f), np.uint8)
        engine.decide_wire(f, source=src)
        keep = f[src == want]
        parts.append(keep)
        have += len(keep)
        s += 1
    engine.reset_counters()
    return np.concatenate(parts)[:count]


def as_records(kp_dtype: np.dtype, features: np.ndarray) -> np.ndarray:
    """Ring-layout records (struct mlsched_request) carrying ``features``."""
    rec = np.zeros(len(features), kp_dtype)
    for i, name in enumerate(("cpu", "idle", "busy", "src_load", "dst_load")):
        rec["f"][name] = features[:, i]
    return rec


def _time_per_item(fn, items: int, min_seconds: float) -> float:
    """Seconds per item of ``fn()`` (which handles ``items``), looped for >= min_seconds."""
    fn()                                    # warm: allocation, first-call paths
    loops, start = 0, time.perf_counter()
    while True:
        fn()
        loops += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return elapsed / (loops * items)


# ---- interpreter -----------------------------------------------------------------------

def tflite(bundle, reps: int, min_seconds: float) -> dict[str, dict[str, list[float]]]:
    """Per installed backend: µs per decision, one row per call and one full bucket per call."""
    out = {}
    batch = BUCKETS[-1]
    rng = np.random.default_rng(3)
    for backend in available_backends():
        model = Model(bundle.model_bytes, backend=backend)
        u1 = rng.random((1, 10), dtype=np.float32)
        ub = rng.random((batch, 10), dtype=np.float32)
        single = [_time_per_item(partial(model.decide, u1), 1, min_seconds) * 1e6
                  for _ in range(reps)]
        batched = [_time_per_item(partial(model.decide, ub), batch, min_seconds) * 1e6
                   for _ in range(reps)]
        out[backend] = {"single": single, "batched": batched, "batch": batch}
    return out


# ---- engine ----------------------------------------------------------------------------

def engine(eng: Engine, request_dtype: np.dtype, batch: int, reps: int, min_seconds: float
           ) -> dict[str, list[float]]:
    """ns per decision: batch API (float rows) and wire path (ring records), hits and misses."""
    out: dict[str, list[float]] = {}
    for kind in ("hit", "miss"):
        wire = traffic(eng, kind, batch, seed=11 if kind == "hit" else 12)
        rows = from_wire(wire)
        rec = as_records(request_dtype, wire)
        dec = np.empty(batch, np.uint8)
        out[f"decide_{kind}"] = [
            _time_per_item(partial(eng.decide, rows), batch, min_seconds) * 1e9
            for _ in range(reps)]
        out[f"wire_{kind}"] = [
            _time_per_item(partial(eng.decide_wire, rec["f"], out=dec), batch, min_seconds)
            * 1e9
            for _ in range(reps)]
        c = eng.reset_counters()
        expect_hits = kind == "hit"
        if (c.misses == 0) != expect_hits or (c.hits == 0) == expect_hits:
            raise RuntimeError(f"{kind} traffic did not stay {kind}s: {c.as_dict()}")
    return out


# ---- kernel helper ---------------------------------------------------------------------

def nearest_table(eng: Engine) -> np.ndarray:
    """The model's ``nearest``-mode table for the engine's host: no UNSURE cell at all, so
    generated traffic is all hits and the helper's hit path is what gets timed."""
    return table_mod.build(eng.interpreter_decide, eng.ncpus, "nearest")


def kernel_lookup(table: np.ndarray, count: int, reps: int) -> tuple[list[float], dict]:
    """ns per decide() in the kernel: the injector's own clock (inject_args.elapsed_ns)
    over ``count`` generated all-hit records, through bpf_prog_test_run."""
    ncpus = int(table.shape[0])
    with Injector().load(table, consumer_timeout_ns=0) as kp:
        kp.load_injector()
        kp.inject(generate=min(count, 10000), seed=99, gen_ncpus=ncpus)     # warm
        per = []
        for r in range(reps):
            res = kp.inject(generate=count, seed=1000 + r, gen_ncpus=ncpus)
            if res.hits != count:
                raise RuntimeError(f"kernel lookup traffic was not all hits: {res.hits}/{count}")
            per.append(res.elapsed_ns / res.done)
        # the same helper, fed from the mmapped batch array instead of the generator
        f = generated_features(7, min(count, 1 << 16), ncpus)
        res = kp.inject(f)
        batch_ns = res.elapsed_ns / res.done
    return per, {"batch_mode_ns": batch_ns, "records_per_rep": count}


# ---- the bare ring ---------------------------------------------------------------------

#: The drain thread stops at its target; this idle limit only ends it when records stop
#: coming (a producer that failed), long enough for any pause of a busy host.
DRAIN_IDLE_MS = 10_000


def _drain_into(kp: Injector, count: int, got: dict) -> None:
    try:
        got["n"] = kp.drain(target=count, idle_timeout_ms=DRAIN_IDLE_MS)
    except Exception as exc:    # reported by the producer, which checks the thread
        got["error"] = exc


def raw_ring(table: np.ndarray, count: int, reps: int, ring_bytes: int
             ) -> tuple[list[float], dict]:
    """Records/s through the ring with a C consumer that discards them: the injector in
    this thread produces table-bypassing records, mls_drain() consumes in another (the
    C calls release the GIL, so the two run on two CPUs). The injector is loaded before
    the consumer starts; a consumer that stops early ends the repetition with an error."""
    ncpus = int(table.shape[0])
    chunk = max(1024, min(GENERATE_CHUNK, ring_bytes // RING_RECORD_BYTES // 2))
    per, dropped_total = [], 0
    with Injector().load(table, consumer_timeout_ns=0, ring_size=ring_bytes) as kp:
        kp.load_injector()
        for r in range(reps):
            got: dict = {}
            th = threading.Thread(target=_drain_into, args=(kp, count, got))
            base = 5000 + r * (1 << 32)
            t0 = time.perf_counter()
            th.start()
            sent = send_all(
                lambda i, base=base: kp.inject(generate=chunk, seed=base + i * chunk,
                                               gen_ncpus=ncpus, bypass_table=True),
                count, th.is_alive, "raw ring")
            th.join()
            elapsed = time.perf_counter() - t0
            if "error" in got:
                raise got["error"]
            if got["n"] < count:
                raise RingStuck(f"raw ring: the consumer drained {got['n']} of {count} records"
                                f" and went {DRAIN_IDLE_MS} ms without one")
            per.append(got["n"] / elapsed)
            dropped_total += sent.dropped
            kp.drain(idle_timeout_ms=20)
    return per, {"records_per_rep": count, "dropped_by_producer": dropped_total,
                 "ring_bytes": ring_bytes}
