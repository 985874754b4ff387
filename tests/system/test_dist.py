"""The tarball (`make dist`) on a clean extract: the system Python, an empty environment.

One tarball is built (packaging/build_dist.py) and extracted into a fresh directory;
every command then runs as a user would start it on a small host::

    env -i PATH=/usr/bin:/bin HOME=<empty dir> <extract>/bin/mlsched-lite ...

from an empty working directory. As root each command also runs in a private mount
namespace with fresh tmpfs on /tmp, /var/tmp and /dev/shm, listed when it exits: together
with the empty HOME and working directory and the unchanged extract directory this shows
that nothing is written anywhere but the stats paths given on the command line.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import pytest

from mlsched import __version__
from support.paths import DEFAULT_BUNDLE, ROOT
from support.remap import SWAPPED_LOADS, remapped
from support.scenarios import SCENARIOS, teacher_decisions

MINOR = f"{sys.version_info[0]}.{sys.version_info[1]}"
SYSTEM_PYTHON = Path(f"/usr/bin/python{MINOR}")
TAG = f"cp{sys.version_info[0]}{sys.version_info[1]}"
MB = 1e6
TARBALL_BUDGET_MB, EXTRACTED_BUDGET_MB, RSS_BUDGET_MB, COLD_START_BUDGET_S = 25, 90, 50, 1.0
IS_ROOT = os.geteuid() == 0
#: Run "$@" with fresh tmpfs on the scratch directories, then list what it left there in $1.
SCRATCH = ("/tmp", "/var/tmp", "/dev/shm")
NS_SCRIPT = ('r=$1; shift; for d in ' + " ".join(SCRATCH) + '; do '
             'mount -t tmpfs -o mode=1777 scratch "$d" || exit 97; done; '
             '"$@"; rc=$?; find ' + " ".join(SCRATCH) + ' -mindepth 1 > "$r"; exit $rc')
#: What a small host must not get: TensorFlow, the converter, build tools and headers.
FORBIDDEN = re.compile(r"/tensorflow(_cpu)?/|/t?f?_?keras/|mlsched/convert|/cffi/|setuptools|/pip/|\.h$|\.c$|\.a$"
                       r"|/include/|/tests?/|\.pyi$")

pytestmark = pytest.mark.skipif(not SYSTEM_PYTHON.exists(),
                                reason=f"no system {SYSTEM_PYTHON} for the {TAG} tarball")


class Dist:
    """The built tarball, its extract and the runner for its launcher."""

    def __init__(self, work: Path):
        self.work = work
        out = work / "out"
        p = subprocess.run([sys.executable, str(ROOT / "packaging" / "build_dist.py"),
                            "--out", str(out)], capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr
        (self.tarball,) = out.glob("*.tar.gz")
        assert sorted(q.name for q in out.iterdir()) == [self.tarball.name]   # no leftovers
        with tarfile.open(self.tarball) as tar:
            self.members = tar.getmembers()
            (work / "x").mkdir()
            tar.extractall(work / "x", filter="data")
        (self.top,) = (work / "x").iterdir()
        self.lite = self.top / "bin" / "mlsched-lite"
        for d in ("home", "cwd", "stats", "report"):
            (work / d).mkdir()
        self.tree = self.listing()

    def listing(self) -> dict[str, tuple[int, int]]:
        return {str(p.relative_to(self.top)): (p.stat().st_size, p.stat().st_mtime_ns)
                for p in self.top.rglob("*")}

    def run(self, *args: str, prefix: tuple[str, ...] = (), launcher: Path | None = None,
            namespace: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        """Run the launcher from the empty cwd with env -i; check nothing was left behind."""
        cmd = [*prefix, "env", "-i", "PATH=/usr/bin:/bin", f"HOME={self.work / 'home'}",
               str(launcher or self.lite), *args]
        report = self.work / "report" / "scratch.txt"
        if namespace and IS_ROOT:
            cmd = ["unshare", "--mount", "--propagation", "private", "sh", "-c", NS_SCRIPT,
                   "sh", str(report), *cmd]
        t0 = time.perf_counter()
        p = subprocess.run(cmd, capture_output=True, text=True, cwd=self.work / "cwd",
                           timeout=timeout)
        p.wall = time.perf_counter() - t0
        assert p.returncode != 97, "could not mount the scratch tmpfs"
        if namespace and IS_ROOT:
            left = report.read_text().split()
            report.unlink()
            assert left == [], f"{args}: wrote {left}"
        assert list((self.work / "home").iterdir()) == [], f"{args}: wrote into HOME"
        assert list((self.work / "cwd").iterdir()) == [], f"{args}: wrote into the cwd"
        assert self.listing() == self.tree, f"{args}: changed the extract directory"
        return p


@pytest.fixture(scope="module")
def dist():
    # Not under a scratch directory: the commands see a fresh tmpfs there. A checkout that
    # lives under /tmp puts its work in /var/cache/mlsched instead.
    base = ROOT / "build"
    if IS_ROOT and any(ROOT.is_relative_to(d) for d in SCRATCH):
        base = Path("/var/cache/mlsched")
    base.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="test-dist-", dir=base))
    try:
        yield Dist(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_tarball_name_contents_and_size(dist):
    assert dist.tarball.name == f"mlsched-lite-{__version__}-linux-{platform.machine()}-{TAG}.tar.gz"
    names = {m.name.split("/", 1)[1] for m in dist.members if "/" in m.name}
    rt = "lib/python/mlsched/runtime"
    for need in ("bin/mlsched-lite", "systemd/mlsched-lite.service", "README.md", "SHA256SUMS",
                 f"{rt}/libbpf.so.1", f"{rt}/default_bundle/manifest.json",
                 f"{rt}/default_bundle/model.tflite", f"{rt}/default_bundle/table.bin",
                 "lib/python/numpy/__init__.py", "lib/python/tflite_runtime/interpreter.py"):
        assert need in names, need
    assert any(re.fullmatch(rf"{rt}/_bpf\.cpython-.*\.so", n) for n in names)
    assert any(n.startswith("lib/python/_cffi_backend") for n in names)
    # the BPF objects travel inside the extension (generated skeletons), not as files
    assert [n for n in names if n.endswith(".bpf.o")] == []
    bad = sorted(n for n in names if FORBIDDEN.search("/" + n))
    assert bad == [], bad
    assert not any(m.issym() or m.islnk() for m in dist.members)   # the bundle is real files
    size = dist.tarball.stat().st_size / MB
    extracted = sum(m.size for m in dist.members) / MB
    print(f"tarball {size:.1f} MB, extracted {extracted:.1f} MB")
    assert size <= TARBALL_BUDGET_MB and extracted <= EXTRACTED_BUDGET_MB
    sums = subprocess.run(["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=dist.top,
                          capture_output=True, text=True)
    assert sums.returncode == 0, sums.stdout + sums.stderr
    listed = {line.split("  ", 1)[1] for line in (dist.top / "SHA256SUMS").read_text().splitlines()}
    assert listed == {n for n in names if (dist.top / n).is_file()} - {"SHA256SUMS"}


def test_extension_finds_its_libbpf_and_only_libelf_zlib_on_the_host(dist):
    (ext,) = (dist.top / "lib/python/mlsched/runtime").glob("_bpf*.so")
    dyn = subprocess.run(["readelf", "-d", str(ext)], capture_output=True, text=True).stdout
    assert re.search(r"RUNPATH.*\[\$ORIGIN\]", dyn), dyn
    deps = {}
    for lib in (ext, ext.parent / "libbpf.so.1"):
        out = subprocess.run(["env", "-i", "PATH=/usr/bin:/bin", "ldd", str(lib)],
                             capture_output=True, text=True).stdout
        deps.update(re.findall(r"^\s*(\S+) => (\S+)", out, re.M))
    assert deps.pop("libbpf.so.1") == str(ext.parent / "libbpf.so.1")
    assert set(deps) <= {"libc.so.6", "libelf.so.1", "libz.so.1"}, deps


def test_version(dist):
    p = dist.run("--version")
    assert p.returncode == 0, p.stderr
    assert f"mlsched-lite {__version__}" in p.stdout
    assert f"Python {MINOR}." in p.stdout and "tflite-runtime" in p.stdout


def test_decide_seed_scenarios_and_cold_start(dist):
    expected = ["MIGRATE" if d else "STAY" for d in teacher_decisions(SCENARIOS)]
    got, walls = [], []
    for cpu, idle, busy, src, dst in SCENARIOS:
        p = dist.run("decide", "--cpu", str(cpu), "--idle", str(idle), "--busy", str(busy),
                     "--src-load", str(src), "--dst-load", str(dst), "--json")
        assert p.returncode == 0, p.stderr
        got.append(json.loads(p.stdout)["decision"])
        walls.append(p.wall)
    assert got == expected == ["MIGRATE", "STAY", "STAY"]
    # how fast is printed for the README's table, not asserted: a busy machine is slower
    print(f"cold start (launch -> decision): best {min(walls):.3f} s of {walls}"
          f" (target {COLD_START_BUDGET_S} s)")


def test_bundle_made_elsewhere(dist):
    bundle = dist.work / "stats" / "mybundle"     # a bundle outside the tarball
    shutil.copytree(DEFAULT_BUNDLE, bundle)
    try:
        for b in (dist.top / "lib/python/mlsched/runtime/default_bundle", bundle):
            p = dist.run("bundle", "verify", str(b))
            assert p.returncode == 0, p.stderr
            assert "cpus" in p.stdout and p.stdout.rstrip().endswith("OK"), p.stdout
        p = dist.run("decide", "--bundle", str(bundle), "--cpu", "4", "--idle", "2", "--busy", "6",
                     "--src-load", "0.9", "--dst-load", "0.2")
        assert (p.returncode, p.stdout.strip()) == (0, "MIGRATE"), p.stderr
        (bundle / "table.bin").write_bytes(b"\0" * 16)
        p = dist.run("bundle", "verify", str(bundle))
        assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr
    finally:
        shutil.rmtree(bundle)


def test_bundle_with_its_own_feature_mapping(dist):
    """A bundle whose model reads the loads swapped (format version 2): the tarball's
    runtime feeds the model by the manifest's mapping, as the library does."""
    bundle = remapped(DEFAULT_BUNDLE, SWAPPED_LOADS, dist.work / "stats" / "swapped")
    try:
        p = dist.run("bundle", "verify", str(bundle))
        assert p.returncode == 0 and p.stdout.rstrip().endswith("OK"), p.stdout + p.stderr
        assert "inputs        cpu, cpu_idle, cpu_not_idle, dst_dom_load, src_dom_load" in p.stdout
        got = []
        for src, dst in ((0.2, 0.9), (0.9, 0.2)):
            p = dist.run("decide", "--bundle", str(bundle), "--cpu", "4", "--idle", "2",
                         "--busy", "6", "--src-load", str(src), "--dst-load", str(dst))
            assert p.returncode == 0, p.stderr
            got.append(p.stdout.strip())
        assert got == ["MIGRATE", "STAY"]     # the default model's MIGRATE at src .9, dst .2
    finally:
        shutil.rmtree(bundle)


