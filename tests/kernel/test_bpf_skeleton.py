"""The BPF objects behind the generated skeletons: what production loads, and how the
loader names maps.

- The production object (bpf/mlsched.bpf.o, embedded in the extension) holds the maps
  and the tracepoint collector and no SEC("syscall") program: the injector and the
  reader, with their test-only flags, are a second object that the kernel sees only
  once inject() or read_decisions() ran, on the same maps.
- Maps and programs are skeleton members in C and ``lib.MLS_MAP_*`` enum values in
  Python: a misspelt name fails to compile or to import, never at run time.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.bpf

ROOT = Path(__file__).resolve().parents[2]
BPF = ROOT / "bpf"


def elf_section_names(path: Path) -> list[str]:
    """Section names of a 64-bit little-endian ELF file (what `readelf -S` lists)."""
    data = path.read_bytes()
    assert data[:4] == b"\x7fELF" and data[4] == 2 and data[5] == 1, f"{path}: not ELF64 LE"
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    headers = [struct.unpack_from("<IIQQQQ", data, shoff + i * shentsize) for i in range(shnum)]
    str_off = headers[shstrndx][4]
    return [data[str_off + h[0]:data.index(b"\0", str_off + h[0])].decode() for h in headers]


def prog_types(ids: list[int]) -> dict[str, str]:
    """name -> program type, as the kernel reports them (bpftool)."""
    out = {}
    for i in ids:
        info = json.loads(subprocess.run(["bpftool", "-j", "prog", "show", "id", str(i)],
                                         check=True, capture_output=True, text=True).stdout)
        out[info["name"]] = info["type"]
    return out


def test_production_object_has_no_syscall_section():
    sections = elf_section_names(BPF / "mlsched.bpf.o")
    assert {"tp_btf/sched_switch", "tp_btf/sched_migrate_task", "tp_btf/sched_wakeup",
            ".maps"} <= set(sections)
    assert [s for s in sections if s.startswith("syscall")] == []
    assert "syscall" in elf_section_names(BPF / "mlsched_inject.bpf.o")


def test_injector_is_loaded_on_first_use_onto_the_same_maps(kernel_path):
    kp = kernel_path(None, consumer_timeout_ns=0)
    loaded = prog_types(kp.ids()["progs"])
    assert loaded == {"on_sched_switch": "tracing", "on_sched_migrate": "tracing",
                      "on_sched_wakeup": "tracing"}
    maps = set(kp.ids()["maps"])

    res = kp.inject(generate=10, seed=3, gen_ncpus=4, bypass_table=True)
    after = prog_types(kp.ids()["progs"])
    assert {n: t for n, t in after.items() if n not in loaded} == {"inject": "syscall",
                                                                   "read_decisions": "syscall"}
    # one seq counter and one ring: the records went where poll() reads
    assert (res.first_seq, res.last_seq, res.sent) == (1, 10, 10)
    batch = kp.poll(timeout_ms=100)
    assert list(batch["seq"]) == list(range(1, 11))
    assert kp.host()["seq"] == 10
    # the injector added its two buffers, no second copy of a decision map
    assert len(set(kp.ids()["maps"]) - maps) == 2


def test_injector_can_be_loaded_ahead_of_the_first_inject(kernel_path):
    """load_injector() does the loading work up front and only once: a timed inject() or a
    consumer waiting for records does not wait on the verifier."""
    kp = kernel_path(None, consumer_timeout_ns=0)
    assert kp.load_injector() is kp
    progs = prog_types(kp.ids()["progs"])
    assert {n for n, t in progs.items() if t == "syscall"} == {"inject", "read_decisions"}
    ids = kp.ids()
    kp.load_injector()
    res = kp.inject(generate=5, seed=1, gen_ncpus=4, bypass_table=True)
    assert res.sent == 5
    assert kp.ids() == ids, "a second load or the first inject() loaded programs again"


def test_map_enum_typo_cannot_reach_run_time(kernel_path):
    from mlsched.runtime.kernel import ffi, lib

    with pytest.raises(AttributeError):
        lib.MLS_MAP_DECISION        # noqa: B018 - the typo is the test
    kp = kernel_path(None)
    size = ffi.new("size_t *")
    with pytest.raises(TypeError):  # map names are no longer strings
        lib.mls_map_mmap(kp._handle(), b"decisions", size)
    names = sorted(n for n in dir(lib) if n.startswith("MLS_MAP_") and n != "MLS_MAP_COUNT")
    assert sorted(getattr(lib, n) for n in names) == list(range(lib.MLS_MAP_COUNT))
    for n in names:
        assert lib.mls_map_mmap(kp._handle(), getattr(lib, n), size) != ffi.NULL, n
        assert size[0] > 0 and size[0] % 4096 == 0
    assert lib.mls_map_mmap(kp._handle(), lib.MLS_MAP_COUNT, size) == ffi.NULL
    assert size[0] == 0
    assert "no memory-mapped map" in ffi.string(lib.mls_last_error()).decode()
    assert np.all(kp._view(lib.MLS_MAP_DECISIONS) == 0)


@pytest.mark.parametrize("member, compiles", [("decisions", True), ("decision", False)])
def test_skeleton_member_typo_is_a_compile_error(tmp_path, member, compiles):
    src = tmp_path / "use.c"
    src.write_text('#include "mlsched.skel.h"\n'
                   f"int fd(struct mlsched *s) {{ return bpf_map__fd(s->maps.{member}); }}\n")
    out = subprocess.run(["cc", "-fsyntax-only", f"-I{BPF}", str(src)], capture_output=True,
                         text=True, env={**os.environ, "LC_ALL": "C"})
    assert (out.returncode == 0) == compiles, out.stderr
    if not compiles:
        assert "has no member named 'decision'" in out.stderr
