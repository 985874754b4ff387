"""What a test needs to prove our BPF programs, maps and links are gone (bpftool's view)."""

from __future__ import annotations

import json
import subprocess
import time


def bpf_ids(kind: str) -> set[int]:
    out = subprocess.run(["bpftool", "-j", kind, "show"], check=True, capture_output=True,
                         text=True).stdout
    return {item["id"] for item in json.loads(out or "[]")}


def eventually_gone(ids: dict[str, list[int]]) -> set[tuple[str, int]]:
    """Our ids still listed by bpftool after the kernel's deferred frees had time to run
    (tracing programs are released after an RCU grace period, not at close())."""
    left: set[tuple[str, int]] = set()
    for _ in range(100):
        left = {(kind, i) for kind, key in (("prog", "progs"), ("map", "maps"), ("link", "links"))
                for i in set(ids[key]) & bpf_ids(kind)}
        left |= {("link->prog", i) for i in set(ids["progs"]) & link_prog_ids()}
        if not left:
            break
        time.sleep(0.1)
    return left


def link_prog_ids() -> set[int]:
    out = subprocess.run(["bpftool", "-j", "link", "show"], check=True, capture_output=True,
                         text=True).stdout
    return {item.get("prog_id") for item in json.loads(out or "[]")}
