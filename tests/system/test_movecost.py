"""The move-cost measurement: the host tool (bench/movecost.c) and its driver
(bench/movecost.py). Quick settings only: what is checked is the shape of what it
measures (every size, stay and move paired, the CPUs it ran on) and the driver's
statistics on trials written by hand, never how long anything took."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from support.paths import ROOT

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")

DRIVER = [sys.executable, "-m", "bench.movecost"]
#: What --quick measures, written out by hand.
QUICK_SIZES = [16384, 65536, 262144, 1048576]
QUICK_PAIRS = 6


def two_cpus() -> list[int]:
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip("needs two usable CPUs")
    return cpus[:2]


@pytest.fixture(scope="module")
def tool(tmp_path_factory) -> Path:
    exe = tmp_path_factory.mktemp("movecost") / "movecost"
    subprocess.run(["gcc", "-O2", "-Wall", "-Wextra", "-Werror", "-o", str(exe),
                    str(ROOT / "bench" / "movecost.c")], check=True)
    return exe


def run(cmd, *args, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([*map(str, cmd), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def one_line_exit_2(r: subprocess.CompletedProcess, *words: str) -> None:
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    for w in words:
        assert w in r.stderr, r.stderr


def test_tool_pairs_a_stay_with_a_move_for_every_size(tool):
    a, b = two_cpus()
    r = run([tool], "--sizes", "16K,8192,1M", "--pairs", 3, "--warm", 1, "--cpus", f"{a},{b}")
    assert r.returncode == 0, r.stderr
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    head, trials = lines[0], lines[1:]
    assert head["sizes"] == [16384, 8192, 1048576]
    assert head["pairs"] == 3 and head["warm_passes"] == 1 and head["cpus"] == [a, b]
    assert head["line_bytes"] == 64
    assert len(trials) == 3 * 3 * 2
    seen = set()
    for t in trials:
        assert t["ns"] > 0 and t["switches"] >= 0, t
        if t["mode"] == "stay":
            assert t["cpu"] == t["src"], t
        else:
            assert t["mode"] == "move" and t["cpu"] == ({a, b} - {t["src"]}).pop(), t
        seen.add((t["size"], t["pair"], t["mode"], t["src"]))
    # each pair: one stay and one move from the same source; the source alternates
    assert seen == {(size, pair, mode, (a, b)[pair % 2]) for size in (16384, 8192, 1048576)
                    for pair in range(3) for mode in ("stay", "move")}


@pytest.mark.parametrize("args, words", [
    (["--sizes", "5000"], ("--sizes", "5000", "multiple of 64")),
    (["--sizes", "100"], ("--sizes", "100", "4096")),
    (["--sizes", "99999999999999999999999"], ("--sizes", "outside")),
    (["--sizes", "0"], ("--sizes",)),
    (["--sizes", "16K,,64K"], ("--sizes",)),
    (["--sizes", "16K,lots"], ("--sizes", "lots")),
    (["--sizes", "4G"], ("--sizes", "4G")),
    (["--pairs", "0"], ("--pairs",)),
    (["--pairs", "two"], ("--pairs", "two")),
    (["--warm", "0"], ("--warm",)),
    (["--cpus", "0,0"], ("--cpus",)),
    (["--cpus", "0,4095"], ("--cpus", "4095")),
    (["--cpus", "0"], ("--cpus",)),
    (["--bogus"], ("--bogus",)),
    (["--pairs"], ("--pairs",)),
    (["stray"], ("stray",)),
])
def test_tool_bad_arguments_exit_2_in_one_line(tool, args, words):
    r = run([tool], *args)
    one_line_exit_2(r, *words)
    assert r.stdout == ""


def test_tool_on_one_usable_cpu_exits_2(tool):
    if shutil.which("taskset") is None:
        pytest.skip("needs taskset")
    r = run(["taskset", "-c", "0", tool], "--sizes", "16K", "--pairs", 1)
    one_line_exit_2(r, "2 usable CPUs")
    assert r.stdout == ""


def test_driver_quick_run_writes_every_size(tool, tmp_path):
    two_cpus()
    out = tmp_path / "movecost.json"
    r = run(DRIVER, "--quick", "--tool", tool, "--out", out)
    assert r.returncode == 0, r.stderr
    res = json.loads(out.read_text())
    assert [s["working_set_bytes"] for s in res["sizes"]] == QUICK_SIZES
    for s in res["sizes"]:
        assert s["pairs"] == QUICK_PAIRS
        assert len(s["stay_ns"]) == len(s["move_ns"]) == QUICK_PAIRS
        assert min(s["stay_ns"]) > 0 and min(s["move_ns"]) > 0
        lo, hi = s["cost_ci95_ns"]
        assert lo <= hi
        assert s["stay_median_ns"] > 0 and s["move_median_ns"] > 0
    assert res["method"]["bootstrap_resamples"] >= 2000
    assert res["method"]["confidence"] == 0.95
    host = res["host"]
    assert host["kernel"] == platform.release()
    assert host["cpu_model"]
    levels = {c["level"] for c in host["caches"]}
    assert {1, 2} <= levels, host["caches"]
    assert "measured" in res["what"]
    table = [line for line in r.stdout.splitlines() if line.startswith("|")]
    assert len(table) == 2 + len(QUICK_SIZES), r.stdout     # header, rule, one row a size
    assert sorted(p.name for p in tmp_path.iterdir()) == ["movecost.json"]


def fake_tool(tmp_path: Path, lines: list[dict], status: int = 0, err: str = "") -> Path:
    """A stand-in for the tool: prints the given JSON lines, then exits with ``status``."""
    text = "".join(json.dumps(line) + "\n" for line in lines)
    data = tmp_path / "trials.jsonl"
    data.write_text(text)
    exe = tmp_path / "fake"
    exe.write_text(f"#!/bin/sh\ncat {data}\n"
                   + (f"echo '{err}' >&2\n" if err else "") + f"exit {status}\n")
    exe.chmod(0o755)
    return exe


def head(sizes: list[int], pairs: int) -> dict:
    return {"tool": "movecost", "line_bytes": 64, "warm_passes": 3, "pairs": pairs,
            "cpus": [0, 1], "seed": 1, "sizes": sizes}


def trial(size: int, pair: int, mode: str, ns: int, switches: int = 0) -> dict:
    src = pair % 2
    return {"size": size, "pair": pair, "mode": mode, "src": src,
            "cpu": src if mode == "stay" else 1 - src, "ns": ns, "switches": switches}


def test_driver_statistics_worked_out_by_hand(tmp_path):
    """16 KiB: both moves 100 ns slower than their stays, so the interval is that exactly.
    64 KiB: differences 0 and 100: a resample of the two pairs has median 0, 50 or 100
    with chances 1/4, 1/2, 1/4, so the 2.5 and 97.5 percentiles are 0 and 100."""
    lines = [head([16384, 65536], 2),
             trial(16384, 0, "move", 1000), trial(16384, 0, "stay", 900),
             trial(16384, 1, "stay", 1100), trial(16384, 1, "move", 1200),
             trial(65536, 0, "stay", 4000), trial(65536, 0, "move", 4000),
             trial(65536, 1, "move", 4300, switches=2), trial(65536, 1, "stay", 4200)]
    tool = fake_tool(tmp_path, lines)
    out = tmp_path / "out" / "movecost.json"
    r = run(DRIVER, "--tool", tool, "--out", out, "--sizes", "16K,64K", "--pairs", 2)
    assert r.returncode == 0, r.stderr
    small, big = json.loads(out.read_text())["sizes"]
    assert small["stay_ns"] == [900, 1100] and small["move_ns"] == [1000, 1200]
    assert small["stay_median_ns"] == 1000 and small["move_median_ns"] == 1100
    assert small["cost_ns"] == 100 and small["cost_ci95_ns"] == [100, 100]
    assert small["slowdown"] == pytest.approx(0.1)
    assert small["pairs"] == 2
    assert big["cost_ns"] == 50 and big["cost_ci95_ns"] == [0, 100]
    assert big["stay_median_ns"] == 4100 and big["move_median_ns"] == 4150
    assert big["slowdown"] == pytest.approx(50 / 4100)
    assert small["pairs_switched_out"] == 0 and big["pairs_switched_out"] == 1


@pytest.mark.parametrize("case", ["tool fails midway", "pair without its move",
                                  "move that stayed", "size not asked for"])
def test_driver_writes_nothing_when_the_measurement_is_not_whole(tmp_path, case):
    lines = [head([16384], 2), trial(16384, 0, "stay", 1000), trial(16384, 0, "move", 1200),
             trial(16384, 1, "stay", 1000), trial(16384, 1, "move", 1300)]
    status, err = 0, ""
    if case == "tool fails midway":
        lines, status, err = lines[:3], 1, "movecost: could not run on CPU 1"
    elif case == "pair without its move":
        lines = lines[:4]
    elif case == "move that stayed":
        lines[4]["cpu"] = lines[4]["src"]
    else:
        lines[2]["size"] = 32768
    tool = fake_tool(tmp_path, lines, status, err)
    out = tmp_path / "movecost.json"
    out.write_text("previous\n")
    r = run(DRIVER, "--tool", tool, "--out", out, "--sizes", "16K", "--pairs", 2)
    assert r.returncode != 0
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert out.read_text() == "previous\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fake", "movecost.json",
                                                          "trials.jsonl"]


def test_driver_relays_the_tools_refusal(tool, tmp_path):
    out = tmp_path / "movecost.json"
    r = run(DRIVER, "--tool", tool, "--out", out, "--sizes", "5000")
    one_line_exit_2(r, "multiple of 64")
    assert not out.exists()


def test_driver_without_the_tool_says_how_to_build_it(tmp_path):
    r = run(DRIVER, "--tool", tmp_path / "nope", "--out", tmp_path / "m.json", "--quick")
    one_line_exit_2(r, "nope", "make")
    assert sorted(p.name for p in tmp_path.iterdir()) == []
