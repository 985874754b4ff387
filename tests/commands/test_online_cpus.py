"""The host's CPU count and default domains come from the online mask, gaps included
(an offlined CPU, ``nosmt``): a synthetic sysfs tree stands in for the host's."""

from __future__ import annotations

from pathlib import Path

from mlsched.runtime import topology


def fake_sysfs(root: Path, online: str, llc: dict[int, str]) -> str:
    """A /sys/devices/system/cpu with `online` and, per CPU, one L3 shared with `llc[cpu]`."""
    (root / "online").parent.mkdir(parents=True, exist_ok=True)
    (root / "online").write_text(online + "\n")
    for cpu, shared in llc.items():
        index = root / f"cpu{cpu}" / "cache" / "index3"
        index.mkdir(parents=True)
        (index / "level").write_text("3\n")
        (index / "shared_cpu_list").write_text(shared + "\n")
    return str(root)


def test_a_gap_in_the_online_mask_is_not_counted(tmp_path):
    # CPU 1 offline: three CPUs run, and the kernel counts three (idle + busy == 3)
    sysfs = fake_sysfs(tmp_path, "0,2-3", {0: "0-3", 2: "0-3", 3: "0-3"})
    assert topology.online_cpus(sysfs) == [0, 2, 3]
    assert topology.cpu_count(sysfs) == 3
    assert topology.detect_domains(sysfs) == [[0], [2], [3]]
    # the table for three CPUs keeps every online one in its domain
    assert topology.restrict([[0], [2], [3]], 3, sysfs) == [[0], [2], [3]]
    assert topology.restrict([[0], [2], [3]], 2, sysfs) == [[0], [2]]


def test_nosmt_halves_the_count(tmp_path):
    # siblings 4-7 offline: two LLC domains of two online CPUs each
    sysfs = fake_sysfs(tmp_path, "0-3", {0: "0-1,4-5", 1: "0-1,4-5", 2: "2-3,6-7",
                                          3: "2-3,6-7"})
    assert topology.cpu_count(sysfs) == 4
    assert topology.detect_domains(sysfs) == [[0, 1], [2, 3]]


def test_uncovered_cpus_are_named(tmp_path):
    sysfs = fake_sysfs(tmp_path, "0-7", {})
    assert topology.uncovered([[0, 1], [2, 3]], sysfs) == [4, 5, 6, 7]
    assert topology.uncovered([[0, 1, 2, 3], [4, 5, 6, 7]], sysfs) == []
