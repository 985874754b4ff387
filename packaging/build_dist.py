"""Build the mlsched-lite tarball for hosts without TensorFlow or a compiler.

    python packaging/build_dist.py [--out dist] [--backend tflite-runtime|litert]

Run it with the project's virtualenv after ``make build``: the tarball takes this
interpreter's version as its CPython tag and vendors what is installed here.

    mlsched-lite-<version>-linux-<arch>-cp<XY>/
        bin/mlsched-lite            launcher: the host's python3.<Y>, isolated (-I -S -B)
        lib/boot.py                 checks the host (libelf, zlib, privileges), runs the CLI
        lib/python/mlsched/         mlsched.runtime only (no convert/), its cffi extension
                                    (the BPF objects embedded: generated skeletons),
                                    libbpf.so.1 beside it, default_bundle/
        lib/python/numpy/ ...       vendored: numpy (tests, f2py, headers dropped),
                                    _cffi_backend, one TFLite backend
        systemd/mlsched-lite.service
        systemd/mlsched-lite.service.d/pin.conf   drop-in for run --pin (opens /sys/fs/bpf)
        README.md  VERSION  SHA256SUMS

Python files are shipped with bytecode compiled here (unchecked-hash .pyc), so the
launcher can run with -B and never writes into the install directory.

The tree is assembled in a temporary directory inside --out and the tarball
written under a temporary name, then renamed: an interrupted or failed build
leaves nothing half-written behind. Exit status 2 with one line when something
the build needs is missing.
"""

from __future__ import annotations

import argparse
import compileall
import hashlib
import importlib.util
import os
import platform
import py_compile
import re
import shutil
import struct
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
#: numpy parts the runtime never imports: test suites, build helpers, typing stubs, C headers
#: and static libraries for compiling against numpy.
NUMPY_DROP_DIRS = {"tests", "f2py", "distutils", "_pyinstaller", "typing", "doc", "core/include",
                   "core/lib", "random/lib", "random/_examples"}
NUMPY_DROP_FILES = ("*.pyi", "*.pxd", "*.h", "*.c", "*.a", "*.ini", "py.typed", "conftest.py",
                    "setup.py", "*.txt")
#: Backend name -> the importable packages it needs (their imports pull in nothing else).
BACKEND_PACKAGES = {"tflite-runtime": ["tflite_runtime"], "litert": ["ai_edge_litert"]}
#: tflite-runtime: a fraction of LiteRT's size and faster on the daemon's batched miss path;
#: LiteRT is faster one call at a time. Figures in the README; packaging/compare_backends.py
#: measures them.
DEFAULT_BACKEND = "tflite-runtime"
#: The host libraries the runtime may need; everything else is in the tarball.
HOST_LIBS = ("libelf.so.1", "libz.so.1")


class BuildError(Exception):
    """Something the build needs is missing: one line, exit status 2."""


def module_path(module: str) -> Path:
    """The installed package directory (or extension file) of an importable module."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise BuildError(f"{module} is not installed in {sys.executable}: run make setup")
    origin = Path(spec.origin)
    return origin.parent if origin.name == "__init__.py" else origin


def copy_package(src: Path, dst: Path, drop_dirs=frozenset(), drop_files=()) -> None:
    """Copy a package without __pycache__; drop_dirs are paths relative to src, or a
    bare name (``tests``) to drop at any depth."""
    def ignore(directory, names):
        rel = Path(directory).relative_to(src)
        out = {n for n in names if n == "__pycache__" or n in drop_dirs
               or (rel / n).as_posix() in drop_dirs}
        for pattern in drop_files:
            out |= {n for n in names if Path(n).match(pattern)}
        return out

    shutil.copytree(src, dst, ignore=ignore)


def linked_library(ext: Path, soname_prefix: str) -> Path | None:
    """The file the dynamic loader resolves for ``soname_prefix*`` in ext's dependencies."""
    out = subprocess.run(["ldd", str(ext)], capture_output=True, text=True, check=True).stdout
    m = re.search(rf"^\s*({re.escape(soname_prefix)}\S*) => (/\S+)", out, re.M)
    return Path(m.group(2)).resolve() if m else None


