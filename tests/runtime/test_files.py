"""Files mlsched-lite writes survive a power loss: data and directory entry reach the disk
before the write counts as done. Observed with strace on a real process."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace")

WRITE = "from mlsched.runtime.files import write_atomic; write_atomic({path!r}, 'x 1\\n')"


def traced(tmp_path, code: str) -> list[str]:
    log = tmp_path / "strace.log"
    subprocess.run(["strace", "-f", "-o", str(log), "-e",
                    "trace=openat,fsync,fdatasync,rename,renameat,renameat2",
                    sys.executable, "-c", code], check=True, capture_output=True)
    return log.read_text().splitlines()


def test_atomic_write_syncs_the_file_before_the_rename_and_the_directory_after(tmp_path):
    target = tmp_path / "out.prom"
    lines = traced(tmp_path, WRITE.format(path=str(target)))
    assert target.read_text() == "x 1\n"
    kind: dict[str, str] = {}           # fd -> what it was last opened for (fds are reused)
    events = []
    for line in lines:
        m = re.search(r'openat\(AT_FDCWD, "([^"]+)", ([^)]*)\) = (\d+)', line)
        if m:
            kind[m[3]] = ("file" if m[1].startswith(str(tmp_path / ".out.prom.")) else
                          "dir" if m[1] == str(tmp_path) and "O_DIRECTORY" in m[2] else "other")
        s = re.search(r"\b(?:fsync|fdatasync)\((\d+)\)", line)
        if s:
            events.append(("sync", kind.get(s[1], "?")))
        if re.search(r"\brename(at2?)?\(", line) and "out.prom" in line:
            events.append(("rename",))
    assert ("sync", "file") in events and ("rename",) in events and ("sync", "dir") in events
    assert events.index(("sync", "file")) < events.index(("rename",)) < \
        events.index(("sync", "dir")), events
