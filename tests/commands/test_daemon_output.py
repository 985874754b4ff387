"""mlsched-lite run whose standard output (or standard error too) cannot be written: a closed
pipe (EPIPE) or a full disk (ENOSPC, /dev/full). The interval line is one failed write among
others: counted, said once on stderr while stderr works, and serving goes on. Real kernel,
the daemon as users start it, an injecting producer on its pinned maps."""

from __future__ import annotations

import json
import os
import signal
import subprocess

import pytest

from support.cli import LITE, wait_for

pytestmark = pytest.mark.bpf

#: Requests the producer sends after the first failed line.
SENT = 4000
#: Longest wait for anything the daemon does; only catches a hang.
HANG_S = 60.0


def heartbeat(pin_dir) -> int:
    """The consumer's last poll as the pinned control map holds it (0: none yet)."""
    from mlsched.runtime.injector import Injector

    with Injector() as kp:
        kp.load(None, pin=True, pin_dir=str(pin_dir), share=True)
        return int(kp.control["heartbeat_ns"][0])


def broken_stream(kind: str) -> int:
    """A file descriptor every write to fails on: EPIPE or ENOSPC."""
    if kind == "closed pipe":
        r, w = os.pipe()
        os.close(r)
        return w
    return os.open("/dev/full", os.O_WRONLY)


@pytest.mark.parametrize("stdout, stderr", [("closed pipe", "pipe"), ("/dev/full", "pipe"),
                                            ("closed pipe", "closed pipe")])
def test_a_failed_stats_line_does_not_end_serving(pin_dir, tmp_path, stdout, stderr):
    from mlsched.runtime.injector import Injector

    summary, prom = tmp_path / "summary.json", tmp_path / "m.prom"
    out_fd = broken_stream(stdout)
    err_fd = broken_stream(stderr) if stderr != "pipe" else subprocess.PIPE
    daemon = subprocess.Popen(
        [*LITE, "run", "--no-collector", "--pin", "--pin-dir", str(pin_dir), "--interval",
         "0.1", "--stats-file", str(prom), "--summary-json", str(summary)],
        stdout=out_fd, stderr=err_fd, text=True)
    os.close(out_fd)
    if stderr != "pipe":
        os.close(err_fd)
    kp = None
    try:
        wait_for(lambda: (pin_dir / "control").exists() or daemon.poll() is not None,
                 timeout=HANG_S, what="the daemon's pinned maps")
        # the textfile is written after the interval line: once it is there, a line failed
        wait_for(lambda: prom.exists() or daemon.poll() is not None, timeout=HANG_S,
                 what="the first interval")
        assert daemon.poll() is None, (
            f"the daemon ended (status {daemon.returncode}) on a failed stats line: "
            f"{daemon.stderr.read() if daemon.stderr else ''}")
        wait_for(lambda: daemon.poll() is not None or heartbeat(pin_dir) != 0,
                 timeout=HANG_S, what="the daemon to poll")
        kp = Injector().load(None, pin=True, pin_dir=str(pin_dir), share=True)
        res = kp.inject(generate=SENT, seed=7, gen_ncpus=8, bypass_table=True)
        assert res.sent == SENT, res
        count = int(res.last_seq - res.first_seq + 1)
        wait_for(lambda: daemon.poll() is not None
                 or kp.read_decisions(int(res.first_seq), count).answered == count,
                 timeout=HANG_S, what="the daemon to answer")
        assert daemon.poll() is None, "the daemon ended while answering"
    finally:
        if kp is not None:
            kp.close()
        if daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
        try:
            _, err = daemon.communicate(timeout=HANG_S)
        except subprocess.TimeoutExpired:
            daemon.kill()
            _, err = daemon.communicate()
    assert daemon.returncode == 0, err
    s = json.loads(summary.read_text())
    assert s["records"] == s["answered"] == SENT
    assert s["stats_line_errors"] >= 1
    assert s["write_errors"] >= s["stats_line_errors"]
    if stderr == "pipe":
        said = [ln for ln in err.splitlines() if "stdout" in ln]
        assert len(said) == 1, err
        assert ("Broken pipe" if stdout == "closed pipe" else "No space left") in said[0]
        assert "Traceback" not in err and "Exception ignored" not in err, err
