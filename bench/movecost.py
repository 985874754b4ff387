"""``make movecost``: what a move to the other core costs a task, by working set, measured
on this host's own two cores.

    python -m bench.movecost [--tool build/movecost] [--sizes LIST] [--pairs N] [--warm N]
                             [--cpus A,B] [--out bench/movecost.json] [--quick]

The qemu guest of the scheduler bench models no caches: there a task moved to another CPU
loses nothing, so moving more wins by construction. What a move costs is therefore
measured here, where the caches are real, and charged where the guest cannot show it
(``mlsched-train --move-cost``, ``mlsched-workload -M``).

The host tool ``bench/movecost.c`` does the trials (see its header): per working set W, a
pass over W bytes as a random pointer chase that writes every line, warmed on a source
CPU, then timed once on the same CPU (stay) or right after moving to the other (move); a
stay and a move from the same source make a pair, in random order, the source alternating
between pairs. This driver runs it and, per size, reports

* the median time of the timed pass staying and after a move;
* the cost of a move: the median over the pairs of (move - stay), with a 95 % percentile
  bootstrap interval (``RESAMPLES`` resamples of the pairs, fixed random state);
* the relative slowdown: that cost over the median staying pass;
* how many pairs had a timed pass during which the tool was switched out (another task ran
  on its CPU: those times are not the pass's alone; they stay in, the medians absorb a few);
* host facts: CPU model, the caches of both CPUs from sysfs, kernel, transparent huge
  pages, load averages before and after.

Every figure in the file is measured on this host; nothing is modelled. The trials stay
in the file (``stay_ns``, ``move_ns``, pair by pair). ``bench/movecost.json`` is written
whole or not at all; a tool that fails, or output that is not whole pairs of what was
asked, writes nothing (exit 1; bad arguments exit 2).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from mlsched.runtime.files import write_atomic
from mlsched.train.move_cost import MoveCostError, parse_bytes

from .common import load_average, machine

PROG = "movecost"
ROOT = Path(__file__).resolve().parent.parent
DEFAULT_TOOL = ROOT / "build" / "movecost"
DEFAULT_OUT = ROOT / "bench" / "movecost.json"
KIB, MIB = 1 << 10, 1 << 20
#: From inside a core's L1d to far past its L2 (and the TLB's reach), doubling.
DEFAULT_SIZES = tuple(16 * KIB << k for k in range(13))
DEFAULT_PAIRS = 51
DEFAULT_WARM = 3
#: --quick: the shape of the measurement, in a second or two; its figures mean little.
QUICK_SIZES = (16 * KIB, 64 * KIB, 256 * KIB, MIB)
QUICK_PAIRS = 6
QUICK_WARM = 2
RESAMPLES = 4000
CONFIDENCE = 0.95
#: Fixed random state of the bootstrap: the same trials give the same interval.
BOOTSTRAP_SEED = 20261204
CACHE_DIR = "/sys/devices/system/cpu/cpu{}/cache"
THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")
#: A move trial must land on the other CPU, a stay trial on its source.
MODES = ("stay", "move")


class Failed(Exception):
    """The measurement cannot be used; one line, with the exit status."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


def run_tool(tool: Path, sizes: list[int], pairs: int, warm: int,
             cpus: str | None) -> tuple[dict, list[dict]]:
    """The tool's first line and its trials; a line per size measured on stderr when it is a
    terminal (elsewhere stderr holds nothing but an error)."""
    progress = sys.stderr.isatty()
    if not tool.is_file() or not os.access(tool, os.X_OK):
        raise Failed(f"{tool}: no such program: build it with `make {_rel(tool)}`", 2)
    cmd = [str(tool), "--sizes", ",".join(map(str, sizes)), "--pairs", str(pairs),
           "--warm", str(warm)] + (["--cpus", cpus] if cpus else [])
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True) as p:
        lines = []
        for line in p.stdout:
            lines.append(line)
            done, whole = divmod(len(lines) - 1, 2 * pairs)
            if done and not whole and progress:
                print(f"{PROG}: {_size(sizes[done - 1])} measured", file=sys.stderr)
        err = p.stderr.read().strip().splitlines()
        status = p.wait()
    if status:
        why = err[-1] if err else f"{tool} ended with status {status}"
        raise Failed(why if status == 2 else f"measurement failed: {why}", 2 if status == 2 else 1)
    try:
        parsed = [json.loads(line) for line in lines]
    except ValueError:
        raise Failed(f"{tool} wrote a line that is not JSON") from None
    if not parsed:
        raise Failed(f"{tool} wrote nothing")
    return parsed[0], parsed[1:]


def _rel(tool: Path) -> str:
    try:
        return str(tool.resolve().relative_to(ROOT))
    except ValueError:
        return "movecost"


