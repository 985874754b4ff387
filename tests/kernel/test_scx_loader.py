"""The scx_mlsched loader itself, built by scx_mlsched/Makefile as guest/Makefile builds it (the guest kernel's
cache: `make guest-kernel`), run on the host where it needs no sched_ext: `--list-domains`
counts the CPUs and prints the domains before anything is loaded. The sysfs CPU lists it
reads are replaced inside a private mount namespace, so the host's own stay as they are."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from support.paths import ROOT

SYSFS_CPU = Path("/sys/devices/system/cpu")

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("gcc"),
    reason="needs root, unshare and gcc")


def guest_cache() -> tuple[Path, Path] | None:
    """(kernel dir, tools dir) of the guest build cache, None when it is not built."""
    r = subprocess.run(["make", "-s", "-C", str(ROOT / "guest"), "dir"], capture_output=True,
                       text=True)
    out = Path(r.stdout.strip())
    try:
        kdir = Path((out / "kernel-dir").read_text().strip())
        tools = Path((out / "tools-dir").read_text().strip())
    except OSError:
        return None
    need = [kdir / "vmlinux.h", kdir / "scx-include", tools / "lib" / "libbpf.a",
            tools / "sbin" / "bpftool"]
    return (kdir, tools) if all(p.exists() for p in need) else None


@pytest.fixture(scope="module")
def scx(tmp_path_factory) -> Path:
    cache = guest_cache()
    if cache is None or not shutil.which("clang-19"):
        pytest.skip("the guest kernel cache is not built (make guest-kernel) or clang-19 missing")
    kdir, tools = cache
    out = tmp_path_factory.mktemp("scx")
    subprocess.run(["make", "-s", "-C", str(ROOT / "scx_mlsched"), f"KDIR={kdir}",
                    f"TOOLS={tools}", f"OUT={out}"], check=True, capture_output=True)
    exe = out / "scx_mlsched"
    return exe


def list_domains(scx: Path, tmp_path: Path, **lists: str) -> subprocess.CompletedProcess:
    """scx_mlsched --list-domains with sysfs CPU lists (online=, possible=) replaced."""
    binds = []
    for name, text in lists.items():
        fake = tmp_path / name
        fake.write_text(text)
        binds.append(f"mount --bind {fake} {SYSFS_CPU / name} && ")
    script = "".join(binds) + f"exec {scx} --list-domains"
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                          capture_output=True, text=True, timeout=60)


def test_an_offline_cpu_is_not_scheduled(scx, tmp_path):
    if os.cpu_count() < 2:
        pytest.skip("needs two CPUs")
    r = list_domains(scx, tmp_path, online="0\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "0\n", "CPU 1 is offline but got a domain"


def test_possible_cpus_beyond_the_limit_are_no_reason_to_refuse(scx, tmp_path):
    online = (SYSFS_CPU / "online").read_text().strip()
    r = list_domains(scx, tmp_path, possible="0-127\n")
    assert r.returncode == 0, r.stderr
    expected = subprocess.run([str(scx), "--list-domains"], capture_output=True, text=True)
    assert r.stdout == expected.stdout, f"online {online}: the domains changed"


@pytest.mark.parametrize("online, words", [
    ("0,2-3\n", ["CPU 1 is offline while CPU 3 is online", "bring CPU 1 online"]),
    ("0-64\n", ["65 CPUs online", "at most 64"]),
    ("0-3 junk\n", ["/sys/devices/system/cpu/online: not a CPU list"]),
])
def test_online_cpus_it_cannot_schedule_are_one_error(scx, tmp_path, online, words):
    r = list_domains(scx, tmp_path, online=online)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and r.stdout == ""
    assert len(lines) == 1 and lines[0].startswith("scx_mlsched: "), lines
    assert all(w in lines[0] for w in words), lines[0]