def set_runpath_origin(path: Path) -> None:
    """Rewrite an ELF64 little-endian DT_RUNPATH/DT_RPATH string in place to ``$ORIGIN``.

    The build interpreter may add its own library directory to every extension's run
    path (pyenv does); the tarball must look only beside the extension. The new string
    is shorter, so it is written over the old one and padded with NULs.
    """
    data = bytearray(path.read_bytes())
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise BuildError(f"{path.name}: not a 64-bit little-endian ELF file")
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    loads, dynamic = [], None
    for i in range(phnum):
        p_type, _flags, p_offset, p_vaddr, _paddr, p_filesz = struct.unpack_from(
            "<IIQQQQ", data, phoff + i * phentsize)
        if p_type == 1:                     # PT_LOAD
            loads.append((p_vaddr, p_offset, p_filesz))
        elif p_type == 2:                   # PT_DYNAMIC
            dynamic = (p_offset, p_filesz)
    if dynamic is None:
        raise BuildError(f"{path.name}: no dynamic section")
    entries = [struct.unpack_from("<qQ", data, off) for off in range(dynamic[0], sum(dynamic), 16)]
    strtab = next(v for t, v in entries if t == 5)                       # DT_STRTAB (vaddr)
    strtab_off = next(off + strtab - va for va, off, size in loads if va <= strtab < va + size)
    paths = [v for t, v in entries if t in (15, 29)]                      # DT_RPATH, DT_RUNPATH
    if not paths:
        raise BuildError(f"{path.name}: no run path: rebuild it with `make build`")
    for v in paths:
        start = strtab_off + v
        end = data.index(0, start)
        if b"$ORIGIN" not in data[start:end].split(b":"):
            raise BuildError(f"{path.name}: run path {data[start:end].decode()!r} lacks $ORIGIN")
        data[start:end] = b"$ORIGIN".ljust(end - start, b"\0")
    path.write_bytes(bytes(data))


