"""scx_mlsched's CPU count (bpf/cpus.h): the online CPUs (/sys/devices/system/cpu/online),
as mlsched-lite's table counts them (idle + busy == N), not every CPU the host could
have; a host with more possible or hot-pluggable CPUs than the scheduler's 64 starts as
long as the online ones fit."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from support.paths import ROOT

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")

MAX_CPUS = 64   # SCX_MLSCHED_MAX_CPUS


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    exe = tmp_path_factory.mktemp("driver") / "cpus_driver"
    subprocess.run(["gcc", "-O2", "-Wall", "-Werror", f"-I{ROOT / 'scx_mlsched' / 'src'}", "-o", str(exe),
                    str(ROOT / "support" / "cpus_driver.c")], check=True)
    return exe


def run(driver, path, max_cpus: int = MAX_CPUS) -> subprocess.CompletedProcess:
    return subprocess.run([str(driver), str(path), str(max_cpus)], capture_output=True,
                          text=True, timeout=30)


def parse(driver, tmp_path, text: bytes, max_cpus: int = MAX_CPUS) -> subprocess.CompletedProcess:
    f = tmp_path / "online"
    f.write_bytes(text)
    return run(driver, f, max_cpus)


def fields(r: subprocess.CompletedProcess) -> dict[str, str]:
    return dict(w.split("=") for w in r.stdout.split())


@pytest.mark.parametrize("text, count, highest, low, nr_cpus", [
    (b"0-3\n", 4, 3, "0xf", 4),
    (b"0-3", 4, 3, "0xf", 4),
    (b"0\n", 1, 0, "0x1", 1),
    (b"0-1,2,3-5\n", 6, 5, "0x3f", 6),
    (b"0-63\n", 64, 63, "0xffffffffffffffff", 64),
])
def test_online_cpus_numbered_from_0_are_the_count(driver, tmp_path, text, count, highest,
                                                   low, nr_cpus):
    r = parse(driver, tmp_path, text)
    assert r.returncode == 0, r.stderr
    assert fields(r) == {"count": str(count), "highest": str(highest), "low": low,
                         "nr_cpus": str(nr_cpus)}


@pytest.mark.parametrize("text, count, highest, low, words", [
    # CPU 1 offline: three CPUs run, but the scheduler numbers its CPUs 0..N-1
    (b"0,2-3", 3, 3, "0xd", ["CPU 1 is offline", "CPU 3 is online"]),
    (b"0-1,4-5\n", 4, 5, "0x33", ["CPU 2 is offline", "CPU 5 is online"]),
    (b"0-1,64-65\n", 4, 65, "0x3", ["CPU 2 is offline", "CPU 65 is online"]),
    (b"0-64\n", 65, 64, "0xffffffffffffffff", ["65 CPUs online", "at most 64"]),
    (b"0-8191\n", 8192, 8191, "0xffffffffffffffff", ["8192 CPUs online", "at most 64"]),
])
def test_online_cpus_that_do_not_fit_are_named(driver, tmp_path, text, count, highest, low,
                                               words):
    r = parse(driver, tmp_path, text)
    assert r.returncode == 1
    assert fields(r) == {"count": str(count), "highest": str(highest), "low": low}
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and all(w in lines[0] for w in words), lines


@pytest.mark.parametrize("text", [
    b"", b"\n", b"0-", b"-1", b"3-1", b"a", b"0,,1", b"0,", b",0", b"0, 1", b" 0-3",
    b"0-3\n\n", b"0-3 ", b"0-3\r\n", b"1,0", b"0-3,2-5", b"0-3,3", b"0x1", b"+1",
    b"99999999999999999999", b"4294967296", b"0-3\x00", b"0-3\x002",
])
def test_anything_else_is_not_a_cpu_list(driver, tmp_path, text):
    r = parse(driver, tmp_path, text)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.strip().splitlines() == [f"cpus_driver: {tmp_path / 'online'}: not a CPU list"]


def test_a_missing_file_is_named(driver, tmp_path):
    r = run(driver, tmp_path / "nowhere")
    assert r.returncode == 1 and "No such file or directory" in r.stderr


def test_the_hosts_online_cpus(driver):
    r = run(driver, "/sys/devices/system/cpu/online")
    assert r.stdout.startswith("count="), r.stderr
    assert int(fields(r)["count"]) == os.sysconf("SC_NPROCESSORS_ONLN")
