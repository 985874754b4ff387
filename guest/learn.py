"""Record in the guest, train both kinds of model on the host: the first half of `make guest-learn`.

    python guest/learn.py --cache OUT --models ../models/learned [--runs N] [--workloads ...]

1. Boots the guest once in mode=record (run.sh), with the bench's workload sizes: every
   workload under EEVDF with mlsched-lite's collector recording what EEVDF did, then
   under scx_mlsched answering every balancer question with a coin and logging what
   followed. The two files come back as "@mlsched file" records and are kept under
   OUT/learn/records/ (imitate.csv, explore.csv). The recording runs themselves are
   summarized as the bench's are (exploring against EEVDF, paired by run number, with
   intervals) into OUT/learn/recording.json and printed: what exploring cost. The two
   passes run one after the other (the recorder must not see the exploring runs), so
   the pairs are not interleaved as the bench's rounds are.
2. Trains `mlsched-train --labels imitate` on the first and `--labels outcome` on the
   second into MODELS/imitate and MODELS/outcome (SavedModel, report.json, report.png).

The Makefile then converts the models for the guest's CPUs, puts them in the image as
bundles imitate and outcome, and runs the bench with configurations model-imitate and
model-outcome beside the others.
"""

from __future__ import annotations

import argparse
import base64
import gzip
import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path


def _guest_bench():
    """guest/bench.py, beside this file (the repository's bench/ package has the same name)."""
    if "guest_bench" in sys.modules:
        return sys.modules["guest_bench"]
    spec = importlib.util.spec_from_file_location("guest_bench",
                                                  Path(__file__).with_name("bench.py"))
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod            # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


bench = _guest_bench()

#: What each kind of model learns from: (file sent by run.sh, mlsched-train --labels).
KINDS = {"imitate": ("imitate", "imitate"), "outcome": ("explore", "outcome")}
#: Per workload and run: one EEVDF run and one exploring run.
RUNS_PER_PASS = 2


def records_from(boot: bench.Boot, out: Path) -> dict[str, Path]:
    """The files the guest sent, written under out; GuestError if the boot went wrong."""
    errors = [r for k, r in boot.records if k == "error"]
    if errors:
        raise bench.GuestError(f"guest: {errors[0].get('message')}")
    if boot.timed_out or not any(k == "done" for k, _ in boot.records):
        raise bench.GuestError(f"guest did not finish (timed out: {boot.timed_out}); "
                               f"console tail: {boot.console[-600:]!r}")
    failed = [r for k, r in boot.records if k == "run" and r.get("failed")]
    if failed:
        print(f"learn.py: {len(failed)} recording runs failed "
              f"({', '.join(sorted({r['workload'] for r in failed}))}); kept the others",
              file=sys.stderr)
    out.mkdir(parents=True, exist_ok=True)
    files = {}
    for kind, rec in boot.records:
        if kind != "file":
            continue
        path = out / f"{rec['name']}.csv"
        bench.atomic_write(path, gzip.decompress(base64.b64decode(rec["gzip_base64"])).decode())
        files[rec["name"]] = path
        print(f"learn.py: {path}: {rec['rows']} rows")
    missing = {f for f, _ in KINDS.values()} - files.keys()
    if missing:
        raise bench.GuestError(f"guest sent no {', '.join(sorted(missing))} records")
    return files


def recording_summary(b: bench.Boot, params: dict) -> dict:
    """The recording boot's runs as the bench summarizes its own: the exploring pass
    against the EEVDF pass, paired by run number."""
    return bench.summarize(b, {**params, "seed": None, "warmup": 0})


