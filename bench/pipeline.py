"""The whole path with the real consumer: injector -> ring -> mlsched-lite run -> write-back.

1. mount a private BPF filesystem (a temporary directory) for the pins;
2. start the consumer: ``mlsched-lite run --no-collector --pin --pin-dir D`` (or, on a
   checkout without it, the stand-in ``bench.consumer``) and wait until it polls;
3. load the same BPF object in this process with ``pin=True, share=True``: libbpf reuses the pinned
   maps, so records injected here land in the consumer's ring and its answers land in
   the ``decisions`` map this process reads back through the kernel's own reader;
4. stop the consumer (SIGINT), read its summary and its peak RSS (VmHWM), unmount.

Throughput sessions inject with ``bypass_table`` so every record travels the ring, as
fast as the ring takes them (records the full ring refuses are counted, not answered);
a repetition ends when the kernel reads the answer to its last seq. Latency sessions
offer a fixed rate in small batches and take the consumer's per-record
ts_ns -> answer-stored histogram.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from bench.common import send_all
from mlsched.runtime.injector import Injector
from mlsched.runtime.kernel import DEFAULT_CONSUMER_TIMEOUT_NS
from mlsched.runtime.stats import peak_rss_mb

ROOT = Path(__file__).resolve().parent.parent
#: How long the consumer may take to start polling (bundle check, BPF load).
START_TIMEOUT_S = 30.0
#: How long a repetition may wait for the answer to its last record.
ANSWER_TIMEOUT_S = 10.0
#: Records per injector call in throughput sessions (the injector's batch array holds 65536).
INJECT_BATCH = 1 << 16
#: Ring bytes per record: struct mlsched_request (56) + the ring's 8-byte header.
RING_RECORD_BYTES = 64


class PipelineError(RuntimeError):
    pass


def daemon_command() -> list[str] | None:
    """``mlsched-lite`` when it has the ``run`` subcommand, else None."""
    exe = Path(sys.executable).with_name("mlsched-lite")
    exe = str(exe) if exe.exists() else shutil.which("mlsched-lite")
    if not exe:
        return None
    try:
        p = subprocess.run([exe, "run", "-h"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return [exe, "run"] if p.returncode == 0 else None


@contextmanager
def private_bpffs():
    """A BPF filesystem mounted on a fresh temporary directory, unmounted afterwards."""
    mnt = Path(tempfile.mkdtemp(prefix="mlsched-bench-bpffs-"))
    try:
        p = subprocess.run(["mount", "-t", "bpf", "bpf", str(mnt)], capture_output=True,
                           text=True)
        if p.returncode:
            raise PipelineError(f"cannot mount a BPF filesystem on {mnt}: {p.stderr.strip()}")
        try:
            yield mnt
        finally:
            subprocess.run(["umount", str(mnt)], capture_output=True)
    finally:
        try:
            mnt.rmdir()
        except OSError:
            pass


class Session:
    """One consumer process plus this process's handle on its pinned maps."""

    def __init__(self, bundle: Path, table: np.ndarray, ring_bytes: int,
                 consumer_args: list[str], duration_s: float, use_daemon: bool = True,
                 consumer_module: str = "bench.consumer"):
        """``consumer_module`` is the stand-in run when the daemon is not used."""
        self.bundle, self.table, self.ring_bytes = bundle, table, ring_bytes
        self.consumer_args, self.duration_s = consumer_args, duration_s
        self.consumer_module = consumer_module
        self.daemon = daemon_command() if use_daemon else None
        self.proc: subprocess.Popen | None = None
        self.kp: Injector | None = None
        self.summary: dict = {}
        self.rss_mb: float | None = None
        self.stderr = ""

    @property
    def consumer_name(self) -> str:
        return "mlsched-lite run" if self.daemon else f"{self.consumer_module} (stand-in)"

    def __enter__(self) -> Session:
        self._mount = private_bpffs()
        mnt = self._mount.__enter__()
        self.pin_dir = str(mnt / f"mlsched-{os.getpid()}")
        self.summary_path = mnt.parent / f"{mnt.name}-summary.json"
        self._err = tempfile.TemporaryFile(mode="w+")
        common = ["--pin-dir", self.pin_dir, "--duration", str(self.duration_s),
                  "--summary-json", str(self.summary_path), "--bundle", str(self.bundle),
                  "--ring-size", str(self.ring_bytes), *self.consumer_args]
        if self.daemon:
            argv = [*self.daemon, "--no-collector", "--pin", "--interval", "0", *common]
        else:
            argv = [sys.executable, "-m", self.consumer_module, *common]
        self.argv = argv
        try:
            self.proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL,
                                         stderr=self._err)
            self._wait_for_pins()
            self.kp = Injector().load(None, pin=True, pin_dir=self.pin_dir, share=True,
                                        ring_size=self.ring_bytes,
                                        consumer_timeout_ns=DEFAULT_CONSUMER_TIMEOUT_NS)
            self.kp.load_injector()
            self._wait_for_heartbeat()
        except BaseException:
            self.__exit__(*sys.exc_info())
            raise
        return self

    def _consumer_failed(self, what: str) -> PipelineError:
        self._err.seek(0)
        err = self._err.read().strip().splitlines()
        tail = err[-1] if err else "no message"
        return PipelineError(f"{self.consumer_name} {what}: {tail}")

    def _wait_for_pins(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        want = [Path(self.pin_dir, m) for m in ("requests", "decisions", "control", "table")]
        while not all(p.exists() for p in want):
            if self.proc.poll() is not None:
                raise self._consumer_failed(f"exited with status {self.proc.returncode}")
            if time.monotonic() > deadline:
                raise self._consumer_failed(f"pinned nothing in {START_TIMEOUT_S:.0f} s")
            time.sleep(0.02)

    def _wait_for_heartbeat(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        ctl = self.kp.control
        while int(ctl["heartbeat_ns"][0]) == 0:
            if self.proc.poll() is not None:
                raise self._consumer_failed(f"exited with status {self.proc.returncode}")
            if time.monotonic() > deadline:
                raise self._consumer_failed("never polled")
            time.sleep(0.01)

    def __exit__(self, *exc) -> None:
        try:
            if self.proc is not None:
                if self.proc.poll() is None:
                    rss = peak_rss_mb(self.proc.pid)
                    self.rss_mb = None if math.isnan(rss) else rss
                    self.proc.send_signal(signal.SIGINT)
                    try:
                        self.proc.wait(timeout=15)
                    except subprocess.TimeoutExpired:
                        self.proc.kill()
                        self.proc.wait()
                try:
                    self.summary = json.loads(self.summary_path.read_text())
                except (OSError, ValueError):
                    self.summary = {}
                self._err.seek(0)
                self.stderr = self._err.read()[-4000:]
            if self.kp is not None:
                try:
                    self.kp.unpin()
                finally:
                    self.kp.close()
        finally:
            self._err.close()
            self.summary_path.unlink(missing_ok=True)
            shutil.rmtree(self.pin_dir, ignore_errors=True)
            self._mount.__exit__(None, None, None)

    # ---- traffic ---------------------------------------------------------------------

    def wait_answered(self, seq: int) -> bool:
        deadline = time.monotonic() + ANSWER_TIMEOUT_S
        while self.kp.read_decisions(seq, 1).answered == 0:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                return False
        return True

    def throughput(self, features: np.ndarray, expected: np.ndarray, records: int) -> dict:
        """Inject ``records`` records (``features`` cycled) as fast as the ring takes them;
        decisions/s = records sent / (first inject -> answer to the last one readable)."""
        kp = self.kp
        # half the ring per call: the consumer drains one half while the next is written
        chunk = max(1024, min(INJECT_BATCH, self.ring_bytes // RING_RECORD_BYTES // 2))
        t0 = time.perf_counter()
        out = send_all(lambda _: kp.inject(features[:chunk], bypass_table=True), records,
                       lambda: self.proc.poll() is None, self.consumer_name)
        sent, dropped, first, last, res = (out.sent, out.dropped, out.first_seq, out.last_seq,
                                           out.last)
        ok = self.wait_answered(last)
        elapsed = time.perf_counter() - t0
        if not ok:
            raise self._consumer_failed(f"did not answer seq {last} in {ANSWER_TIMEOUT_S:.0f} s")
        # every seq still in its slot must be answered, and answered right
        span = min(last - first + 1, kp.decision_slots)
        read = kp.read_decisions(last - span + 1, span)
        sent_mask = res.fate == 1
        last_seqs = res.seq[sent_mask]
        got = read.decision[(last_seqs - (last - span + 1)).astype(np.int64)]
        wrong = int(np.count_nonzero(got != expected[:chunk][sent_mask]))
        return {"per_s": sent / elapsed, "sent": sent, "dropped": dropped,
                "checked": span, "answered_of_checked": read.answered, "wrong_of_last_batch":
                wrong, "seconds": elapsed}

    def paced(self, features: np.ndarray, rate: float, seconds: float, batch: int) -> dict:
        """Offer ``rate`` records/s in batches of ``batch`` for ``seconds``; every answer must be
        readable afterwards. The latency itself comes from the consumer's summary."""
        kp = self.kp
        period = batch / rate
        ticks = max(1, int(seconds / period))
        sent = dropped = 0
        first = last = 0
        late_ticks = 0
        t0 = time.perf_counter()
        for i in range(ticks):
            due = t0 + i * period
            now = time.perf_counter()
            if due - now > 1e-4:
                time.sleep(due - now - 1e-4)
            while time.perf_counter() < due:
                pass
            if time.perf_counter() - due > period:
                late_ticks += 1
            j = (i * batch) % (len(features) - batch)
            res = kp.inject(features[j:j + batch], bypass_table=True)
            sent += res.sent
            dropped += res.dropped
            if res.sent:
                first = first or res.first_seq
                last = res.last_seq
        elapsed = time.perf_counter() - t0
        ok = self.wait_answered(last)
        # every seq still in its slot (older ones were reused by newer seqs) is answered
        span = min(last - first + 1, kp.decision_slots)
        read = kp.read_decisions(last - span + 1, span) if ok else None
        return {"offered_per_s": sent / elapsed, "sent": sent, "dropped": dropped,
                "checked": span, "answered_of_checked": read.answered if read else 0,
                "late_ticks": late_ticks, "ticks": ticks}
