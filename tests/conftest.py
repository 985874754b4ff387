"""Shared fixtures.

BPF tests run on the real kernel. Where it is not available (no root, no BTF,
extension or BPF object not built) they skip with the reason, except when
``MLSCHED_REQUIRE_BPF=1`` (CI): then the same reason fails the test.
"""

from __future__ import annotations

import os

import pytest

REQUIRE_BPF_ENV = "MLSCHED_REQUIRE_BPF"


def bpf_unavailable_reason() -> str | None:
    """Why the kernel path cannot run here, or None when it can."""
    try:
        from mlsched.runtime import kernel
    except ImportError as exc:
        return f"mlsched.runtime.kernel does not import: {exc}"
    try:
        kernel.check_environment()
        kernel.find_object()
    except kernel.KernelPathError as exc:
        return str(exc)
    return None


@pytest.fixture
def require_bpf() -> None:
    """Skip (or, with MLSCHED_REQUIRE_BPF=1, fail) unless BPF programs can be loaded."""
    reason = bpf_unavailable_reason()
    if reason is None:
        return
    if os.environ.get(REQUIRE_BPF_ENV) == "1":
        pytest.fail(f"BPF required ({REQUIRE_BPF_ENV}=1) but unavailable: {reason}")
    pytest.skip(f"BPF unavailable: {reason}")


@pytest.fixture
def kernel_path(require_bpf):
    """Factory: ``kernel_path(table, **load_kwargs)`` -> loaded KernelPath, closed after the test."""
    from mlsched.runtime.kernel import KernelPath

    opened: list[KernelPath] = []

    def load(table=None, **kwargs) -> KernelPath:
        kp = KernelPath().load(table, **kwargs)
        opened.append(kp)
        return kp

    yield load
    for kp in opened:
        kp.close()
