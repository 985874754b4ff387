"""Boot the sched_ext guest under qemu and compare schedulers on real workloads.

    python guest/bench.py --cache DIR --out bench/guest.json --readme guest/README.md \
        --plot bench/guest.png [--workloads LIST] [--configs LIST] [--runs N]

1. Boot ``DIR/kernel-dir``'s bzImage with ``DIR/initramfs.cpio`` (``make kernel``)
   under qemu-system-x86_64, TCG (no KVM), 2 vCPUs (or 4) in 2 sockets, each vCPU
   thread pinned to a host core through qemu's monitor (QMP). The guest's /init runs
   guest/run.sh: one mlsched-lite per bundle the configurations use serves its pinned
   maps; a calibration run; then for each workload (the synthetic mix, hackbench with
   threads or processes, a stress-ng mix, a parallel tcc build) a warm-up run left out
   and ``--runs`` rounds, each running every configuration once in a fresh random order
   (EEVDF, EEVDF again as the A/A control, the kernel's scx_simple and scx_central,
   scx_mlsched with the model, always-STAY, always-MIGRATE, learned models): attach
   the scheduler, run the workload under mlsched-measure, detach.
2. Results arrive on the guest's second serial port as ``@mlsched KIND JSON``
   records; the console (kernel log, script progress) goes to a log file.
3. report.py pairs every configuration with EEVDF round by round: speed, wake-up
   latency and (with a move-cost curve, modelled) the result with every cross-domain
   move charged what this host measured, each with its 95 % interval and the A/A noise
   floor. They go to ``--out`` (written beside it and renamed), as markdown tables
   between the markers in ``--readme``, and as a plot to ``--plot``.

All runs of one comparison share one boot: TCG timings drift between boots, so
only numbers from the same boot are compared. ``boot()`` is what tests/system/test_guest.py
uses as well.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from mlsched.runtime.files import atomic_path, write_atomic

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:          # report.py and stats.py beside this file
    sys.path.insert(0, str(HERE))
import report  # noqa: E402

#: The bench's guest: one vCPU a domain, each pinned to its own host core. 4 (two a
#: domain) is the oversubscribed layout: more vCPUs than this host has cores.
VCPUS = 2
#: guest/Makefile's GUEST_CPUS: the bundles are converted for them; a guest with fewer
#: has mlsched-lite derive its table at start-up.
BUNDLE_CPUS = 4
SOCKETS = 2
MEMORY_MB = 2048
#: The configurations a bench runs unless told (guest/Makefile adds the learned models).
CONFIGS = ("eevdf", "eevdf-aa", "simple", "central", "model", "stay", "migrate")
#: Every fixed configuration run.sh knows; model-NAME (bundle NAME) comes on top.
KNOWN_CONFIGS = CONFIGS + ("model1", "eevdf2")
CONFIG_NAMES = report.CONFIG_NAMES
#: The workloads a bench runs unless told; hackbench-t4 and -p4 are known as well.
WORKLOADS = ("synthetic", "hackbench-t2", "hackbench-p2", "stressng", "build")
KNOWN_WORKLOADS = WORKLOADS + ("hackbench-t4", "hackbench-p4")
#: Rough seconds one run takes under TCG on this 2-core host at the default sizes (each
#: sized to last 2 s or more), attach and detach included; the boot's time limit is their
#: sum over the plan, times a margin.
RUN_ESTIMATE_S = {"synthetic": 5, "hackbench-t2": 6, "hackbench-t4": 10, "hackbench-p2": 4,
                  "hackbench-p4": 7, "stressng": 4, "build": 4}
BOOT_BASE_S = 120
DAEMON_START_S = 200
TIMEOUT_MARGIN = 2.0
#: Workload sizes (run.sh parameters): each run lasts 2 s or more in the 2-vCPU guest, so
#: that a run is long against the guest's timer tick and the host's scheduling noise.
SIZES = {"workers": 8, "units": 150, "spin": 1000000, "sleep": 500, "hb_loops": 1500,
         "sng_ops": 280, "build_jobs": 4, "build_units": 24}
#: The guest's and the host's calibration runs (mlsched-workload, one worker, no sleep).
CALIBRATION_RUNS = 3
MAKE_TARGET = report.MAKE_TARGET
#: SCHED_FIFO priority of qemu's main loop thread when the vCPUs are pinned (the lowest).
MAIN_LOOP_RT_PRIORITY = 1
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
    pinned: dict[int, int] = field(default_factory=dict)   # vCPU -> host CPU
    host: dict[str, float] = field(default_factory=dict)    # host_cpu_seconds() deltas

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


def _qmp(sock: Path, command: str, limit_s: float = 30.0) -> object:
    """One QMP command on qemu's monitor socket (capabilities negotiated first); its
    "return" value. Waits up to ``limit_s`` for the socket to appear."""
    deadline = time.monotonic() + limit_s
    while not sock.exists():
        if time.monotonic() > deadline:
            raise GuestError(f"qemu's monitor socket {sock} did not appear in {limit_s:.0f} s")
        time.sleep(0.05)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(limit_s)
        s.connect(str(sock))
        f = s.makefile("rwb")
        answers = []
        for cmd in ("qmp_capabilities", command):
            f.write(json.dumps({"execute": cmd}).encode() + b"\n")
            f.flush()
            while True:                         # skip the greeting and any events
                line = f.readline()
                if not line:
                    raise GuestError(f"qemu closed its monitor during {cmd}")
                msg = json.loads(line)
                if "error" in msg:
                    raise GuestError(f"qemu refused {cmd}: {msg['error'].get('desc')}")
                if "return" in msg:
                    answers.append(msg["return"])
                    break
        return answers[-1]


def pin_vcpus(sock: Path, host_cpus: list[int]) -> dict[int, int]:
    """Each vCPU thread of the qemu behind ``sock`` onto its own host CPU, vCPU i onto
    host_cpus[i % len]: no vCPU migrates between host cores, and two vCPUs share one only
    when there are more vCPUs than host CPUs. {vCPU: host CPU}.

    qemu's main loop thread (timers, the guest's interrupts, the serial ports) has no core
    of its own on a host with as many cores as vCPUs; it gets the lowest real-time
    priority instead, so that it runs the moment it has work rather than when a busy vCPU
    thread's slice ends. It sleeps between events, and the kernel's real-time throttling
    bounds it if it ever did not."""
    placed, pid = {}, None
    for cpu in _qmp(sock, "query-cpus-fast"):
        i, tid = cpu["cpu-index"], cpu["thread-id"]
        host = host_cpus[i % len(host_cpus)]
        os.sched_setaffinity(tid, {host})
        placed[i] = host
        pid = pid or _tgid(tid)
    if pid:
        os.sched_setscheduler(pid, os.SCHED_FIFO, os.sched_param(MAIN_LOOP_RT_PRIORITY))
    return placed


def _tgid(tid: int) -> int | None:
    """The process a thread belongs to (its main thread's id)."""
    try:
        for line in Path(f"/proc/{tid}/status").read_text().splitlines():
            if line.startswith("Tgid:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


#: /proc/stat's cpu columns that are busy time (user nice system irq softirq steal), and
#: steal alone: time the hypervisor gave this host's vCPUs to someone else.
_BUSY_COLUMNS, _STEAL_COLUMN = (0, 1, 2, 5, 6, 7), 7


def host_cpu_seconds() -> dict[str, float]:
    """This host's busy and stolen CPU seconds so far (all CPUs), and the CPU seconds of
    the children this process has waited for (qemu, through `timeout`)."""
    ticks = os.sysconf("SC_CLK_TCK")
    with open("/proc/stat") as f:
        cols = [int(x) for x in f.readline().split()[1:]]
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"busy_s": sum(cols[i] for i in _BUSY_COLUMNS) / ticks,
            "steal_s": cols[_STEAL_COLUMN] / ticks,
            "children_s": ru.ru_utime + ru.ru_stime}


def host_load(before: dict[str, float], after: dict[str, float], wall_s: float) -> dict:
    """What else ran on the host during a boot: CPU seconds not qemu's (busy minus the
    waited-for children's), stolen seconds, and both as a share of the host's capacity."""
    cap = wall_s * len(os.sched_getaffinity(0))
    qemu = after["children_s"] - before["children_s"]
    other = max(0.0, after["busy_s"] - before["busy_s"] - qemu)
    steal = after["steal_s"] - before["steal_s"]
    return {"qemu_cpu_s": round(qemu, 1), "other_cpu_s": round(other, 1),
            "steal_s": round(steal, 1),
            "other_share": round(other / cap, 4) if cap else None,
            "steal_share": round(steal / cap, 4) if cap else None}


def boot(cache: Path, params: dict[str, object], timeout: float,
         console_log: Path | None = None, vcpus: int = VCPUS, pin: bool = True,
         icount: int | None = None) -> Boot:
    """Boot the guest once with ``mlsched.KEY=VALUE`` for every param; wait for power-off.
    ``vcpus`` are split evenly over the SOCKETS (one domain each); with ``pin`` every vCPU
    thread is held on one host CPU (pin_vcpus). ``icount``: instead of one host thread per
    vCPU, one thread runs them all in turn and the guest's clock counts instructions, 2^N ns
    each (qemu -icount shift=N,sleep=off): guest times no longer depend on the host."""
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
        sock = Path(tmp) / "qmp.sock"
        accel = (["-accel", "tcg,thread=multi"] if icount is None else
                 ["-accel", "tcg,thread=single", "-icount", f"shift={icount},sleep=off"])
        cmd = ["timeout", "--kill-after=10", str(int(timeout)), qemu_binary(),
               "-machine", "pc", *accel, "-cpu", "max",
               "-smp", f"{vcpus},sockets={SOCKETS},cores={vcpus // SOCKETS},threads=1",
               "-m", str(MEMORY_MB), "-nodefaults", "-display", "none", "-no-reboot",
               "-kernel", str(kernel), "-initrd", str(initrd), "-append", append,
               "-serial", f"file:{con}", "-serial", f"file:{res}",
               "-qmp", f"unix:{sock},server=on,wait=off"]
        t0, cpu0 = time.monotonic(), host_cpu_seconds()
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        placed: dict[int, int] = {}
        try:
            if pin:
                placed = pin_vcpus(sock, sorted(os.sched_getaffinity(0)))
        except (GuestError, OSError) as exc:
            proc.kill()
            proc.communicate()
            raise GuestError(f"pinning the vCPU threads: {exc}") from None
        _, stderr = proc.communicate()
        wall = time.monotonic() - t0
        b = Boot(returncode=proc.returncode, seconds=wall,
                 timed_out=proc.returncode in (124, 137), pinned=placed,
                 host=host_load(cpu0, host_cpu_seconds(), wall))
        b.console = con.read_text(errors="replace") if con.exists() else ""
        if console_log:
            console_log.write_text(b.console)
        if proc.returncode not in (0, 124, 137):
            raise GuestError(f"qemu exited {proc.returncode}: {stderr.strip()[-400:]}")
        b.records = parse_records(res.read_text(errors="replace") if res.exists() else "")
    return b


# ---- summary ---------------------------------------------------------------------------

#: mlsched-workload's calibration arguments, on the host and in the guest (run.sh's
#: CALIBRATION_ARGS, which it sends back with each result: they must be the same).
CALIBRATION_ARGS = "-w 1 -u 100 -c 1000000 -s 0"


def host_calibration(cache: Path) -> float:
    """Seconds this host takes for mlsched-workload's calibration on one core, the same
    static binary the guest runs (median of CALIBRATION_RUNS)."""
    times = []
    for _ in range(CALIBRATION_RUNS):
        p = subprocess.run(["taskset", "-c", str(min(os.sched_getaffinity(0))),
                            str(Path(cache) / "mlsched-workload"), *CALIBRATION_ARGS.split()],
                           capture_output=True, text=True, timeout=600)
        if p.returncode != 0:
            raise GuestError(f"calibration on the host failed: {p.stderr.strip()[-200:]}")
        times.append(json.loads(p.stdout)["makespan_s"])
    return statistics.median(times)


def guest_slowdown(guest: list[dict], host_s: float | None) -> float | None:
    """How many times slower the guest ran the calibration than the host (medians); None
    without the guest's calibration records or the host's time."""
    times = [r["makespan_s"] for r in guest
             if r.get("makespan_s") and r.get("args") == CALIBRATION_ARGS]
    if not times or not host_s:
        return None
    return statistics.median(times) / host_s


def load_curve(cost_file: Path | None):
    """This host's measured move-cost curve, or None when there is no file."""
    if cost_file is None or not Path(cost_file).exists():
        return None
    from mlsched.train.move_cost import MoveCostCurve

    return MoveCostCurve.load(cost_file)


def move_charge(curve, slowdown: float | None, vcpus: int,
                in_guest: tuple[str, ...] = ()) -> report.MoveCharge | None:
    """The MoveCharge of this boot, or None (no move-cost curve, or no calibration)."""
    if curve is None or slowdown is None:
        return None
    return report.MoveCharge(cost_ns=curve.cost_ns, slowdown=slowdown, vcpus=vcpus,
                             in_guest=frozenset(in_guest))


def summarize(b: Boot, params: dict, charge: report.MoveCharge | None = None) -> dict:
    boot_rec = (b.of("boot") or [{}])[0]
    ready = (b.of("ready") or [{}])[0]
    domains = None
    if boot_rec.get("domains"):
        from mlsched.runtime.topology import parse_domains

        domains = parse_domains(boot_rec["domains"])
    vcpus = boot_rec.get("cpus", VCPUS)
    workloads = report.summarize(b.of("run"), domains, charge)
    return {
        "generated": report.generated(),
        "guest": {"vcpus": vcpus, "sockets": SOCKETS, "memory_mb": MEMORY_MB,
                  "accel": "tcg", "kernel": boot_rec.get("kernel"),
                  "domains": boot_rec.get("domains"),
                  "pinned": {str(k): v for k, v in b.pinned.items()},
                  "oversubscribed": vcpus > len(os.sched_getaffinity(0)),
                  "boot_to_init_s": boot_rec.get("uptime_s"),
                  "daemon_ready_s": ready.get("uptime_s"),
                  "wall_s": round(b.seconds, 1), "host_load": b.host},
        "params": params,
        "runs_per_config": int(params["runs"]),
        "noise_floor": report.noise_floor(workloads),
        "move_charge": ({"slowdown": charge.slowdown, "vcpus": charge.vcpus,
                         "in_guest": sorted(charge.in_guest),
                         "cost_ns": {wl: float(charge.cost_ns(report.working_set_of(wl)))
                                     for wl in workloads}} if charge else None),
        "workloads": workloads,
        "daemons": b.of("daemon"),
    }


def table(summary: dict) -> str:
    return report.table(summary)


def plot(summary: dict, path: Path) -> None:
    report.plot(summary, path, atomic_path)


def boot_timeout(workloads: list[str], configs: list[str], runs: int,
                 warmup: int = 1) -> float:
    """Seconds the whole boot may take: every planned run's estimate, with a margin."""
    bundles = {c.split("-", 1)[1] if c.startswith("model-") else "default"
               for c in configs if c.startswith("model")}
    runs_s = sum(RUN_ESTIMATE_S[w] for w in workloads) * (len(configs) * runs + warmup)
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


def add_size_arguments(ap: argparse.ArgumentParser) -> None:
    """The workload sizes (SIZES), as bench.py and learn.py take them."""
    ap.add_argument("--workers", type=int, default=SIZES["workers"])
    ap.add_argument("--units", type=int, default=SIZES["units"])
    ap.add_argument("--spin", type=int, default=SIZES["spin"])
    ap.add_argument("--sleep", type=int, default=SIZES["sleep"], help="µs blocked per unit")
    ap.add_argument("--hb-loops", type=int, default=SIZES["hb_loops"],
                    help="hackbench messages per sender")
    ap.add_argument("--sng-ops", type=int, default=SIZES["sng_ops"],
                    help="stress-ng cpu bogo ops")
    ap.add_argument("--build-jobs", type=int, default=SIZES["build_jobs"],
                    help="make -j of the build")
    ap.add_argument("--build-units", type=int, default=SIZES["build_units"],
                    help="compile the first N library units only (0: every unit)")


def sizes_of(args: argparse.Namespace) -> dict[str, int]:
    return {k: getattr(args, k) for k in SIZES}


def render(summary_path: Path, readme: Path | None, png: Path | None) -> int:
    """The tables and plot of a summary written before, as a bench run renders them."""
    try:
        summary = json.loads(Path(summary_path).read_text())
        md = table(summary)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return _bad(f"{summary_path}: not a guest bench summary ({exc})")
    if readme:
        update_readme(readme, md, summary["guest"]["vcpus"])
    if png:
        plot(summary, png)
    print(md)
    return 0


def _bad(msg: str) -> int:
    print(f"bench.py: {msg}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="example: bench.py --cache CACHE/guest --out g.json "
                                        "--workloads hackbench-t2,build --configs "
                                        "eevdf,simple,model --runs 3")
    ap.add_argument("--cache", type=Path, help="guest build dir (make kernel)")
    ap.add_argument("--out", type=Path, help="JSON summary to write")
    ap.add_argument("--from-summary", type=Path, metavar="JSON",
                    help="no boot: render the tables (--readme) and plot (--plot) of a "
                         "summary an earlier run wrote")
    ap.add_argument("--readme", type=Path, help="markdown file whose tables to replace")
    ap.add_argument("--plot", type=Path, help="PNG of the results relative to EEVDF")
    ap.add_argument("--runs", type=int, default=15,
                    help="rounds per workload: every configuration runs once in each")
    ap.add_argument("--workloads", default=",".join(WORKLOADS),
                    help=f"comma list of {','.join(KNOWN_WORKLOADS)}")
    ap.add_argument("--configs", default=",".join(CONFIGS),
                    help=f"comma list of {','.join(KNOWN_CONFIGS)}, model-NAME (bundle NAME)")
    ap.add_argument("--seed", type=int, default=1,
                    help="the configurations' random order in each round follows from it")
    ap.add_argument("--warmup", type=int, default=1,
                    help="EEVDF runs of each workload before its rounds, left out")
    add_size_arguments(ap)
    ap.add_argument("--no-pin", dest="pin", action="store_false",
                    help="leave qemu's vCPU threads to the host scheduler")
    ap.add_argument("--icount", type=int, metavar="SHIFT",
                    help="one host thread for all vCPUs and a guest clock that counts "
                         "instructions (2^SHIFT ns each): times independent of the host")
    ap.add_argument("--vcpus", type=int, default=VCPUS,
                    help=f"guest CPUs, half in each of the {SOCKETS} sockets (domains); the "
                         f"bundles are converted for {BUNDLE_CPUS}, fewer make mlsched-lite "
                         "derive its table at start-up")
    ap.add_argument("--move-cost", type=Path, default=HERE.parent / "bench" / "movecost.json",
                    help="this host's measured move cost by working set (make movecost); "
                         "when present, results are also given with every cross-domain move "
                         "charged (modelled)")
    ap.add_argument("--timeout", type=float,
                    help="seconds for the whole boot (default: from the plan's size)")
    ap.add_argument("--console", type=Path, help="keep the guest console log here")
    args = ap.parse_args(argv)
    if args.from_summary:
        return render(args.from_summary, args.readme, args.plot)
    if not (args.cache and args.out):
        return _bad("--cache and --out are needed to boot (or --from-summary)")
    workloads, configs = args.workloads.split(","), args.configs.split(",")
    if args.runs < 1:
        return _bad("--runs must be >= 1")
    if not set(workloads) <= set(KNOWN_WORKLOADS) or len(set(workloads)) != len(workloads):
        return _bad(f"--workloads: a list of distinct names from {','.join(KNOWN_WORKLOADS)}")
    if len(set(configs)) != len(configs) or not all(
            c in KNOWN_CONFIGS or re.fullmatch(r"model-[a-z0-9_]+", c) for c in configs):
        return _bad(f"--configs: distinct names from {','.join(KNOWN_CONFIGS)} or model-NAME")
    if args.vcpus not in MAKE_TARGET:
        return _bad(f"--vcpus: {' or '.join(map(str, sorted(MAKE_TARGET)))}")
    if "eevdf2" in configs and args.vcpus <= 2:
        return _bad("--configs eevdf2 confines the workload to CPUs 0-1: needs --vcpus 4")
    if min(args.hb_loops, args.sng_ops, args.build_jobs) < 1:
        return _bad("--hb-loops, --sng-ops and --build-jobs must be >= 1")
    if args.build_units < 0 or args.warmup < 0:
        return _bad("--build-units and --warmup must be >= 0")
    params = {"mode": "bench", "runs": args.runs, "seed": args.seed, "warmup": args.warmup,
              "workloads": args.workloads, "configs": args.configs, **sizes_of(args)}
    timeout = args.timeout or boot_timeout(workloads, configs, args.runs, args.warmup)
    try:
        curve = load_curve(args.move_cost)
        host_s = host_calibration(args.cache) if curve else None
    except (GuestError, ValueError, OSError) as exc:
        print(f"bench.py: {exc}", file=sys.stderr)
        return 1
    if curve:
        # the synthetic workload pays for its moves in the guest: each worker has a working
        # set, and every change of CPU spins what the host measured for it, scaled by the
        # guest's slowdown (run.sh: move_ns x its calibration / host_cal_us)
        params.update(ws=report.WORKING_SET["synthetic"],
                      move_ns=round(float(curve.cost_ns(report.WORKING_SET["synthetic"]))),
                      host_cal_us=round(host_s * 1e6))
    try:
        b = boot(args.cache, params, timeout, args.console, args.vcpus, args.pin, args.icount)
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
    charge = move_charge(curve, guest_slowdown(b.of("calibrate"), host_s), args.vcpus,
                         ("synthetic",) if curve else ())
    summary = summarize(b, params, charge)
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
