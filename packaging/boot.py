"""Start mlsched-lite from the tarball: vendored libraries first, host checks, then the CLI.

The launcher runs this with ``-I -S -B``: no host site-packages, no PYTHON* variables, no
bytecode written. Before the runtime imports anything native, check what the host must
provide (libelf and zlib for the libbpf wrapper) and, for ``run``, the capabilities the
kernel path needs, so that each failure is one line naming the fix.

``_hashlib`` (OpenSSL) is kept out: ``hashlib`` then uses CPython's builtin SHA-2, which
is all the runtime needs (the sha256 of a bundle's few files), and the process does not
map libcrypto (less resident memory; README, "The tarball").
"""

import ctypes
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
HOST_LIBS = {"libelf.so.1": "libelf1 (Debian/Ubuntu) or elfutils-libelf (Fedora/RHEL)",
             "libz.so.1": "zlib1g (Debian/Ubuntu) or zlib (Fedora/RHEL)"}
#: Subcommands that load BPF programs.
KERNEL_COMMANDS = {"run", "replay"}


def fail(msg: str) -> None:
    print(f"mlsched-lite: {msg}", file=sys.stderr)
    sys.exit(2)


def main() -> int:
    sys.path[:0] = [os.path.join(HERE, "python")]
    sys.modules["_hashlib"] = None    # import fails -> hashlib's builtin fallback
    for lib, package in HOST_LIBS.items():
        try:
            ctypes.CDLL(lib)
        except OSError:
            fail(f"{lib} not found on this host: install {package}")
    args = sys.argv[1:]
    command = next((a for a in args if not a.startswith("-")), None)
    if command in KERNEL_COMMANDS and "-h" not in args and "--help" not in args:
        from mlsched.runtime import bpfenv

        caps = bpfenv.capabilities()
        if not (caps >> bpfenv.CAP_SYS_ADMIN & 1
                or (caps >> bpfenv.CAP_BPF & 1 and caps >> bpfenv.CAP_PERFMON & 1)):
            fail(f"{command} needs root or CAP_BPF and CAP_PERFMON (effective capabilities:"
                 f" {caps:#x}): run it as root, or install systemd/mlsched-lite.service")
    from mlsched.runtime.cli import main as cli_main

    return cli_main(args)


if __name__ == "__main__":
    sys.exit(main())
