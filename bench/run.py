"""``make bench``: every performance figure of mlsched side by side, from one run.

    python -m bench.run [--profile full|tiny] [--reps N] [--out bench/results.json]
                        [--markdown FILE] [--no-daemon]

Order of work (each step's figure is the median over ``--reps`` repetitions, with min/max):

1. TensorFlow: the default SavedModel through its signature, one request per call, in a
   child process (``bench.tf_probe``): TensorFlow is never loaded here, because it breaks
   tflite_runtime's interpreter in the same process;
2. TFLite: one row per call and one full batch per call, per installed backend;
3. engine: batch API (float rows) and wire path (ring records), all hits and all misses;
4. kernel: the BPF helper's hit path, timed by the injector itself (test-run);
5. raw ring: injector + a C consumer that discards records: the ring's ceiling here;
6. pipeline: injector -> ring -> ``mlsched-lite run`` -> write-back, hits then misses,
   then latency at a fixed offered rate, high and low (``bench.pipeline``);
7. table levels: the share of in-geometry requests the kernel decides exactly (both
   levels), per-decision time in the kernel, table sizes, for the default model converted
   for 8, 64 and 128 CPUs (``bench.levels``; the full profile converts the 64- and 128-CPU
   bundles once, several minutes, and reuses them);
8. ratios, the markdown table, ``bench/results.json`` (written atomically).

A figure that cannot be measured here (no TensorFlow, no BPF) is ``null`` with a reason.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from .common import figure, load_average, machine, missing, write_atomic, write_json_atomic

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "bench" / "results.json"
SAVED_MODEL = ROOT / "models" / "default" / "saved_model"
BUNDLE = ROOT / "models" / "default" / "bundle"
#: Offered rate of the latency sessions, and the records per injector call that pace it.
LATENCY_RATE_PER_S = 100_000
LATENCY_INJECT_BATCH = 20
#: The low-rate sessions: one request per injector call, each answered by the interpreter
#: (the live collector's misses are UNSURE cells and off-grid keys); the consumer is woken
#: for every request. Measured as shipped, then with --rt-priority LOW_RATE_RT_PRIORITY.
LOW_RATE_PER_S = 1_000
LOW_RATE_INJECT_BATCH = 1
LOW_RATE_RT_PRIORITY = 10

#: Targets on a 2-core machine: key -> (comparison, bound).
TARGETS = {
    "pipeline_decisions_per_s": (">=", 2_000_000),
    "pipeline_miss_decisions_per_s": (">=", 500_000),
    "kernel_lookup_ns_per_decision": ("<=", 100),
    "kernel_exact_fraction_uniform": (">=", 0.999),
    "kernel_exact_fraction_busy": (">=", 0.999),
    "kernel_lookup_p50_ns": ("<=", 100),
    "kernel_lookup_p99_ns": ("<=", 250),
    "kernel_lookup_one_state_p50_ns": ("<=", 100),
    "kernel_lookup_one_state_p99_ns": ("<=", 250),
    "table_kernel_bytes": ("<=", {"64": 2 << 20, "128": 8 << 20}),
    "latency_p99_us": ("<=", 200),
    "latency_1k_p99_us": ("<=", 1000),
    "daemon_rss_mb": ("<=", 50),
    "speedup_vs_tf": (">=", 1000),
}

#: Every key results.json carries; the smoke test checks them all.
KEYS = (
    "tf_savedmodel_us_per_decision",
    "tflite_single_us_per_decision",
    "tflite_batched_us_per_decision",
    "engine_table_ns_per_decision",
    "engine_miss_ns_per_decision",
    "engine_wire_table_ns_per_decision",
    "engine_wire_miss_ns_per_decision",
    "kernel_lookup_ns_per_decision",
    "kernel_exact_fraction_uniform",
    "kernel_exact_fraction_busy",
    "kernel_lookup_p50_ns",
    "kernel_lookup_p99_ns",
    "kernel_lookup_one_state_p50_ns",
    "kernel_lookup_one_state_p99_ns",
    "table_kernel_bytes",
    "raw_ring_drain_per_s",
    "pipeline_decisions_per_s",
    "pipeline_miss_decisions_per_s",
    "latency_p50_us",
    "latency_p99_us",
    "latency_1k_p50_us",
    "latency_1k_p99_us",
    "daemon_rss_mb",
    "speedup_vs_tf",
    "fraction_of_raw_ring",
)


@dataclass(frozen=True)
class Profile:
    """Sizes of one run: ``full`` for the figures, ``tiny`` for the smoke test."""
    reps: int
    min_seconds: float          # per repetition of a timed loop in this process
    tf_calls: int
    engine_batch: int
    kernel_records: int
    ring_records: int
    ring_bytes: int
    pipeline_hit_records: int
    pipeline_miss_records: int
    latency_seconds: float
    level_cpus: tuple[int, ...]
    level_records: int
    latency_1k_seconds: float


PROFILES = {
    "full": Profile(reps=5, min_seconds=0.2, tf_calls=1000, engine_batch=4096,
                    kernel_records=1_000_000, ring_records=4_000_000, ring_bytes=1 << 20,
                    pipeline_hit_records=2_000_000, pipeline_miss_records=1_000_000,
                    latency_seconds=1.0, latency_1k_seconds=3.0, level_cpus=(8, 64, 128),
                    level_records=400_000),
    "tiny": Profile(reps=2, min_seconds=0.01, tf_calls=20, engine_batch=1024,
                    kernel_records=20_000, ring_records=100_000, ring_bytes=1 << 20,
                    pipeline_hit_records=100_000, pipeline_miss_records=20_000,
                    latency_seconds=0.1, latency_1k_seconds=0.2, level_cpus=(8,),
                    level_records=20_000),
}


def log(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


# ---- steps ----------------------------------------------------------------------------------

def step_tf(p: Profile, out: dict) -> None:
    key = "tf_savedmodel_us_per_decision"
    if not (SAVED_MODEL / "saved_model.pb").is_file():
        out[key] = missing(f"no SavedModel at {SAVED_MODEL.relative_to(ROOT)}")
        return
    cmd = [sys.executable, "-m", "bench.tf_probe", str(SAVED_MODEL), str(p.tf_calls),
           str(p.reps)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    try:
        got = json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        out[key] = missing(f"the TensorFlow probe failed (status {proc.returncode}): {tail}")
        return
    if "error" in got:
        out[key] = missing(got["error"])
        return
    out[key] = figure(got["us"], "µs", calls_per_rep=p.tf_calls, process_rss_mb=got["rss_mb"],
                      tensorflow=got["tensorflow"])


def step_tflite(p: Profile, bundle, out: dict) -> None:
    from . import micro

    got = micro.tflite(bundle, p.reps, p.min_seconds)
    if not got:
        reason = "no TFLite interpreter installed (pip install ai-edge-litert)"
        out["tflite_single_us_per_decision"] = missing(reason)
        out["tflite_batched_us_per_decision"] = missing(reason)
        return
    out["tflite_single_us_per_decision"] = {
        b: figure(v["single"], "µs", rows_per_call=1) for b, v in got.items()}
    out["tflite_batched_us_per_decision"] = {
        b: figure(v["batched"], "µs", rows_per_call=v["batch"]) for b, v in got.items()}


def step_engine(p: Profile, engine, request_dtype, out: dict) -> None:
    from . import micro

    got = micro.engine(engine, request_dtype, p.engine_batch, p.reps, p.min_seconds)
    extra = {"batch": p.engine_batch, "backend": engine.backend}
    out["engine_table_ns_per_decision"] = figure(got["decide_hit"], "ns", **extra)
    out["engine_miss_ns_per_decision"] = figure(got["decide_miss"], "ns", **extra)
    out["engine_wire_table_ns_per_decision"] = figure(got["wire_hit"], "ns", **extra)
    out["engine_wire_miss_ns_per_decision"] = figure(got["wire_miss"], "ns", **extra)


def step_kernel(p: Profile, engine, out: dict) -> None:
    from . import micro

    table = micro.nearest_table(engine)
    per, extra = micro.kernel_lookup(table, p.kernel_records, p.reps)
    out["kernel_lookup_ns_per_decision"] = figure(
        per, "ns", table="nearest mode (no UNSURE cell): generated traffic is all hits", **extra)
    per, extra = micro.raw_ring(engine.table, p.ring_records, p.reps, p.ring_bytes)
    out["raw_ring_drain_per_s"] = figure(per, "records/s", **extra)


def step_levels(p: Profile, out: dict) -> dict:
    from . import levels

    got = levels.run(p.level_cpus, p.level_records, p.reps, log)
    how = "in-geometry requests a table level answered in the kernel, equal to the interpreter"
    for kind in ("uniform", "busy"):
        out[f"kernel_exact_fraction_{kind}"] = {
            f"{c} CPUs": figure([g[kind]["kernel_exact_fraction"]], "fraction", how=how,
                                level2=g[kind]["level2"], ring=g[kind]["ring"],
                                wrong_in_kernel=g[kind]["wrong_in_kernel"])
            for c, g in got.items()}
    for q in ("p50", "p99"):
        out[f"kernel_lookup_{q}_ns"] = {
            f"{c} CPUs": figure([r[q] for r in g["decide_ns_reps"]], "ns",
                                clock_pair_ns=g["decide_ns"]["clock_pair_ns"],
                                how="one mlsched_decide() between two clock reads, uniform"
                                    " traffic over the whole table, both levels")
            for c, g in got.items()}
        out[f"kernel_lookup_one_state_{q}_ns"] = {
            f"{c} CPUs": figure([r[f"one_state_{q}"] for r in g["decide_ns_reps"]], "ns",
                                clock_pair_ns=g["decide_ns"]["clock_pair_ns"],
                                how="as kernel_lookup, cpu and idle fixed, loads uniform")
            for c, g in got.items()}
    out["table_kernel_bytes"] = {
        f"{c} CPUs": figure([g["kernel_table_bytes"]], "bytes", level1=g["level1_bytes"],
                            level2=g["level2_bytes"], convert_seconds=g["convert_seconds"],
                            table_seconds=g["table_seconds"])
        for c, g in got.items()}
    return got


def step_pipeline(p: Profile, engine, out: dict, use_daemon: bool) -> dict:
    """Throughput (hits, misses) and latency through the real consumer process."""
    from . import micro
    from .pipeline import Session

    info: dict = {}
    feats = {k: micro.traffic(engine, k, 1 << 16, seed=21 + i)
             for i, k in enumerate(("hit", "miss"))}
    expected = {k: engine.decide_wire(f) for k, f in feats.items()}
    engine.reset_counters()
    rss: list[float] = []
    for kind, key, records in (("hit", "pipeline_decisions_per_s", p.pipeline_hit_records),
                               ("miss", "pipeline_miss_decisions_per_s",
                                p.pipeline_miss_records)):
        with Session(BUNDLE, engine.table, p.ring_bytes, [], duration_s=600,
                     use_daemon=use_daemon) as s:
            s.throughput(feats[kind], expected[kind], min(records, 1 << 16))     # warm
            reps = [s.throughput(feats[kind], expected[kind], records) for _ in range(p.reps)]
        info[kind] = {"consumer": s.consumer_name, "argv": s.argv[1:], "reps": reps,
                      "summary": s.summary}
        _check_answers(kind, reps)
        rss += [x for x in (s.rss_mb, s.summary.get("peak_rss_mb")) if x]
        out[key] = figure([r["per_s"] for r in reps], "decisions/s", consumer=s.consumer_name,
                          records_per_rep=records, traffic=f"all {kind}s, every record"
                          " through the ring (bypass_table)",
                          dropped_by_full_ring=sum(r["dropped"] for r in reps))
    # the consumer as shipped (its default batch linger), then with the linger off
    for label, args in (("no_linger", ["--max-wait-us", "0"]),):
        lat = []
        for _ in range(p.reps):
            with Session(BUNDLE, engine.table, p.ring_bytes, args, duration_s=600,
                         use_daemon=use_daemon) as s:
                s.paced(feats["hit"], LATENCY_RATE_PER_S, p.latency_seconds,
                        LATENCY_INJECT_BATCH)
            lat.append((s.summary.get("latency_p50_us"), s.summary.get("latency_p99_us")))
        info[f"latency_{label}"] = {"args": args, "p50_p99_us": lat}
    p50, p99, offered = [], [], []
    for _ in range(p.reps):
        with Session(BUNDLE, engine.table, p.ring_bytes, [], duration_s=600,
                     use_daemon=use_daemon) as s:
            r = s.paced(feats["hit"], LATENCY_RATE_PER_S, p.latency_seconds,
                        LATENCY_INJECT_BATCH)
        if r["answered_of_checked"] != r["checked"] or r["dropped"]:
            raise RuntimeError(f"latency session: {r['answered_of_checked']} of {r['checked']}"
                               f" answered, {r['dropped']} dropped")
        if s.summary.get("latency_p50_us") is None:
            raise RuntimeError(f"{s.consumer_name} reported no latency: {s.summary}")
        p50.append(s.summary["latency_p50_us"])
        p99.append(s.summary["latency_p99_us"])
        offered.append(r["offered_per_s"])
        rss += [x for x in (s.rss_mb, s.summary.get("peak_rss_mb")) if x]
        info.setdefault("latency", []).append({"producer": r, "summary": s.summary})
    extra = {"offered_per_s": offered, "inject_batch": LATENCY_INJECT_BATCH,
             "consumer": s.consumer_name,
             "measured": "request ts_ns -> answer stored, by the consumer (CLOCK_MONOTONIC)"}
    out["latency_p50_us"] = figure(p50, "µs", **extra)
    out["latency_p99_us"] = figure(p99, "µs", **extra)
    # low rate: every request wakes the consumer and is decided alone
    variants = [("latency_1k", [])]
    if s.daemon:                    # the stand-in consumer has no --rt-priority
        variants.append(("latency_1k_rt", ["--rt-priority", str(LOW_RATE_RT_PRIORITY)]))
    for label, args in variants:
        low = _low_rate_sessions(p, engine.table, feats["miss"], args, use_daemon)
        info[label] = low
        rss += low.pop("rss")
    low = info["latency_1k"]
    extra = {"offered_per_s": low["offered_per_s"], "inject_batch": LOW_RATE_INJECT_BATCH,
             "traffic": "all misses (interpreter), one request per injector call",
             "consumer": low["consumer"], "measured": extra["measured"]}
    if "latency_1k_rt" in info:
        rt = info["latency_1k_rt"]
        extra[f"with_rt_priority_{LOW_RATE_RT_PRIORITY}"] = {"p50": rt["p50"], "p99": rt["p99"]}
    out["latency_1k_p50_us"] = figure(low["p50"], "µs", **extra)
    out["latency_1k_p99_us"] = figure(low["p99"], "µs", **extra)
    if rss:
        out["daemon_rss_mb"] = figure([max(rss)], "MB", consumer=s.consumer_name,
                                      how="peak RSS (VmHWM) over every pipeline session")
    else:
        out["daemon_rss_mb"] = missing("the consumer's peak RSS could not be read")
    return info


def _low_rate_sessions(p: Profile, table, features, args: list[str], use_daemon: bool
                       ) -> dict:
    """``p.reps`` sessions at LOW_RATE_PER_S, one request per injector call; per session the
    consumer's own p50/p99 of request ts_ns -> answer stored."""
    from .pipeline import Session

    got: dict = {"args": args, "inject_batch": LOW_RATE_INJECT_BATCH, "p50": [], "p99": [],
                 "offered_per_s": [], "reps": [], "rss": []}
    for _ in range(p.reps):
        with Session(BUNDLE, table, p.ring_bytes, args, duration_s=600,
                     use_daemon=use_daemon) as s:
            r = s.paced(features, LOW_RATE_PER_S, p.latency_1k_seconds, LOW_RATE_INJECT_BATCH)
        if r["answered_of_checked"] != r["checked"] or r["dropped"]:
            raise RuntimeError(f"low-rate session: {r['answered_of_checked']} of {r['checked']}"
                               f" answered, {r['dropped']} dropped")
        if s.summary.get("latency_p50_us") is None:
            raise RuntimeError(f"{s.consumer_name} reported no latency: {s.summary}")
        got["p50"].append(s.summary["latency_p50_us"])
        got["p99"].append(s.summary["latency_p99_us"])
        got["offered_per_s"].append(r["offered_per_s"])
        got["reps"].append({"producer": r, "summary": s.summary})
        got["rss"] += [x for x in (s.rss_mb, s.summary.get("peak_rss_mb")) if x]
    got["consumer"] = s.consumer_name
    return got


