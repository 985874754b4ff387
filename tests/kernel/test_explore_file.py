"""scx_mlsched's --explore-out file (bpf/explore_file.h), appended to as root, run after run
(guest/run.sh), and read by ``mlsched-train --labels outcome``: every row on disk is whole
(a run killed mid-row, a full disk), rows go only under their own header, never through a
link or into a file another user owns, and a row counts as written only once it is."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from support.paths import ROOT

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")

HEADER = ("cpu,cpu_idle,cpu_not_idle,src_dom_load,dst_dom_load,action,propensity,wait_ns,"
          "src_queued,dst_queued,src_queued_after,dst_queued_after,kind,pid,ts_ns")
ROW1 = "0,1,3,0.750000,0.250000,1,0.500,41000,2,0,1,0,push,101,1000\n"
ROW2 = "2,2,2,0.500000,0.000000,0,0.500,9000,1,0,0,0,pull,102,2000\n"
ROW3 = "1,0,4,1.000000,0.500000,1,0.500,120000,3,1,2,1,push,103,3000\n"
NOBODY = 65534


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    exe = tmp_path_factory.mktemp("driver") / "explore_file_driver"
    subprocess.run(["gcc", "-O2", "-Wall", "-Werror", f"-I{ROOT / 'scx_mlsched' / 'src'}", "-o", str(exe),
                    str(ROOT / "support" / "explore_file_driver.c")], check=True)
    return exe


def append(driver, path, rows: str, fsize: int | None = None) -> subprocess.CompletedProcess:
    args = [str(driver), str(path), HEADER] + ([str(fsize)] if fsize is not None else [])
    return subprocess.run(args, input=rows, capture_output=True, text=True, timeout=30)


def counts(r: subprocess.CompletedProcess) -> dict[str, int]:
    return {k: int(v) for k, v in (w.split("=") for w in r.stdout.split())}


def refused(r: subprocess.CompletedProcess, *words: str) -> str:
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1, r.stderr
    assert len(lines) == 1 and all(w in lines[0] for w in words), lines
    assert r.stdout == ""
    return lines[0]


def test_a_new_file_gets_the_header_then_whole_rows(driver, tmp_path):
    target = tmp_path / "explore.csv"
    r = append(driver, target, ROW1 + ROW2)
    assert r.returncode == 0, r.stderr
    assert counts(r) == {"rows": 2, "lost": 0, "repaired": 0, "created": 1}
    assert target.read_text() == HEADER + "\n" + ROW1 + ROW2
    assert target.stat().st_mode & 0o777 == 0o644


def test_a_row_cut_by_a_kill_is_removed_before_the_next_run_appends(driver, tmp_path):
    """The next run's rows must not be glued onto half a row: mlsched-train refuses a line
    whose field count is wrong, and with it the whole file."""
    from mlsched.train import records

    target = tmp_path / "explore.csv"
    cut = "3,1,2,0.25"
    target.write_text(HEADER + "\n" + ROW1 + cut)
    r = append(driver, target, ROW2 + ROW3)
    assert r.returncode == 0, r.stderr
    assert counts(r) == {"rows": 2, "lost": 0, "repaired": len(cut), "created": 0}
    assert f"partial last row ({len(cut)} bytes)" in r.stderr
    assert target.read_text() == HEADER + "\n" + ROW1 + ROW2 + ROW3
    rec = records.read([target], "outcome")
    assert len(rec) == 3 and list(rec.columns["pid"]) == [101, 102, 103]


def test_a_cut_first_row_goes_back_to_the_header(driver, tmp_path):
    target = tmp_path / "explore.csv"
    target.write_text(HEADER + "\n0,1")
    r = append(driver, target, ROW1)
    assert r.returncode == 0, r.stderr
    assert counts(r)["repaired"] == 3
    assert target.read_text() == HEADER + "\n" + ROW1


def test_a_failed_write_is_cut_back_counted_and_not_the_end(driver, tmp_path):
    """A full disk (here the file size limit) lets a row only partly in: that part goes,
    the row is counted lost, not written, and a row that fits afterwards is written."""
    target = tmp_path / "explore.csv"
    long_row = ("0,1,3,0.750000,0.250000,1,0.500,18446744073709551615,2,0,1,0,push,104,"
                "18446744073709551615\n")
    limit = len(HEADER) + 1 + len(ROW1) + len(ROW2) + 10     # room for ROW2, not long_row
    assert len(long_row) > len(ROW2) + 10
    r = append(driver, target, ROW1 + long_row + ROW2, fsize=limit)
    assert r.returncode == 0, r.stderr
    assert counts(r) == {"rows": 2, "lost": 1, "repaired": 0, "created": 1}
    assert "File too large" in r.stderr
    assert target.read_text() == HEADER + "\n" + ROW1 + ROW2
    # nothing at all fits: every row lost, none half there
    r = append(driver, target, ROW3 + ROW3, fsize=target.stat().st_size + 5)
    assert counts(r) == {"rows": 0, "lost": 2, "repaired": 0, "created": 0}
    assert target.read_text() == HEADER + "\n" + ROW1 + ROW2


def test_an_empty_file_of_ours_gets_the_header(driver, tmp_path):
    target = tmp_path / "explore.csv"
    target.write_text("")
    r = append(driver, target, ROW1)
    assert counts(r) == {"rows": 1, "lost": 0, "repaired": 0, "created": 0}
    assert target.read_text() == HEADER + "\n" + ROW1


@pytest.mark.parametrize("content", [
    "cpu,action,ts_ns\n0,1,5\n",                        # another layout
    "cpu,cpu_idle,cpu_not_idle,src_dom_lo",            # a header cut short
    HEADER + ",extra\n" + ROW1,                        # a longer first line
    "\n" + HEADER + "\n",
])
def test_a_file_of_another_layout_is_left_alone(driver, tmp_path, content):
    target = tmp_path / "explore.csv"
    target.write_text(content)
    refused(append(driver, target, ROW1), str(target), "header")
    assert target.read_text() == content


def test_a_symbolic_link_is_not_followed(driver, tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    target = tmp_path / "explore.csv"
    target.symlink_to(victim)
    refused(append(driver, target, ROW1), str(target), "symbolic link")
    assert victim.read_text() == "precious\n"
    dangling = tmp_path / "dangling.csv"
    dangling.symlink_to(tmp_path / "nowhere")
    refused(append(driver, dangling, ROW1), "symbolic link")
    assert not (tmp_path / "nowhere").exists()


def test_a_fifo_or_directory_is_refused(driver, tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    refused(append(driver, fifo, ROW1), str(fifo), "not a regular file")
    refused(append(driver, tmp_path, ROW1), "not a regular file")


def test_a_file_of_another_user_is_refused(driver, tmp_path):
    target = tmp_path / "explore.csv"
    target.write_text(HEADER + "\n")
    os.chown(target, NOBODY, NOBODY)
    refused(append(driver, target, ROW1), str(target), f"owned by uid {NOBODY}")
    assert target.read_text() == HEADER + "\n"


def test_a_file_with_other_names_is_refused(driver, tmp_path):
    target = tmp_path / "explore.csv"
    target.write_text(HEADER + "\n")
    os.link(target, tmp_path / "other-name")
    refused(append(driver, target, ROW1), "2 hard links")
    assert target.read_text() == HEADER + "\n"