def compile_bytecode(tree: Path) -> None:
    """Bytecode beside every module, valid whatever the files' mtimes after extraction."""
    ok = compileall.compile_dir(str(tree), quiet=1, workers=1,
                                invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
    if not ok:
        raise BuildError(f"byte-compiling {tree} failed")


def fix_modes(top: Path) -> None:
    """0755 directories and executables, 0644 everything else (bundle files must not be
    group/world-writable, or the runtime refuses them when running as root)."""
    for p in [top, *top.rglob("*")]:
        if p.is_dir() or (p.is_file() and (p.suffix == ".so" or ".so." in p.name
                                           or p.parent.name == "bin")):
            os.chmod(p, 0o755)
        elif p.is_file():
            os.chmod(p, 0o644)


def assemble(top: Path, backend: str, version: str, tag: str, arch: str) -> None:
    py = top / "lib" / "python"
    pkg = py / "mlsched"
    rt = pkg / "runtime"
    ext = ROOT / "src" / "mlsched" / "runtime" / f"_bpf{sysconfig.get_config_var('EXT_SUFFIX')}"
    bundle = (ROOT / "src" / "mlsched" / "runtime" / "default_bundle").resolve()
    for need, how in ((ext, "make build"), (bundle / "manifest.json", "make bundle")):
        if not need.is_file():
            raise BuildError(f"{need.relative_to(ROOT)} missing: run {how}")

    rt.mkdir(parents=True)
    shutil.copy2(ROOT / "src" / "mlsched" / "__init__.py", pkg / "__init__.py")
    for f in sorted((ROOT / "src" / "mlsched" / "runtime").rglob("*.py")):
        dst = rt / f.relative_to(ROOT / "src" / "mlsched" / "runtime")
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(f, dst)
    shutil.copy2(ext, rt / ext.name)
    set_runpath_origin(rt / ext.name)
    libbpf = linked_library(ext, "libbpf.so")
    if libbpf is not None:          # linked dynamically: ship the build host's copy beside it
        shutil.copy2(libbpf, rt / "libbpf.so.1")
    shutil.copytree(bundle, rt / "default_bundle")   # the real files, not the source tree's symlink

    copy_package(module_path("numpy"), py / "numpy", NUMPY_DROP_DIRS, NUMPY_DROP_FILES)
    libs = module_path("numpy").parent / "numpy.libs"
    if libs.is_dir():
        shutil.copytree(libs, py / "numpy.libs")
    cffi_backend = module_path("_cffi_backend")
    shutil.copy2(cffi_backend, py / cffi_backend.name)
    for mod in BACKEND_PACKAGES[backend]:
        copy_package(module_path(mod), py / mod, {"tests"}, ("*.pyi",))
    compile_bytecode(py)

    (top / "bin").mkdir()
    launcher = (HERE / "launcher.sh").read_text()
    launcher = launcher.replace("@PYTHON_MINOR@", f"{sys.version_info[0]}.{sys.version_info[1]}")
    (top / "bin" / "mlsched-lite").write_text(launcher)
    shutil.copy2(HERE / "boot.py", top / "lib" / "boot.py")
    py_compile.compile(str(top / "lib" / "boot.py"), doraise=True,
                       invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
    (top / "systemd").mkdir()
    shutil.copy2(HERE / "mlsched-lite.service", top / "systemd" / "mlsched-lite.service")
    (top / "systemd" / "mlsched-lite.service.d").mkdir()
    shutil.copy2(HERE / "mlsched-lite-pin.conf", top / "systemd" / "mlsched-lite.service.d" /
                 "pin.conf")
    shutil.copy2(HERE / "README.dist.md", top / "README.md")
    (top / "VERSION").write_text(f"mlsched-lite {version} linux-{arch} {tag} backend={backend}"
                                 f" host-libs={','.join(HOST_LIBS)}\n")
    fix_modes(top)
    sums = [f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.relative_to(top).as_posix()}"
            for p in sorted(top.rglob("*")) if p.is_file()]
    (top / "SHA256SUMS").write_text("\n".join(sums) + "\n")
    os.chmod(top / "SHA256SUMS", 0o644)


def _tar_filter(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


def build(out_dir: Path, backend: str = DEFAULT_BACKEND) -> Path:
    """Assemble and pack the tarball into out_dir; returns its path."""
    sys.path.insert(0, str(ROOT))
    from mlsched import __version__ as version

    tag = f"cp{sys.version_info[0]}{sys.version_info[1]}"
    arch = platform.machine()
    name = f"mlsched-lite-{version}-linux-{arch}-{tag}"
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".dist-", dir=out_dir))
    try:
        top = work / name
        assemble(top, backend, version, tag, arch)
        tmp = work / f"{name}.tar.gz"
        with tarfile.open(tmp, "w:gz", compresslevel=9) as tar:
            tar.add(top, arcname=name, filter=_tar_filter)
        final = out_dir / f"{name}.tar.gz"
        os.replace(tmp, final)
        return final
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="build_dist.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "dist", help="output directory (dist)")
    ap.add_argument("--backend", choices=sorted(BACKEND_PACKAGES), default=DEFAULT_BACKEND,
                    help=f"TFLite interpreter to vendor ({DEFAULT_BACKEND})")
    a = ap.parse_args(argv)
    try:
        path = build(a.out, a.backend)
    except (BuildError, OSError, subprocess.CalledProcessError) as e:
        print(f"build_dist: {e}", file=sys.stderr)
        return 2
    with tarfile.open(path) as tar:
        unpacked = sum(m.size for m in tar.getmembers())
    print(f"{path} {path.stat().st_size / 1e6:.1f} MB ({unpacked / 1e6:.1f} MB extracted)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
