"""Soak: the real daemon under a steady request rate through the real ring buffer.

::

    this process (producer, checker)                    mlsched-lite run (another process)
    every TICK: inject rate*TICK generated records ──ring──► poll → engine → answer (mmap)
                (SEC("syscall") injector, every record a miss)
    every TICK:  read_decisions() on a 1 % sample    ◄──── `decisions` map
                 once the daemon has answered it:
                 == table cell, else interpreter_decide(exact features)?
    every second: daemon RSS (/proc/PID/status VmRSS), kernel counters

The producer and the daemon share the maps through a private BPF filesystem
(``--pin-dir`` of the daemon), like any other producer (a scheduler's balancer).

Pass/fail (``Result.problems``): no ring drops, every produced record consumed and answered
by the daemon (its summary), every sampled answer present and equal to the expected decision,
RSS growth after warm-up < ``--max-rss-growth-kb``. A sample is read once the daemon has
answered its last record (it answers in seq order), however far behind a busy machine puts
it; at the end the soak waits for the answer to the last record produced.

Speed (``Result.shortfalls``): the offered rate was produced. ``make soak`` judges both; the
short soak in ``make test`` runs at a rate any machine of this kind sustains and judges
correctness only, since a test never fails for a machine being slow or busy.

Usage: ``python -m support.soak --duration 600 --rate 1000000`` (exit 0 pass, 1 fail; a JSON
report with every figure on stdout, or in ``--json FILE``). Importable: ``soak(...)``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

#: Producer period: records are injected in one call per tick.
TICK_S = 0.005
#: Fraction of the answers re-checked against the interpreter.
SAMPLE = 0.01
#: How long the soak waits at the end for the daemon to answer the last record: a bound
#: that only catches a daemon that stopped answering.
FINAL_ANSWER_S = 60.0
#: Host size of the generated traffic (the default bundle's) and its share of off-grid keys.
NCPUS = 8
INVALID_PCT = 2
DEFAULT_RING = 32 << 20          # 0.45 s of requests at 1 M/s: rides out scheduling stalls
RSS_TRACE_S = 10
#: RSS baseline taken this long after the start (at most). The daemon's RSS rises by about
#: 1.2 MB over its first ~2 minutes at 1 M/s and is flat after: NumPy keeps up to 7 freed
#: blocks of every size below 1 KiB for reuse, and a new batch size fills one more of those
#: 1024 cache slots (bounded at 7 x 1024 x 512 B = 3.6 MB, reached only if every size occurs).
WARMUP_MAX_S = 180.0
ANSWERED, MISSING, OVERWRITTEN = 0, 1, 2
#: splitmix64's increment: record i of a generated call starts from state + i * GOLDEN.
GOLDEN = 0x9E3779B97F4A7C15
U64 = (1 << 64) - 1


@dataclass
class Result:
    duration_s: float = 0.0
    rate_target: int = 0
    produced: int = 0
    offered_rate: float = 0.0
    dropped: int = 0
    no_consumer: int = 0
    daemon_records: int = 0
    daemon_answered: int = 0
    daemon_rate: float = 0.0
    daemon_stale: int = 0
    daemon_rejected: int = 0
    sampled: int = 0
    sample_missing: int = 0
    sample_wrong: int = 0
    sample_overwritten: int = 0         # slot reused by a newer answer before it was read
    sample_interpreter_agree: float = 0.0
    rss_start_kb: int = 0
    rss_after_warmup_kb: int = 0
    rss_end_kb: int = 0
    rss_max_after_warmup_kb: int = 0
    rss_growth_kb: int = 0
    rss_trace_kb: list[int] = field(default_factory=list)     # every RSS_TRACE_S
    daemon_cpu_pct: float = 0.0         # of one CPU, while the producer ran
    producer_cpu_pct: float = 0.0
    latency_p50_us: float | None = None
    latency_p99_us: float | None = None
    behind_ticks: int = 0
    conditions: str = ""
    daemon_cmd: str = ""
    problems: list[str] = field(default_factory=list)
    shortfalls: list[str] = field(default_factory=list)     # speed, not correctness

    @property
    def ok(self) -> bool:
        return not self.problems


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def cpu_seconds(pid: int | str = "self") -> float:
    """utime + stime of a process, seconds (proc(5): fields 14 and 15 of stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def conditions() -> str:
    load = os.getloadavg()
    return (f"{os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
            f" at start")


def expected_decisions(engine, feats: np.ndarray) -> np.ndarray:
    """What the daemon must answer, written out here: the table cell when it is sure, else
    the interpreter on the exact features (loads clamped to 1.0)."""
    t = engine.table
    n = t.shape[0]
    cpu, idle, busy, src, dst = (feats[:, k].astype(np.int64) for k in range(5))
    src, dst = np.minimum(src, 1024), np.minimum(dst, 1024)
    ok = (cpu < n) & (idle + busy == n)
    cell = np.full(len(feats), 2, dtype=np.uint8)
    cell[ok] = t[cpu[ok], idle[ok], (10 * src[ok] + 512) >> 10, (10 * dst[ok] + 512) >> 10]
    out = cell.copy()
    miss = cell == 2
    if miss.any():
        exact = np.stack([cpu, idle, busy, src / 1024, dst / 1024], axis=1)[miss]
        out[miss] = engine.interpreter_decide(exact)
    return out


def exact_features(feats: np.ndarray) -> np.ndarray:
    x = feats.astype(np.float64)
    x[:, 3:] = np.minimum(x[:, 3:], 1024) / 1024
    return x


def _mount_bpffs() -> tuple[Path, Path]:
    top = Path(tempfile.mkdtemp(prefix="mlsched-soak-"))
    mnt = top / "bpffs"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "bpf", "bpf", str(mnt)], check=True)
    return top, mnt