def test_launcher_says_which_python_it_needs(dist):
    alt = dist.work / "stats" / "alt"
    (alt / "bin").mkdir(parents=True)
    text = dist.lite.read_text()
    assert f'want="{MINOR}"' in text
    (alt / "bin" / "mlsched-lite").write_text(text.replace(f'want="{MINOR}"', 'want="3.99"'))
    (alt / "bin" / "mlsched-lite").chmod(0o755)
    try:
        p = dist.run("--version", launcher=alt / "bin" / "mlsched-lite")
    finally:
        shutil.rmtree(alt)
    assert p.returncode == 2
    assert "needs Python 3.99" in p.stderr and f"({MINOR})" in p.stderr, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1


@pytest.mark.skipif(not IS_ROOT, reason="hiding libelf needs a mount namespace (root)")
def test_launcher_says_libelf_is_missing(dist):
    libelf = os.path.realpath(subprocess.run(
        ["sh", "-c", "ldconfig -p | sed -n 's/.*libelf.so.1 .*=> //p' | head -1"],
        capture_output=True, text=True, env={"PATH": "/usr/sbin:/sbin:/usr/bin:/bin"}).stdout.strip())
    assert os.path.exists(libelf)
    hide = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
            f'mount --bind /dev/null "{libelf}" && exec "$@"', "sh"]
    p = dist.run("decide", "--cpu", "1", "--idle", "7", "--busy", "1", "--src-load", ".1",
                 "--dst-load", ".1", prefix=tuple(hide), namespace=False)
    assert p.returncode == 2
    assert p.stderr.strip() == ("mlsched-lite: libelf.so.1 not found on this host: install libelf1"
                                " (Debian/Ubuntu) or elfutils-libelf (Fedora/RHEL)"), p.stderr