def _check_answers(kind: str, reps: list[dict]) -> None:
    for r in reps:
        if r["answered_of_checked"] != r["checked"] or r["wrong_of_last_batch"]:
            raise RuntimeError(f"{kind} pipeline: {r['answered_of_checked']} of {r['checked']}"
                               f" answered, {r['wrong_of_last_batch']} wrong")


def ratios(out: dict) -> None:
    tf = out.get("tf_savedmodel_us_per_decision", {}).get("median")
    pipe = out.get("pipeline_decisions_per_s", {}).get("median")
    ring = out.get("raw_ring_drain_per_s", {}).get("median")
    if tf and pipe:
        out["speedup_vs_tf"] = {"median": round(tf * 1e-6 * pipe, 1), "unit": "×",
                                "how": "TF µs per request × pipeline decisions/s"}
    else:
        out["speedup_vs_tf"] = missing("needs " + " and ".join(
            k for k, v in (("tf_savedmodel_us_per_decision", tf),
                           ("pipeline_decisions_per_s", pipe)) if not v))
    if ring and pipe:
        out["fraction_of_raw_ring"] = {"median": round(pipe / ring, 3), "unit": "",
                                       "how": "pipeline decisions/s / raw ring records/s"}
    else:
        out["fraction_of_raw_ring"] = missing("needs " + " and ".join(
            k for k, v in (("raw_ring_drain_per_s", ring),
                           ("pipeline_decisions_per_s", pipe)) if not v))