@dataclass
class Settings:
    duration: float
    rate: int
    ring_size: int = DEFAULT_RING
    batch: int | None = None
    max_wait_us: int | None = None
    warmup: float = 0.0
    max_rss_growth_kb: int = 1024
    interval: float = 5.0
    daemon_nice: int = 0


class Soak:
    """One soak run, in the steps ``soak()`` lists: start the daemon, produce and check until
    the duration ends, stop the daemon, read its summary, judge."""

    def __init__(self, settings: Settings):
        self.s = settings
        self.res = Result(rate_target=settings.rate, conditions=conditions())
        self.top, self.mnt = _mount_bpffs()
        self.pin_dir = self.mnt / "mlsched"
        self.summary_path = self.top / "summary.json"
        self.daemon: subprocess.Popen | None = None
        self.daemon_out = None
        self.daemon_err = ""
        self.kp = None
        self.engine = None
        self.rng = np.random.default_rng(1)
        self.pending: list[tuple[int, int, int]] = []   # samples: (first_seq, seed, count)
        self.checked = self.checked_agree = 0

    # ---- 1. the daemon, as a user starts it -------------------------------------------------
    def daemon_command(self) -> list[str]:
        s = self.s
        cmd = [sys.executable, "-m", "mlsched.runtime.cli", "run", "--no-collector", "--pin",
               "--pin-dir", str(self.pin_dir), "--ring-size", str(s.ring_size),
               "--interval", str(s.interval), "--summary-json", str(self.summary_path)]
        if s.batch:
            cmd += ["--batch", str(s.batch)]
        if s.max_wait_us is not None:
            cmd += ["--max-wait-us", str(s.max_wait_us)]
        return cmd

    def start_daemon(self) -> None:
        cmd = self.daemon_command()
        self.res.daemon_cmd = " ".join(cmd[1:])
        nice = self.s.daemon_nice
        if nice:
            self.res.daemon_cmd += f" (at nice {nice})"
        # its stats lines go to a file: an unread pipe fills after ~25 minutes and blocks it
        self.daemon_out = open(self.top / "daemon.out", "w+")     # noqa: SIM115 - closed in stop
        self.daemon = subprocess.Popen(cmd, stdout=self.daemon_out, stderr=subprocess.STDOUT,
                                       text=True,
                                       preexec_fn=(lambda: os.nice(nice)) if nice else None)
        end = time.monotonic() + 30
        while not (self.pin_dir / "control").exists():
            if self.daemon.poll() is not None or time.monotonic() > end:
                self.daemon.wait()
                self.daemon_out.seek(0)
                raise RuntimeError(f"daemon did not start: {self.daemon_out.read()[-500:]}")
            time.sleep(0.05)

    def attach_producer(self) -> None:
        from mlsched.runtime.bundle import load_bundle
        from mlsched.runtime.engine import Engine
        from mlsched.runtime.injector import Injector

        self.engine = Engine(load_bundle(None))
        self.kp = Injector().load(None, pin=True, pin_dir=str(self.pin_dir), share=True,
                                    ring_size=self.s.ring_size)
        self.wait_serving()

    def wait_serving(self, timeout: float = 60.0) -> None:
        """Until the daemon polls (its heartbeat in the shared control map is fresh): it pins
        the maps before it has built its engine, and requests sent before its first poll
        would count as finding no consumer."""
        from mlsched.runtime.kernel import now_ns

        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.daemon.poll() is not None:
                raise RuntimeError("daemon exited before serving")
            beat = int(self.kp.control["heartbeat_ns"][0])
            if beat and now_ns() - beat < 300_000_000:
                return
            time.sleep(0.02)
        raise RuntimeError(f"daemon did not poll within {timeout:.0f} s")

    # ---- 2. produce, check, watch memory ------------------------------------------------------
    def produce(self, now: float, count: int, seed: int) -> None:
        """One injector call of ``count`` generated records, every one a miss."""
        r = self.kp.inject(generate=count, seed=seed, gen_ncpus=NCPUS, invalid_pct=INVALID_PCT,
                           bypass_table=True)
        res = self.res
        res.produced += r.sent
        res.dropped += r.dropped
        res.no_consumer += r.no_consumer
        if r.sent == count and r.last_seq - r.first_seq + 1 == count:
            take = max(1, int(count * SAMPLE))
            off = int(self.rng.integers(0, count - take + 1))
            self.pending.append((int(r.first_seq) + off, (seed + off * GOLDEN) & U64, take))

    def check_answers(self, final: bool = False) -> None:
        """Re-check the samples the daemon has answered. The daemon answers in seq order, so
        one read of a sample's last seq tells whether it is there yet; the first sample not
        yet answered ends the pass. ``final``: every sample is read, answered or not."""
        from support.traffic import generated_features

        res = self.res
        while self.pending:
            first, seed, take = self.pending[0]
            if not final and self.kp.read_decisions(first + take - 1, 1).status[0] == MISSING:
                return
            self.pending.pop(0)
            feats = generated_features(seed, take, NCPUS, INVALID_PCT)
            rb = self.kp.read_decisions(first, take)
            want = expected_decisions(self.engine, feats)
            answered = rb.status == ANSWERED
            res.sampled += take
            res.sample_missing += int((rb.status == MISSING).sum())
            res.sample_overwritten += int((rb.status == OVERWRITTEN).sum())
            res.sample_wrong += int((rb.decision[answered] != want[answered]).sum())
            interp = self.engine.interpreter_decide(exact_features(feats[answered]))
            self.checked += int(answered.sum())
            self.checked_agree += int((interp == rb.decision[answered]).sum())

    def sample_rss(self, now: float, t0: float, warm_at: float) -> None:
        res = self.res
        rss = rss_kb(self.daemon.pid)
        if int(now - t0) % RSS_TRACE_S == 0:
            res.rss_trace_kb.append(rss)
        if now >= warm_at:
            if not res.rss_after_warmup_kb:
                res.rss_after_warmup_kb = rss
            res.rss_max_after_warmup_kb = max(res.rss_max_after_warmup_kb, rss)

    def run_producer(self) -> None:
        """Inject rate * TICK_S records every TICK_S until the duration ends."""
        res, s = self.res, self.s
        k0 = self.kp.stats()
        res.rss_start_kb = rss_kb(self.daemon.pid)
        per_tick = max(1, int(round(s.rate * TICK_S)))
        seed = 12345
        t0 = time.monotonic()
        cpu0_daemon, cpu0_self = cpu_seconds(self.daemon.pid), cpu_seconds()
        next_tick, next_rss = t0, t0 + 1.0
        warm_at, stop_at = t0 + s.warmup, t0 + s.duration
        while (now := time.monotonic()) < stop_at:
            if now < next_tick:
                time.sleep(next_tick - now)
                continue
            # one tick's records; catch up (bounded) after a late wake-up
            ticks = min(4, 1 + int((now - next_tick) / TICK_S))
            res.behind_ticks += ticks > 1
            self.produce(now, per_tick * ticks, seed)
            seed = (seed + per_tick * ticks * GOLDEN) & U64
            next_tick += TICK_S * ticks
            self.check_answers()
            if now >= next_rss:
                self.sample_rss(now, t0, warm_at)
                next_rss = now + 1.0
        elapsed = time.monotonic() - t0
        res.daemon_cpu_pct = round(100 * (cpu_seconds(self.daemon.pid) - cpu0_daemon) / elapsed, 1)
        res.producer_cpu_pct = round(100 * (cpu_seconds() - cpu0_self) / elapsed, 1)
        self.wait_last_answer()
        self.check_answers(final=True)
        res.rss_end_kb = rss_kb(self.daemon.pid)
        res.rss_max_after_warmup_kb = max(res.rss_max_after_warmup_kb, res.rss_end_kb)
        if not res.rss_after_warmup_kb:
            res.rss_after_warmup_kb = res.rss_start_kb
        res.rss_growth_kb = res.rss_max_after_warmup_kb - res.rss_after_warmup_kb
        res.duration_s = round(elapsed, 2)
        res.offered_rate = round(res.produced / elapsed)
        res.sample_interpreter_agree = (round(self.checked_agree / self.checked, 6)
                                        if self.checked else 0.0)
        dropped = self.kp.stats()["dropped"] - k0["dropped"]
        if dropped != res.dropped:
            res.problems.append(f"kernel counted {dropped} drops, the injector {res.dropped}")

    def wait_last_answer(self) -> None:
        """Until the daemon has answered the last record produced (or FINAL_ANSWER_S)."""
        last = int(self.kp.host()["seq"])
        end = time.monotonic() + FINAL_ANSWER_S
        while last and self.kp.read_decisions(last, 1).status[0] == MISSING:
            if self.daemon.poll() is not None or time.monotonic() > end:
                return                      # what stays unanswered is judged as missing
            time.sleep(0.01)

    # ---- 3. stop, read the daemon's own account -----------------------------------------------
    def stop(self) -> None:
        if self.kp is not None:
            self.kp.close()
        d = self.daemon
        if d is not None:
            if d.poll() is None:
                d.send_signal(signal.SIGTERM)
            try:
                d.wait(timeout=60)
            except subprocess.TimeoutExpired:
                d.kill()
                d.wait()
            self.daemon_out.seek(0)
            self.daemon_err = self.daemon_out.read()
            self.daemon_out.close()
        subprocess.run([sys.executable, "-m", "mlsched.runtime.cli", "unpin", "--pin-dir",
                        str(self.pin_dir)], capture_output=True)
        subprocess.run(["umount", str(self.mnt)])

    def read_summary(self) -> None:
        res = self.res
        if self.daemon is not None and self.daemon.returncode != 0:
            res.problems.append(f"daemon exit {self.daemon.returncode}:"
                                f" {self.daemon_err.strip()[-300:]}")
        if not self.summary_path.exists():
            res.problems.append("daemon wrote no summary")
            return
        s = json.loads(self.summary_path.read_text())
        res.daemon_records, res.daemon_answered = s["records"], s["answered"]
        res.daemon_stale, res.daemon_rejected = s["stale"], s["rejected"]
        res.daemon_rate = round(s["records"] / max(s["seconds"], 1e-9))
        res.latency_p50_us, res.latency_p99_us = s["latency_p50_us"], s["latency_p99_us"]
        if s["dropped"] != res.dropped:
            res.problems.append(f"daemon reported {s['dropped']} drops, injector saw"
                                f" {res.dropped}")

    def clean_up(self) -> None:
        for p in (self.summary_path, self.top / "daemon.out", self.top / "bpffs"):
            if p.is_file():
                p.unlink()
            elif p.is_dir():
                p.rmdir()
        self.top.rmdir()

    # ---- 4. pass or fail ----------------------------------------------------------------------
    def judge(self) -> None:
        res, s = self.res, self.s
        if res.produced < 0.98 * s.rate * res.duration_s:
            res.shortfalls.append(f"produced {res.offered_rate:,.0f}/s, target {s.rate:,}/s")
        if res.dropped:
            res.problems.append(f"{res.dropped} requests dropped (ring full): the daemon fell"
                                " behind")
        if res.no_consumer:
            res.problems.append(f"{res.no_consumer} requests found no consumer")
        if res.daemon_records != res.produced or res.daemon_answered != res.produced:
            res.problems.append(f"produced {res.produced}, daemon consumed {res.daemon_records},"
                                f" answered {res.daemon_answered}")
        if res.sample_missing or res.sample_wrong:
            res.problems.append(f"sample of {res.sampled}: {res.sample_missing} unanswered,"
                                f" {res.sample_wrong} wrong")
        if res.sampled - res.sample_overwritten == 0:
            res.problems.append("no answers were sampled")
        if res.rss_growth_kb >= s.max_rss_growth_kb:
            res.problems.append(f"RSS grew {res.rss_growth_kb} kB after warm-up")


