"""Build the guest's initramfs: busybox, CPython with mlsched-lite, the scheduler, the bundle.

    python guest/mkinitramfs.py --out CACHE/initramfs.cpio --sched-dir DIR --bundle DIR

Run it with the project's virtualenv Python: the guest gets that interpreter's base
installation (same version and ABI as the venv), a trimmed standard library, the
venv's numpy, cffi backend and tflite_runtime, and the repository's runtime package
under its import name ``mlsched.runtime`` with the built cffi extension (the
BPF objects are embedded in it). Every shared library the copied binaries need (ldd) goes to
/lib/x86_64-linux-gnu. The archive is an uncompressed newc cpio (the kernel
unpacks it without a decompressor), written to a temporary name and renamed.

Guest layout::

    /init                      guest/init.sh
    /bin/busybox               Debian's busybox-static (applets installed by /init)
    /opt/mlsched/              scx_mlsched (its BPF object embedded), mlsched-workload,
                               run.sh, bundle/
    /usr/local/bin/python3     the interpreter; PYTHONHOME=/usr/local
    /usr/local/lib/python3.11  stdlib + site-packages
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PYVER = f"python{sys.version_info.major}.{sys.version_info.minor}"
LIBDIR = "lib/x86_64-linux-gnu"

#: Standard-library parts the guest never imports.
STDLIB_SKIP = {"site-packages", "test", "idlelib", "tkinter", "turtledemo", "ensurepip",
               "lib2to3", "pydoc_data", "unittest/test", "ctypes/test", "distutils/tests",
               "sqlite3/test", "tkinter/test"}
#: Third-party packages from the venv the runtime imports.
SITE_PACKAGES = ["numpy", "numpy.libs", "cffi", "tflite_runtime"]
#: Extension modules of the stdlib that pull in large libraries (Tk, X11, sqlite, ...) for nothing.
DYNLOAD_SKIP = ("_tkinter", "_sqlite3", "_dbm", "_gdbm", "_curses", "_curses_panel", "readline",
                "nis", "_ssl")
SITE_GLOBS = ["_cffi_backend*.so"]


class BuildError(RuntimeError):
    pass


def ignore_for(root: Path):
    """shutil.copytree ignore: tests, caches of other optimization levels, skipped stdlib parts."""
    def ignore(directory: str, names: list[str]) -> set[str]:
        rel = Path(directory).resolve().relative_to(root.resolve()).as_posix()
        out = set()
        for n in names:
            path = f"{rel}/{n}" if rel != "." else n
            if path in STDLIB_SKIP or n in ("tests", "testing") and root.name != PYVER:
                out.add(n)
            elif ".opt-1." in n or ".opt-2." in n or n.endswith((".pyi", ".a")):
                out.add(n)
            elif n.startswith("config-") and rel == ".":
                out.add(n)
            elif rel == "lib-dynload" and n.split(".")[0] in DYNLOAD_SKIP:
                out.add(n)
        return out
    return ignore


def copy_libs(binaries: list[Path], dest: Path) -> list[str]:
    """Copy the shared libraries `binaries` need (ldd) into dest/lib; return their names."""
    libdir = dest / LIBDIR
    libdir.mkdir(parents=True, exist_ok=True)
    (dest / "lib64").mkdir(exist_ok=True)
    copied: set[str] = set()
    for b in binaries:
        out = subprocess.run(["ldd", str(b)], capture_output=True, text=True).stdout
        for line in out.splitlines():
            m = re.search(r"(\S*)\s*=>\s*(/\S+)", line) or re.search(r"^\s*(/\S+ld-linux\S*)", line)
            if not m:
                continue
            src = Path(m.group(m.lastindex))
            if "ld-linux" in src.name:
                shutil.copy2(src.resolve(), dest / "lib64" / src.name)
                continue
            # numpy's bundled libraries stay where their RPATH ($ORIGIN) finds them;
            # libpython is already in /usr/local/lib.
            if "site-packages" in str(src) or src.name in copied or \
                    src.name.startswith("libpython"):
                continue
            shutil.copy2(src.resolve(), libdir / src.name)
            copied.add(src.name)
    return sorted(copied)


def build_tree(tree: Path, sched_dir: Path, bundle: Path) -> None:
    base = Path(sys.base_prefix)
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    if not (base / "bin" / PYVER).is_file() and not Path(sys._base_executable).is_file():
        raise BuildError(f"no base interpreter under {base}")
    site = Path(sysconfig.get_paths()["purelib"])
    py_src = Path(sys._base_executable).resolve()

    for d in ("bin", "dev", "proc", "sys", "tmp", "run", "opt/mlsched", "usr/local/bin",
              f"usr/local/lib/{PYVER}/site-packages/mlsched"):
        (tree / d).mkdir(parents=True, exist_ok=True)

    busybox = Path("/bin/busybox")
    if not busybox.is_file():
        raise BuildError("/bin/busybox missing: apt-get install busybox-static")
    shutil.copy2(busybox, tree / "bin" / "busybox")
    shutil.copy2(HERE / "init.sh", tree / "init")
    (tree / "init").chmod(0o755)

    # The interpreter and its standard library.
    shutil.copy2(py_src, tree / "usr/local/bin/python3")
    dst_lib = tree / "usr/local/lib" / PYVER
    shutil.copytree(stdlib, dst_lib, ignore=ignore_for(stdlib), symlinks=False,
                    dirs_exist_ok=True)
    soname = f"lib{PYVER}.so.1.0"
    if (base / "lib" / soname).is_file():     # a shared-library build (pyenv, Debian)
        shutil.copy2(base / "lib" / soname, tree / "usr/local/lib" / soname)

    # Third-party packages from the venv.
    dst_site = dst_lib / "site-packages"
    for name in SITE_PACKAGES:
        src = site / name
        if not src.exists():
            raise BuildError(f"{src} missing: run `make build` (the venv needs {name})")
        shutil.copytree(src, dst_site / name, ignore=ignore_for(src), dirs_exist_ok=True)
    for pattern in SITE_GLOBS:
        found = list(site.glob(pattern))
        if not found:
            raise BuildError(f"{site}/{pattern} missing: run `make build`")
        for f in found:
            shutil.copy2(f, dst_site / f.name)

    # The project: mlsched/__init__.py and the runtime under its import name.
    pkg = dst_site / "mlsched"
    shutil.copy2(ROOT / "mlsched" / "__init__.py", pkg / "__init__.py")
    runtime = pkg / "runtime"
    runtime.mkdir()
    for f in (ROOT / "runtime").iterdir():
        if f.suffix == ".py" or (f.suffix == ".so" and f.name.startswith("_bpf")):
            shutil.copy2(f, runtime / f.name)
    shutil.copytree(ROOT / "runtime" / "commands", runtime / "commands",
                    ignore=shutil.ignore_patterns("__pycache__"))
    if not list(runtime.glob("_bpf*.so")):
        raise BuildError("runtime/_bpf*.so missing: run `make build`")
    shutil.copytree(bundle, runtime / "default_bundle")

    # The scheduler, the workload, the scripts, the bundle.
    opt = tree / "opt/mlsched"
    for name in ("scx_mlsched", "mlsched-workload"):
        if not (sched_dir / name).is_file():
            raise BuildError(f"{sched_dir / name} missing")
        shutil.copy2(sched_dir / name, opt / name)
    shutil.copy2(HERE / "run.sh", opt / "run.sh")
    shutil.copytree(bundle, opt / "bundle")

    so_files = [tree / "usr/local/bin/python3"] + sorted(tree.rglob("*.so")) + \
        sorted(tree.rglob("*.so.*"))
    copy_libs([f for f in so_files if "numpy.libs" not in f.parts], tree)
    # The interpreter finds libpython through LD_LIBRARY_PATH (/init sets it).


def write_cpio(tree: Path, out: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=out.name + ".", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            names = subprocess.run(["find", ".", "-mindepth", "1"], cwd=tree, check=True,
                                   capture_output=True, text=True).stdout
            subprocess.run(["cpio", "--quiet", "-o", "-H", "newc", "-R", "0:0"], cwd=tree,
                           input=names.encode(), stdout=f, check=True)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, type=Path, help="initramfs to write (cpio)")
    ap.add_argument("--sched-dir", required=True, type=Path,
                    help="directory with scx_mlsched and mlsched-workload")
    ap.add_argument("--bundle", required=True, type=Path, help="bundle the guest uses")
    args = ap.parse_args(argv)
    if not (args.bundle / "manifest.json").is_file():
        print(f"mkinitramfs: {args.bundle}: not a bundle (no manifest.json)", file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="initramfs.", dir=args.out.parent) as tmp:
        try:
            build_tree(Path(tmp), args.sched_dir, args.bundle)
            write_cpio(Path(tmp), args.out)
        except (BuildError, OSError, subprocess.CalledProcessError) as exc:
            print(f"mkinitramfs: {exc}", file=sys.stderr)
            return 1
    print(f"mkinitramfs: {args.out} ({args.out.stat().st_size >> 20} MiB)",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
