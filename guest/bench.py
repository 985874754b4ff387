"""Boot the sched_ext guest under qemu and compare schedulers on real workloads.

    python guest/bench.py --cache DIR --out bench/guest.json --readme guest/README.md \
        --plot bench/guest.png [--workloads LIST] [--configs LIST] [--runs N]

1. Boot ``DIR/kernel-dir``'s bzImage with ``DIR/initramfs.cpio`` (``make kernel``)
   under qemu-system-x86_64, TCG (no KVM), 4 vCPUs in 2 sockets. The guest's /init
   runs guest/run.sh: one mlsched-lite per bundle the configurations use serves its
   pinned maps; for each workload (the synthetic mix, hackbench with threads or
   processes, a stress-ng mix, a parallel tcc build), each run and each configuration
   (EEVDF, the kernel's scx_simple and scx_central, scx_mlsched with the model from
   both table levels or level 1 only, always-STAY, always-MIGRATE; order rotated per
   run) it attaches the scheduler, runs the workload under mlsched-measure, detaches.
2. Results arrive on the guest's second serial port as ``@mlsched KIND JSON``
   records; the console (kernel log, script progress) goes to a log file.
3. Per workload and configuration: the median and range of the result (seconds, or
   stress-ng's bogo-ops/s), CPU migrations, context switches, scx_mlsched's
   cross-domain moves and which level answered. They go to ``--out`` (written beside
   it and renamed), as markdown tables between the markers in ``--readme``, and as a
   plot of each result relative to EEVDF's to ``--plot``.

All runs of one comparison share one boot: TCG timings drift between boots, so
only numbers from the same boot are compared. ``boot()`` is what tests/system/test_guest.py
uses as well.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from mlsched.runtime.files import atomic_path, write_atomic

VCPUS = 4                # guest/Makefile's GUEST_CPUS: the bundle is converted for them
SOCKETS = 2
MEMORY_MB = 2048
CONFIGS = ("eevdf", "simple", "model", "model1", "stay", "migrate")
#: Every fixed configuration run.sh knows; model-NAME (bundle NAME) comes on top.
KNOWN_CONFIGS = CONFIGS + ("central", "eevdf2")
CONFIG_NAMES = {"eevdf": "EEVDF (kernel default)",
                "eevdf2": "EEVDF on 2 of the 4 vCPUs (taskset)", "simple": "scx_simple (kernel example)",
                "central": "scx_central (kernel example)", "model": "scx_mlsched, model",
                "model1": "scx_mlsched, model, kernel level 1 only",
                "stay": "scx_mlsched, always STAY", "migrate": "scx_mlsched, always MIGRATE",
                "model-imitate": "scx_mlsched, learned: imitate EEVDF",
                "model-outcome": "scx_mlsched, learned: outcomes"}
WORKLOADS = ("synthetic", "hackbench-t2", "hackbench-t4", "hackbench-p2", "hackbench-p4",
             "stressng", "build")
#: Rough seconds one run takes under TCG on a 2-core host, attach and detach included;
#: the boot's time limit is their sum over the plan, times a margin.
RUN_ESTIMATE_S = {"synthetic": 12, "hackbench-t2": 10, "hackbench-t4": 15, "hackbench-p2": 10,
                  "hackbench-p4": 15, "stressng": 20, "build": 150}
BOOT_BASE_S = 120
DAEMON_START_S = 200
TIMEOUT_MARGIN = 2.0
#: What regenerates a table, and the README markers it goes between, by guest CPUs.
MAKE_TARGET = {4: "guest-bench", 2: "guest-bench-2vcpu"}
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
         console_log: Path | None = None, vcpus: int = VCPUS) -> Boot:
    """Boot the guest once with ``mlsched.KEY=VALUE`` for every param; wait for power-off.
    ``vcpus`` are split evenly over the SOCKETS (one domain each)."""
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
               "-smp", f"{vcpus},sockets={SOCKETS},cores={vcpus // SOCKETS},threads=1",
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

@dataclass(frozen=True)
class Metric:
    """A workload's result: where it is in a run record, its unit, which way is better."""
    label: str
    unit: str
    higher_is_better: bool