def soak(duration: float, rate: int, ring_size: int = DEFAULT_RING, batch: int | None = None,
         max_wait_us: int | None = None, warmup: float | None = None,
         max_rss_growth_kb: int = 1024, interval: float = 5.0, daemon_nice: int = 0) -> Result:
    """Run one soak and return its result (``Result.ok``: no problems found)."""
    warmup = min(WARMUP_MAX_S, max(5.0, duration * 0.3)) if warmup is None else warmup
    run = Soak(Settings(duration, rate, ring_size, batch, max_wait_us, warmup,
                        max_rss_growth_kb, interval, daemon_nice))
    try:
        run.start_daemon()
        run.attach_producer()
        run.run_producer()
    finally:
        run.stop()
    run.read_summary()
    run.clean_up()
    run.judge()
    return run.res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Soak the daemon: steady requests through the real"
                                             " ring buffer; drops, RSS, sampled decisions.")
    ap.add_argument("--duration", type=float, default=600.0, help="seconds (default 600)")
    ap.add_argument("--rate", type=int, default=1_000_000, help="requests/s (default 1000000)")
    ap.add_argument("--ring-size", type=int, default=DEFAULT_RING)
    ap.add_argument("--batch", type=int, help="daemon --batch")
    ap.add_argument("--max-wait-us", type=int, help="daemon --max-wait-us")
    ap.add_argument("--warmup", type=float, help="seconds before the RSS baseline")
    ap.add_argument("--max-rss-growth-kb", type=int, default=1024)
    ap.add_argument("--daemon-nice", type=int, default=0,
                    help="run the daemon at this nice value (e.g. -5 beside a busy host)")
    ap.add_argument("--json", metavar="FILE", help="write the report here too")
    a = ap.parse_args(argv)
    r = soak(a.duration, a.rate, a.ring_size, a.batch, a.max_wait_us, a.warmup,
             a.max_rss_growth_kb, daemon_nice=a.daemon_nice)
    text = json.dumps({**asdict(r), "ok": r.ok and not r.shortfalls}, indent=1)
    print(text)
    if a.json:
        Path(a.json).write_text(text + "\n")
    return 0 if r.ok and not r.shortfalls else 1


if __name__ == "__main__":
    sys.exit(main())