# ---- report ---------------------------------------------------------------------------------

def _fmt(x) -> str:
    if x is None:
        return "—"
    if isinstance(x, float) and abs(x) >= 1e5:
        return f"{x / 1e6:.2f} M"
    if isinstance(x, float) and abs(x) >= 1e4:
        return f"{x / 1e3:.0f} k"
    if isinstance(x, float):
        return f"{x:.3g}" if abs(x) < 100 else f"{x:.0f}"
    return str(x)


def _target(key: str, median, sub: str | None = None) -> str:
    if key not in TARGETS:
        return ""
    op, bound = TARGETS[key]
    if isinstance(bound, dict):                      # bounds per entry ("64 CPUs" -> "64")
        bound = bound.get((sub or "").split(" ")[0])
        if bound is None:
            return ""
    text = f"{op} {_fmt(float(bound))}"
    if median is None:
        return f"{text}: not measured"
    met = median >= bound if op == ">=" else median <= bound
    return f"{text}: {'met' if met else 'MISSED'}"


def table(out: dict) -> str:
    lines = ["| figure | median | min | max | unit | target |", "|---|---:|---:|---:|---|---|"]
    for key in KEYS:
        v = out[key]
        items = ([(key, None, v)] if "median" in v else
                 [(f"{key} ({b})", b, f) for b, f in v.items()])
        for name, sub, f in items:
            med = f.get("median")
            lines.append(f"| `{name}` | {_fmt(med)} | {_fmt(f.get('min'))} | {_fmt(f.get('max'))}"
                         f" | {f.get('unit', '') if med is not None else f.get('reason', '')}"
                         f" | {_target(key, med, sub)} |")
    return "\n".join(lines)


