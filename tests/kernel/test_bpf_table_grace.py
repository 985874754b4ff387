"""A reader held between its reads while the table changes under it, on the real kernel.

``set_table()`` writes a table into the half of `table` (and `table2`) not in use and then
publishes it. A reader that chose a half and is held there while two tables are published
finds its half rewritten: the first write goes to the other half, the second to its own.
Whatever it then reads belongs to the newer table, and combined with what it read before
(the geometry, the level-1 cell) it makes an answer no table gives. Every answer must be
the one the table it started on gives, or no table answer at all (the request then goes
to user space).

The reader is ``tests/kernel/stalled_reader.bpf.c``: one ``mlsched_lookup()`` through
``bpf/mlsched_decide.h`` with a hold at one of the helper's steps, run by
``stalled_reader.c`` on the maps a pinned KernelPath keeps. Expected answers are written
out from the tables below.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from support.paths import ROOT
from support.tables import band_bounds

pytestmark = pytest.mark.bpf

HERE = Path(__file__).resolve().parent
STAY, MIGRATE, UNSURE, NONE = 0, 1, 2, 255
#: The helper's steps (bpf/mlsched_decide.h): table_sel read; level-1 cell read.
STEP_SELECTED, STEP_ROW = 1, 2
#: A load in band 5 (0.45 .. 0.55) on both axes.
LOAD = 512
#: A miss: what the reader answers when it cannot trust what it read.
MISS = (UNSURE, 0)
#: Longest wait for the reader; only catches a hang.
HANG_S = 60


@pytest.fixture(scope="module")
def reader(tmp_path_factory) -> tuple[Path, Path]:
    """The compiled reader: (BPF object, driver)."""
    if shutil.which("clang-19") is None or shutil.which("gcc") is None:
        pytest.skip("needs clang-19 and gcc")
    out = tmp_path_factory.mktemp("reader")
    obj, exe = out / "stalled_reader.bpf.o", out / "stalled_reader"
    subprocess.run(["clang-19", "-g", "-O2", "-target", "bpf", "-D__TARGET_ARCH_x86", "-Wall",
                    "-Werror", f"-I{ROOT / 'bpf'}", "-c", str(HERE / "stalled_reader.bpf.c"),
                    "-o", str(obj)], check=True)
    subprocess.run(["gcc", "-O2", "-Wall", "-Werror", f"-I{ROOT / 'bpf'}", "-o", str(exe),
                    str(HERE / "stalled_reader.c"), "-lbpf", "-lpthread"], check=True)
    return obj, exe


def held_lookup(reader, pin_dir, step: int, features, while_held) -> tuple[int, int]:
    """(decision, level) of one lookup held at ``step`` while ``while_held()`` runs (step 0:
    not held)."""
    obj, exe = reader
    p = subprocess.Popen([str(exe), str(obj), str(pin_dir), str(step), *map(str, features)],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    try:
        first = p.stdout.readline().strip()
        assert first == ("held" if step else "done"), (first, p.stderr.read() if p.poll() is not None else "")
        while_held()
        out, err = p.communicate("go\n", timeout=HANG_S)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 0, err
    decision, level = map(int, out.split())
    return decision, level


def level2_of(line_byte: int, cells: int = 1):
    """A level 2 whose every refined cell answers by ``line_byte`` at every offset; input
    level of a wire load L = L >> 2 (mul 2^30)."""
    from mlsched.runtime.level2 import Level2, LoadQuant

    lines = 32
    lo, _ = band_bounds(np.arange(11))
    q = LoadQuant(1 << 30, 0, tuple(int(v) for v in np.minimum(lo >> 2, 255)))
    return Level2(lines, q, q, np.zeros(cells, np.uint32), np.full(lines, line_byte, np.uint8))


#: Line bytes (bpf/mlsched.h): threshold 100, past any offset in a band, so every offset
#: takes the first decision; 128 makes it MIGRATE.
ALL_MIGRATE, ALL_STAY = 128 | 100, 100


@pytest.mark.parametrize("swaps", [0, 1, 2])
def test_a_held_reader_never_pairs_a_row_with_a_newer_level2(reader, pin_dir, swaps):
    """Table A refines cell (cpu 0, idle 1, 0.5, 0.5): its level 2 says MIGRATE there.
    Table C says MIGRATE in that cell at level 1 and refines another cell, with a level 2
    that says STAY. A reader that read A's cell and then C's level 2 answers STAY: a
    decision neither table gives."""
    from mlsched.runtime.injector import Injector

    a = np.full((2, 3, 11, 11), STAY, np.uint8)
    a[0, 1, 5, 5] = UNSURE
    c = np.full((2, 3, 11, 11), MIGRATE, np.uint8)
    c[1, 1, 5, 5] = UNSURE
    key = (0, 1, 1, LOAD, LOAD)
    with Injector() as kp:
        kp.load(a, level2=level2_of(ALL_MIGRATE), pin=True, pin_dir=str(pin_dir),
                consumer_timeout_ns=0)
        got = held_lookup(reader, pin_dir, STEP_ROW, key,
                          lambda: [kp.set_table(c, level2_of(ALL_STAY)) for _ in range(swaps)])
        after = held_lookup(reader, pin_dir, 0, key, lambda: None)
    if swaps == 0:
        assert got == (MIGRATE, 2), "held with nothing changed, the reader must answer as A"
    else:
        assert got in ((MIGRATE, 2), MISS), f"A says (MIGRATE, 2), C (MIGRATE, 1); got {got}"
    assert after == ((MIGRATE, 2) if swaps == 0 else (MIGRATE, 1))


@pytest.mark.parametrize("swaps", [0, 1, 2])
def test_a_held_reader_never_reads_new_rows_under_old_geometry(reader, pin_dir, swaps):
    """Table A: 4 CPUs, every cell STAY. Table C: 2 CPUs, every cell MIGRATE. The key
    (cpu 0, idle 1, busy 3) is on A's grid and off C's; C's rows under A's geometry
    answer MIGRATE."""
    from mlsched.runtime.injector import Injector

    a = np.full((4, 5, 11, 11), STAY, np.uint8)
    c = np.full((2, 3, 11, 11), MIGRATE, np.uint8)
    key = (0, 1, 3, LOAD, LOAD)
    with Injector() as kp:
        kp.load(a, pin=True, pin_dir=str(pin_dir), consumer_timeout_ns=0)
        got = held_lookup(reader, pin_dir, STEP_SELECTED, key,
                          lambda: [kp.set_table(c) for _ in range(swaps)])
        after = held_lookup(reader, pin_dir, 0, key, lambda: None)
    if swaps == 0:
        assert got == (STAY, 1), "held with nothing changed, the reader must answer as A"
    else:
        assert got in ((STAY, 1), MISS), f"A says (STAY, 1), C is off-grid; got {got}"
    assert after == ((STAY, 1) if swaps == 0 else (NONE, 0))


def test_a_change_cut_short_is_closed_by_the_next_consumer(pin_dir):
    """A consumer killed while it published a table leaves the count odd in the pinned
    control map: lookups answer nothing from the table until the next consumer opens the
    maps, and then the table that was published (whole either way) answers again."""
    from mlsched.runtime.injector import Injector

    a = np.full((2, 3, 11, 11), MIGRATE, np.uint8)
    key = np.array([[0, 1, 1, LOAD, LOAD]], np.uint32)
    with Injector() as kp:
        kp.load(a, pin=True, pin_dir=str(pin_dir), consumer_timeout_ns=0)
        assert kp.inject(key, ignore_consumer=True).level.tolist() == [1]
        kp.control["table_seq"] = int(kp.control["table_seq"][0]) | 1     # as if cut short
        r = kp.inject(key, ignore_consumer=True)
        assert (r.level.tolist(), r.result.tolist(), r.hits) == ([0], [STAY], 0)
    with Injector() as kp:
        kp.load(None, pin=True, pin_dir=str(pin_dir), table_capacity=2, consumer_timeout_ns=0)
        assert int(kp.control["table_seq"][0]) % 2 == 0
        r = kp.inject(key, ignore_consumer=True)
        assert (r.level.tolist(), r.result.tolist()) == ([1], [MIGRATE])
