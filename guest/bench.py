"""Boot the sched_ext guest under qemu and compare schedulers on one parallel workload.

    python guest/bench.py --cache DIR --out bench/guest.json --readme guest/README.md

1. Boot ``DIR/kernel-dir``'s bzImage with ``DIR/initramfs.cpio`` (``make kernel``)
   under qemu-system-x86_64, TCG (no KVM), 4 vCPUs in 2 sockets. The guest's /init
   runs guest/run.sh: mlsched-lite serves the pinned maps; for each run and each
   configuration (EEVDF, scx_mlsched with the model from both table levels, the model
   with the kernel's level 1 only, always-STAY, always-MIGRATE;
   order rotated per run) it attaches the scheduler, runs mlsched-workload, detaches.
2. Results arrive on the guest's second serial port as ``@mlsched KIND JSON``
   records; the console (kernel log, script progress) goes to a log file.
3. Medians per configuration over the runs go to ``--out`` (written beside it and
   renamed) and, as a markdown table, between the markers in ``--readme``.

All runs of one comparison share one boot: TCG timings drift between boots, so
only numbers from the same boot are compared. ``boot()`` is what tests/system/test_guest.py
uses as well.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

VCPUS = 4                # guest/Makefile's GUEST_CPUS: the bundle is converted for them
SOCKETS = 2
MEMORY_MB = 2048
CONFIGS = ("eevdf", "model", "model1", "stay", "migrate")
README_BEGIN = "<!-- guest-bench:begin -->"
README_END = "<!-- guest-bench:end -->"
RECORD = re.compile(r"^@mlsched (\w+) ", re.M)


class GuestError(RuntimeError):
    pass


@dataclass
class Boot:
    records: list[tuple[str, dict]] = field(default_factory=list)
    console: str = ""
    returncode: int = 0
    seconds: float = 0.0
    timed_out: bool = False

    def of(self, kind: str) -> list[dict]:
        return [r for k, r in self.records if k == kind]

    @property
    def powered_off(self) -> bool:
        """qemu ended by itself after the guest's power-off (not a timeout, not a panic)."""
        return (not self.timed_out and self.returncode == 0
                and "reboot: Power down" in self.console)


def parse_records(text: str) -> list[tuple[str, dict]]:
    """``@mlsched KIND JSON`` records; a JSON value may span lines."""
    text = text.replace("\r", "")
    starts = list(RECORD.finditer(text))
    out = []
    for i, m in enumerate(starts):
        end = starts[i + 1].start() if i + 1 < len(starts) else len(text)
        body = text[m.end():end].strip()
        try:
            out.append((m.group(1), json.loads(body)))
        except json.JSONDecodeError as exc:
            raise GuestError(f"guest sent a malformed {m.group(1)} record ({exc}): "
                             f"{body[:200]!r}") from None
    return out


def qemu_binary() -> str:
    q = shutil.which("qemu-system-x86_64")
    if not q:
        raise GuestError("qemu-system-x86_64 not found: apt-get install qemu-system-x86")
    return q