def performance_md(res: dict) -> str:
    m = res["machine"]
    pkgs = ", ".join(f"{k} {v}" for k, v in m["packages"].items())
    consumer = res["figures"].get("pipeline_decisions_per_s", {}).get("consumer", "—")
    return f"""## Performance

One `make bench` run ({res['profile']} profile, medians of {res['reps']} repetitions,
min/max beside them; {res['seconds']:.0f} s in all). Pipeline figures go through the
real consumer process (`{consumer}`): the injector puts every record on the ring, the
consumer decides and writes the answer back, and the kernel's own reader checks the
answers.

{table(res['figures'])}

Machine: {m['cpu_model']}, {m['cores']} cores, {m['memory_mb']} MB, Linux {m['kernel']},
Python {m['python']}; {pkgs}. Conditions: {res['conditions']}.

How each figure is taken:

* `tf_savedmodel_us_per_decision` — the default SavedModel through its `serving_default`
  signature, one request per call, in a child process (TensorFlow never shares a process
  with the TFLite runtime);
* `tflite_*` — the bundle's int8 model through the interpreter shim, one row per call and
  one full batch (the shim's largest bucket, {_batch_rows(res)} rows) per call, per backend;
* `engine_*` — `Engine.decide` (float rows) and `Engine.decide_wire` (ring records),
  batches of {res['profile_sizes']['engine_batch']}, all table hits or all misses (UNSURE cells and
  off-grid keys, answered by the interpreter);
* `kernel_lookup_ns_per_decision` — the BPF helper `mlsched_decide()` run by the injector
  under `bpf_prog_test_run`, its own clock over generated all-hit traffic;
* `raw_ring_drain_per_s` — injector in one thread, a C consumer that discards records in
  another: the ring buffer's ceiling on this machine;
* `pipeline_*` — records injected with the table bypassed, so each travels ring →
  consumer → engine → write-back; a repetition ends when the kernel reads the last answer;
* `latency_p50_us`, `latency_p99_us` — {LATENCY_RATE_PER_S // 1000} k requests/s offered in
  batches of {LATENCY_INJECT_BATCH}; request `ts_ns` → answer stored, as the consumer measures it;
* `latency_1k_*` — {LOW_RATE_PER_S} requests/s, one per injector call, all answered by the
  interpreter ({res['profile_sizes']['latency_1k_seconds']:g} s per repetition): every request wakes the consumer and
  is decided alone; the same sessions with `--rt-priority {LOW_RATE_RT_PRIORITY}` are in
  `results.json` beside the figure (`python -m bench.lowrate` splits the time);
* `daemon_rss_mb` — peak RSS (VmHWM) of the consumer process over the pipeline runs;
* `kernel_exact_fraction_*` — in-geometry requests (uniform, and a busy host: 30 % idle
  CPUs, loads skewed high) through the BPF helper with both table levels: the share it
  decided in the kernel with exactly the int8 interpreter's answer, per host size
  (the default model converted for that many CPUs);
* `kernel_lookup_p50/p99_ns` — one `mlsched_decide()` between two clock reads in the
  injector, uniform traffic with both levels, keys spread over the whole table
  (`clock_pair_ns` in results.json: the two reads alone, included);
  `kernel_lookup_one_state_*` the same with cpu and idle fixed (one host state, the rows
  a balancer asks about while the idle count holds);
* `table_kernel_bytes` — both table levels as the kernel holds them (one half of the
  double buffer), with level 1, level 2 and the conversion time beside them.

Rerun: `make bench` (a few minutes; root for the BPF parts). Figures land in
`bench/results.json`; `python -m bench.run --markdown FILE` writes this
section. On a shared machine run it as `nice -n -5 make bench`.
"""