@pytest.mark.skipif(not IS_ROOT, reason="dropping capabilities is checked as root")
def test_run_without_capabilities_says_so(dist):
    stats = dist.work / "stats" / "nocap.prom"
    p = dist.run("run", "--duration", "1", "--stats-file", str(stats),
                 prefix=("setpriv", "--bounding-set=-all", "--inh-caps=-all", "--"))
    assert p.returncode == 2
    assert "needs root or CAP_BPF and CAP_PERFMON" in p.stderr, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and not stats.exists()


def test_run_live_with_the_units_capabilities(dist, require_bpf):
    """run --duration 3 on the live kernel with only CAP_BPF + CAP_PERFMON and a 64 KiB
    memlock limit (what the systemd unit grants): stats and summary where asked, nowhere else."""
    stats, summary = dist.work / "stats" / "mlsched.prom", dist.work / "stats" / "summary.json"
    p = dist.run("run", "--duration", "3", "--interval", "1", "--stats-file", str(stats),
                 "--summary-json", str(summary),
                 prefix=("prlimit", "--memlock=65536:65536", "setpriv",
                         "--bounding-set=-all,+bpf,+perfmon", "--inh-caps=-all", "--"))
    assert p.returncode == 0, p.stderr
    assert sorted(q.name for q in stats.parent.iterdir()) == ["mlsched.prom", "summary.json"]
    assert re.search(r"^mlsched_requests_total \d+$", stats.read_text(), re.M)
    s = json.loads(summary.read_text())
    assert s["backend"] == "tflite-runtime" and s["seconds"] >= 2.5
    assert s["dropped"] == 0 and s["invalid"] == 0
    print(f"run: RSS peak {s['peak_rss_mb']} MB serving, {s['startup_peak_rss_mb']} MB at start-up;"
          f" {s['requests_per_s']:.0f} requests/s")
    assert s["peak_rss_mb"] <= RSS_BUDGET_MB