def paired(head: dict, trials: list[dict], sizes: list[int],
           pairs: int) -> dict[int, dict[str, np.ndarray]]:
    """Per size: stay and move times (ns), switches and sources, pair by pair; every
    pair of every size asked for, each trial where it had to run, or ``Failed``."""
    cpus = head.get("cpus")
    if not (isinstance(cpus, list) and len(cpus) == 2):
        raise Failed("the tool's first line names no two CPUs")
    seen: dict[tuple[int, int, str], dict] = {}
    for t in trials:
        try:
            key = (int(t["size"]), int(t["pair"]), t["mode"])
            src, cpu, ns, sw = int(t["src"]), int(t["cpu"]), int(t["ns"]), int(t["switches"])
        except (KeyError, TypeError, ValueError):
            raise Failed(f"a trial line without its fields: {json.dumps(t)[:120]}") from None
        if key[0] not in sizes or not 0 <= key[1] < pairs or key[2] not in MODES:
            raise Failed(f"a trial that was not asked for: {json.dumps(t)[:120]}")
        if key in seen:
            raise Failed(f"a trial twice: {json.dumps(t)[:120]}")
        other = {cpus[0]: cpus[1], cpus[1]: cpus[0]}.get(src)
        if other is None or cpu != (src if key[2] == "stay" else other) or ns <= 0:
            raise Failed(f"a {key[2]} trial that did not run where it had to, or took no"
                         f" time: {json.dumps(t)[:120]}")
        seen[key] = {"src": src, "ns": ns, "switches": sw}
    out = {}
    for w in sizes:
        missing = [(p, m) for p in range(pairs) for m in MODES if (w, p, m) not in seen]
        if missing:
            p, m = missing[0]
            raise Failed(f"{_size(w)}: {len(missing)} trials missing (pair {p}, {m} first)")
        stay = [seen[(w, p, "stay")] for p in range(pairs)]
        move = [seen[(w, p, "move")] for p in range(pairs)]
        if any(s["src"] != m["src"] for s, m in zip(stay, move, strict=True)):
            raise Failed(f"{_size(w)}: a pair whose stay and move start on different CPUs")
        out[w] = {"stay": np.array([s["ns"] for s in stay], dtype=np.float64),
                  "move": np.array([m["ns"] for m in move], dtype=np.float64),
                  "src": np.array([s["src"] for s in stay]),
                  "switched": np.array([s["switches"] + m["switches"] > 0
                                        for s, m in zip(stay, move, strict=True)])}
    return out


def bootstrap_median_ci(diff: np.ndarray, resamples: int = RESAMPLES,
                        confidence: float = CONFIDENCE,
                        seed: int = BOOTSTRAP_SEED) -> tuple[float, float]:
    """Percentile bootstrap interval of the median of ``diff``: resample the values with
    replacement ``resamples`` times, take each resample's median, and the central
    ``confidence`` of those medians."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(diff), size=(resamples, len(diff)))
    medians = np.median(diff[idx], axis=1)
    tail = (1.0 - confidence) / 2 * 100
    lo, hi = np.percentile(medians, [tail, 100 - tail])
    return float(lo), float(hi)


def summarize(w: int, t: dict[str, np.ndarray], resamples: int = RESAMPLES) -> dict:
    """One size's figures from its pairs."""
    diff = t["move"] - t["stay"]
    cost = float(np.median(diff))
    lo, hi = bootstrap_median_ci(diff, resamples)
    stay = float(np.median(t["stay"]))
    by_src = {str(int(c)): _num(np.median(diff[t["src"] == c])) for c in np.unique(t["src"])}
    return {"working_set_bytes": w, "pairs": len(diff),
            "stay_median_ns": _num(stay), "move_median_ns": _num(np.median(t["move"])),
            "cost_ns": _num(cost), "cost_ci95_ns": [_num(lo), _num(hi)],
            "slowdown": cost / stay if stay > 0 else None,
            "cost_ns_by_source_cpu": by_src,
            "pairs_switched_out": int(t["switched"].sum()),
            "stay_ns": [int(v) for v in t["stay"]], "move_ns": [int(v) for v in t["move"]]}


def _num(x) -> float | int:
    """Whole nanoseconds stay whole in the file."""
    x = float(x)
    return int(x) if x.is_integer() else x


def caches(cpu: int) -> list[dict]:
    """The CPU's caches as sysfs lists them: level, type, size, which CPUs share it."""
    out = []
    base = Path(CACHE_DIR.format(cpu))
    for d in sorted(base.glob("index*")):
        try:
            size = d.joinpath("size").read_text().strip()
            out.append({"level": int(d.joinpath("level").read_text()),
                        "type": d.joinpath("type").read_text().strip(),
                        "size_bytes": parse_bytes(size),
                        "line_bytes": int(d.joinpath("coherency_line_size").read_text()),
                        "shared_cpu_list": d.joinpath("shared_cpu_list").read_text().strip()})
        except (OSError, ValueError, MoveCostError):
            continue
    return out


def host(cpus: list[int]) -> dict:
    m = machine()
    try:
        thp = THP.read_text().strip()
    except OSError:
        thp = None
    out = {"cpu_model": m["cpu_model"], "cores": m["cores"], "kernel": m["kernel"],
           "cpus": cpus, "caches": caches(cpus[0]), "transparent_hugepage": thp,
           "git_commit": m["git_commit"]}
    other = caches(cpus[1])
    if _shape(other) != _shape(out["caches"]):         # the second CPU's, when they differ
        out[f"caches_cpu{cpus[1]}"] = other
    return out


