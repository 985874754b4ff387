"""Live collector, clean teardown, pinning and error messages, on the real kernel."""

from __future__ import annotations

import errno
import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from mlsched.runtime import wire
from support.leaks import bpf_ids, eventually_gone

pytestmark = pytest.mark.bpf

ROOT = Path(__file__).resolve().parents[2]
SRC_MIGRATE, SRC_WAKEUP = 1, 2
STAY, MIGRATE, NONE = 0, 1, 255
#: Upper bound on how long the collector test waits for traffic (a liveness bound, not a
#: performance assertion: on an idle 2-CPU VM the first records arrive within milliseconds).
COLLECT_LIMIT_S = 20.0
WORKERS = 3


def _busy_worker(stop) -> None:
    """CPU-bound with short sleeps: wakeups for STAY samples, imbalance for migrations."""
    x = 0
    while not stop.is_set():
        for _ in range(20000):
            x += 1
        time.sleep(0.0005)


def test_collector_produces_requests_under_load(kernel_path):
    ncpu = os.cpu_count() or 1
    # a table for this host, so live keys can hit (hits are reported: shadow mode)
    kp = kernel_path(np.random.default_rng(0).integers(0, 3, (ncpu, ncpu + 1, 11, 11),
                                                       dtype=np.uint8))
    kp.attach_collector(report_hits=True)
    assert len(kp.ids()["links"]) == 3

    stop = mp.Event()
    workers = [mp.Process(target=_busy_worker, args=(stop,)) for _ in range(WORKERS)]
    for w in workers:
        w.start()
    pids = {w.pid for w in workers}
    records = []
    try:
        deadline = time.monotonic() + COLLECT_LIMIT_S
        while time.monotonic() < deadline:
            batch = kp.poll(timeout_ms=100, max_records=4096)
            if len(batch):
                records.append(batch.copy())
                kp.answer(batch, np.zeros(len(batch), np.uint8))
            seen = np.concatenate(records) if records else None
            if seen is not None and np.isin(seen["pid"], list(pids)).sum() >= 50:
                break
    finally:
        stop.set()
        for w in workers:
            w.join()
    kp.detach_collector()
    assert records, "the collector produced no requests while workers ran"
    r = np.concatenate(records)
    assert np.isin(r["pid"], list(pids)).sum() >= 50
    assert (r["version"] == wire.ABI_VERSION).all()
    assert set(np.unique(r["source"])) <= {SRC_MIGRATE, SRC_WAKEUP}
    # the CFS action follows the event: migrations MIGRATE (with a target CPU), wakeups STAY
    mig, wake = r[r["source"] == SRC_MIGRATE], r[r["source"] == SRC_WAKEUP]
    assert (mig["cfs_action"] == MIGRATE).all() and (mig["dst_cpu"] < ncpu).all()
    assert (wake["cfs_action"] == STAY).all()
    # features describe this host
    f = r["f"]
    assert (f["cpu"] < ncpu).all()
    assert (r["raw_cpu"] < ncpu).all()
    assert (f["idle"] + f["busy"] <= ncpu).all()
    assert (f["src_load"] <= 1024).all() and (f["dst_load"] <= 1024).all()
    # hits carry the kernel's decision, misses ask for one
    hit = r["reason"] == 3
    assert np.isin(r["kernel_decision"][hit], (STAY, MIGRATE)).all()
    assert (r["kernel_decision"][~hit] == NONE).all()
    assert len(np.unique(r["seq"])) == len(r)
    stats = kp.stats()
    assert stats["produced"] >= len(r)
    assert kp.host()["transitions"] > 0


def test_close_leaves_no_program_map_or_link(kernel_path):
    kp = kernel_path(None)
    kp.attach_collector()
    ids = kp.ids()
    assert ids["progs"] and ids["maps"] and len(ids["links"]) == 3
    assert set(ids["progs"]) <= bpf_ids("prog")
    kp.close()
    assert not kp.loaded
    assert eventually_gone(ids) == set()


def test_killed_process_leaves_nothing_attached(require_bpf):
    child = textwrap.dedent("""
        import json, sys, time
        from mlsched.runtime.injector import Injector
        kp = Injector().load(None)
        kp.attach_collector()
        print(json.dumps(kp.ids()), flush=True)
        time.sleep(600)
    """)
    p = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, text=True,
                         cwd=ROOT)
    try:
        ids = json.loads(p.stdout.readline())
        assert set(ids["links"]) <= bpf_ids("link")
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    assert eventually_gone(ids) == set()