def boot(cache: Path, params: dict[str, object], timeout: float,
         console_log: Path | None = None) -> Boot:
    """Boot the guest once with ``mlsched.KEY=VALUE`` for every param; wait for power-off."""
    cache = Path(cache)
    try:
        kdir = Path((cache / "kernel-dir").read_text().strip())
    except OSError:
        raise GuestError(f"{cache}/kernel-dir missing: run `make guest-kernel`") from None
    kernel, initrd = kdir / "bzImage", cache / "initramfs.cpio"
    for f in (kernel, initrd):
        if not f.is_file():
            raise GuestError(f"{f} missing: run `make guest-kernel`")
    append = " ".join(["console=ttyS0", "panic=-1", "loglevel=4"] +
                      [f"mlsched.{k}={v}" for k, v in params.items()])
    with tempfile.TemporaryDirectory(prefix="mlsched-guest.") as tmp:
        con, res = Path(tmp) / "console.log", Path(tmp) / "results.log"
        cmd = ["timeout", "--kill-after=10", str(int(timeout)), qemu_binary(),
               "-machine", "pc", "-accel", "tcg,thread=multi", "-cpu", "max",
               "-smp", f"{VCPUS},sockets={SOCKETS},cores={VCPUS // SOCKETS},threads=1",
               "-m", str(MEMORY_MB), "-nodefaults", "-display", "none", "-no-reboot",
               "-kernel", str(kernel), "-initrd", str(initrd), "-append", append,
               "-serial", f"file:{con}", "-serial", f"file:{res}"]
        t0 = time.monotonic()
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True)
        b = Boot(returncode=proc.returncode, seconds=time.monotonic() - t0,
                 timed_out=proc.returncode in (124, 137))
        b.console = con.read_text(errors="replace") if con.exists() else ""
        if console_log:
            console_log.write_text(b.console)
        if proc.returncode not in (0, 124, 137):
            raise GuestError(f"qemu exited {proc.returncode}: {proc.stderr.strip()[-400:]}")
        b.records = parse_records(res.read_text(errors="replace") if res.exists() else "")
    return b


# ---- summary ---------------------------------------------------------------------------

def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summarize(b: Boot, params: dict) -> dict:
    runs = b.of("run")
    boot_rec = (b.of("boot") or [{}])[0]
    ready = (b.of("ready") or [{}])[0]
    configs = {}
    for cfg in dict.fromkeys(r["config"] for r in runs):
        mine = [r for r in runs if r["config"] == cfg]
        scx = [r["scx"] for r in mine if r.get("scx")]
        entry = {
            "runs": len(mine),
            "makespan_s": [r["workload"]["makespan_s"] for r in mine],
            "migrations": [r["workload"]["migrations"] for r in mine],
            "context_switches": [r["workload"]["context_switches"] for r in mine],
            "median_makespan_s": _median(r["workload"]["makespan_s"] for r in mine),
            "median_migrations": _median(r["workload"]["migrations"] for r in mine),
            "median_context_switches": _median(r["workload"]["context_switches"] for r in mine),
            "ops": mine[0].get("ops"),
        }
        if scx:
            entry["scheduler"] = {k: _median(s["sched"][k] for s in scx)
                                  for k in scx[0]["sched"]}
            entry["helper"] = {k: _median(s["helper"][k] for s in scx) for k in scx[0]["helper"]}
            entry["exit"] = sorted({s["exit"]["reason"] for s in scx})
        configs[cfg] = entry
    base = configs.get("eevdf", {}).get("median_makespan_s")
    for entry in configs.values():
        m = entry["median_makespan_s"]
        entry["makespan_vs_eevdf"] = round(m / base - 1, 4) if base and m else None
    return {
        "generated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "guest": {"vcpus": VCPUS, "sockets": SOCKETS, "memory_mb": MEMORY_MB,
                  "accel": "tcg", "kernel": boot_rec.get("kernel"),
                  "boot_to_init_s": boot_rec.get("uptime_s"),
                  "daemon_ready_s": ready.get("uptime_s"),
                  "wall_s": round(b.seconds, 1)},
        "workload": {k: params[k] for k in ("workers", "units", "spin", "sleep")},
        "runs_per_config": int(params["runs"]),
        "configs": configs,
        "daemon": (b.of("daemon") or [None])[0],
    }


