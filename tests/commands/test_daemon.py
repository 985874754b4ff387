"""mlsched-lite run / replay / unpin on the real kernel: the daemon as users start it."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from support.cli import lite, prometheus, start, wait_for
from support.leaks import eventually_gone
from support.scenarios import SCENARIOS, teacher_decisions

N = 8


def test_daemon_answers_an_external_producer(pin_dir, tmp_path, bundle8):
    """Injector (this process) -> pinned ring -> daemon (another process) -> decisions map:
    what the kernel side reads is what the engine decides, for every request."""
    from mlsched.runtime.engine import Engine
    from mlsched.runtime.injector import Injector
    from support.traffic import generated_features

    summary, prom = tmp_path / "summary.json", tmp_path / "m.prom"
    daemon = start("run", "--no-collector", "--pin", "--pin-dir", pin_dir, "--interval", "0.5",
                   "--summary-json", summary, "--stats-file", prom)
    kp = None
    try:
        wait_for(lambda: (pin_dir / "control").exists() or daemon.poll() is not None,
                 what="the daemon's pinned maps")
        assert daemon.poll() is None, daemon.communicate()
        kp = Injector().load(None, pin=True, pin_dir=str(pin_dir), share=True)
        # a producer that joins takes the consumer's settings: wait until it polls
        wait_for(lambda: int(kp.control["heartbeat_ns"][0]) != 0, what="the daemon to poll")
        engine = Engine(bundle8)
        sent = 0
        for chunk in range(8):
            feats = generated_features(100 + chunk, 4000, N, invalid_pct=5)
            res = kp.inject(feats, bypass_table=True)
            assert res.sent == 4000 and res.dropped == 0
            sent += res.sent
            count = int(res.last_seq - res.first_seq + 1)
            wait_for(lambda r=res, c=count: kp.read_decisions(int(r.first_seq), c).answered == c,
                     what="answers")
            got = kp.read_decisions(int(res.first_seq), count)
            expected = engine.decide_wire(feats)
            np.testing.assert_array_equal(got.decision[res.seq - res.first_seq], expected)
        # the engine's answers are the interpreter's on the exact features (boundary table)
        x = feats.astype(np.float64)
        x[:, 3:] /= 1024
        on_grid = feats[:, 1] + feats[:, 2] == N
        agree = (engine.interpreter_decide(x[on_grid]) == expected[on_grid]).mean()
        assert agree >= 0.995
        wait_for(lambda: prom.exists() and
                 prometheus(prom).get("mlsched_requests_total", 0) >= sent,
                 what="the textfile to count every request")
    finally:
        if kp is not None:
            kp.close()
        daemon.send_signal(signal.SIGTERM)
        out, err = daemon.communicate(timeout=30)
    assert daemon.returncode == 0, err
    assert "summary:" in out
    s = json.loads(summary.read_text())
    assert s["records"] == s["answered"] == sent
    assert s["dropped"] == 0 and s["rejected"] == 0
    assert s["table"] + s["level2"] + s["interpreter"] == sent and s["interpreter"] > 0
    assert s["level2"] > 0                  # bypassed records in refined cells: user level 2
    assert 0 < s["latency_p50_us"] <= s["latency_p99_us"]
    # --pin keeps the maps (and their counters) for the next run, until unpin
    assert (pin_dir / "stats").exists()
    again = lite("run", "--no-collector", "--pin", "--pin-dir", pin_dir, "--duration", "0.3",
                 "--interval", "0", "--summary-json", summary)
    assert again.returncode == 0, again.stderr
    assert "no program" not in again.stderr
    r = lite("unpin", "--pin-dir", pin_dir)
    assert r.returncode == 0 and not pin_dir.exists()
    assert eventually_gone(s["bpf_ids"]) == set()


def test_collector_run_reports_records_and_cleans_up(require_bpf, tmp_path):
    from mlsched.convert import calibration

    summary, prom, record = tmp_path / "s.json", tmp_path / "m.prom", tmp_path / "live.csv"
    r = lite("run", "--duration", "3", "--interval", "1", "--load", "2", "--stats-file", prom,
             "--record", record, "--summary-json", summary)
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stdout.splitlines() if " req/s " in ln]
    assert len(lines) >= 2, r.stdout
    s = json.loads(summary.read_text())
    assert s["records"] > 0 and s["cfs_seen"] == s["records"]
    assert s["kernel_hits"] + s["misses_sent"] >= s["records"]
    assert 0.0 <= s["agreement"] <= 1.0
    assert s["table_cpus"] == (max(map(int, Path("/sys/devices/system/cpu/online").read_text()
                                       .replace("-", ",").split(","))) + 1)
    p = prometheus(prom)
    assert p["mlsched_requests_total"] == s["records"]
    assert oct(prom.stat().st_mode & 0o777) == "0o644"
    # the record is a calibration file mlsched-convert accepts
    x = calibration.load(record)
    assert x.shape[0] == s["recorded"] == s["cfs_seen"]
    # a wake-up in place (STAY) comes from a CPU of a domain and names no destination
    rows = [ln.split(",") for ln in record.read_text().splitlines()]
    assert rows[0][-2:] == ["src_domain", "dst_domain"]
    stays = [r for r in rows[1:] if r[5] == "0"]
    assert all(r[10].isdigit() and r[11] == "" for r in stays), stays[:3]
    assert eventually_gone(s["bpf_ids"]) == set()


def test_sigterm_stops_cleanly(require_bpf, tmp_path):
    summary = tmp_path / "s.json"
    daemon = start("run", "--interval", "0.2", "--summary-json", summary)
    try:
        first = daemon.stdout.readline()
        assert " req/s " in first, (first, daemon.stderr.read() if daemon.poll() else "")
    finally:
        daemon.send_signal(signal.SIGTERM)
        out, err = daemon.communicate(timeout=30)
    assert daemon.returncode == 0, err
    assert "summary:" in out
    assert eventually_gone(json.loads(summary.read_text())["bpf_ids"]) == set()


@pytest.mark.parametrize("args,message", [
    (["--ring-size", "1000"], "power of two"),
    (["--stats-file", "/nonexistent/dir/m.prom"], "does not exist"),
    (["--load", "1000"], "--load 1000"),
    (["--max-wait-us", "-1"], "--max-wait-us"),
    (["--domains", "0-3,2-5"], "domain"),
    (["--cpus", "64"], "--cpus 64"),
])
def test_bad_flags_one_line_exit_2(require_bpf, args, message):
    r = lite("run", "--duration", "1", *args)
    assert r.returncode == 2, (r.stdout, r.stderr)
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and message in err[0], r.stderr
    assert "Traceback" not in r.stderr


def test_unprivileged_run_names_the_fix(require_bpf):
    # drop every capability inside the child: the interpreter itself may not be
    # readable by an unprivileged user
    child = ("import os, sys, locale, gettext;"
             " from mlsched.runtime import cli, serve, kernel, engine, api;"
             " os.setgid(65534); os.setuid(65534); sys.exit(cli.main(['run', '--duration', '1']))")
    r = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True,
                       timeout=60, cwd="/")
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip() == ("mlsched-lite needs CAP_BPF and CAP_PERFMON:"
                                " run as root or grant them")


def test_replay_decisions_are_what_the_kernel_reads(require_bpf, tmp_path, bundle8):
    from mlsched.runtime.engine import Engine

    rng = np.random.default_rng(5)
    n = 3000
    idle = rng.integers(0, N + 1, n)
    x = np.stack([rng.integers(0, N, n), idle, N - idle,
                  rng.integers(0, 1025, n) / 1024, rng.integers(0, 1025, n) / 1024], axis=1)
    rows = [",".join(map(str, r)) for r in SCENARIOS]
    rows += [f"{int(a)},{int(b)},{int(c)},{d!r},{e!r}" for a, b, c, d, e in x]
    rows += ["1,nan,7,0.5,0.5", "1,-1,9,0.5,0.5", "x,y,z,1,1", "1,2,6,0.5,inf"]
    csv = tmp_path / "f.csv"
    csv.write_text("cpu,cpu_idle,cpu_not_idle,src_dom_load,dst_dom_load\n" + "\n".join(rows) + "\n")
    expected = Engine(bundle8).decide(x).decisions
    for extra in ([], ["--bypass-table"]):
        r = lite("replay", csv, *extra)
        assert r.returncode == 0, r.stderr
        out = r.stdout.split()
        assert len(out) == len(rows)
        got = np.array([o == "MIGRATE" for o in out], dtype=np.uint8)
        assert got[:3].tolist() == teacher_decisions(SCENARIOS)
        np.testing.assert_array_equal(got[3:3 + n], expected)
        assert out[-4:] == ["STAY"] * 4
        assert "invalid 4" in r.stderr


def test_replay_where_names_the_level_that_answered(require_bpf, tmp_path, bundle8):
    """--where: level1 for a sure cell, level2 under an UNSURE one, invalid for bad rows."""
    from mlsched.runtime.wire import UNSURE

    cpu, idle, qs, qd = (int(v[0]) for v in np.nonzero(bundle8.table == UNSURE))
    sure = [int(v[0]) for v in np.nonzero(bundle8.table != UNSURE)]
    rows = [f"{sure[0]},{sure[1]},{N - sure[1]},{sure[2] / 10},{sure[3] / 10}",
            f"{cpu},{idle},{N - idle},{qs / 10},{qd / 10}",
            "1,nan,7,0.5,0.5"]
    csv = tmp_path / "f.csv"
    csv.write_text("cpu,cpu_idle,cpu_not_idle,src_dom_load,dst_dom_load\n" + "\n".join(rows) + "\n")
    r = lite("replay", "--where", csv)
    assert r.returncode == 0, r.stderr
    where = [line.split()[1] for line in r.stdout.splitlines()]
    assert where[0] == "level1" and where[2] == "invalid"
    assert where[1] in ("level2", "ring")          # ring only for a line that flips twice
    assert "level 2 " in r.stderr and "level 1 " in r.stderr
    plain = lite("replay", csv)
    assert [line.split()[0] for line in r.stdout.splitlines()] == plain.stdout.split()