def test_replay_through_the_kernel_from_the_tarball(dist, require_bpf):
    """replay runs the injector, which ships inside the extension (no .bpf.o file) and
    loads on first use onto the production object's maps."""
    inputs = dist.work / "input"
    inputs.mkdir(exist_ok=True)
    csv = inputs / "scenarios.csv"
    csv.write_text("cpu,cpu_idle,cpu_not_idle,src_dom_load,dst_dom_load\n"
                   + "".join(",".join(map(str, s)) + "\n" for s in SCENARIOS))
    p = dist.run("replay", str(csv))
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["MIGRATE" if d else "STAY" for d in teacher_decisions(SCENARIOS)]


def test_systemd_unit_verifies(dist):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not installed (Debian package systemd)")
    text = (dist.top / "systemd" / "mlsched-lite.service").read_text()
    settings = dict(re.findall(r"^(\w+)=(.*)$", text, re.M))
    assert settings["CapabilityBoundingSet"].split() == ["CAP_BPF", "CAP_PERFMON"]
    assert settings["AmbientCapabilities"].split() == ["CAP_BPF", "CAP_PERFMON"]
    for key, value in (("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"),
                       ("ProtectHome", "yes"), ("PrivateTmp", "yes"), ("Restart", "on-failure"),
                       ("RuntimeDirectory", "mlsched")):
        assert settings[key] == value, key
    assert "--stats-file /run/mlsched/" in settings["ExecStart"]
    # verify checks that ExecStart exists: point it at the extract instead of /opt/mlsched-lite.
    unit = dist.work / "stats" / "mlsched-lite.service"
    unit.write_text(text.replace("/opt/mlsched-lite", str(dist.top)))
    try:
        p = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True,
                           timeout=60)
    finally:
        unit.unlink()
    assert (p.returncode, p.stdout + p.stderr) == (0, "")


def test_pinned_maps_drop_in_verifies(dist):
    """``run --pin`` writes under /sys/fs/bpf, which ProtectSystem=strict makes read-only:
    the shipped drop-in runs --pin and opens exactly that path, and verifies with the unit."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not installed (Debian package systemd)")
    drop_in = dist.top / "systemd" / "mlsched-lite.service.d" / "pin.conf"
    text = drop_in.read_text()
    assert re.search(r"^ReadWritePaths=/sys/fs/bpf$", text, re.M)
    starts = re.findall(r"^ExecStart=(.*)$", text, re.M)
    assert starts[0] == "" and " run --pin " in starts[1]      # replaces the unit's command
    units = dist.work / "stats" / "units"
    (units / "mlsched-lite.service.d").mkdir(parents=True)
    try:
        for src, dst in ((dist.top / "systemd" / "mlsched-lite.service", units /
                          "mlsched-lite.service"), (drop_in, units / "mlsched-lite.service.d" /
                                                    "pin.conf")):
            dst.write_text(src.read_text().replace("/opt/mlsched-lite", str(dist.top)))
        p = subprocess.run([analyze, "verify", "mlsched-lite.service"], capture_output=True,
                           text=True, timeout=60,
                           env={**os.environ, "SYSTEMD_UNIT_PATH": f"{units}:"})
    finally:
        shutil.rmtree(units)
    assert (p.returncode, p.stdout + p.stderr) == (0, "")


def test_extract_directory_still_verifies(dist):
    p = subprocess.run(["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=dist.top,
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stdout
    assert dist.listing() == dist.tree
