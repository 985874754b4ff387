"""CPUs outside every domain (``--cpus`` below the host's count, ``--domains`` naming only
some CPUs) belong to no domain: their load is not added to domain 0. Real kernel, live
collector, a CPU kept busy that no domain covers."""

from __future__ import annotations

import multiprocessing as mp
import os
import time

import pytest

pytestmark = pytest.mark.bpf


def _spin(stop, cpu: int) -> None:
    """Busy on ``cpu``, with a short sleep every 20 ms so the CPU switches (and is seen)."""
    os.sched_setaffinity(0, {cpu})
    while not stop.is_set():
        end = time.monotonic() + 0.02
        while time.monotonic() < end:
            pass
        time.sleep(0.0005)


def test_uncovered_cpu_is_in_no_domain(kernel_path):
    from mlsched.runtime._bpf import lib

    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip("needs two CPUs")
    covered, other = cpus[0], cpus[1]
    kp = kernel_path(None, domains=[[covered]], consumer_timeout_ns=0)
    doms = kp._view(lib.MLS_MAP_DOMAINS)
    affinity = os.sched_getaffinity(0)
    stop = mp.Event()
    spinner = mp.Process(target=_spin, args=(stop, other))
    spinner.start()
    busy = []
    try:
        kp.attach_collector(report_hits=False)
        os.sched_setaffinity(0, {covered})
        for _ in range(50):
            time.sleep(0.005)
            busy.append(int(doms["nr_busy"][0]))    # read on the covered CPU: it is busy
    finally:
        os.sched_setaffinity(0, affinity)
        kp.detach_collector()
        stop.set()
        spinner.join()
    assert int(doms["ncpus"][0]) == 1
    assert max(busy) <= 1, f"the one-CPU domain {{{covered}}} counted {max(busy)} busy CPUs"
