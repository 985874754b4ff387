"""A pin directory is trusted only when it and everything in it is ours: a directory another
user made first (a plain BPF filesystem's root is 1777), a directory others may write, a
pin someone else owns, or a pinned map we did not create are refused before libbpf reuses
anything. Real kernel, private BPF filesystem, uid 65534 as the other user."""

from __future__ import annotations

import os
import subprocess

import pytest

from support.cli import lite

pytestmark = pytest.mark.bpf

NOBODY = 65534
RUN = ("run", "--no-collector", "--interval", "0", "--duration", "0.2", "--pin")


def refused(pin_dir, *words, where=None) -> str:
    r = lite(*RUN, "--pin-dir", pin_dir)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, r.stderr
    assert len(lines) == 1 and str(where or pin_dir) in lines[0], lines
    assert all(w in lines[0] for w in words), lines[0]
    return lines[0]


def test_directory_made_by_another_user_is_refused(bpffs):
    assert os.stat(bpffs).st_mode & 0o1777 == 0o1777       # what a plain mount gives
    d = bpffs / "mlsched"
    d.mkdir(mode=0o700)
    os.chown(d, NOBODY, NOBODY)         # as if that user had made it first
    refused(d, "owned by uid 65534")
    assert os.listdir(d) == [], "maps were pinned into a directory another user controls"


def test_directory_others_may_write_is_refused(bpffs):
    d = bpffs / "mlsched"
    d.mkdir()
    d.chmod(0o777)
    refused(d, "writable by others")
    assert os.listdir(d) == []


def test_pin_owned_by_another_user_is_refused(pin_dir):
    first = lite(*RUN, "--pin-dir", pin_dir)
    assert first.returncode == 0, first.stderr
    os.chown(pin_dir / "decisions", NOBODY, NOBODY)
    refused(pin_dir, "owned by uid 65534", where=pin_dir / "decisions")


def test_map_pinned_by_someone_else_is_refused(bpffs):
    """A map of the right shape that mlsched did not create: libbpf would reuse it."""
    from mlsched.runtime._bpf import ffi

    d = bpffs / "mlsched"
    d.mkdir(mode=0o700)
    value = ffi.sizeof("struct mlsched_control")
    subprocess.run(["bpftool", "map", "create", str(d / "control"), "type", "array", "key", "4",
                    "value", str(value), "entries", "1", "name", "control", "flags", "1024"],
                   check=True)
    refused(d, "not created by mlsched")
