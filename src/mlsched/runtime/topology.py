"""CPU topology: which CPUs are online and how they group into load-balancing domains.

The collector keeps one load per domain; ``mlsched-lite run --domains`` and
``scx_mlsched --domains`` take the same syntax and default:

* ``SPEC`` is a comma-separated list of domains; each domain is a CPU list in the
  sysfs ``cpulist`` format, with ``+`` joining ranges inside one domain:
  ``0-3,4-7`` is two domains, ``0-1+4-5,2-3+6-7`` two domains of four CPUs;
* without ``--domains``: CPUs that share a last-level cache form a domain; a host
  with a single LLC gets one domain per CPU (so there is something to balance).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from .wire import MAX_CPUS, MAX_DOMAINS

SYSFS_CPU = "/sys/devices/system/cpu"


_RANGE = re.compile(r"([0-9]+)(?:-([0-9]+))?")


def parse_cpu_list(text: str) -> list[int]:
    """'0-3,8' -> [0, 1, 2, 3, 8] (the sysfs cpulist format: ASCII digits, ranges with '-';
    a trailing newline and empty items, as sysfs writes them, are allowed)."""
    cpus: list[int] = []
    for part in text.strip().split(","):
        if not part:
            continue
        m = _RANGE.fullmatch(part)
        if not m:
            raise ValueError(f"CPU range {part!r} is not N or N-M")
        a = int(m[1])
        b = int(m[2]) if m[2] is not None else a
        if b < a:
            raise ValueError(f"CPU range {part!r} runs backwards")
        cpus.extend(range(a, b + 1))
    return cpus


def online_cpus(sysfs: str = SYSFS_CPU) -> list[int]:
    """Online CPU ids from sysfs; all of os.cpu_count() when sysfs cannot be read."""
    try:
        return parse_cpu_list(Path(sysfs, "online").read_text())
    except (OSError, ValueError):
        return list(range(os.cpu_count() or 1))


def cpu_count(sysfs: str = SYSFS_CPU) -> int:
    """CPUs the host's table must cover: the online CPUs, as many as the kernel side counts
    idle or busy (an offlined CPU or an SMT sibling left out by ``nosmt`` is no gap)."""
    return len(online_cpus(sysfs))


def table_cpus(ncpus: int | None = None, sysfs: str = SYSFS_CPU) -> list[int]:
    """The CPU ids a ``ncpus``-CPU table covers, in the order of their index (the kernel's
    ``cpu_index``): the first ``ncpus`` online CPUs (all of them for None). Past the last
    online CPU (a table made for a larger host, as replay and benchmarks use) the ids go
    on from the highest online one."""
    online = online_cpus(sysfs)
    if ncpus is None:
        return online
    cpus = online[:ncpus]
    nxt = (online[-1] + 1) if online else 0
    while len(cpus) < ncpus:
        cpus.append(nxt)
        nxt += 1
    return cpus


def uncovered(domains: list[list[int]], sysfs: str = SYSFS_CPU) -> list[int]:
    """Online CPUs in none of ``domains``: the collector keeps no load for them."""
    covered = {c for d in domains for c in d}
    return [c for c in online_cpus(sysfs) if c not in covered]


def parse_domains(spec: str) -> list[list[int]]:
    """``--domains`` syntax (see the module doc): '0-3,4-7' -> [[0..3], [4..7]]."""
    domains, seen = [], set()
    for item in spec.split(","):
        item = item.strip()
        if not item:
            raise ValueError(f"--domains {spec!r}: empty domain")
        try:
            parts = item.split("+")
            if any(not p or "," in p for p in parts):
                raise ValueError(item)
            cpus = [c for part in parts for c in parse_cpu_list(part)]
        except ValueError:
            raise ValueError(f"--domains {spec!r}: {item!r} is not a CPU range like 0-3") from None
        if seen & set(cpus):
            raise ValueError(f"--domains {spec!r}: CPU {sorted(seen & set(cpus))[0]} in two domains")
        seen |= set(cpus)
        domains.append(cpus)
    if len(domains) > MAX_DOMAINS:
        raise ValueError(f"--domains {spec!r}: at most {MAX_DOMAINS} domains")
    if max(seen) >= MAX_CPUS:
        raise ValueError(f"--domains {spec!r}: CPU ids must be below {MAX_CPUS}")
    return domains


def cpu_domain_map(domains: list[list[int]], none: int, dtype) -> np.ndarray:
    """Index of each CPU's domain, by CPU id up to the highest CPU of any domain; ``none``
    for a CPU in no domain."""
    top = max((c for d in domains for c in d), default=-1)
    out = np.full(top + 1, none, dtype=dtype)
    for i, cpus in enumerate(domains):
        out[cpus] = i
    return out


def detect_domains(sysfs: str = SYSFS_CPU) -> list[list[int]]:
    """The default domains: CPUs grouped by last-level cache; a single LLC gives one
    domain per CPU. More groups than the collector scans are merged evenly."""
    online = online_cpus(sysfs)
    groups: dict[tuple[int, ...], list[int]] = {}
    for cpu in online:
        best_level, shared = -1, (cpu,)
        for index in sorted(Path(sysfs, f"cpu{cpu}", "cache").glob("index*")):
            try:
                level = int((index / "level").read_text())
                cpus = tuple(parse_cpu_list((index / "shared_cpu_list").read_text()))
            except (OSError, ValueError):
                continue
            if level > best_level:
                best_level, shared = level, cpus
        groups.setdefault(shared, []).append(cpu)
    domains = sorted(groups.values())
    if len(domains) <= 1:
        domains = [[c] for c in online]
    if len(domains) > MAX_DOMAINS:
        per = -(-len(domains) // MAX_DOMAINS)
        domains = [sum(domains[i:i + per], []) for i in range(0, len(domains), per)]
    return domains


def restrict(domains: list[list[int]], ncpus: int, sysfs: str = SYSFS_CPU) -> list[list[int]]:
    """Domains cut to the first ``ncpus`` CPUs: ids below ``ncpus``, and the first ``ncpus``
    online CPUs (past a gap in the online mask, those ids run higher); domains left empty
    are dropped."""
    keep = set(range(ncpus)) | set(online_cpus(sysfs)[:ncpus])
    cut = [[c for c in d if c in keep] for d in domains]
    return [d for d in cut if d]