def _shape(cs: list[dict]) -> list[tuple]:
    return [(c["level"], c["type"], c["size_bytes"]) for c in cs]


def _size(w: int) -> str:
    return f"{w // MIB} MiB" if w >= MIB and w % MIB == 0 else f"{w // KIB} KiB"


def markdown(res: dict) -> str:
    """The table of docs/performance.md's section, from a result."""
    rows = ["| working set | pairs | stay (median) | after a move (median) | cost of a move"
            " [95 % interval] | slowdown | pairs switched out |",
            "|---:|---:|---:|---:|---:|---:|---:|"]
    for s in res["sizes"]:
        lo, hi = s["cost_ci95_ns"]
        slow = "—" if s["slowdown"] is None else f"{100 * s['slowdown']:+.0f} %"
        rows.append(f"| {_size(s['working_set_bytes'])} | {s['pairs']} |"
                    f" {_us(s['stay_median_ns'])} | {_us(s['move_median_ns'])} |"
                    f" {_us(s['cost_ns'])} [{_us(lo)} – {_us(hi)}] | {slow} |"
                    f" {s['pairs_switched_out']} |")
    return "\n".join(rows) + "\n"


def _us(ns: float) -> str:
    """A time in ns, µs or ms, three significant digits."""
    for unit, scale in (("ms", 1e6), ("µs", 1e3)):
        if abs(ns) >= scale:
            return f"{ns / scale:.3g} {unit}"
    return f"{ns:.3g} ns"


def measure(a: argparse.Namespace) -> dict:
    load_before = load_average()
    t0 = time.monotonic()
    head, trials = run_tool(a.tool, a.sizes, a.pairs, a.warm, a.cpus)
    seconds = time.monotonic() - t0
    per_size = paired(head, trials, a.sizes, a.pairs)
    cpus = [int(c) for c in head["cpus"]]
    return {
        "what": ("the cost of moving a task to the other core, by working set: measured on"
                 " this host by bench/movecost.c (one timed pass of a random pointer chase"
                 " that writes every line, right after a move or staying, in pairs)"),
        "measured": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "host": host(cpus) | {"load_average_before": load_before,
                              "load_average_after": load_average()},
        "method": {"line_bytes": head.get("line_bytes"), "warm_passes": head.get("warm_passes"),
                   "pairs_per_size": a.pairs, "tool_seed": head.get("seed"),
                   "cost": "median over pairs of (move - stay), ns",
                   "bootstrap_resamples": RESAMPLES, "confidence": CONFIDENCE,
                   "bootstrap_seed": BOOTSTRAP_SEED, "quick": a.quick,
                   "seconds": round(seconds, 1)},
        "sizes": [summarize(w, per_size[w]) for w in a.sizes],
    }


def _args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog=f"python -m bench.{PROG}", description=__doc__.split(
        "\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tool", type=Path, default=DEFAULT_TOOL,
                    help="the host tool (default %(default)s: `make build/movecost`)")
    ap.add_argument("--sizes", help="working sets, bytes or with K/M/G, comma-separated"
                    " (default 16K to 64M, doubling)")
    ap.add_argument("--pairs", type=int, help=f"stay/move pairs per size (default {DEFAULT_PAIRS})")
    ap.add_argument("--warm", type=int, help=f"warming passes per trial (default {DEFAULT_WARM})")
    ap.add_argument("--cpus", metavar="A,B", help="the two CPUs (default: the first two usable)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="default %(default)s")
    ap.add_argument("--quick", action="store_true",
                    help=f"{len(QUICK_SIZES)} small sizes, {QUICK_PAIRS} pairs: checks the"
                    " measurement runs, its figures mean little")
    a = ap.parse_args(argv)
    if a.sizes is None:
        a.sizes = list(QUICK_SIZES if a.quick else DEFAULT_SIZES)
    else:
        try:
            a.sizes = [parse_bytes(s) for s in a.sizes.split(",")]
        except MoveCostError as e:
            raise Failed(f"--sizes: {e}", 2) from None
        if len(set(a.sizes)) != len(a.sizes):
            raise Failed("--sizes: a size given twice", 2)
    a.pairs = a.pairs if a.pairs is not None else (QUICK_PAIRS if a.quick else DEFAULT_PAIRS)
    a.warm = a.warm if a.warm is not None else (QUICK_WARM if a.quick else DEFAULT_WARM)
    return a


def main(argv: list[str] | None = None) -> int:
    try:
        a = _args(argv)
        res = measure(a)
        write_atomic(a.out, json.dumps(res, indent=2) + "\n")
    except Failed as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return e.code
    except OSError as e:
        print(f"{PROG}: {e.filename or ''}: {e.strerror}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted, nothing written", file=sys.stderr)
        return 130
    h = res["host"]
    print(f"What a move costs on this host ({h['cpu_model']}, CPUs {h['cpus'][0]} and"
          f" {h['cpus'][1]}, Linux {h['kernel']}), measured {res['measured']};"
          f" {res['method']['pairs_per_size']} pairs per size, written to {a.out}:\n")
    print(markdown(res), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
