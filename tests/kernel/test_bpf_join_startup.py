"""A producer that joins a consumer's pinned maps in the moment the consumer is starting.

The consumer's load pins the maps, then writes mlsched's marker into ``control``. A
producer (``Injector().load(..., share=True)``: the soak, the bench, a test) that opens the
pins in between finds them without the marker. It must wait for the marker, not refuse the
maps as another program's: on a busy machine that moment lasts long enough to be hit.
"""

from __future__ import annotations

import threading

import pytest

pytestmark = pytest.mark.bpf


def test_a_producer_joining_during_start_up_waits_for_the_marker(bpffs):
    from mlsched.runtime.injector import Injector
    from mlsched.runtime.kernel import KernelPath
    from mlsched.runtime.wire import lib

    pin_dir = str(bpffs / "mlsched")
    consumer = KernelPath().load(None, pin=True, pin_dir=pin_dir, consumer_timeout_ns=0)
    ctl = consumer.control
    assert int(ctl["magic"][0]) == lib.MLSCHED_CTL_MAGIC
    ctl["magic"][0] = 0                     # the consumer between its load and its marker
    got: dict = {}

    def join():
        try:
            got["kp"] = Injector().load(None, pin=True, pin_dir=pin_dir, share=True)
        except Exception as exc:            # what the test reports below
            got["error"] = exc

    t = threading.Thread(target=join)
    t.start()
    t.join(timeout=0.3)                     # still waiting: nothing refused yet
    refused_early = "error" in got
    ctl["magic"][0] = lib.MLSCHED_CTL_MAGIC  # the consumer's marker lands
    t.join()
    try:
        assert not refused_early and "error" not in got, got.get("error")
        res = got["kp"].inject(generate=10, seed=1, gen_ncpus=4, bypass_table=True)
        assert res.sent == 10 and len(consumer.poll(timeout_ms=1000)) == 10
    finally:
        if "kp" in got:
            got["kp"].close()
        consumer.unpin()
        consumer.close()