METRICS = {"synthetic": Metric("makespan", "s", False),
           "hackbench": Metric("hackbench time", "s", False),
           "stressng": Metric("bogo-ops/s (geometric mean of stressors)", "ops/s", True),
           "build": Metric("wall time", "s", False)}


def metric_of(workload: str) -> Metric:
    return METRICS[workload.split("-")[0]]


def result_value(run: dict) -> float | None:
    """The result of one run record: the number its workload's Metric names."""
    wl, res = run["workload"], run.get("result") or {}
    kind = wl.split("-")[0]
    if kind == "synthetic":
        return res.get("makespan_s")
    if kind == "hackbench":
        return res.get("time_s")
    if kind == "stressng":
        rates = [s["bogo_ops"] / s["wall_s"] for s in res.get("stressors", {}).values()
                 if s.get("wall_s")]
        return math.exp(statistics.fmean(map(math.log, rates))) if rates else None
    if kind == "build":
        return run["measure"]["wall_s"]
    raise ValueError(f"unknown workload {wl}")


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _speed(value: float | None, base: float | None, metric: Metric) -> float | None:
    """How much faster than ``base`` (1.0 = same; > 1 better), whichever way the metric goes."""
    if not value or not base:
        return None
    return value / base if metric.higher_is_better else base / value


def cross_domain_moves(measure: dict, domains: list[list[int]] | None) -> int | None:
    """Moves of the workload's tasks between CPUs of different domains, from
    mlsched-measure's matrix (None without the matrix or the domains)."""
    moves = measure.get("moves")
    if moves is None or not domains:
        return None
    dom = {cpu: d for d, cpus in enumerate(domains) for cpu in cpus}
    return sum(n for src, row in enumerate(moves) for dst, n in enumerate(row)
               if dom.get(src) != dom.get(dst))


def summarize_cell(mine: list[dict], domains: list[list[int]] | None = None) -> dict:
    """Medians and ranges of one workload under one configuration over its runs."""
    ok = [r for r in mine if not r.get("failed")]
    cross = [cross_domain_moves(r["measure"], domains) for r in ok]
    values = [result_value(r) for r in ok]
    values = [v for v in values if v is not None]
    entry = {
        "runs": len(mine), "failed": len(mine) - len(ok),
        "result": values,
        "median": _median(values),
        "min": min(values) if values else None, "max": max(values) if values else None,
        "migrations": [r["measure"]["migrations"] for r in ok],
        "context_switches": [r["measure"]["context_switches"] for r in ok],
        "median_migrations": _median(r["measure"]["migrations"] for r in ok),
        "median_context_switches": _median(r["measure"]["context_switches"] for r in ok),
        "cross_domain_moves": cross,
        "median_cross_domain_moves": _median(cross),
        "moves_missed": sum(r["measure"].get("moves_missed", 0) for r in ok),
        "ops": mine[0].get("ops"),
    }
    scx = [r["scx"] for r in ok if r.get("scx")]
    if scx and "sched" in scx[0]:          # scx_mlsched's report
        entry["scheduler"] = {k: _median(s["sched"][k] for s in scx) for k in scx[0]["sched"]}
        entry["helper"] = {k: _median(s["helper"][k] for s in scx) for k in scx[0]["helper"]}
        entry["exit"] = sorted({s["exit"]["reason"] for s in scx})
    elif scx:                              # an example scheduler's last stats line
        entry["peer_stats"] = {k: _median(s.get(k) for s in scx) for k in scx[0]}
    return entry


