"""scx_mlsched's report file (bpf/report_file.h), written as root into a directory others
can write to (-o /tmp/scx.json is the documented example): nothing another user planted
there may be followed or overwritten, and the report appears whole."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from support.paths import ROOT

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    exe = tmp_path_factory.mktemp("driver") / "report_file_driver"
    subprocess.run(["gcc", "-O2", "-Wall", "-Werror", f"-I{ROOT / 'scx_mlsched' / 'src'}", "-o", str(exe),
                    str(ROOT / "support" / "report_file_driver.c")], check=True)
    return exe


def run_driver(driver, target, prepare) -> subprocess.CompletedProcess:
    p = subprocess.Popen([str(driver), str(target)], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pid = int(p.stdout.readline())
    prepare(pid)
    out, err = p.communicate("go\n", timeout=30)
    return subprocess.CompletedProcess(p.args, p.returncode, out, err)


def test_a_planted_link_at_the_temporary_name_is_not_followed(driver, tmp_path):
    shared = tmp_path / "tmp"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    target = shared / "scx.json"

    def plant(pid):
        for name in (f"scx.json.tmp.{pid}", f"scx.json.tmp.{pid + 1}"):
            (shared / name).symlink_to(victim)

    r = run_driver(driver, target, plant)
    assert victim.read_text() == "precious\n", "the report went through the planted link"
    assert r.returncode == 0, r.stderr
    assert target.read_text() == '{"ok": 1}\n'
    assert not target.is_symlink()
    assert target.stat().st_mode & 0o777 == 0o644


def test_an_unwritable_directory_is_one_error_and_leaves_nothing(driver, tmp_path):
    target = tmp_path / "missing" / "scx.json"
    r = run_driver(driver, target, lambda pid: None)
    assert r.returncode == 1 and "No such file or directory" in r.stderr
    assert not (tmp_path / "missing").exists()
