"""What the verifier has to walk to load each of our BPF programs.

Tests, replay and the benchmark load the injector on their first ``inject()``. When its
mode flags (generated or batch input, malformed records, timed decides) reached an inlined
decision, the verifier walked the decision once per combination of flags: tens of
thousands of instructions, seconds of load time on a slow machine. The decision now sits
in one global BPF function, which the verifier checks once on its own.

The figures come from the verifier's own statistics line (``processed N insns``), printed
when ``bpftool -d`` loads an object with its log on: a count of work, the same on a quiet
or a busy machine.
"""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from support.paths import ROOT

pytestmark = pytest.mark.bpf

#: Instructions the verifier may process for any one program of ours. The collector's
#: busiest hook, which inlines the whole decision once, stays well below it.
MAX_PROCESSED_INSNS = 20_000
PROCESSED = re.compile(r"^processed (\d+) insns", re.M)
PROG = re.compile(r"prog '(\w+)': -- BEGIN PROG LOAD LOG --")


def verifier_stats(obj: str, bpffs) -> dict[str, int]:
    """Processed instructions per program of ``bpf/OBJ``, loaded into a private bpffs."""
    bpftool = shutil.which("bpftool")
    if bpftool is None:
        pytest.fail("bpftool is missing (make deb installs it)")
    target = bpffs / obj.replace(".", "_")
    p = subprocess.run([bpftool, "-d", "prog", "loadall", str(ROOT / "bpf" / obj), str(target)],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    shutil.rmtree(target, ignore_errors=True)
    out: dict[str, int] = {}
    log = p.stderr + p.stdout
    for block in log.split("-- END PROG LOAD LOG --"):
        name, count = PROG.search(block), PROCESSED.search(block)
        if name and count:
            out[name.group(1)] = int(count.group(1))
    return out


@pytest.mark.parametrize("obj, progs", [
    ("mlsched_inject.bpf.o", {"inject", "read_decisions"}),
    ("mlsched.bpf.o", {"on_sched_switch", "on_sched_migrate", "on_sched_wakeup"}),
])
def test_each_program_is_cheap_to_verify(obj, progs, bpffs):
    stats = verifier_stats(obj, bpffs)
    print(f"\n{obj}: processed insns {stats}")
    assert progs <= set(stats), f"no verifier statistics for {progs - set(stats)}: {stats}"
    heavy = {p: n for p, n in stats.items() if n > MAX_PROCESSED_INSNS}
    assert not heavy, f"the verifier walks more than {MAX_PROCESSED_INSNS} insns: {heavy}"
