"""Build the guest's initramfs: busybox, CPython with mlsched-lite, the schedulers, the
bundles, the workloads.

    python guest/mkinitramfs.py --out CACHE/initramfs.cpio --sched-dir DIR \
        --bundle DIR [--bundle NAME=DIR ...] --build-source DIR

``--bundle`` repeats; a plain DIR is the bundle named ``default`` (configurations
model and model1 use it, model-NAME uses bundle NAME); one bundle must be the default.
``--build-source`` is what build-source.sh prepared: the C project the build workload
compiles (src/) and the system headers its compile reads (sysroot/).

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
    /opt/mlsched/              scx_mlsched (its BPF object embedded), scx_simple,
                               scx_central, mlsched-workload, mlsched-measure, run.sh,
                               bundles/NAME/, build.mk, build-src/
    /usr/bin/                  hackbench, stress-ng, tcc, make (Debian's)
    /usr/include/...           the headers the build workload's compile reads
    /usr/lib/x86_64-linux-gnu/tcc/   tcc's own headers and libtcc1.a
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
#: Programs built with the guest (guest/Makefile) that go to /opt/mlsched.
SCHED_FILES = ("scx_mlsched", "scx_simple", "scx_central", "mlsched-workload", "mlsched-measure")
#: Workload programs from Debian packages (rt-tests, stress-ng, tcc, make), with their libraries.
DEBIAN_TOOLS = ("/usr/bin/hackbench", "/usr/bin/stress-ng", "/usr/bin/tcc", "/usr/bin/make")
TCC_LIB = Path("/usr/lib/x86_64-linux-gnu/tcc")
BUNDLE_NAME = re.compile(r"[a-z0-9_]+")


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


def parse_bundles(specs: list[str]) -> dict[str, Path]:
    """``NAME=DIR`` or plain ``DIR`` (the ``default`` bundle) -> {name: dir}; checked."""
    bundles: dict[str, Path] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            name, path = "default", spec
        if not BUNDLE_NAME.fullmatch(name):
            raise ValueError(f"--bundle {spec}: a name is lower-case letters, digits and _")
        if name in bundles:
            raise ValueError(f"--bundle {spec}: bundle {name} given twice")
        if not (Path(path) / "manifest.json").is_file():
            raise ValueError(f"--bundle {spec}: {path}: not a bundle (no manifest.json)")
        bundles[name] = Path(path)
    if "default" not in bundles:
        raise ValueError("no default bundle: give one --bundle DIR (or default=DIR)")
    return bundles


def copy_workloads(tree: Path, build_source: Path) -> list[Path]:
    """Debian's workload programs, tcc's files, the build workload; returns the binaries."""
    binaries = []
    for tool in map(Path, DEBIAN_TOOLS):
        if not tool.is_file():
            raise BuildError(f"{tool} missing: make -C guest deb")
        shutil.copy2(tool, tree / "usr/bin" / tool.name)
        binaries.append(tree / "usr/bin" / tool.name)
    shutil.copytree(TCC_LIB, tree / TCC_LIB.relative_to("/"), dirs_exist_ok=True)
    for part in ("src", "sysroot"):
        if not (build_source / part).is_dir():
            raise BuildError(f"{build_source / part} missing: run guest/build-source.sh")
    shutil.copytree(build_source / "sysroot", tree, dirs_exist_ok=True)
    shutil.copytree(build_source / "src", tree / "opt/mlsched/build-src")
    shutil.copy2(HERE / "build.mk", tree / "opt/mlsched/build.mk")
    return binaries


def build_tree(tree: Path, sched_dir: Path, bundles: dict[str, Path],
               build_source: Path) -> None:
    base = Path(sys.base_prefix)
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    if not (base / "bin" / PYVER).is_file() and not Path(sys._base_executable).is_file():
        raise BuildError(f"no base interpreter under {base}")
    site = Path(sysconfig.get_paths()["purelib"])
    py_src = Path(sys._base_executable).resolve()

    for d in ("bin", "dev", "proc", "sys", "tmp", "run", "opt/mlsched", "usr/bin", "usr/local/bin",
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
    shutil.copy2(ROOT / "src" / "mlsched" / "__init__.py", pkg / "__init__.py")
    runtime = pkg / "runtime"
    runtime.mkdir()
    for f in (ROOT / "src" / "mlsched" / "runtime").iterdir():
        if f.suffix == ".py" or (f.suffix == ".so" and f.name.startswith("_bpf")):
            shutil.copy2(f, runtime / f.name)
    shutil.copytree(ROOT / "src" / "mlsched" / "runtime" / "commands", runtime / "commands",
                    ignore=shutil.ignore_patterns("__pycache__"))
    if not list(runtime.glob("_bpf*.so")):
        raise BuildError("src/mlsched/runtime/_bpf*.so missing: run `make build`")
    shutil.copytree(bundles["default"], runtime / "default_bundle")

    # The schedulers, the workloads, the scripts, the bundles.
    opt = tree / "opt/mlsched"
    for name in SCHED_FILES:
        if not (sched_dir / name).is_file():
            raise BuildError(f"{sched_dir / name} missing")
        shutil.copy2(sched_dir / name, opt / name)
    shutil.copy2(HERE / "run.sh", opt / "run.sh")
    for name, path in bundles.items():
        shutil.copytree(path, opt / "bundles" / name)
    tools = copy_workloads(tree, build_source)

    so_files = [tree / "usr/local/bin/python3"] + tools + sorted(tree.rglob("*.so")) + \
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
                    help="directory with " + ", ".join(SCHED_FILES))
    ap.add_argument("--bundle", required=True, action="append", metavar="[NAME=]DIR",
                    help="a bundle the guest serves (repeatable; plain DIR: name default)")
    ap.add_argument("--build-source", required=True, type=Path,
                    help="the build workload's src/ and sysroot/ (build-source.sh)")
    args = ap.parse_args(argv)
    try:
        bundles = parse_bundles(args.bundle)
    except ValueError as exc:
        print(f"mkinitramfs: {exc}", file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="initramfs.", dir=args.out.parent) as tmp:
        try:
            build_tree(Path(tmp), args.sched_dir, bundles, args.build_source)
            write_cpio(Path(tmp), args.out)
        except (BuildError, OSError, subprocess.CalledProcessError) as exc:
            print(f"mkinitramfs: {exc}", file=sys.stderr)
            return 1
    print(f"mkinitramfs: {args.out} ({args.out.stat().st_size >> 20} MiB)",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
