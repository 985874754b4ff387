"""Loading a bundle as root when others control part of the way to it.

The bytes checked must be the bytes used: the directory is opened once, its parents
checked on the way up from what was opened, every file read once and hashed from that
buffer. Real files, real ownership; the other user is uid 65534.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import time

import numpy as np
import pytest

from mlsched.runtime.bundle import MANIFEST, Bundle, BundleError
from support.cli import HANG_S

#: Loads through the swapped link at least; more until one loaded and one was refused.
SWAP_ATTEMPTS = 400
#: Between two swaps of the link: pacing, so that the two outcomes both occur.
FLIP_PAUSE_S = 0.0002

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the rules apply when running as root")
NOBODY = 65534


def other_bundle(src, dst):
    """A valid bundle with another table, owned by another user."""
    shutil.copytree(src, dst)
    table = dst / "table.bin"
    data = bytes(1 - b if b < 2 else b for b in table.read_bytes())      # STAY <-> MIGRATE
    table.write_bytes(data)
    m = json.loads((dst / MANIFEST).read_text())
    m["files"]["table.bin"]["sha256"] = hashlib.sha256(data).hexdigest()
    (dst / MANIFEST).write_text(json.dumps(m))
    for p in [dst, *dst.iterdir()]:
        os.chown(p, NOBODY, NOBODY)


def test_a_swapped_link_never_yields_the_other_users_bundle(bundle_copy, tmp_path):
    """Another thread swaps a link between our bundle and another user's while we load
    through it. Whatever the interleaving, a load gives our bundle or refuses; it goes on
    until both have happened (a busy machine changes how often each does, not whether)."""
    mine = Bundle.load(bundle_copy)
    theirs = tmp_path / "theirs"
    other_bundle(bundle_copy, theirs)
    assert Bundle.load(theirs, allow_insecure=True).table.tobytes() != mine.table.tobytes()
    link = tmp_path / "link"
    link.symlink_to(bundle_copy)
    stop = threading.Event()

    def flip():
        targets = [theirs, bundle_copy]
        i = 0
        while not stop.is_set():
            tmp = tmp_path / f"link.{i}"
            tmp.symlink_to(targets[i % 2])
            os.replace(tmp, link)
            i += 1
            time.sleep(FLIP_PAUSE_S)    # leave loads room to finish between two flips

    t = threading.Thread(target=flip)
    t.start()
    loaded = refused = attempts = 0
    end = time.monotonic() + HANG_S
    try:
        while attempts < SWAP_ATTEMPTS or not (loaded and refused):
            assert time.monotonic() < end, f"{loaded} loaded, {refused} refused in {HANG_S} s"
            attempts += 1
            try:
                b = Bundle.load(link)
            except BundleError:
                refused += 1
                continue
            loaded += 1
            assert b.table.tobytes() == mine.table.tobytes(), "loaded the other user's table"
            assert b.model_bytes == mine.model_bytes
    finally:
        stop.set()
        t.join()


def test_a_parent_others_may_write_is_refused(bundle_copy, tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)                          # no sticky bit: anyone may rename entries
    inside = shared / "bundle"
    shutil.move(bundle_copy, inside)
    with pytest.raises(BundleError, match="shared.*writable by users other than root"):
        Bundle.load(inside)
    os.chmod(shared, 0o1777)                         # sticky: others cannot move root's entry
    assert Bundle.load(inside).cpus == 8
    os.chmod(shared, 0o755)
    os.chown(shared, NOBODY, NOBODY)                 # owned by another user: it can rename
    with pytest.raises(BundleError, match="uid 65534"):
        Bundle.load(inside)
    assert Bundle.load(inside, allow_insecure=True).cpus == 8


def test_a_linked_file_inside_the_bundle_is_refused(bundle_copy, tmp_path):
    elsewhere = tmp_path / "model.tflite"
    shutil.move(bundle_copy / "model.tflite", elsewhere)
    (bundle_copy / "model.tflite").symlink_to(elsewhere)
    with pytest.raises(BundleError, match="model.tflite: a symbolic link"):
        Bundle.load(bundle_copy)
    assert Bundle.load(bundle_copy, allow_insecure=True).cpus == 8


def test_the_table_is_the_hashed_buffer(bundle_copy):
    b = Bundle.load(bundle_copy)
    raw = (bundle_copy / "table.bin").read_bytes()
    assert hashlib.sha256(b.table.tobytes()).hexdigest() == hashlib.sha256(raw).hexdigest()
    assert not np.shares_memory(b.table, np.frombuffer(raw, np.uint8))
