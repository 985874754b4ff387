"""One consumer per pin directory: a second ``mlsched-lite run --pin`` on the same maps is
refused before it touches them. Real kernel, private BPF filesystem, the daemon as users
start it."""

from __future__ import annotations

import json
import signal
import subprocess

import pytest

from support.cli import lite, start, wait_for

pytestmark = pytest.mark.bpf


def pinned_domains(pin_dir) -> list[int]:
    """ncpus of every domain in the pinned `domains` map, read by bpftool (not by us)."""
    out = subprocess.run(["bpftool", "-j", "map", "dump", "pinned", str(pin_dir / "domains")],
                         capture_output=True, text=True, check=True)
    return [e["formatted"]["value"]["ncpus"] for e in json.loads(out.stdout)]


def serving(pin_dir) -> bool:
    """The consumer polls: its heartbeat is in the pinned control map."""
    from mlsched.runtime.kernel import KernelPath

    with KernelPath() as kp:
        kp.load(None, pin=True, pin_dir=str(pin_dir), share=True)
        return int(kp.control["heartbeat_ns"][0]) != 0


def test_second_consumer_on_one_pin_dir_is_refused(pin_dir):
    daemon = start("run", "--no-collector", "--pin", "--pin-dir", pin_dir, "--interval", "0",
                   "--domains", "0,1")
    try:
        wait_for(lambda: (pin_dir / "control").exists() or daemon.poll() is not None,
                 what="the daemon's pinned maps")
        wait_for(lambda: daemon.poll() is not None or serving(pin_dir), what="the daemon to poll")
        assert daemon.poll() is None, daemon.communicate()
        assert pinned_domains(pin_dir)[:3] == [1, 1, 0]
        before = pinned_domains(pin_dir)
        second = lite("run", "--no-collector", "--pin", "--pin-dir", pin_dir, "--interval", "0",
                      "--duration", "0.3", "--domains", "0-1")
        assert second.returncode == 2, second.stderr
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and "in use" in lines[0] and str(pin_dir) in lines[0], lines
        # the first consumer's domains are untouched, and it still serves
        assert pinned_domains(pin_dir) == before
        assert daemon.poll() is None
        # unpin refuses to pull the maps from under a running consumer
        r = lite("unpin", "--pin-dir", pin_dir)
        assert r.returncode == 2 and "in use" in r.stderr and (pin_dir / "control").exists()
    finally:
        daemon.send_signal(signal.SIGTERM)
        out, err = daemon.communicate(timeout=30)
    assert daemon.returncode == 0, err
    # once the first is gone, the directory is free again
    again = lite("run", "--no-collector", "--pin", "--pin-dir", pin_dir, "--interval", "0",
                 "--duration", "0.2")
    assert again.returncode == 0, again.stderr


def test_a_joining_producer_removes_the_pins_once_the_consumer_is_gone(pin_dir):
    """A producer that joined the consumer's maps can unpin them after the consumer
    stopped (the benchmark cleans up this way)."""
    from mlsched.runtime.kernel import KernelPath

    daemon = start("run", "--no-collector", "--pin", "--pin-dir", pin_dir, "--interval", "0")
    try:
        wait_for(lambda: daemon.poll() is not None or ((pin_dir / "control").exists()
                                                        and serving(pin_dir)),
                 what="the consumer")
        with KernelPath() as kp:
            kp.load(None, pin=True, pin_dir=str(pin_dir), share=True)
            daemon.send_signal(signal.SIGTERM)
            daemon.communicate(timeout=30)
            assert daemon.returncode == 0
            kp.unpin()
        assert not pin_dir.exists()
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
