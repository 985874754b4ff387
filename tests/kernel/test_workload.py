"""mlsched-workload (scx_mlsched/tools/workload.c) built on the host: its working set
(-W: every unit writes each cache line of a worker's own buffer once) and its modelled move
cost (-M: a worker that finds itself on another CPU than at its previous unit spins that
long and counts it). The program is built static for the guest; here it is plain C."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from support.cli import HANG_S
from support.paths import ROOT

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")

LINE = 64


@pytest.fixture(scope="module")
def workload(tmp_path_factory) -> Path:
    exe = tmp_path_factory.mktemp("workload") / "mlsched-workload"
    subprocess.run(["gcc", "-O2", "-Wall", "-Wextra", "-Wno-unused-parameter",
                    "-Wno-sign-compare", "-Werror", "-o", str(exe),
                    str(ROOT / "scx_mlsched" / "tools" / "workload.c")], check=True)
    return exe


def run(cmd, *args) -> subprocess.CompletedProcess:
    return subprocess.run([*map(str, cmd), *map(str, args)], capture_output=True, text=True,
                          timeout=HANG_S)


def result(r: subprocess.CompletedProcess) -> dict:
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_defaults_charge_nothing_and_touch_nothing(workload):
    res = result(run([workload], "-w", 2, "-u", 10, "-c", 1000, "-s", 0))
    assert res["moves_charged"] == 0 and res["charged_ns"] == 0
    assert res["working_set"] == 0 and res["move_cost_ns"] == 0
    assert res["units_done"] == 20 and res["lines_touched"] == 0
    assert res["failed"] == 0 and res["workers"] == 2 and res["units"] == 10


def test_a_working_set_is_touched_once_a_unit_and_the_work_stays_the_same(workload):
    # 3 workers x 7 units x (64 KiB / 64 B = 1024 lines)
    res = result(run([workload], "-w", 3, "-u", 7, "-c", 1000, "-s", 0, "-W", 65536))
    assert res["units_done"] == 21 and res["spin"] == 1000
    assert res["lines_touched"] == 3 * 7 * 1024
    assert res["working_set"] == 65536
    # a size that is not whole lines still touches its last, partial line
    res = result(run([workload], "-w", 1, "-u", 2, "-c", 0, "-s", 0, "-W", 100))
    assert res["lines_touched"] == 2 * 2


def test_pinned_to_one_cpu_no_move_is_charged(workload):
    if shutil.which("taskset") is None:
        pytest.skip("needs taskset")
    res = result(run(["taskset", "-c", "0", workload], "-w", 4, "-u", 20, "-c", 10000,
                     "-s", 100, "-W", 4096, "-M", 1_000_000))
    assert res["move_cost_ns"] == 1_000_000
    assert res["moves_charged"] == 0 and res["charged_ns"] == 0
    assert res["units_done"] == 80


def voluntary_switches(pid: int) -> int:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in status.splitlines():
        if line.startswith("voluntary_ctxt_switches:"):
            return int(line.split()[1])
    return 0


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(c) for c in text.split()]


def test_a_worker_moved_once_is_charged_once(workload):
    """One worker, started on the first CPU, blocks 100 ms after every 8th of its 480
    units; once it has blocked (so it has begun its units) it is moved to the second CPU
    and stays there: exactly one move is charged, the modelled cost once."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip("needs two usable CPUs")
    first, second = cpus[:2]
    p = subprocess.Popen([str(workload), "-w", "1", "-u", "480", "-c", "0", "-s", "100000",
                          "-M", "12345"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, preexec_fn=lambda: os.sched_setaffinity(0, {first}))
    try:
        end = time.monotonic() + HANG_S
        while not children(p.pid) or voluntary_switches(children(p.pid)[0]) < 1:
            assert time.monotonic() < end and p.poll() is None, "the worker never blocked"
            time.sleep(0.01)
        os.sched_setaffinity(children(p.pid)[0], {second})
        out, err = p.communicate(timeout=HANG_S)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 0, err
    res = json.loads(out)
    assert res["moves_charged"] == 1 and res["charged_ns"] == 12345, res
    assert res["units_done"] == 480


@pytest.mark.parametrize("args, words", [
    (["-W", "-1"], ("--working-set", "-1")),
    (["-W", "lots"], ("--working-set", "lots")),
    (["-W", "2147483649"], ("--working-set",)),
    (["-M", "-5"], ("--move-cost-ns", "-5")),
    (["-M", "1.5"], ("--move-cost-ns", "1.5")),
    (["-M", "2000000000"], ("--move-cost-ns",)),
])
def test_bad_working_set_or_move_cost_exit_2_in_one_line(workload, args, words):
    r = run([workload], "-w", 1, "-u", 1, *args)
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert r.stdout == "" and len(r.stderr.strip().splitlines()) == 1, r.stderr
    for w in words:
        assert w in r.stderr, r.stderr
