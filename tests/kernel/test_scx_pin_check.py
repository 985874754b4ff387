"""scx_mlsched --pin-dir (bpf/pin_check.h): the loader reuses what is pinned there as its
decision maps, so the directory and every pin it takes must be on a BPF filesystem,
no symbolic link, owned by root (or the loader's user) and writable by nobody else: as
mlsched-lite checks its pin directory. Real kernel, private BPF filesystem, uid 65534 as
the other user."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from support.paths import ROOT

pytestmark = [pytest.mark.bpf,
              pytest.mark.skipif(shutil.which("gcc") is None or shutil.which("bpftool") is None,
                                 reason="needs gcc and bpftool")]

NOBODY = 65534
NAMES = ("control", "table")


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    exe = tmp_path_factory.mktemp("driver") / "pin_check_driver"
    subprocess.run(["gcc", "-O2", "-Wall", "-Werror", f"-I{ROOT / 'scx_mlsched' / 'src'}", "-o", str(exe),
                    str(ROOT / "support" / "pin_check_driver.c")], check=True)
    return exe


def pin_map(path) -> None:
    subprocess.run(["bpftool", "map", "create", str(path), "type", "array", "key", "4",
                    "value", "8", "entries", "1", "name", path.name[:15]], check=True)


@pytest.fixture
def pins(bpffs):
    """A pin directory as `mlsched-lite run --pin` leaves it: 0700, maps 0600, root's."""
    d = bpffs / "mlsched"
    d.mkdir(mode=0o700)
    for name in NAMES:
        pin_map(d / name)
    return d


def check(driver, pin_dir, *names) -> subprocess.CompletedProcess:
    return subprocess.run([str(driver), str(pin_dir), *(names or NAMES)], capture_output=True,
                          text=True, timeout=30)


def refused(r: subprocess.CompletedProcess, path, *words: str) -> str:
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert len(lines) == 1, lines
    head = f"pin_check_driver: {path}"
    assert lines[0].startswith(head) and lines[0][len(head)] in " :", lines[0]
    assert all(w in lines[0] for w in words), lines[0]
    assert "mlsched-lite run --pin" in lines[0], "the line names no fix"
    return lines[0]


def test_maps_pinned_by_root_are_taken(driver, pins):
    r = check(driver, pins)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "control: ok\ntable: ok\n"


def test_a_plain_directory_is_refused(driver, tmp_path):
    d = tmp_path / "pins"
    d.mkdir(mode=0o700)
    for name in NAMES:
        (d / name).write_text("")
        (d / name).chmod(0o600)
    refused(check(driver, d), d, "not on a BPF filesystem")


def test_a_link_to_a_pin_directory_is_refused(driver, pins, tmp_path):
    on_bpffs = pins.parent / "link"
    on_bpffs.symlink_to(pins)
    refused(check(driver, on_bpffs), on_bpffs, "symbolic link")
    elsewhere = tmp_path / "link"
    elsewhere.symlink_to(pins)
    refused(check(driver, elsewhere), elsewhere, "symbolic link")


def test_a_directory_group_or_others_may_write_is_refused(driver, pins):
    pins.chmod(0o770)
    refused(check(driver, pins), pins, "writable by group or others", "0770")
    pins.chmod(0o702)
    refused(check(driver, pins), pins, "writable by group or others", "0702")


def test_the_bpf_filesystem_root_is_refused(driver, bpffs):
    pin_map(bpffs / "control")
    refused(check(driver, bpffs, "control"), bpffs, "writable by group or others", "1777")


def test_a_directory_of_another_user_is_refused(driver, pins):
    os.chown(pins, NOBODY, NOBODY)
    refused(check(driver, pins), pins, f"owned by uid {NOBODY}")


def test_a_pin_of_another_user_is_refused(driver, pins):
    os.chown(pins / "table", NOBODY, NOBODY)
    refused(check(driver, pins), pins / "table", f"owned by uid {NOBODY}")


def test_a_pin_others_may_write_is_refused(driver, pins):
    (pins / "table").chmod(0o620)
    refused(check(driver, pins), pins / "table", "writable by group or others", "0620")


def test_a_link_in_the_pin_directory_is_refused(driver, pins):
    (pins / "table").unlink()
    (pins / "table").symlink_to(pins / "control")
    refused(check(driver, pins), pins / "table", "symbolic link")


def test_a_directory_where_a_pin_belongs_is_refused(driver, pins):
    (pins / "table").unlink()
    (pins / "table").mkdir(mode=0o700)
    refused(check(driver, pins), pins / "table", "not a pinned map")


def test_nothing_pinned_is_named(driver, pins, bpffs):
    refused(check(driver, pins, "control", "requests"), pins / "requests", "nothing pinned")
    refused(check(driver, bpffs / "missing"), bpffs / "missing", "nothing pinned")
