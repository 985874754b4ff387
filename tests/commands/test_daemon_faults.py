"""mlsched-lite run where the world misbehaves: a producer that never stops, a full disk,
record files that are not ours. Real kernel, real files, the daemon as users start it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from support.cli import HANG_S, lite, start, wait_for

pytestmark = pytest.mark.bpf

#: A producer on the pinned maps that injects misses as fast as it can until killed. It says
#: "flooding" once the daemon has answered its first records (so the daemon has consumed
#: some, however slow this machine is to load the injector), "no answer" if that never came.
FLOOD = textwrap.dedent("""
    import sys, time
    from mlsched.runtime.injector import Injector
    kp = Injector().load(None, pin=True, pin_dir=sys.argv[1], share=True).load_injector()
    end = time.monotonic() + float(sys.argv[2])
    seed, first = 1, 0
    while not (first and kp.read_decisions(first, 1).answered):
        if time.monotonic() > end:
            print("no answer", flush=True)
            sys.exit(1)
        # until the daemon polls, requests find no consumer and are not sent
        r = kp.inject(generate=1000, seed=seed, gen_ncpus=8, bypass_table=True)
        seed += 1000
        first = first or (r.first_seq if r.sent else 0)
        time.sleep(0.01)
    print("flooding", flush=True)
    while True:
        kp.inject(generate=20000, seed=seed, gen_ncpus=8, bypass_table=True)
        seed += 20000
""")



def test_sigterm_ends_the_run_while_requests_keep_coming(pin_dir, tmp_path):
    """The drain at stop is bounded, and the heartbeat is gone once the daemon is: another
    producer on the pinned maps neither keeps the daemon alive nor waits on it."""
    from mlsched.runtime.bundle import load_bundle
    from mlsched.runtime.injector import Injector

    summary = tmp_path / "summary.json"
    daemon = start("run", "--no-collector", "--pin", "--pin-dir", pin_dir, "--interval", "0",
                   "--summary-json", summary)
    flood = None
    try:
        wait_for(lambda: (pin_dir / "control").exists() or daemon.poll() is not None,
                 what="the daemon's pinned maps")
        assert daemon.poll() is None, daemon.communicate()
        flood = subprocess.Popen([sys.executable, "-c", FLOOD, str(pin_dir), str(HANG_S)],
                                 stdout=subprocess.PIPE, text=True)
        assert flood.stdout.readline().strip() == "flooding", "the daemon answered nothing"
        assert daemon.poll() is None
        t0 = time.monotonic()
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(timeout=HANG_S)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()
            pytest.fail(f"the daemon did not stop within {HANG_S} s of SIGTERM under injection")
        took = time.monotonic() - t0
    finally:
        if flood is not None:
            flood.kill()
            flood.wait()
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
    assert daemon.returncode == 0, daemon.stderr.read()
    # the fault this guards against was an endless drain: the bound above catches it
    print(f"\nSIGTERM -> exit in {took:.2f} s while another process injected misses")
    assert json.loads(summary.read_text())["records"] > 0
    with Injector() as kp:
        kp.load(load_bundle(None).table, pin=True, pin_dir=str(pin_dir))
        assert int(kp.control["heartbeat_ns"][0]) == 0, "a stopped daemon left its heartbeat"


@pytest.fixture
def tiny_fs(tmp_path):
    """A 64 KiB tmpfs: fills up after a second of recording."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)]).returncode:
        pytest.skip("cannot mount a tmpfs")
    yield mnt
    subprocess.run(["umount", str(mnt)])


def record_rows(path: Path) -> list[list[str]]:
    text = path.read_text()
    assert text.endswith("\n"), f"{path} ends in a partial row: {text[-80:]!r}"
    rows = [line.split(",") for line in text.splitlines()]
    assert all(len(r) == len(rows[0]) == 12 for r in rows), "a row of the wrong width"
    return rows


def test_a_full_disk_is_counted_not_fatal(require_bpf, tiny_fs, tmp_path):
    """ENOSPC on --record and on the stats file: the daemon keeps serving, counts the failed
    writes, and what it did write are whole rows that the converter accepts."""
    from mlsched.convert.calibration import load

    record, prom = tiny_fs / "live.csv", tiny_fs / "m.prom"
    summary = tmp_path / "summary.json"
    r = lite("run", "--record", record, "--stats-file", prom, "--summary-json", summary,
             "--duration", "6", "--interval", "0.5", "--load", "2", timeout=90)
    assert r.returncode == 0, r.stderr
    s = json.loads(summary.read_text())
    assert s["write_errors"] > 0, "the disk filled up, yet no write failed?"
    assert s["records"] > 0 and s["recorded"] > 0
    record_rows(record)
    assert len(load(record)) == s["recorded"]


def test_a_partial_last_row_is_repaired_on_append(require_bpf, tmp_path):
    """A kill or a full disk can leave half a row; the next run's rows must not continue it."""
    from mlsched.convert.calibration import load
    from mlsched.runtime.recorder import RECORD_HEADER

    record = tmp_path / "live.csv"
    record.write_text(RECORD_HEADER + "3,2,6,0.25,0.75,1,0,1,42,123,0,1\n4,1,7,0.2")
    r = lite("run", "--record", record, "--duration", "3", "--interval", "0", "--load", "2",
             timeout=60)
    assert r.returncode == 0, r.stderr
    rows = record_rows(record)
    assert rows[1] == "3,2,6,0.25,0.75,1,0,1,42,123,0,1".split(",")
    assert len(rows) > 2
    load(record)


def test_record_never_changes_a_file_it_did_not_create(require_bpf, tmp_path):
    """A hard link to a root-only file must not become world-readable, and an existing
    file keeps its mode."""
    secret = tmp_path / "secret"
    secret.write_text("")
    os.chmod(secret, 0o600)
    link = tmp_path / "link.csv"
    os.link(secret, link)
    r = lite("run", "--record", link, "--duration", "0.5", "--interval", "0", timeout=60)
    assert r.returncode == 2 and "hard link" in r.stderr and len(r.stderr.splitlines()) == 1
    assert secret.stat().st_mode & 0o777 == 0o600

    mine = tmp_path / "mine.csv"
    mine.write_text("")
    os.chmod(mine, 0o600)
    r = lite("run", "--record", mine, "--duration", "0.5", "--interval", "0", timeout=60)
    assert r.returncode == 0, r.stderr
    assert mine.stat().st_mode & 0o777 == 0o600

    fresh = tmp_path / "fresh.csv"
    r = lite("run", "--record", fresh, "--duration", "0.5", "--interval", "0", timeout=60)
    assert r.returncode == 0, r.stderr
    assert fresh.stat().st_mode & 0o777 == 0o644


def test_no_environment_variable_chooses_the_bpf_code(require_bpf, tmp_path):
    """The BPF objects are embedded in the extension (skeletons): an object named by the
    environment, which root would have loaded without checking who wrote it, is ignored."""
    planted = tmp_path / "mlsched.bpf.o"
    planted.write_bytes(b"\x7fELF not really")
    r = lite("run", "--duration", "0.3", "--interval", "0", timeout=60,
             env={**os.environ, "MLSCHED_BPF_OBJECT": str(planted)})
    assert r.returncode == 0, r.stderr