def test_pinned_maps_keep_counters_across_restarts(kernel_path, bpffs):
    from mlsched.runtime.injector import Injector

    pin_dir = str(bpffs / "mlsched")
    first = Injector().load(None, pin=True, pin_dir=pin_dir, consumer_timeout_ns=0)
    try:
        res = first.inject(generate=500, seed=1, gen_ncpus=4)
        assert res.sent == 500
        stats = first.stats()
    finally:
        first.close()
    assert (bpffs / "mlsched" / "stats").exists() and (bpffs / "mlsched" / "requests").exists()

    second = Injector().load(None, pin=True, pin_dir=pin_dir, consumer_timeout_ns=0)
    try:
        assert second.stats()["produced"] == stats["produced"] == 500
        # the undelivered requests are still in the pinned ring, seqs continue
        assert len(second.poll(timeout_ms=0, max_records=1000)) == 500
        assert second.inject(generate=10, seed=2, gen_ncpus=4).first_seq == 501
        second.unpin()
    finally:
        second.close()
    assert not (bpffs / "mlsched").exists()


def test_pin_outside_bpffs_names_the_fix(kernel_path, tmp_path):
    from mlsched.runtime.injector import Injector
    from mlsched.runtime.kernel import KernelPathError

    with pytest.raises(KernelPathError, match="mount -t bpf"):
        Injector().load(None, pin=True, pin_dir=str(tmp_path / "mlsched"))


def test_unprivileged_user_gets_one_line(require_bpf):
    child = textwrap.dedent("""
        import os, sys
        from mlsched.runtime.kernel import PrivilegeError
        from mlsched.runtime.injector import Injector
        os.setgid(65534); os.setuid(65534)     # drops every capability
        try:
            Injector().load(None)
        except PrivilegeError as exc:
            print(exc)
            sys.exit(2)
    """)
    p = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 2, p.stderr
    assert p.stdout.strip() == ("mlsched-lite needs CAP_BPF and CAP_PERFMON: "
                                "run as root or grant them")


def test_missing_btf_is_named(monkeypatch, require_bpf):
    from mlsched.runtime import bpfenv, kernel

    monkeypatch.setattr(bpfenv, "BTF_PATH", "/nonexistent/vmlinux")
    with pytest.raises(kernel.NoBTFError, match="BTF not found"):
        kernel.KernelPath().load(None)


def test_verifier_rejection_is_short_with_the_log_kept(bpffs, tmp_path):
    """The loader's objects are embedded and verified, so a refused program comes from a
    bad object compiled here and loaded by bpftool, whose libbpf prints what ours does."""
    from mlsched.runtime.kernel import VerifierError, kernel_error

    bpf = ROOT / "bpf"
    src = tmp_path / "bad.bpf.c"
    src.write_text(textwrap.dedent("""
        #include "vmlinux.h"
        #include <bpf/bpf_helpers.h>
        #include "mlsched_decide.h"
        char LICENSE[] SEC("license") = "GPL";
        SEC("syscall")
        int unchecked_lookup(void *ctx)
        {
            __u32 key = bpf_get_prandom_u32();
            __u64 *v = bpf_map_lookup_elem(&decisions, &key);
            return *v;     /* no NULL check: the verifier must refuse */
        }
    """))
    obj = tmp_path / "bad.bpf.o"
    subprocess.run(["clang-19", "-g", "-O2", "-target", "bpf", f"-I{bpf}", "-c", str(src),
                    "-o", str(obj)], check=True)
    pin = bpffs / "bad"
    out = subprocess.run(["bpftool", "prog", "loadall", str(obj), str(pin)],
                         capture_output=True, text=True)
    assert out.returncode != 0 and not pin.exists()
    err = kernel_error(-errno.EACCES, "loading", "refused", out.stderr)
    assert isinstance(err, VerifierError)
    message = str(err)
    assert "unchecked_lookup" in message and "invalid mem access" in message
    assert "\n" not in message
    assert "BEGIN PROG LOAD LOG" in err.log and err.errno == errno.EACCES


def test_domain_specs():
    from mlsched.runtime.topology import detect_domains, parse_cpu_list, parse_domains

    assert parse_cpu_list("0-3,8") == [0, 1, 2, 3, 8]
    assert parse_domains("0-3,4-7") == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert parse_domains("0-1+4-5,2-3") == [[0, 1, 4, 5], [2, 3]]
    for bad in ("0-3,3-4", "a-b", "0-3,", "5-2", "0-1+", "+0-1", "1_0", "\u0663", "0 -1", "0-1++2"):
        with pytest.raises(ValueError):
            parse_domains(bad)
    flat = sorted(c for d in detect_domains() for c in d)
    assert flat == parse_cpu_list(Path("/sys/devices/system/cpu/online").read_text())


def test_domains_from_fake_sysfs(tmp_path):
    from mlsched.runtime.topology import detect_domains

    def cpu(n, llc):
        d = tmp_path / f"cpu{n}" / "cache" / "index3"
        d.mkdir(parents=True)
        (d / "level").write_text("3\n")
        (d / "shared_cpu_list").write_text(llc + "\n")

    (tmp_path / "online").write_text("0-3\n")
    for n in range(4):
        cpu(n, "0-1" if n < 2 else "2-3")
    assert detect_domains(str(tmp_path)) == [[0, 1], [2, 3]]
    single = tmp_path / "single"
    single.mkdir()
    (single / "online").write_text("0-1\n")
    assert detect_domains(str(single)) == [[0], [1]]