def summarize(b: Boot, params: dict) -> dict:
    runs = b.of("run")
    boot_rec = (b.of("boot") or [{}])[0]
    ready = (b.of("ready") or [{}])[0]
    domains = None
    if boot_rec.get("domains"):
        from mlsched.runtime.topology import parse_domains

        domains = parse_domains(boot_rec["domains"])
    workloads: dict[str, dict] = {}
    for wl in dict.fromkeys(r["workload"] for r in runs):
        metric = metric_of(wl)
        cells = {}
        for cfg in dict.fromkeys(r["config"] for r in runs if r["workload"] == wl):
            cells[cfg] = summarize_cell([r for r in runs
                                         if r["workload"] == wl and r["config"] == cfg],
                                        domains)
        base = cells.get("eevdf", {}).get("median")
        for e in cells.values():
            speeds = [_speed(v, base, metric) for v in e["result"]]
            e["speed_vs_eevdf"] = _speed(e["median"], base, metric)
            e["speed_vs_eevdf_range"] = ([min(speeds), max(speeds)]
                                         if speeds and None not in speeds else None)
        workloads[wl] = {"metric": {"label": metric.label, "unit": metric.unit,
                                    "higher_is_better": metric.higher_is_better},
                         "configs": cells}
    return {
        "generated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "guest": {"vcpus": boot_rec.get("cpus", VCPUS), "sockets": SOCKETS,
                  "memory_mb": MEMORY_MB,
                  "accel": "tcg", "kernel": boot_rec.get("kernel"),
                  "domains": boot_rec.get("domains"),
                  "boot_to_init_s": boot_rec.get("uptime_s"),
                  "daemon_ready_s": ready.get("uptime_s"),
                  "wall_s": round(b.seconds, 1)},
        "params": params,
        "runs_per_config": int(params["runs"]),
        "workloads": workloads,
        "daemons": b.of("daemon"),
    }


def _fmt(v: float | None, unit: str) -> str:
    if v is None:
        return "–"
    return f"{v:.0f}" if unit == "ops/s" else f"{v:.2f}"


def _pct(speed: float | None) -> str:
    return "–" if speed is None else f"{speed - 1:+.1%}"


def table(summary: dict) -> str:
    """Markdown: speed vs EEVDF per workload and configuration, then the details."""
    wls = summary["workloads"]
    cfgs = list(dict.fromkeys(c for w in wls.values() for c in w["configs"]))
    others = [c for c in cfgs if c != "eevdf"]
    rows = ["| workload | result | EEVDF | " + " | ".join(CONFIG_NAMES.get(c, c) for c in others)
            + " |", "|---|---|---:|" + "---:|" * len(others)]
    for wl, w in wls.items():
        m = w["metric"]
        eevdf = w["configs"].get("eevdf", {}).get("median")
        rows.append(f"| {wl} | {m['label']} ({m['unit']}) | {_fmt(eevdf, m['unit'])} | "
                    + " | ".join(_pct(w["configs"].get(c, {}).get("speed_vs_eevdf"))
                                 for c in others) + " |")
    rows += ["", "Speed relative to EEVDF (medians; + = faster, or more bogo-ops/s)."
             " Per scheduler, median [min–max] over the runs:", "",
             "| workload | scheduler | result [min–max] | CPU migrations | cross-domain moves |"
             " context switches | balancer moves | answers: level 1 / level 2 / ring (in time) |"
             " failed |",
             "|---|---|---|---:|---:|---:|---:|---|---:|"]
    for wl, w in wls.items():
        unit = w["metric"]["unit"]
        for cfg, e in w["configs"].items():
            s = e.get("scheduler")
            moves = f"{s['moved_wake'] + s['moved_pull']:.0f}" if s else "–"
            answers = (f"{s['from_table'] - s.get('from_level2', 0):.0f} /"
                       f" {s.get('from_level2', 0):.0f} / {s['sent']:.0f}"
                       f" ({s['from_daemon']:.0f})" if s and cfg.startswith("model") else "–")
            res = (f"{_fmt(e['median'], unit)} [{_fmt(e['min'], unit)}–{_fmt(e['max'], unit)}]"
                   if e["median"] is not None else "–")
            counts = (e["median_migrations"], e.get("median_cross_domain_moves"),
                      e["median_context_switches"])
            rows.append(f"| {wl} | {CONFIG_NAMES.get(cfg, cfg)} | {res} | "
                        + " | ".join("–" if v is None else f"{v:.0f}" for v in counts)
                        + f" | {moves} | {answers} | {e['failed']} |")
    g, p = summary["guest"], summary["params"]
    rows.append("")
    rows.append(f"{summary['runs_per_config']} runs per workload and scheduler, all in one boot "
                f"(qemu TCG, {g['vcpus']} vCPUs in {g['sockets']} sockets = 2 domains, kernel "
                f"{g['kernel']}, guest wall time {g['wall_s']:.0f} s). synthetic: mlsched-workload"
                f" -w {p['workers']} -u {p['units']} -c {p['spin']} -s {p['sleep']}; hackbench-tN"
                f"/-pN: threads/processes, N groups, pipes, -l {p['hb_loops']}; stressng: "
                f"--cpu {g['vcpus']} --cpu-ops {p['sng_ops']} --cache 2 --cache-ops 2 --hdd 2 --hdd-ops "
                f"{p['sng_ops'] * 10} on tmpfs; build: make -j{p['build_jobs']} of Mbed TLS's "
                f"library and programs with tcc. Generated {summary['generated']} by "
                f"`make {MAKE_TARGET[g['vcpus']]}`. CPU migrations: perf's count for the workload's process "
                "tree (one per run after a move); cross-domain moves: its tasks' moves between "
                "the domains, each counted (mlsched-measure's BPF counter); balancer moves: the "
                "MIGRATE answers scx_mlsched carried out, for every task.")
    return "\n".join(rows)


