"""Shared fixtures.

BPF tests run on the real kernel. Where it is not available (no root, no BTF,
extension or BPF object not built) they skip with the reason, except when
``MLSCHED_REQUIRE_BPF=1`` (CI): then the same reason fails the test.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from support.paths import DEFAULT_BUNDLE

REQUIRE_BPF_ENV = "MLSCHED_REQUIRE_BPF"


def bpf_unavailable_reason() -> str | None:
    """Why the kernel path cannot run here, or None when it can."""
    try:
        from mlsched.runtime import kernel
    except ImportError as exc:
        return f"mlsched.runtime.kernel does not import: {exc}"
    return kernel.unavailable_reason()


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
    from mlsched.runtime.injector import Injector

    opened: list[Injector] = []

    def load(table=None, **kwargs) -> Injector:
        kp = Injector().load(table, **kwargs)
        opened.append(kp)
        return kp

    yield load
    for kp in opened:
        kp.close()


@pytest.fixture
def bpffs(tmp_path, require_bpf):
    """A private BPF filesystem for pinning tests (the host may have none at /sys/fs/bpf)."""
    mnt = tmp_path / "bpffs"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "bpf", "bpf", str(mnt)]).returncode:
        pytest.skip("cannot mount a private BPF filesystem")
    yield mnt
    subprocess.run(["umount", str(mnt)])


@pytest.fixture
def pin_dir(bpffs):
    """A pin directory on a private BPF filesystem, unpinned after the test."""
    from support.cli import lite

    d = bpffs / "mlsched"
    yield d
    if d.exists():
        lite("unpin", "--pin-dir", d)


# ---- bundles and engines (runtime tests) -------------------------------------------------------
@pytest.fixture(scope="session")
def bundle8_path() -> Path:
    """The shipped 8-CPU default bundle (read-only: copy it before tampering)."""
    if not (DEFAULT_BUNDLE / "manifest.json").is_file():
        pytest.fail(f"{DEFAULT_BUNDLE} missing: run `make bundle`")
    return DEFAULT_BUNDLE


@pytest.fixture(scope="session")
def bundle8(bundle8_path):
    from mlsched.runtime.bundle import Bundle

    return Bundle.load(bundle8_path)


@pytest.fixture
def bundle_copy(bundle8_path, tmp_path) -> Path:
    """A private copy of the 8-CPU bundle, files 0644 in a 0755 directory, to tamper with."""
    import shutil

    dst = tmp_path / "bundle"
    shutil.copytree(bundle8_path, dst)
    return dst


# ---- ordering ------------------------------------------------------------------------------------
#: Modules that import TensorFlow in the test process. TensorFlow carries its own copy of the
#: TFLite runtime; once it is loaded, tflite_runtime's interpreter in the same process fails
#: (std::bad_alloc / vector::reserve in GetSignatureDefs). Those modules run last.
TENSORFLOW_MODULES = {"test_convert.py", "test_convert_models.py", "test_convert_byom.py"}


def pytest_collection_modifyitems(session, config, items):
    items.sort(key=lambda item: item.path.name in TENSORFLOW_MODULES)