def _batch_rows(res: dict) -> str:
    for f in res["figures"]["tflite_batched_us_per_decision"].values():
        if isinstance(f, dict) and f.get("rows_per_call"):
            return str(f["rows_per_call"])
    return "?"


# ---- main -----------------------------------------------------------------------------------

KERNEL_KEYS = ("kernel_lookup_ns_per_decision", "raw_ring_drain_per_s")
PIPE_KEYS = ("pipeline_decisions_per_s", "pipeline_miss_decisions_per_s", "latency_p50_us",
             "latency_p99_us", "latency_1k_p50_us", "latency_1k_p99_us", "daemon_rss_mb")
ENGINE_KEYS = ("engine_table_ns_per_decision", "engine_miss_ns_per_decision",
               "engine_wire_table_ns_per_decision", "engine_wire_miss_ns_per_decision")
LEVEL_KEYS = ("kernel_exact_fraction_uniform", "kernel_exact_fraction_busy",
              "kernel_lookup_p50_ns", "kernel_lookup_p99_ns", "kernel_lookup_one_state_p50_ns",
              "kernel_lookup_one_state_p99_ns", "table_kernel_bytes")


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, Profile]:
    ap = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", choices=sorted(PROFILES), default="full")
    ap.add_argument("--reps", type=int, help="repetitions per figure (default: the profile's)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--markdown", type=Path, help="also write the README section here")
    ap.add_argument("--no-daemon", action="store_true",
                    help="use the stand-in consumer even when `mlsched-lite run` exists")
    ap.add_argument("--conditions", default="", help="free text: what else ran on the host")
    args = ap.parse_args(argv)
    p = PROFILES[args.profile]
    if args.reps:
        p = Profile(**{**p.__dict__, "reps": args.reps})
    return args, p


