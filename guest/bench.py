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
RUN_ESTIMATE_S = {"synthetic": 5, "hackbench-t2": 5, "hackbench-t4": 8, "hackbench-p2": 5,
                  "hackbench-p4": 8, "stressng": 5, "build": 6}
BOOT_BASE_S = 120
DAEMON_START_S = 200
TIMEOUT_MARGIN = 2.0
#: Workload sizes (run.sh parameters): each run lasts 2 s or more in the 2-vCPU guest, so
#: that a run is long against the guest's timer tick and the host's scheduling noise.
SIZES = {"workers": 8, "units": 200, "spin": 1000000, "sleep": 500, "hb_loops": 1500,
         "sng_ops": 160, "build_jobs": 4, "build_units": 30}
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
        t0 = time.monotonic()
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
        b = Boot(returncode=proc.returncode, seconds=time.monotonic() - t0,
                 timed_out=proc.returncode in (124, 137), pinned=placed)
        b.console = con.read_text(errors="replace") if con.exists() else ""
        if console_log:
            console_log.write_text(b.console)
        if proc.returncode not in (0, 124, 137):
            raise GuestError(f"qemu exited {proc.returncode}: {stderr.strip()[-400:]}")
        b.records = parse_records(res.read_text(errors="replace") if res.exists() else "")
    return b


# ---- summary ---------------------------------------------------------------------------

def host_slowdown(cache: Path, guest: list[dict]) -> float | None:
    """How many times slower the guest ran mlsched-workload's calibration than this host
    runs the same static binary, same arguments, on one core (median of CALIBRATION_RUNS
    each); None without the guest's calibration records."""
    times = [r["makespan_s"] for r in guest if r.get("makespan_s")]
    if not times:
        return None
    args = guest[0]["args"]
    host = []
    for _ in range(CALIBRATION_RUNS):
        p = subprocess.run(["taskset", "-c", str(min(os.sched_getaffinity(0))),
                            str(Path(cache) / "mlsched-workload"), *args.split()],
                           capture_output=True, text=True, timeout=600)
        if p.returncode != 0:
            raise GuestError(f"calibration on the host failed: {p.stderr.strip()[-200:]}")
        host.append(json.loads(p.stdout)["makespan_s"])
    return statistics.median(times) / statistics.median(host)


def move_charge(cost_file: Path | None, slowdown: float | None, vcpus: int):
    """The MoveCharge of this boot, or None (no move-cost curve, or no calibration)."""
    if cost_file is None or slowdown is None or not Path(cost_file).exists():
        return None
    from mlsched.train.move_cost import MoveCostCurve

    curve = MoveCostCurve.load(cost_file)
    return report.MoveCharge(cost_ns=curve.cost_ns, slowdown=slowdown, vcpus=vcpus)


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
                  "wall_s": round(b.seconds, 1)},
        "params": params,
        "runs_per_config": int(params["runs"]),
        "noise_floor": report.noise_floor(workloads),
        "move_charge": ({"slowdown": charge.slowdown, "vcpus": charge.vcpus,
                         "cost_ns": {wl: charge.cost_ns(report.working_set_of(wl))
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
    try:
        charge = move_charge(args.move_cost, host_slowdown(args.cache, b.of("calibrate")),
                             args.vcpus)
    except (GuestError, ValueError, OSError) as exc:
        print(f"bench.py: no modelled move cost: {exc}", file=sys.stderr)
        charge = None
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
