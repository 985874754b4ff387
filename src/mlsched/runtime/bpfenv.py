"""Can the kernel side run here? Privileges, kernel BTF, the compiled extension, the errors
the kernel path raises, and the defaults its flags show.

Checked before libbpf is asked anything, so a user gets one line that names the fix
instead of libbpf's own words: CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN), and the
kernel's BTF at ``BTF_PATH`` (the CO-RE programs need it). Nothing here needs the compiled
extension, so commands can describe the kernel path on a machine that never built it
(``ExtensionMissing`` when they try to use it).
"""

from __future__ import annotations

import errno as errno_mod
import os

BTF_PATH = "/sys/kernel/btf/vmlinux"
# Linux capability bits (include/uapi/linux/capability.h).
CAP_SYS_ADMIN, CAP_PERFMON, CAP_BPF = 21, 38, 39
PRIVILEGE_MESSAGE = ("mlsched-lite needs CAP_BPF and CAP_PERFMON: "
                     "run as root or grant them")
EXTENSION_MESSAGE = ("the kernel path needs mlsched's compiled extension (mlsched.runtime._bpf),"
                     " which this installation lacks: build it with `make build` on a machine"
                     " with clang and libbpf; converting and `mlsched-lite decide` work without")

#: Default size of the request ring: 1 MiB = 16384 records of 64 bytes, 8 ms of traffic at
#: 2 M requests/s. The consumer maps the ring's data twice (wrap-around), so it costs 2 MiB of
#: resident memory; larger rings (--ring-size) absorb longer bursts at that price.
DEFAULT_RING_BYTES = 1 << 20
#: Where ``pin=True`` keeps the maps.
PIN_DIR = "/sys/fs/bpf/mlsched"


class KernelPathError(RuntimeError):
    """One-line reason in ``str()``; ``errno`` and the captured libbpf ``log`` for -v."""

    def __init__(self, message: str, errno: int = 0, log: str = ""):
        super().__init__(message)
        self.errno = errno
        self.log = log


class ExtensionMissing(KernelPathError, ImportError):
    """The compiled extension is not installed (a conversion-only install)."""


class PinnedMapsInUse(KernelPathError):
    """Pinned maps of another geometry than this load needs (another ring size, another
    table size) that another process still holds: they are neither reused nor replaced.
    Without another holder, load() replaces them and says so on the log."""


class PrivilegeError(KernelPathError):
    """No CAP_BPF/CAP_PERFMON (or CAP_SYS_ADMIN)."""


class NoBTFError(KernelPathError):
    """The kernel exposes no BTF: CO-RE programs cannot be loaded."""


class VerifierError(KernelPathError):
    """The verifier refused a program; ``log`` holds its full output."""


def capabilities() -> int:
    """Effective capability mask of this process."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return int(line.split()[1], 16)
    except OSError:
        pass
    return 0


def check_environment() -> None:
    """Raise the one-line error a user can act on before libbpf says something obscure."""
    caps = capabilities()
    has = lambda bit: bool(caps >> bit & 1)  # noqa: E731
    if not (has(CAP_SYS_ADMIN) or (has(CAP_BPF) and has(CAP_PERFMON))):
        raise PrivilegeError(PRIVILEGE_MESSAGE, errno_mod.EPERM)
    if not os.path.exists(BTF_PATH):
        raise NoBTFError(f"kernel BTF not found at {BTF_PATH}: mlsched needs a kernel built "
                         "with CONFIG_DEBUG_INFO_BTF=y", errno_mod.ENOENT)


def unavailable_reason() -> str | None:
    """Why the kernel path cannot run here (one line), or None when it can."""
    try:
        check_environment()
    except KernelPathError as exc:
        return str(exc)
    return None