class Steps:
    """The figures so far (``out``), each step's details, and ``attempt``: one step run so
    that its failure becomes a reason beside its keys and never hides the other steps."""

    def __init__(self):
        self.out: dict = {}
        self.details: dict = {}

    def attempt(self, name: str, keys: tuple[str, ...], fn) -> None:
        log(f"{name} ...")
        t0 = time.perf_counter()
        try:
            got = fn()
            if isinstance(got, dict):
                self.details[name] = got
        except Exception as exc:  # one failing path must not hide the others
            reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            log(f"{name} failed: {reason}")
            if os.environ.get("MLSCHED_BENCH_DEBUG"):
                traceback.print_exc()
            for k in keys:
                self.out.setdefault(k, missing(f"{name} failed: {reason}"))
        log(f"{name} done in {time.perf_counter() - t0:.1f} s")

    def unavailable(self, keys: tuple[str, ...], reason: str) -> None:
        for k in keys:
            self.out[k] = missing(reason)


def run_steps(p: Profile, args: argparse.Namespace, steps: Steps) -> None:
    """Every step in order: TensorFlow, TFLite, the engine, then (with BPF) the kernel, the
    pipeline and the table levels."""
    from mlsched.runtime.bundle import load_bundle
    from mlsched.runtime.engine import Engine
    from mlsched.runtime.wire import REQUEST_DTYPE

    bundle = load_bundle(BUNDLE)
    engine = Engine(bundle)
    out = steps.out
    steps.attempt("tensorflow", ("tf_savedmodel_us_per_decision",), lambda: step_tf(p, out))
    steps.attempt("tflite", ("tflite_single_us_per_decision", "tflite_batched_us_per_decision"),
                  lambda: step_tflite(p, bundle, out))
    steps.attempt("engine", ENGINE_KEYS, lambda: step_engine(p, engine, REQUEST_DTYPE, out))
    bpf_reason = _bpf_reason()
    if bpf_reason is None:
        steps.attempt("kernel", KERNEL_KEYS, lambda: step_kernel(p, engine, out))
        steps.attempt("pipeline", PIPE_KEYS,
                      lambda: step_pipeline(p, engine, out, not args.no_daemon))
        steps.attempt("levels", LEVEL_KEYS, lambda: step_levels(p, out))
    else:
        steps.unavailable(KERNEL_KEYS + PIPE_KEYS + LEVEL_KEYS, f"BPF unavailable: {bpf_reason}")
    ratios(out)


