"""runtime/_contract.py, the pure-Python layouts of bpf/mlsched.h, against the header and
against the compiler.

The pure layers take the wire contract from ``_contract`` (cffi ABI mode: cffi computes the
layouts by the C ABI's rules); the kernel path from ``_bpf``, which a C compiler built
from the same header. The two must agree on every struct, field offset and constant, and
the committed ``_contract.py`` must be what ``cffi_build.py`` makes of today's header.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import cffi_build
from mlsched.runtime import _contract

HEADER = Path(__file__).resolve().parents[2] / "bpf" / "mlsched.h"
STRUCTS = re.findall(r"^struct (\w+) \{", HEADER.read_text(), re.M)
CONSTANTS = (re.findall(r"^#define\s+(MLSCHED_\w+)\s+(?:0x[0-9a-fA-F]+|\d+)\b", HEADER.read_text(),
                        re.M)
             + re.findall(r"^\s*(MLSCHED_\w+)\s*=\s*\d+\s*,", HEADER.read_text(), re.M))


def test_committed_layouts_are_the_headers():
    assert cffi_build.CONTRACT.read_text() == cffi_build.contract_source(), \
        "runtime/_contract.py is stale: run `python cffi_build.py --contract` and commit it"


def test_every_struct_and_constant_of_the_header_is_there():
    assert len(STRUCTS) >= 10 and len(CONSTANTS) >= 40
    lib = _contract.ffi.dlopen(None)
    for name in STRUCTS:
        assert _contract.ffi.sizeof(f"struct {name}") > 0
    for name in CONSTANTS:
        assert isinstance(getattr(lib, name), int), name


def test_layouts_match_what_the_compiler_built():
    try:
        from mlsched.runtime._bpf import ffi as built
        from mlsched.runtime._bpf import lib as built_lib
    except ImportError as exc:
        pytest.skip(f"the extension is not built here: {exc}")
    lib = _contract.ffi.dlopen(None)
    for name in STRUCTS:
        ours, theirs = _contract.ffi.typeof(f"struct {name}"), built.typeof(f"struct {name}")
        assert _contract.ffi.sizeof(ours) == built.sizeof(theirs), name
        assert ([(f, t.offset, _contract.ffi.sizeof(t.type)) for f, t in ours.fields]
                == [(f, t.offset, built.sizeof(t.type)) for f, t in theirs.fields]), name
    for name in CONSTANTS:
        assert getattr(lib, name) == getattr(built_lib, name), name
