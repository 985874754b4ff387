"""A restart on pinned maps with the collector: the per-CPU idle/busy state the collector
keeps is rebuilt with the domains, so no domain count wraps below zero and an idle domain
does not read fully loaded. Real kernel, live collector, private BPF filesystem."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

pytestmark = pytest.mark.bpf


def spin(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def test_restart_keeps_domain_counts_sane(kernel_path, bpffs):
    from mlsched.runtime._bpf import lib

    from mlsched.runtime.kernel import KernelPath

    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip("needs two CPUs")
    a, b = cpus[0], cpus[1]
    domains = [[c] for c in cpus]
    pin_dir = str(bpffs / "mlsched")
    affinity = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {a})
        first = KernelPath().load(None, pin=True, pin_dir=pin_dir, domains=domains,
                                  consumer_timeout_ns=0)
        first.attach_collector(report_hits=False)
        spin(0.2)
        first.close()           # CPU a was busy closing: the pinned per-CPU state says so

        os.sched_setaffinity(0, {b})    # now CPU a goes idle
        second = KernelPath().load(None, pin=True, pin_dir=pin_dir, domains=domains,
                                   consumer_timeout_ns=0)
        try:
            second.attach_collector(report_hits=False)
            doms = second._view(lib.MLS_MAP_DOMAINS)
            busy, hosts = [], []
            for _ in range(20):
                time.sleep(0.01)
                spin(0.002)
                busy.append(doms["nr_busy"][:len(domains)].copy())
                hosts.append(second.host())
            second.detach_collector()
            busy = np.array(busy)
            assert (busy <= 1).all(), f"nr_busy of one-CPU domains: {busy.max(axis=0)}"
            assert all(h["idle_cpus"] + h["busy_cpus"] <= len(cpus) for h in hosts), hosts
            assert (doms["load_avg"][:len(domains)] <= 1024).all()
            second.unpin()
        finally:
            second.close()
    finally:
        os.sched_setaffinity(0, affinity)