def plot(summary: dict, path: Path) -> None:
    """Bars: each configuration's median speed relative to EEVDF per workload, range as
    error bars. Written beside ``path`` and renamed."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    wls = summary["workloads"]
    cfgs = [c for c in dict.fromkeys(c for w in wls.values() for c in w["configs"])
            if c != "eevdf"]
    width = 0.8 / max(len(cfgs), 1)
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(wls)), 4.5))
    for i, cfg in enumerate(cfgs):
        xs, ys, lo, hi = [], [], [], []
        for j, w in enumerate(wls.values()):
            e = w["configs"].get(cfg)
            if not e or e["speed_vs_eevdf"] is None:
                continue
            xs.append(j - 0.4 + width * (i + 0.5))
            ys.append(e["speed_vs_eevdf"])
            r = e["speed_vs_eevdf_range"] or [ys[-1], ys[-1]]
            lo.append(ys[-1] - r[0])
            hi.append(r[1] - ys[-1])
        ax.bar(xs, ys, width, yerr=[lo, hi], capsize=2, label=CONFIG_NAMES.get(cfg, cfg))
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(wls)), list(wls), rotation=20)
    ax.set_ylabel("speed relative to EEVDF (>1: faster)")
    ax.set_title(f"sched_ext guest, {summary['guest']['vcpus']} vCPUs (TCG): median and range "
                 f"of {summary['runs_per_config']} runs")
    ax.legend(fontsize="small")
    fig.tight_layout()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=100)
    finally:
        plt.close(fig)


def boot_timeout(workloads: list[str], configs: list[str], runs: int) -> float:
    """Seconds the whole boot may take: every planned run's estimate, with a margin."""
    bundles = {c.split("-", 1)[1] if c.startswith("model-") else "default"
               for c in configs if c.startswith("model")}
    runs_s = sum(RUN_ESTIMATE_S[w] for w in workloads) * len(configs) * runs
    return BOOT_BASE_S + DAEMON_START_S * len(bundles) + TIMEOUT_MARGIN * runs_s


def atomic_write(path: Path, text: str) -> None:
    write_atomic(path, text)


def update_readme(path: Path, md: str, vcpus: int = VCPUS) -> None:
    """Replace the table between this guest size's markers (appended when missing)."""
    begin, end = (f"<!-- {MAKE_TARGET[vcpus]}:{m} -->" for m in ("begin", "end"))
    text = path.read_text() if path.exists() else ""
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        tail = rest.split(end, 1)[1]
        text = f"{head}{begin}\n{md}\n{end}{tail}"
    else:
        text = f"{text.rstrip()}\n\n{begin}\n{md}\n{end}\n".lstrip()
    atomic_write(path, text)