def result(args: argparse.Namespace, p: Profile, steps: Steps, seconds: float,
           load_before: list[float]) -> dict:
    """What results.json holds: the run's settings, the machine, every figure."""
    figures = {k: steps.out.get(k, missing("not measured")) for k in KEYS}
    conditions = args.conditions or "as found"
    return {
        "schema": 1,
        "profile": args.profile,
        "reps": p.reps,
        "profile_sizes": p.__dict__,
        "seconds": round(seconds, 1),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine(),
        "load_average_before_after": [load_before, load_average()],
        "conditions": f"{conditions}; nice {os.nice(0)}",
        "targets": {k: f"{op} {b}" for k, (op, b) in TARGETS.items()},
        **{k: figures[k].get("median") if "median" in figures[k] else
           {b: f.get("median") for b, f in figures[k].items()} for k in KEYS},
        "figures": figures,
        "details": steps.details,
    }


def main(argv: list[str] | None = None) -> int:
    args, p = parse_args(argv)
    start, load_before = time.perf_counter(), load_average()
    steps = Steps()
    run_steps(p, args, steps)
    res = result(args, p, steps, time.perf_counter() - start, load_before)
    write_json_atomic(args.out, res)
    print(table(res["figures"]))
    print(f"\n{res['machine']['cpu_model']}, {res['machine']['cores']} cores, Linux "
          f"{res['machine']['kernel']}; {res['seconds']:.0f} s; written to {args.out}")
    if args.markdown:
        write_atomic(args.markdown, performance_md(res))
    return 0


def _bpf_reason() -> str | None:
    try:
        from mlsched.runtime import kernel
    except ImportError as exc:
        return str(exc)
    return kernel.unavailable_reason()


if __name__ == "__main__":
    sys.exit(main())
