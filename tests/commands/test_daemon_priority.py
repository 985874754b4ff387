"""mlsched-lite run --rt-priority: the serving process at SCHED_FIFO, its --load workers not."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from support.cli import lite, start, wait_for


def policy(pid: int) -> int:
    """The scheduling policy of ``pid`` without the reset-on-fork bit."""
    return os.sched_getscheduler(pid) & ~os.SCHED_RESET_ON_FORK


def children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(c) for c in (task / "children").read_text().split()]
    return out


def test_rt_priority_serves_at_sched_fifo_and_workers_keep_the_normal_policy(require_bpf):
    daemon = start("run", "--no-collector", "--interval", "0.2", "--rt-priority", "7",
                   "--load", "2")
    try:
        first = daemon.stdout.readline()          # the first stats line: serving
        assert " req/s " in first, (first, daemon.stderr.read() if daemon.poll() else "")
        assert policy(daemon.pid) == os.SCHED_FIFO
        assert os.sched_getparam(daemon.pid).sched_priority == 7
        assert os.sched_getscheduler(daemon.pid) & os.SCHED_RESET_ON_FORK
        wait_for(lambda: len(children(daemon.pid)) == 2, what="the two --load workers")
        for w in children(daemon.pid):
            assert policy(w) == os.SCHED_OTHER
            assert os.sched_getparam(w).sched_priority == 0
    finally:
        daemon.send_signal(signal.SIGTERM)
        out, err = daemon.communicate(timeout=30)
    assert daemon.returncode == 0, err
    assert "summary:" in out


def test_without_rt_priority_the_policy_is_left_alone(require_bpf):
    daemon = start("run", "--no-collector", "--interval", "0.2")
    try:
        first = daemon.stdout.readline()
        assert " req/s " in first, (first, daemon.stderr.read() if daemon.poll() else "")
        assert policy(daemon.pid) == os.SCHED_OTHER
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.communicate(timeout=30)
    assert daemon.returncode == 0


@pytest.mark.parametrize("value", ["0", "-1", "100", "high"])
def test_bad_rt_priority_one_line_exit_2(require_bpf, value):
    r = lite("run", "--duration", "1", "--rt-priority", value)
    assert r.returncode == 2, (r.stdout, r.stderr)
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and "--rt-priority" in err[0], r.stderr
    assert "Traceback" not in r.stderr


def test_rt_priority_refused_names_the_fix(require_bpf):
    """An RLIMIT_RTPRIO below the priority and no CAP_SYS_NICE: one line, exit 2, nothing
    left loaded (the refusal comes before serving)."""
    child = ("import resource, sys, ctypes;"
             " from mlsched.runtime import cli;"
             " resource.setrlimit(resource.RLIMIT_RTPRIO, (0, 0));"
             # drop CAP_SYS_NICE (23) from the bounding, effective and permitted sets
             " libc = ctypes.CDLL(None, use_errno=True);"
             " assert libc.prctl(24, 23, 0, 0, 0) == 0;"
             " hdr = (ctypes.c_uint32 * 2)(0x20080522, 0);"
             " data = (ctypes.c_uint32 * 6)();"
             " assert libc.syscall(125, hdr, data) == 0;"
             " data[0] &= ~(1 << 23); data[1] &= ~(1 << 23);"
             " assert libc.syscall(126, hdr, data) == 0;"
             " sys.exit(cli.main(['run', '--no-collector', '--duration', '1',"
             " '--rt-priority', '5']))")
    r = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2, (r.stdout, r.stderr)
    err = r.stderr.strip().splitlines()
    assert len(err) == 1, r.stderr
    assert "--rt-priority 5" in err[0] and "CAP_SYS_NICE" in err[0], r.stderr
    assert "summary:" not in r.stdout