def table(summary: dict) -> str:
    names = {"eevdf": "EEVDF (kernel default)", "model": "scx_mlsched, model",
             "model1": "scx_mlsched, model, kernel level 1 only",
             "stay": "scx_mlsched, always STAY", "migrate": "scx_mlsched, always MIGRATE"}
    rows = ["| scheduler | makespan (s) | vs EEVDF | CPU migrations | context switches |"
            " balancer moves | answers: level 1 / level 2 / ring (answered in time) |",
            "|---|---:|---:|---:|---:|---:|---|"]
    for cfg, e in summary["configs"].items():
        s = e.get("scheduler")
        moves = f"{s['moved_wake'] + s['moved_pull']:.0f}" if s else "–"
        answers = (f"{s['from_table'] - s.get('from_level2', 0):.0f} /"
                   f" {s.get('from_level2', 0):.0f} / {s['sent']:.0f} ({s['from_daemon']:.0f})"
                   if s and cfg.startswith("model") else "–")
        vs = e["makespan_vs_eevdf"]
        rows.append(f"| {names.get(cfg, cfg)} | {e['median_makespan_s']:.2f} | "
                    f"{'–' if vs is None or cfg == 'eevdf' else f'{vs:+.1%}'} | "
                    f"{e['median_migrations']:.0f} | {e['median_context_switches']:.0f} | "
                    f"{moves} | {answers} |")
    w = summary["workload"]
    g = summary["guest"]
    rows.append("")
    rows.append(f"Medians of {summary['runs_per_config']} runs per scheduler, all in one boot "
                f"(qemu TCG, {g['vcpus']} vCPUs in {g['sockets']} sockets = 2 domains, kernel "
                f"{g['kernel']}); mlsched-workload -w {w['workers']} -u {w['units']} "
                f"-c {w['spin']} -s {w['sleep']}. Generated {summary['generated']} by "
                "`make guest-bench`.")
    return "\n".join(rows)


def atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def update_readme(path: Path, md: str) -> None:
    text = path.read_text() if path.exists() else ""
    if README_BEGIN in text and README_END in text:
        head, rest = text.split(README_BEGIN, 1)
        tail = rest.split(README_END, 1)[1]
        text = f"{head}{README_BEGIN}\n{md}\n{README_END}{tail}"
    else:
        text = f"{text.rstrip()}\n\n{README_BEGIN}\n{md}\n{README_END}\n".lstrip()
    atomic_write(path, text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", type=Path, required=True, help="guest build dir (make kernel)")
    ap.add_argument("--out", type=Path, required=True, help="JSON summary to write")
    ap.add_argument("--readme", type=Path, help="markdown file whose table to replace")
    ap.add_argument("--runs", type=int, default=5, help="runs per configuration (default 5)")
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--units", type=int, default=300)
    ap.add_argument("--spin", type=int, default=1000000)
    ap.add_argument("--sleep", type=int, default=500, help="µs blocked per unit")
    ap.add_argument("--timeout", type=float, default=2400, help="seconds for the whole boot")
    ap.add_argument("--console", type=Path, help="keep the guest console log here")
    args = ap.parse_args(argv)
    if args.runs < 1 or not set(args.configs.split(",")) <= set(CONFIGS):
        print(f"bench.py: --runs must be >= 1 and --configs a subset of {','.join(CONFIGS)}",
              file=sys.stderr)
        return 2
    params = {"mode": "bench", "runs": args.runs, "configs": args.configs,
              "workers": args.workers, "units": args.units, "spin": args.spin,
              "sleep": args.sleep}
    try:
        b = boot(args.cache, params, args.timeout, args.console)
    except GuestError as exc:
        print(f"bench.py: {exc}", file=sys.stderr)
        return 1
    errors = b.of("error")
    expected = args.runs * len(args.configs.split(","))
    if errors or len(b.of("run")) != expected or not b.powered_off:
        why = (errors[0]["message"] if errors else
               f"{len(b.of('run'))} of {expected} runs reported"
               f"{', timed out' if b.timed_out else ''}"
               f"{'' if b.powered_off else ', no clean power-off'}")
        print(f"bench.py: guest run failed: {why}; console tail:\n" +
              "\n".join(b.console.splitlines()[-25:]), file=sys.stderr)
        return 1
    summary = summarize(b, params)
    atomic_write(args.out, json.dumps(summary, indent=1) + "\n")
    md = table(summary)
    if args.readme:
        update_readme(args.readme, md)
    print(md)
    print(f"bench.py: wrote {args.out}; guest wall time {b.seconds:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
