"""Build ``mlsched.runtime._bpf``: the libbpf-backed kernel path, in cffi API mode.

The cdef is read from the two headers that define the interface, never retyped:
``bpf/mlsched.h`` (the wire contract) and ``runtime/_native/mlsched_native.h``
(the C entry points, with ``enum mls_map``: ``lib.MLS_MAP_*``). The C side
includes the generated skeletons ``bpf/mlsched.skel.h`` and
``bpf/mlsched_inject.skel.h`` (``make -C bpf``), which embed the BPF objects:
the extension needs no object file at run time.

libbpf is linked as a shared library with a run path of ``$ORIGIN``: the
extension uses a ``libbpf.so.1`` placed beside it when there is one (the tarball
ships the build host's copy there, see packaging/build_dist.py) and the system's
otherwise. Linking it statically would need a position-independent ``libbpf.a``,
and Debian's is not (the link fails with R_X86_64_PC32 relocations).

    python cffi_build.py        # -> runtime/_bpf<EXT_SUFFIX>
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import sysconfig
from pathlib import Path

from cffi import FFI

ROOT = Path(__file__).resolve().parent
WIRE_H = ROOT / "bpf" / "mlsched.h"
NATIVE = ROOT / "runtime" / "_native"
NATIVE_H = NATIVE / "mlsched_native.h"
SKELETONS = [ROOT / "bpf" / "mlsched.skel.h", ROOT / "bpf" / "mlsched_inject.skel.h"]

# The kernel's own definitions (asm-generic/int-ll64.h).
CDEF_PRELUDE = """
typedef unsigned char __u8; typedef unsigned short __u16;
typedef unsigned int __u32; typedef unsigned long long __u64; typedef long long __s64;
"""
# Blocks the cdef must not see: BPF-only asserts, the C implementation's includes.
_SKIP_BLOCK = re.compile(r"^#ifn?def (__bpf__|MLSCHED_NATIVE_IMPL)\b")
_INT_DEFINE = re.compile(r"^#define\s+\w+\s+(0x[0-9a-fA-F]+|\d+)\s*(/\*.*\*/)?\s*$")


def header_cdef(path: Path) -> str:
    """The header minus preprocessor lines, keeping ``#define NAME <integer>``."""
    out, depth = [], 0
    for line in path.read_text().splitlines():
        s = line.strip()
        if depth:
            depth += s.startswith("#if") - (s == "#endif" or s.startswith("#endif "))
            continue
        if _SKIP_BLOCK.match(s):
            depth = 1
        elif s.startswith("#"):
            if _INT_DEFINE.match(s):
                out.append(re.sub(r"/\*.*\*/", "", s))
        else:
            out.append(line)
    return "\n".join(out)


def make_ffi() -> FFI:
    ffi = FFI()
    ffi.cdef(CDEF_PRELUDE + header_cdef(WIRE_H) + header_cdef(NATIVE_H))
    ffi.set_source(
        "mlsched.runtime._bpf",
        '#include "mlsched_native.h"\n',
        sources=[str(NATIVE / "mlsched_native.c")],
        include_dirs=[str(NATIVE), str(ROOT / "bpf")],
        define_macros=[("MLSCHED_NATIVE_IMPL", "1")],
        extra_compile_args=["-O2", "-Wall"],
        libraries=["bpf", "elf", "z"],
        # DT_RUNPATH (not RPATH): a libbpf.so.1 beside the extension first, LD_LIBRARY_PATH wins.
        extra_link_args=["-Wl,-rpath,$ORIGIN", "-Wl,--enable-new-dtags"],
    )
    return ffi


def build(verbose: bool = False) -> Path:
    missing = [p.name for p in SKELETONS if not p.is_file()]
    if missing:
        raise SystemExit(f"cffi_build: bpf/{missing[0]} missing: run `make -C bpf` first")
    build_dir = str(ROOT / "build" / "cffi")
    built = make_ffi().compile(tmpdir=build_dir, verbose=verbose)
    target = ROOT / "runtime" / ("_bpf" + sysconfig.get_config_var("EXT_SUFFIX"))
    # a new inode renamed into place: processes running the old extension keep their
    # mapping (copying over the file in place crashed them)
    tmp = target.with_name(f".{target.name}.{os.getpid()}")
    shutil.copy2(built, tmp)
    os.replace(tmp, target)
    return target


if __name__ == "__main__":
    print(f"built {build(verbose='-v' in sys.argv).relative_to(ROOT)}")
