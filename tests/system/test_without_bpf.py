"""Converting on a workstation: mlsched installed into a fresh virtualenv from a wheel that
has no compiled extension, as ``pip install 'mlsched[convert]'`` gives a machine without
clang or libbpf.

The wheel is built from a copy of the tracked sources (so no ``_bpf`` extension built here
can slip in); the virtualenv gets the wheel alone, and its third-party packages (TensorFlow,
numpy, cffi, the interpreters) through a path file pointing at this checkout's virtualenv,
so the test downloads nothing. In it ``mlsched-convert`` converts the default model and
``mlsched-lite decide`` answers the reference scenarios from that bundle; the kernel
commands say what is missing instead of failing to import.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from support.paths import ROOT
from support.scenarios import SCENARIOS, teacher_decisions

#: Converting the default model with both table levels for 2 CPUs: well under this.
CONVERT_HANG_S = 900


def tracked_files() -> list[str]:
    out = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z"], capture_output=True,
                         check=True).stdout.decode()
    return [f for f in out.split("\0") if f]


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs the git checkout to know the tracked sources")
    work = tmp_path_factory.mktemp("nobpf")
    src = work / "src"
    for rel in tracked_files():
        if (ROOT / rel).is_file() or (ROOT / rel).is_symlink():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, src / rel, follow_symlinks=False)
    assert not list(src.rglob("_bpf*.so")), "the copy holds a built extension"
    wheels = work / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(wheels), str(src)], check=True, timeout=300)
    env_dir = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True,
                   timeout=120)
    py = env_dir / "bin" / "python"
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()"
                           "['purelib'])"], capture_output=True, text=True, check=True
                          ).stdout.strip()
    # third-party packages from this checkout's virtualenv; never mlsched itself
    (Path(site) / "thirdparty.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps",
                    "-q", *map(str, wheels.glob("mlsched-*.whl"))], check=True, timeout=300)
    return env_dir


def run(venv: Path, tool: str, *args, cwd: Path, timeout: float = 120
        ) -> subprocess.CompletedProcess:
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(cwd), "LC_ALL": "C.UTF-8"}
    return subprocess.run([str(venv / "bin" / tool), *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, cwd=cwd, env=env)


def test_the_installed_package_has_no_extension(venv, tmp_path):
    p = subprocess.run([str(venv / "bin" / "python"), "-c",
                        "import mlsched.runtime, pathlib, sys;"
                        "d = pathlib.Path(mlsched.runtime.__file__).parent;"
                        "print(d); print(sorted(x.name for x in d.glob('_bpf*')))"],
                       capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert p.returncode == 0, p.stderr
    where, ext = p.stdout.splitlines()
    assert str(venv) in where and not where.startswith(str(ROOT)), where
    assert ext == "[]"


def test_convert_then_decide_without_the_extension(venv, tmp_path):
    bundle = tmp_path / "bundle"
    c = run(venv, "mlsched-convert", ROOT / "models" / "default" / "saved_model", "-o", bundle,
            "--cpus", "8", cwd=tmp_path, timeout=CONVERT_HANG_S)
    assert c.returncode == 0, c.stderr[-3000:]
    assert (bundle / "manifest.json").is_file() and (bundle / "table.bin").is_file()
    got = []
    for cpu, idle, busy, src, dst in SCENARIOS:
        d = run(venv, "mlsched-lite", "decide", "--bundle", bundle, "--cpu", cpu, "--idle", idle,
                "--busy", busy, "--src-load", src, "--dst-load", dst, "--json", cwd=tmp_path)
        assert d.returncode == 0, d.stderr
        got.append(json.loads(d.stdout)["decision"])
    assert got == ["MIGRATE" if t else "STAY" for t in teacher_decisions(SCENARIOS)]


def test_the_default_bundle_is_installed(venv, tmp_path):
    d = run(venv, "mlsched-lite", "decide", "--cpu", 4, "--idle", 2, "--busy", 6, "--src-load",
            0.9, "--dst-load", 0.2, cwd=tmp_path)
    assert d.returncode == 0, d.stderr
    assert d.stdout.strip() == "MIGRATE"


@pytest.mark.parametrize("argv", [["run", "--duration", "1", "--no-collector"],
                                  ["replay", "features.csv"]])
def test_kernel_commands_say_what_is_missing(venv, tmp_path, argv):
    (tmp_path / "features.csv").write_text("cpu,cpu_idle,cpu_not_idle,src_dom_load,"
                                           "dst_dom_load\n4,2,6,0.9,0.2\n")
    r = run(venv, "mlsched-lite", *argv, cwd=tmp_path)
    assert r.returncode != 0
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert "compiled extension" in lines[0] and "make build" in lines[0], lines[0]