def _bad(msg: str) -> int:
    print(f"bench.py: {msg}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="example: bench.py --cache CACHE/guest --out g.json "
                                        "--workloads hackbench-t2,build --configs "
                                        "eevdf,simple,model --runs 3")
    ap.add_argument("--cache", type=Path, required=True, help="guest build dir (make kernel)")
    ap.add_argument("--out", type=Path, required=True, help="JSON summary to write")
    ap.add_argument("--readme", type=Path, help="markdown file whose tables to replace")
    ap.add_argument("--plot", type=Path, help="PNG of the results relative to EEVDF")
    ap.add_argument("--runs", type=int, default=5, help="runs per workload and configuration")
    ap.add_argument("--workloads", default=",".join(WORKLOADS),
                    help=f"comma list of {','.join(WORKLOADS)}")
    ap.add_argument("--configs", default=",".join(CONFIGS),
                    help=f"comma list of {','.join(KNOWN_CONFIGS)}, model-NAME (bundle NAME)")
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--units", type=int, default=100)
    ap.add_argument("--spin", type=int, default=1000000)
    ap.add_argument("--sleep", type=int, default=500, help="µs blocked per unit")
    ap.add_argument("--hb-loops", type=int, default=100, help="hackbench messages per sender")
    ap.add_argument("--sng-ops", type=int, default=50, help="stress-ng cpu bogo ops")
    ap.add_argument("--build-jobs", type=int, default=8, help="make -j of the build")
    ap.add_argument("--vcpus", type=int, default=VCPUS,
                    help=f"guest CPUs, half in each of the {SOCKETS} sockets (domains); the "
                         f"bundles are converted for {VCPUS}, fewer make mlsched-lite derive "
                         "its table at start-up")
    ap.add_argument("--timeout", type=float,
                    help="seconds for the whole boot (default: from the plan's size)")
    ap.add_argument("--console", type=Path, help="keep the guest console log here")
    args = ap.parse_args(argv)
    workloads, configs = args.workloads.split(","), args.configs.split(",")
    if args.runs < 1:
        return _bad("--runs must be >= 1")
    if not set(workloads) <= set(WORKLOADS) or len(set(workloads)) != len(workloads):
        return _bad(f"--workloads: a list of distinct names from {','.join(WORKLOADS)}")
    if len(set(configs)) != len(configs) or not all(
            c in KNOWN_CONFIGS or re.fullmatch(r"model-[a-z0-9_]+", c) for c in configs):
        return _bad(f"--configs: distinct names from {','.join(KNOWN_CONFIGS)} or model-NAME")
    if args.vcpus not in MAKE_TARGET:
        return _bad(f"--vcpus: {' or '.join(map(str, sorted(MAKE_TARGET)))}")
    if "eevdf2" in configs and args.vcpus <= 2:
        return _bad("--configs eevdf2 confines the workload to CPUs 0-1: needs --vcpus 4")
    if min(args.hb_loops, args.sng_ops, args.build_jobs) < 1:
        return _bad("--hb-loops, --sng-ops and --build-jobs must be >= 1")
    params = {"mode": "bench", "runs": args.runs, "workloads": args.workloads,
              "configs": args.configs, "workers": args.workers, "units": args.units,
              "spin": args.spin, "sleep": args.sleep, "hb_loops": args.hb_loops,
              "sng_ops": args.sng_ops, "build_jobs": args.build_jobs}
    timeout = args.timeout or boot_timeout(workloads, configs, args.runs)
    try:
        b = boot(args.cache, params, timeout, args.console, args.vcpus)
    except GuestError as exc:
        print(f"bench.py: {exc}", file=sys.stderr)
        return 1
    errors = b.of("error")
    expected = args.runs * len(configs) * len(workloads)
    if errors or len(b.of("run")) != expected or not b.powered_off:
        why = (errors[0]["message"] if errors else
               f"{len(b.of('run'))} of {expected} runs reported"
               f"{f', timed out after {timeout:.0f} s' if b.timed_out else ''}"
               f"{'' if b.powered_off else ', no clean power-off'}")
        print(f"bench.py: guest run failed: {why}; console tail:\n" +
              "\n".join(b.console.splitlines()[-25:]), file=sys.stderr)
        return 1
    summary = summarize(b, params)
    atomic_write(args.out, json.dumps(summary, indent=1) + "\n")
    md = table(summary)
    if args.readme:
        update_readme(args.readme, md, args.vcpus)
    if args.plot:
        plot(summary, args.plot)
    print(md)
    print(f"bench.py: wrote {args.out}; guest wall time {b.seconds:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