def recording_table(summary: dict) -> str:
    """Exploring against EEVDF per workload: speed and wake-up p99 with their intervals."""
    rows = ["| workload | runs | EEVDF (median) | exploring: speed [95 % interval] | "
            "exploring: wake-up p99 [95 % interval] |", "|---|---:|---:|---:|---:|"]
    for wl, w in summary["workloads"].items():
        e, x = w["configs"].get("eevdf", {}), w["configs"].get("explore", {})
        n = (x.get("vs_base") or {}).get("n", 0)
        rows.append(f"| {wl} | {n} | {bench.report.fmt_value(e.get('median'), w['metric']['unit'])}"
                    f" {w['metric']['unit']} | {bench.report.ci_cell(x.get('vs_base'))} | "
                    f"{bench.report.ci_cell(x.get('wake_p99_vs_base'))} |")
    return "\n".join(rows)


def train(files: dict[str, Path], models: Path, epochs: int | None,
          move_cost: Path | None = None) -> None:
    """mlsched-train for each kind, into models/KIND (replaced). With ``move_cost`` (this
    host's measured curve) the outcome labels charge a move what it measured, not the
    kernel's flat sched_migration_cost."""
    models.mkdir(parents=True, exist_ok=True)
    for name, (source, labels) in KINDS.items():
        cmd = [sys.executable, "-m", "mlsched.train.learn", str(files[source]),
               "-o", str(models / name), "--labels", labels, "--force"]
        if epochs:
            cmd += ["--epochs", str(epochs)]
        if move_cost and labels == "outcome":
            cmd += ["--move-cost", str(move_cost)]
        print("learn.py: " + " ".join(cmd[2:]), flush=True)
        subprocess.run(cmd, check=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, required=True, help="guest build dir (make kernel)")
    ap.add_argument("--models", type=Path, required=True, help="where the models go")
    ap.add_argument("--runs", type=int, default=15, help="runs per workload and pass")
    ap.add_argument("--workloads", default=",".join(bench.WORKLOADS))
    ap.add_argument("--epochs", type=int, help="mlsched-train --epochs")
    ap.add_argument("--records", type=Path,
                    help="train on IMITATE.csv and EXPLORE.csv in this directory, no boot")
    ap.add_argument("--console", type=Path, help="keep the guest console log here")
    ap.add_argument("--move-cost", type=Path,
                    default=Path(__file__).resolve().parent.parent / "bench" / "movecost.json",
                    help="the outcome labels charge a move this host's measured cost "
                         "(make movecost; default %(default)s, when present)")
    bench.add_size_arguments(ap)
    args = ap.parse_args(argv)
    workloads = args.workloads.split(",")
    if args.runs < 1 or not set(workloads) <= set(bench.KNOWN_WORKLOADS):
        print(f"learn.py: --runs must be >= 1 and --workloads a subset of "
              f"{','.join(bench.KNOWN_WORKLOADS)}", file=sys.stderr)
        return 2
    try:
        if args.records:
            files = {f: args.records / f"{f}.csv" for f, _ in KINDS.values()}
            absent = [str(p) for p in files.values() if not p.is_file()]
            if absent:
                print(f"learn.py: no {', '.join(absent)}", file=sys.stderr)
                return 2
        else:
            params = {"mode": "record", "runs": args.runs, "workloads": ",".join(workloads),
                      "configs": "eevdf", **bench.sizes_of(args)}
            # the recorder is one more mlsched-lite to start
            timeout = (bench.boot_timeout(workloads, ["eevdf"] * RUNS_PER_PASS, args.runs)
                       + bench.DAEMON_START_S)
            t0 = time.monotonic()
            b = bench.boot(args.cache, params, timeout, args.console)
            print(f"learn.py: recording boot {time.monotonic() - t0:.0f} s")
            files = records_from(b, args.cache / "learn" / "records")
            summary = recording_summary(b, params)
            bench.atomic_write(args.cache / "learn" / "recording.json",
                               json.dumps(summary, indent=1) + "\n")
            print(recording_table(summary))
        train(files, args.models, args.epochs,
              args.move_cost if args.move_cost and args.move_cost.exists() else None)
    except bench.GuestError as exc:
        print(f"learn.py: {exc}", file=sys.stderr)
        return 1
    except subprocess.CalledProcessError as exc:
        print(f"learn.py: {exc.cmd[2]} failed ({exc.returncode})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
