"""The daemon under overload, death and restart, and the surfaces it touches (files, sockets):
nothing lost or misanswered that is not counted, nothing written where it was not asked to.
Shared parts: support/hostile.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from support.cli import HANG_S, wait_for
from support.hostile import (  # noqa: F401 - report_runs: the autouse fixture
    LITE,
    counted,
    engine,
    report_runs,
)


# ---- the daemon under overload, death and restart -------------------------------------------
def start_daemon(*args, env=None, cwd=None, prefix=()) -> subprocess.Popen:
    return subprocess.Popen([*prefix, *LITE, *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=cwd)


def wait_pinned(daemon, pin_dir: Path) -> None:
    wait_for(lambda: (pin_dir / "control").exists() or daemon.poll() is not None,
             what="the daemon's pinned maps")
    assert daemon.poll() is None, daemon.communicate()


def wait_serving(daemon, kp) -> None:
    """Until the daemon polls: its heartbeat in the shared control map is fresh."""
    from mlsched.runtime.kernel import now_ns

    def fresh():
        assert daemon.poll() is None, daemon.communicate()
        beat = int(kp.control["heartbeat_ns"][0])
        return beat != 0 and now_ns() - beat < 300_000_000
    wait_for(fresh, what="the daemon to serve")


def stop_daemon(daemon, sig=signal.SIGTERM) -> tuple[str, str]:
    if daemon.poll() is None:
        daemon.send_signal(sig)
    return daemon.communicate(timeout=60)


def bpf_fd_ids(pid: int) -> dict[str, list[int]]:
    """Kernel ids of the BPF programs, maps and links a process holds (/proc/PID/fdinfo)."""
    ids = {"progs": [], "maps": [], "links": []}
    for fd in os.listdir(f"/proc/{pid}/fdinfo"):
        try:
            text = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
        if "link_id" in fields:
            ids["links"].append(int(fields["link_id"]))
        elif "prog_id" in fields:
            ids["progs"].append(int(fields["prog_id"]))
        elif "map_id" in fields:
            ids["maps"].append(int(fields["map_id"]))
    return ids


@pytest.fixture
def pin_dir(bpffs):
    d = bpffs / "mlsched"
    yield d
    if d.exists():
        subprocess.run([*LITE, "unpin", "--pin-dir", str(d)], capture_output=True)


def hostile_wire(n: int, seed: int) -> np.ndarray:
    """Mostly healthy 8-CPU wire records, some off-grid, some with absurd values."""
    from support.traffic import generated_features

    f = generated_features(seed, n, 8, invalid_pct=5).astype(np.uint32)
    rng = np.random.default_rng(seed)
    wild = rng.random(n) < 0.03
    f[wild] = rng.integers(0, 2**32, (int(wild.sum()), 5), dtype=np.uint64).astype(np.uint32)
    return f


def prometheus(path: Path) -> dict[str, float]:
    values = {}
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            name, value = line.split(" ")
            values[name] = float(value)
    return values


def test_overload_counts_drops_keeps_serving_and_never_misanswers(pin_dir, tmp_path,
                                                                  record_property):
    """Bursts far larger than a 16 KiB ring (227 records, 1024 decision slots) into a running
    daemon: the kernel counts every drop, the daemon reports them and keeps serving, every
    record that got through is answered once with its own decision, the backlog drains, and
    a paced producer afterwards loses nothing."""
    from mlsched.runtime.injector import Injector

    ring = 16384
    summary, prom = tmp_path / "s.json", tmp_path / "m.prom"
    daemon = start_daemon("run", "--no-collector", "--pin", "--pin-dir", pin_dir, "--ring-size",
                          ring, "--interval", "0.2", "--summary-json", summary,
                          "--stats-file", prom)
    e = engine()
    kp = None
    sent = dropped = bad = aliased = checked = 0
    try:
        wait_pinned(daemon, pin_dir)
        kp = Injector().load(None, pin=True, pin_dir=str(pin_dir), ring_size=ring,
                               share=True)
        wait_serving(daemon, kp)
        k0 = kp.stats()
        slots = kp.decision_slots
        for burst in range(6):
            feats = hostile_wire(65536, 1000 + burst)
            r = kp.inject(feats, bypass_table=True)
            assert r.sent + r.dropped == len(feats) and r.no_consumer == 0
            assert r.dropped > 0, "the burst should overflow the ring"
            sent, dropped = sent + r.sent, dropped + r.dropped
            last = int(r.last_seq)
            wait_for(lambda s=last: kp.read_decisions(s, 1).answered == 1,
                     what="the backlog to drain")
            if burst == 2:                          # malformed records in the middle
                # the drain above means room in the ring, but the daemon may still be
                # busy: whatever the kernel drops of these is counted as a drop
                for m in (kp.inject(feats[:100], bad_version=True),
                          kp.inject(feats[:50], bad_size=True)):
                    bad, dropped = bad + m.sent, dropped + m.dropped
            ok = r.seq != 0
            seqs, want = r.seq[ok], e.decide_wire(feats[ok])
            rb = kp.read_decisions(int(r.first_seq), int(r.last_seq - r.first_seq + 1))
            idx = (seqs - r.first_seq).astype(np.int64)
            status = rb.status[idx]
            # every record that got through was answered: its own answer, or the slot was
            # taken over by a newer answered request (aliasing, > slots sent in one burst)
            assert (status != 1).all(), "an answer is missing after the drain"
            answered = status == 0
            np.testing.assert_array_equal(rb.decision[idx][answered], want[answered])
            assert answered[-min(len(seqs), slots):].all()
            aliased += int((~answered).sum())
            checked += int(answered.sum())
            assert daemon.poll() is None, "the daemon died under overload"
        # paced afterwards: nothing lost
        before = kp.stats()["dropped"]
        for i in range(40):
            feats = hostile_wire(100, 5000 + i)
            r = kp.inject(feats, bypass_table=True)
            assert r.dropped == 0 and r.sent == 100
            sent += r.sent
            time.sleep(0.01)
        wait_for(lambda s=int(r.last_seq): kp.read_decisions(s, 1).answered == 1,
                 what="the paced requests to be answered")
        assert kp.stats()["dropped"] == before
        k1 = kp.stats()
        assert k1["dropped"] - k0["dropped"] == dropped
        wait_for(lambda: prom.exists() and prometheus(prom)["mlsched_requests_total"] >= sent,
                 what="the textfile to catch up")
    finally:
        if kp is not None:
            kp.close()
        out, err = stop_daemon(daemon)
    assert daemon.returncode == 0, err
    s = json.loads(summary.read_text())
    p = prometheus(prom)
    print(f"\noverload: {sent} sent, {dropped} dropped, {bad} malformed; {checked} answers"
          f" checked, {aliased} taken over by newer answers in their slot; daemon: {s}")
    record_property("overload_dropped", dropped)
    record_property("overload_sent", sent)
    assert s["dropped"] == dropped and p["mlsched_dropped_total"] == dropped
    assert s["records"] == s["answered"] == sent
    assert bad > 0 and s["rejected"] == bad and p["mlsched_rejected_total"] == bad
    assert s["double_answers"] == 0 and s["late_answers"] == 0
    assert s["no_consumer"] == 0
    import re

    per_interval = [int(v) for v in re.findall(r"\| drops (\d+) stale", out)]
    assert sum(per_interval) > 0 and sum(per_interval) <= dropped, out
    assert f"dropped {dropped}," in out


def test_daemon_killed_mid_stream_then_restarted(pin_dir, tmp_path, record_property):
    """kill -9 while requests flow: the kernel keeps answering table hits, misses get STAY
    and count ``no_consumer`` once the heartbeat is 1 s old; requests sent to the dead
    daemon before that read back STAY and count ``stale``. A restarted ``--pin`` daemon
    takes over the same maps: counters and sequence numbers carry on, answers resume."""
    import threading

    from mlsched.runtime.injector import Injector
    from mlsched.runtime.kernel import DEFAULT_CONSUMER_TIMEOUT_NS

    e = engine()
    timeout_s = DEFAULT_CONSUMER_TIMEOUT_NS / 1e9
    daemon = start_daemon("run", "--no-collector", "--pin", "--pin-dir", pin_dir,
                          "--interval", "0")
    kp = None
    log: list[tuple[float, np.ndarray, object]] = []
    try:
        wait_pinned(daemon, pin_dir)
        kp = Injector().load(None, pin=True, pin_dir=str(pin_dir), share=True)
        wait_serving(daemon, kp)
        stop = threading.Event()
        one_at_a_time = threading.Lock()    # inject() fills one shared batch buffer

        def send(feats):
            with one_at_a_time:
                log.append((time.monotonic(), feats, kp.inject(feats)))

        def flow():
            i = 0
            while not stop.is_set():
                send(hostile_wire(500, 20_000 + i))
                i += 1
                time.sleep(0.005)

        kp.load_injector()
        t = threading.Thread(target=flow)
        t.start()
        # the daemon has answered the flow before it dies (however slow this machine is)
        wait_for(lambda: len(log) >= 20 and log[-1][2].sent
                 and kp.read_decisions(int(log[-1][2].last_seq), 1).answered == 1,
                 timeout=HANG_S, what="the daemon to answer the flow")
        daemon_ids = bpf_fd_ids(daemon.pid)
        killed_at = time.monotonic()
        daemon.kill()                                   # SIGKILL: no clean-up at all
        daemon.wait()
        # at once, while the heartbeat is still young: these go to the ring and go stale
        send(hostile_wire(500, 19_999))
        # until the flow has run well past the heartbeat's timeout
        wait_for(lambda: log[-1][0] > killed_at + timeout_s + 0.5, timeout=HANG_S,
                 what="the flow to pass the consumer timeout")
        stop.set()
        t.join()
        stats_dead = kp.stats()

        hits = sent_before = no_consumer = 0
        pending = []
        for at, feats, r in log:
            hit = r.fate == 0
            np.testing.assert_array_equal(r.result[hit], e.decide_wire(feats[hit]))
            assert (r.result[~hit] == 0).all(), "a miss must be answered STAY at once"
            hits += int(hit.sum())
            no_consumer += r.no_consumer
            if at > killed_at + timeout_s + 0.1:
                # heartbeat too old: nothing goes to the ring any more
                assert r.sent == 0 and r.no_consumer == int((~hit).sum())
            elif at < killed_at - 0.2:
                assert r.no_consumer == 0
            if r.sent:
                pending.append(r.seq[r.seq != 0])
            if at < killed_at - 0.2:
                sent_before += r.sent
        assert hits > 0 and no_consumer > 0
        assert stats_dead["no_consumer"] == no_consumer
        # read back every request that reached the ring: answered before the kill, or STAY
        seqs = np.concatenate(pending)
        first = int(seqs.min())
        before = kp.stats()["stale"]
        rb = kp.read_decisions(first, int(seqs.max()) - first + 1)
        idx = (seqs - first).astype(np.int64)
        status, decision = rb.status[idx], rb.decision[idx]
        missing = status != 0
        stale = int(missing.sum())
        assert stale > 0, "requests sent after the kill should have gone unanswered"
        assert (decision[missing] == 0).all()
        assert kp.stats()["stale"] - before == stale
        assert (status[seqs < seqs.max() - 50_000] == 0).all()
        print(f"\nkilled: {hits} kernel hits answered throughout, {no_consumer} misses answered"
              f" STAY as no_consumer, {stale} requests sent to the dead daemon read back STAY"
              " and counted stale")
        record_property("death_no_consumer", no_consumer)
        record_property("death_stale", stale)
        # programs and links die with the process; the pinned maps stay
        from support.leaks import eventually_gone

        left = eventually_gone({**daemon_ids, "maps": []})
        assert left == set(), left
        assert (pin_dir / "stats").exists()

        # restart: the same maps, counters and sequence numbers carry on
        last_seq = kp.host()["seq"]
        summary = tmp_path / "s2.json"
        daemon = start_daemon("run", "--no-collector", "--pin", "--pin-dir", pin_dir,
                              "--interval", "0", "--summary-json", summary)
        wait_pinned(daemon, pin_dir)
        wait_serving(daemon, kp)
        stats_back = kp.stats()
        for name in ("produced", "no_consumer", "stale", "kernel_hits", "misses_sent"):
            assert stats_back[name] >= stats_dead[name], name
        feats = hostile_wire(2000, 99)
        r = kp.inject(feats, bypass_table=True)
        assert r.no_consumer == 0 and r.sent == 2000 and r.first_seq == last_seq + 1
        wait_for(lambda: kp.read_decisions(int(r.last_seq), 1).answered == 1,
                 what="the restarted daemon to answer")
        rb = kp.read_decisions(int(r.first_seq), 2000)
        np.testing.assert_array_equal(rb.decision, e.decide_wire(feats))
        out, err = stop_daemon(daemon)
        assert daemon.returncode == 0, err
        s = json.loads(summary.read_text())
        # the new daemon also answered what the dead one left on the ring
        assert 2000 <= s["records"] <= 2000 + stale
    finally:
        if kp is not None:
            kp.close()
        if daemon.poll() is None:
            stop_daemon(daemon)


def test_killed_unpinned_daemon_leaves_nothing(require_bpf):
    daemon = start_daemon("run", "--no-collector", "--interval", "0")
    try:
        # loaded: the production object's three collector programs (a daemon that never
        # injects never loads the injector)
        wait_for(lambda: daemon.poll() is not None or len(bpf_fd_ids(daemon.pid)["progs"]) >= 3,
                 what="the daemon to load")
        time.sleep(0.3)
        ids = bpf_fd_ids(daemon.pid)
    finally:
        daemon.kill()
        daemon.wait()
    from support.leaks import eventually_gone

    assert ids["progs"] and ids["maps"]
    assert eventually_gone(ids) == set()


# ---- no surprise surfaces ---------------------------------------------------------------------
WRITE_FLAGS = ("O_WRONLY", "O_RDWR", "O_CREAT", "O_TRUNC", "O_APPEND")
TRACED = ("open,openat,openat2,creat,rename,renameat,renameat2,unlink,unlinkat,mkdir,mkdirat,"
          "rmdir,link,linkat,symlink,symlinkat,truncate,chmod,fchmodat,chown,fchownat,mknod,"
          "mknodat,socket,bind,listen")


def written_paths(trace: str) -> tuple[list[tuple[str, str]], list[str]]:
    """(call, path) of every successful call that creates, changes or removes a file, and the
    socket/bind/listen calls, from an ``strace -f`` log."""
    import re

    writes, sockets = [], []
    for line in trace.splitlines():
        m = re.match(r"^\d+\s+(\w+)\((.*)\)\s+=\s+(-?\d+)", line)
        if not m or int(m.group(3)) < 0:
            continue
        call, args = m.group(1), m.group(2)
        if call in ("socket", "bind", "listen"):
            sockets.append(line)
            continue
        paths = re.findall(r'"((?:[^"\\]|\\.)*)"', args)
        if call.startswith("open") or call == "creat":
            if call != "creat" and not any(f in args for f in WRITE_FLAGS):
                continue
            if "O_TMPFILE" in args:                 # anonymous: never has a name
                continue
        for p in paths[:1] if not call.startswith(("rename", "link", "symlink")) else paths:
            writes.append((call, p))
    return writes, sockets


def socket_inodes(pid: int) -> set[int]:
    out = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                out.add(int(target[8:-1]))
    return out


def net_inodes() -> dict[str, set[int]]:
    """Socket inodes per /proc/net table (tcp, tcp6, udp, udp6, raw, raw6, unix)."""
    tables = {}
    for name in ("tcp", "tcp6", "udp", "udp6", "raw", "raw6", "unix"):
        inodes = set()
        with contextlib.suppress(OSError):
            lines = Path(f"/proc/net/{name}").read_text().splitlines()[1:]
            col = 6 if name == "unix" else 9
            for ln in lines:
                parts = ln.split()
                if len(parts) > col and parts[col].isdigit():
                    inodes.add(int(parts[col]))
        tables[name] = inodes
    return tables


def snapshot(d: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(d)): (p.stat().st_mode, p.stat().st_size)
            for p in sorted(d.rglob("*"))}


def test_daemon_surfaces(require_bpf, tmp_path, record_property):
    """The collector daemon with every output on, in fresh HOME/TMPDIR/cwd, under strace:
    no socket at all, files only at the stats, summary and record paths (0644, the stats
    file replaced by rename so a reader never sees half of it), nothing left elsewhere."""
    if shutil.which("strace") is None:
        pytest.skip("strace not installed")
    home, tmp, cwd, out = (tmp_path / n for n in ("home", "tmp", "cwd", "out"))
    for d in (home, tmp, cwd, out):
        d.mkdir()
    before = {d: snapshot(d) for d in (home, tmp, cwd)}
    trace = tmp_path / "trace.txt"
    prom, rec, summ = out / "m.prom", out / "rec.csv", out / "s.json"
    env = {**os.environ, "HOME": str(home), "TMPDIR": str(tmp)}
    daemon = start_daemon("run", "--duration", "4", "--interval", "0.1", "--load", "1",
                          "--stats-file", prom, "--record", rec, "--summary-json", summ,
                          env=env, cwd=cwd,
                          prefix=["strace", "-f", "-qq", "-o", str(trace), "-e",
                                  f"trace={TRACED}"])
    reads = partial = 0
    inodes_seen, sock_seen, net_hits = set(), set(), {}
    try:
        end = time.monotonic() + HANG_S
        while daemon.poll() is None and time.monotonic() < end:
            children = Path(f"/proc/{daemon.pid}/task/{daemon.pid}/children")
            with contextlib.suppress(OSError):
                for pid in map(int, children.read_text().split()):
                    sock_seen |= socket_inodes(pid)
            if sock_seen:
                for name, inodes in net_inodes().items():
                    if inodes & sock_seen:
                        net_hits[name] = sorted(inodes & sock_seen)
            with contextlib.suppress(FileNotFoundError):
                with open(prom) as f:
                    inodes_seen.add(os.fstat(f.fileno()).st_ino)
                    text = f.read()
                reads += 1
                if not (text.endswith("\n") and "mlsched_peak_rss_bytes" in text):
                    partial += 1
            time.sleep(0.01)
    finally:
        o, e = stop_daemon(daemon)
    assert daemon.returncode == 0, e
    writes, sockets = written_paths(trace.read_text())
    import re

    shapes = sorted({(c, re.sub(r"\.(m\.prom|s\.json)\.\w+$", r".\1.XXXXXXXX",
                                p.replace(str(tmp_path), "T"))) for c, p in writes})
    print(f"\nsurfaces: {reads} reads of the textfile ({len(inodes_seen)} versions, {partial}"
          f" partial), sockets {sorted(sock_seen)}, {len(writes)} writes: {shapes}")
    record_property("textfile_reads", reads)
    assert sockets == [] and sock_seen == set() and net_hits == {}
    assert reads > 10 and partial == 0 and len(inodes_seen) > 1
    # every file the daemon and its workers created, changed or removed
    allowed_exact = {str(prom), str(rec), str(summ), "/dev/null", "/proc/self/clear_refs"}
    transient = set()
    for call, p in writes:
        if call.startswith("unlink") and p.startswith(str(tmp) + "/"):
            transient.add(p)
    unexpected = []
    for call, p in writes:
        name = Path(p).name
        if p in allowed_exact or p in transient:
            continue
        if Path(p).parent == out and name.startswith((".m.prom.", ".s.json.")):
            continue
        unexpected.append((call, p))
    assert unexpected == []
    # what is left: exactly the three outputs, 0644; HOME, TMPDIR and cwd as they were
    assert sorted(p.name for p in out.iterdir()) == ["m.prom", "rec.csv", "s.json"]
    for p in out.iterdir():
        assert p.stat().st_mode & 0o777 == 0o644, p
    assert {d: snapshot(d) for d in (home, tmp, cwd)} == before
    s = json.loads(summ.read_text())
    assert s["records"] > 0 and s["recorded"] > 0


def test_record_path_symlink_and_fifo_refused(require_bpf, tmp_path):
    """As root a --record link must not lead the daemon to append to (or chmod) its target;
    a FIFO there must not hang it."""
    target = tmp_path / "target"
    target.write_text("keep\n")
    os.chmod(target, 0o600)
    link = tmp_path / "link"
    link.symlink_to(target)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for path, why in ((link, "symbolic link"), (fifo, "not a regular file")):
        r = subprocess.run([*LITE, "run", "--duration", "1", "--no-collector", "--record",
                            str(path)], capture_output=True, text=True, timeout=60)
        assert r.returncode == 2 and why in r.stderr.strip().splitlines()[-1], r.stderr
        assert "Traceback" not in r.stderr
    assert target.read_text() == "keep\n" and target.stat().st_mode & 0o777 == 0o600
