"""A pinned restart whose maps must change shape: another --ring-size, a table for fewer
CPUs. Pins of another geometry are replaced when no other process holds them (one line on
stderr) and refused, with exit status 3 and the fix, when one does: a unit restarting
every few seconds cannot change that. Real kernel, private BPF filesystem, the daemon as
users start it; the pinned maps' shape is read by bpftool, not by us."""

from __future__ import annotations

import json
import signal
import subprocess

import pytest

from support.cli import lite, start, wait_for

pytestmark = pytest.mark.bpf

RUN = ("run", "--no-collector", "--interval", "0", "--pin")
#: `run`'s exit status for pinned maps of another geometry that another process holds.
EXIT_PINNED_IN_USE = 3


def pinned_entries(pin_dir, name: str) -> int:
    out = subprocess.run(["bpftool", "-j", "map", "show", "pinned", str(pin_dir / name)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)["max_entries"]


def notices(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if "replaced pinned maps" in ln]


#: (flag, first value, second value, map, its max_entries after each) - entries written
#: out: a ring of B bytes is B entries; the table holds two halves of N * (N + 1) rows.
CHANGES = [("--ring-size", 65536, 131072, "requests", 65536, 131072),
           ("--cpus", 2, 1, "table", 2 * 2 * 3, 2 * 1 * 2)]


@pytest.mark.parametrize("flag, first, second, name, before, after", CHANGES,
                         ids=[c[0] for c in CHANGES])
def test_pins_nobody_holds_are_replaced_and_served(pin_dir, flag, first, second, name,
                                                   before, after):
    from mlsched.runtime.injector import Injector

    r = lite(*RUN, "--pin-dir", pin_dir, flag, first, "--duration", "0.2")
    assert r.returncode == 0, r.stderr
    assert pinned_entries(pin_dir, name) == before
    daemon = start(*RUN, "--pin-dir", pin_dir, flag, second)
    kp = None
    try:
        wait_for(lambda: daemon.poll() is not None or pinned_entries(pin_dir, name) == after,
                 what="the new pins")
        assert daemon.poll() is None, daemon.communicate()
        kp = Injector().load(None, pin=True, pin_dir=str(pin_dir), share=True)
        wait_for(lambda: int(kp.control["heartbeat_ns"][0]) != 0, what="the daemon to poll")
        res = kp.inject(generate=1000, seed=3, gen_ncpus=second if flag == "--cpus" else 8,
                        bypass_table=True)
        assert res.sent == 1000, res
        count = int(res.last_seq - res.first_seq + 1)
        wait_for(lambda: kp.read_decisions(int(res.first_seq), count).answered == count,
                 what="answers on the new pins")
    finally:
        if kp is not None:
            kp.close()
        daemon.send_signal(signal.SIGTERM)
        _, err = daemon.communicate(timeout=30)
    assert daemon.returncode == 0, err
    said = notices(err)
    assert len(said) == 1 and str(pin_dir) in said[0] and name in said[0], err
    assert f"{before} pinned, {after} needed" in said[0], said[0]
    # the same geometry again: the pins are reused, nothing said
    again = lite(*RUN, "--pin-dir", pin_dir, flag, second, "--duration", "0.2")
    assert again.returncode == 0 and notices(again.stderr) == [], again.stderr


def test_pins_another_process_holds_are_refused_with_their_own_status(pin_dir):
    from mlsched.runtime.injector import Injector

    r = lite(*RUN, "--pin-dir", pin_dir, "--ring-size", 65536, "--duration", "0.2")
    assert r.returncode == 0, r.stderr
    with Injector() as producer:          # a producer on the pinned maps, as a balancer
        producer.load(None, pin=True, pin_dir=str(pin_dir), share=True)
        refused = lite(*RUN, "--pin-dir", pin_dir, "--ring-size", 131072, "--duration", "0.2")
        assert pinned_entries(pin_dir, "requests") == 65536, "a held pin was replaced"
    assert refused.returncode == EXIT_PINNED_IN_USE, refused.stderr
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert f"{pin_dir}/requests" in lines[0] and "65536 pinned, 131072 needed" in lines[0]
    assert f"mlsched-lite unpin --pin-dir {pin_dir}" in lines[0]
    # the fix the line names
    assert lite("unpin", "--pin-dir", pin_dir).returncode == 0
    r = lite(*RUN, "--pin-dir", pin_dir, "--ring-size", 131072, "--duration", "0.2")
    assert r.returncode == 0 and notices(r.stderr) == [], r.stderr
    assert pinned_entries(pin_dir, "requests") == 131072
