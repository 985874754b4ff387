"""What one guest bench boot showed, and the tables and plot that say it.

Per workload and configuration: the runs' results; paired against EEVDF round by round
(stats.compare: geometric-mean speed, 95 % bootstrap interval, signed-rank p-value, a
call only when the interval excludes no change); the A/A row (EEVDF against a second,
identical EEVDF configuration) as the noise floor; the workload's wake-up latency (p50
and p99 of its tasks' waits from wake-up to running, mlsched-measure) compared the same
way; CPU migrations and cross-domain moves.

Measured and modelled are kept apart. Every time and latency comes from the TCG guest:
measured. TCG models no caches, so a move costs nothing there; ``MoveCharge`` adds to
each run what its cross-domain moves would have cost where caches are real — the cost
this host measured for a move of the workload's assumed working set (bench/movecost.json,
measured), scaled by how much slower the guest runs the same code than the host
(calibration, measured), spread over the vCPUs (modelled). Those results are
"modelled" wherever they appear.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import stats

BASE = "eevdf"
#: The A/A configuration: EEVDF again, measured as if it were another scheduler.
AA = "eevdf-aa"
CONFIG_NAMES = {"eevdf": "EEVDF (kernel default)",
                "eevdf-aa": "EEVDF again (A/A)",
                "eevdf2": "EEVDF on 2 of the 4 vCPUs (taskset)", "simple": "scx_simple",
                "central": "scx_central", "model": "scx_mlsched, model",
                "model1": "scx_mlsched, model, level 1 only",
                "stay": "scx_mlsched, always STAY", "migrate": "scx_mlsched, always MIGRATE",
                "model-imitate": "scx_mlsched, learned: imitate",
                "model-outcome": "scx_mlsched, learned: outcomes",
                "explore": "scx_mlsched, exploring (coin)"}
#: What regenerates a table, and the README markers it goes between, by guest CPUs.
MAKE_TARGET = {2: "guest-bench", 4: "guest-bench-4vcpu"}


@dataclass(frozen=True)
class Metric:
    """A workload's result: where it is in a run record, its unit, which way is better."""
    label: str
    unit: str
    higher_is_better: bool


METRICS = {"synthetic": Metric("makespan", "s", False),
           "hackbench": Metric("hackbench time", "s", False),
           "stressng": Metric("bogo-ops/s (geometric mean of stressors)", "ops/s", True),
           "build": Metric("wall time", "s", False)}
#: The working set a move of each workload's tasks is charged for (modelled: an assumption
#: per workload, stated in the tables): hackbench's tasks touch a pipe's buffer and their
#: stacks; stress-ng's cpu stressors little and its cache stressors much; a tcc compile its
#: heap of a few MiB; mlsched-workload what bench.py gives it (-W, per worker).
WORKING_SET = {"synthetic": 256 << 10, "hackbench": 64 << 10, "stressng": 1 << 20,
               "build": 4 << 20}


def name(cfg: str) -> str:
    return CONFIG_NAMES.get(cfg, cfg)


def metric_of(workload: str) -> Metric:
    return METRICS[workload.split("-")[0]]


def working_set_of(workload: str) -> int:
    return WORKING_SET[workload.split("-")[0]]


def result_value(run: dict) -> float | None:
    """The result of one run record: the number its workload's Metric names."""
    wl, res = run["workload"], run.get("result") or {}
    kind = wl.split("-")[0]
    if kind == "synthetic":
        return res.get("makespan_s")
    if kind == "hackbench":
        return res.get("time_s")
    if kind == "stressng":
        rates = [s["bogo_ops"] / s["wall_s"] for s in res.get("stressors", {}).values()
                 if s.get("wall_s")]
        return math.exp(statistics.fmean(map(math.log, rates))) if rates else None
    if kind == "build":
        return run["measure"]["wall_s"]
    raise ValueError(f"unknown workload {wl}")


def wake_latency_us(run: dict, q: str) -> float | None:
    """Percentile ``q`` ("p50", "p99") of the run's wake-up waits (µs), None without one."""
    wake = (run["measure"].get("delay") or {}).get("wake") or {}
    return wake.get(f"{q}_us") if wake.get("n") else None


def cross_domain_moves(measure: dict, domains: list[list[int]] | None) -> int | None:
    """Moves of the workload's tasks between CPUs of different domains, from
    mlsched-measure's matrix (None without the matrix or the domains)."""
    moves = measure.get("moves")
    if moves is None or not domains:
        return None
    dom = {cpu: d for d, cpus in enumerate(domains) for cpu in cpus}
    return sum(n for src, row in enumerate(moves) for dst, n in enumerate(row)
               if dom.get(src) != dom.get(dst))


@dataclass(frozen=True)
class MoveCharge:
    """What a run's cross-domain moves would cost where caches are real (modelled from
    two measured figures).

    ``cost_ns(bytes)``: the host's measured cost of moving a task with that working set
    between its two cores; ``slowdown``: guest time / host time for the same compute
    (calibration); ``vcpus``: the moves happen on all of them at once."""
    cost_ns: Callable[[int], float]
    slowdown: float
    vcpus: int
    #: Workloads that paid for their moves in the guest already (the synthetic mix spins
    #: the charge itself): charged nothing more here.
    in_guest: frozenset[str] = frozenset()

    def seconds(self, workload: str, moves: int) -> float:
        if workload.split("-")[0] in self.in_guest:
            return 0.0
        return (moves * float(self.cost_ns(working_set_of(workload))) * self.slowdown
                / 1e9 / self.vcpus)

    def modelled(self, run: dict, moves: int | None) -> float | None:
        """The run's result with its moves charged: time metrics grow by the charge; a rate
        shrinks as its wall time grows."""
        value = result_value(run)
        if value is None or moves is None:
            return None
        extra = self.seconds(run["workload"], moves)
        if metric_of(run["workload"]).higher_is_better:
            wall = run["measure"]["wall_s"]
            return value * wall / (wall + extra) if wall > 0 else None
        return value + extra


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _by_round(runs: list[dict], value) -> dict[int, float]:
    out = {}
    for r in runs:
        v = value(r)
        if v is not None:
            out[r["run"]] = v
    return out


def summarize_cell(mine: list[dict], domains: list[list[int]] | None = None,
                   charge: MoveCharge | None = None) -> dict:
    """One workload under one configuration: per-run values by round, their medians."""
    ok = [r for r in mine if not r.get("failed")]
    cross = {r["run"]: cross_domain_moves(r["measure"], domains) for r in ok}
    values = _by_round(ok, result_value)
    entry = {
        "runs": len(mine), "failed": len(mine) - len(ok),
        "ejected": sorted({r["ejected"] for r in mine if r.get("ejected")}),
        "by_round": values,
        "result": list(values.values()),
        "median": _median(values.values()),
        "min": min(values.values()) if values else None,
        "max": max(values.values()) if values else None,
        "spread": stats.spread(list(values.values())),
        "wake_p50_us": _by_round(ok, lambda r: wake_latency_us(r, "p50")),
        "wake_p99_us": _by_round(ok, lambda r: wake_latency_us(r, "p99")),
        "migrations": [r["measure"]["migrations"] for r in ok],
        "context_switches": [r["measure"]["context_switches"] for r in ok],
        "median_migrations": _median(r["measure"]["migrations"] for r in ok),
        "median_context_switches": _median(r["measure"]["context_switches"] for r in ok),
        "cross_domain_moves": [cross[r["run"]] for r in ok],
        "median_cross_domain_moves": _median(cross.values()),
        "moves_missed": sum(r["measure"].get("moves_missed", 0) for r in ok),
        "ops": mine[0].get("ops") if mine else None,
    }
    entry["median_wake_p50_us"] = _median(entry["wake_p50_us"].values())
    entry["median_wake_p99_us"] = _median(entry["wake_p99_us"].values())
    if charge:
        entry["modelled_by_round"] = _by_round(ok, lambda r: charge.modelled(r, cross[r["run"]]))
        entry["median_charge_s"] = _median(
            charge.seconds(r["workload"], cross[r["run"]]) for r in ok
            if cross[r["run"]] is not None)
    scx = [r["scx"] for r in ok if r.get("scx")]
    if scx and "sched" in scx[0]:          # scx_mlsched's report
        entry["scheduler"] = {k: _median(s["sched"][k] for s in scx) for k in scx[0]["sched"]}
        entry["helper"] = {k: _median(s["helper"][k] for s in scx) for k in scx[0]["helper"]}
        entry["exit"] = sorted({s["exit"]["reason"] for s in scx})
    elif scx:                              # an example scheduler's last stats line
        entry["peer_stats"] = {k: _median(s.get(k) for s in scx) for k in scx[0]}
    return entry


def _compare(base: dict | None, cell: dict, key: str, higher_is_better: bool) -> dict | None:
    if not base or key not in base or key not in cell:
        return None
    c = stats.compare(base[key], cell[key], higher_is_better)
    return c.as_dict() if c else None


def compare_cells(cells: dict[str, dict], metric: Metric, base_cfg: str = BASE) -> None:
    """Each cell against ``base_cfg``'s, round by round: result (speed, > 1 better),
    wake-up latency p50 and p99 (ratio of latencies, > 1 longer waits), modelled result."""
    base = cells.get(base_cfg)
    for e in cells.values():
        e["vs_base"] = _compare(base, e, "by_round", metric.higher_is_better)
        e["wake_p50_vs_base"] = _compare(base, e, "wake_p50_us", True)
        e["wake_p99_vs_base"] = _compare(base, e, "wake_p99_us", True)
        e["modelled_vs_base"] = _compare(base, e, "modelled_by_round", metric.higher_is_better)


def summarize(runs: list[dict], domains: list[list[int]] | None = None,
              charge: MoveCharge | None = None, base_cfg: str = BASE) -> dict[str, dict]:
    """{workload: {"metric", "configs": {config: cell}, "noise_floor"}} of run records."""
    workloads: dict[str, dict] = {}
    for wl in dict.fromkeys(r["workload"] for r in runs):
        metric = metric_of(wl)
        cells = {cfg: summarize_cell([r for r in runs
                                      if r["workload"] == wl and r["config"] == cfg],
                                     domains, charge)
                 for cfg in dict.fromkeys(r["config"] for r in runs if r["workload"] == wl)}
        compare_cells(cells, metric, base_cfg)
        workloads[wl] = {"metric": {"label": metric.label, "unit": metric.unit,
                                    "higher_is_better": metric.higher_is_better},
                         "working_set": working_set_of(wl),
                         "configs": cells,
                         "noise_floor": (cells.get(AA) or {}).get("vs_base")}
    return workloads


def noise_floor(workloads: dict[str, dict]) -> float | None:
    """The widest the A/A interval strays from no change, over the workloads (0.03: ±3 %)."""
    widths = [max(1 - w["noise_floor"]["ci"][0], w["noise_floor"]["ci"][1] - 1)
              for w in workloads.values() if w.get("noise_floor")]
    return max(widths) if widths else None


# ---- tables ----------------------------------------------------------------------------

def fmt_value(v: float | None, unit: str) -> str:
    if v is None:
        return "–"
    return f"{v:.0f}" if unit == "ops/s" else f"{v:.2f}"


def ci_cell(c: dict | None) -> str:
    """"+4.1 % [+1.0, +7.3]": the ratio's change and its interval, bold when the interval
    excludes no change."""
    if not c:
        return "–"
    pct = [(x - 1) * 100 for x in (c["speed"], *c["ci"])]
    text = f"{pct[0]:+.1f} % [{pct[1]:+.1f}, {pct[2]:+.1f}]"
    return f"**{text}**" if c["call"] != "no call" else text


#: The order of the tables' columns: EEVDF and its A/A twin, the kernel's examples, the
#: model, learned models (any model-NAME), then the fixed policies.
ORDER = (BASE, AA, "eevdf2", "simple", "central", "model", "model1", "model-", "stay",
         "migrate", "explore")


def _rank(cfg: str) -> int:
    if cfg in ORDER:
        return ORDER.index(cfg)
    return ORDER.index("model-") if cfg.startswith("model-") else len(ORDER)


def _configs(wls: dict) -> list[str]:
    """Every configuration in ORDER (learned models by name, unknown ones last)."""
    seen = dict.fromkeys(c for w in wls.values() for c in w["configs"])
    return sorted(seen, key=lambda c: (_rank(c), c))


def _main_table(wls: dict, key: str, base_value: Callable[[dict, dict], str],
                base_label: str) -> list[str]:
    cfgs = [c for c in _configs(wls) if c != BASE]
    rows = [f"| workload | runs | {base_label} | " + " | ".join(name(c) for c in cfgs) + " |",
            "|---|---:|---:|" + "---:|" * len(cfgs)]
    for wl, w in wls.items():
        base = w["configs"].get(BASE, {})
        n = min((e[key]["n"] for e in w["configs"].values() if e.get(key)), default=0)
        rows.append(f"| {wl} | {n} | {base_value(w, base)} | "
                    + " | ".join(ci_cell(w["configs"].get(c, {}).get(key)) for c in cfgs) + " |")
    return rows


def table(summary: dict) -> str:
    """Markdown: result and wake-up latency against EEVDF with intervals, modelled move
    cost, then per configuration the details."""
    wls = summary["workloads"]
    g, p = summary["guest"], summary["params"]
    floor = noise_floor(wls)
    rows = [f"**Result against EEVDF** (measured in the TCG guest): geometric mean over the "
            f"rounds of the paired speed ratio, + = faster (more bogo-ops/s for stressng), "
            f"[95 % bootstrap interval]; **bold** where the interval excludes no change. "
            f"Noise floor (A/A, EEVDF against itself): "
            f"{'–' if floor is None else f'±{floor * 100:.1f} %'}.", ""]
    rows += _main_table(wls, "vs_base",
                        lambda w, b: f"{fmt_value(b.get('median'), w['metric']['unit'])} "
                                     f"{w['metric']['unit']}", "EEVDF (median)")
    rows += ["", "**Wake-up latency p99 against EEVDF** (measured: each run's p99 of its "
             "tasks' waits from wake-up to running, mlsched-measure): change of the paired "
             "ratio, + = longer waits, [95 % interval].", ""]
    rows += _main_table(wls, "wake_p99_vs_base",
                        lambda w, b: fmt_us(b.get("median_wake_p99_us")), "EEVDF p99 (median)")
    if any(e.get("modelled_vs_base") for w in wls.values() for e in w["configs"].values()):
        mc = summary.get("move_charge") or {}
        paid = ", ".join(mc.get("in_guest") or ()) or "none"
        rows += ["", "**Result with every cross-domain move charged** (modelled: the cost "
                 "this host measured for a move of the workload's assumed working set, "
                 f"× the guest's slowdown {mc.get('slowdown', 0):.1f} (measured), ÷ "
                 f"{g['vcpus']} vCPUs), against EEVDF charged the same way; workloads that "
                 f"pay for their moves inside the guest already ({paid}) are as measured:",
                 ""]
        rows += _main_table(wls, "modelled_vs_base",
                            lambda w, b: f"{w['working_set'] >> 10} KiB", "working set (assumed)")
    rows += ["", "Per configuration, medians over the runs; p: signed-rank p-value of the "
             "result against EEVDF:", "",
             "| workload | scheduler | result [min–max] | p | wake-up p50 / p99 | "
             "CPU migrations | cross-domain moves | move charge (ms, modelled) | "
             "balancer moves | answers: level 1 / level 2 / ring (in time) | failed |",
             "|---|---|---|---:|---|---:|---:|---:|---:|---|---:|"]
    order = _configs(wls)
    paid = set((summary.get("move_charge") or {}).get("in_guest") or ())
    for wl, w in wls.items():
        unit = w["metric"]["unit"]
        for cfg in sorted(w["configs"], key=order.index):
            e = w["configs"][cfg]
            s = e.get("scheduler")
            moves = f"{s['moved_wake'] + s['moved_pull']:.0f}" if s else "–"
            answers = (f"{s['from_table'] - s.get('from_level2', 0):.0f} /"
                       f" {s.get('from_level2', 0):.0f} / {s['sent']:.0f}"
                       f" ({s['from_daemon']:.0f})" if s and cfg.startswith("model") else "–")
            res = (f"{fmt_value(e['median'], unit)} [{fmt_value(e['min'], unit)}–{fmt_value(e['max'], unit)}]"
                   if e["median"] is not None else "–")
            pv = f"{e['vs_base']['p']:.3f}" if e.get("vs_base") and cfg != BASE else "–"
            lat = (f"{fmt_us(e['median_wake_p50_us'])} / {fmt_us(e['median_wake_p99_us'])}")
            charge = e.get("median_charge_s")
            charge_text = ("in the result" if wl.split("-")[0] in paid else
                           "–" if charge is None else f"{charge * 1e3:.1f}")
            counts = (e["median_migrations"], e.get("median_cross_domain_moves"))
            rows.append(f"| {wl} | {name(cfg)} | {res} | {pv} | {lat} | "
                        + " | ".join("–" if v is None else f"{v:.0f}" for v in counts)
                        + f" | {charge_text}"
                        + f" | {moves} | {answers} | {e['failed']} |")
    build_what = (f"the first {p['build_units']} units of Mbed TLS" if p.get("build_units")
                  else "Mbed TLS")
    rows.append("")
    rows.append(
        f"{summary['runs_per_config']} rounds; in each, every configuration ran once, in a "
        f"fresh random order (seed {p.get('seed')}), after {p.get('warmup', 0)} warm-up "
        f"run(s) per workload left out; all in one boot (qemu TCG, {g['vcpus']} vCPUs in "
        f"{g['sockets']} sockets = 2 domains"
        f"{', each vCPU thread pinned to its own host core' if g.get('pinned') else ''}"
        f"{', more vCPUs than host cores (oversubscribed)' if g.get('oversubscribed') else ''}"
        f", kernel {g['kernel']}, guest wall time {g['wall_s']:.0f} s{_host_load(g)}). synthetic: "
        f"mlsched-workload -w {p['workers']} -u {p['units']} -c {p['spin']} -s {p['sleep']};"
        f" hackbench-tN/-pN: threads/processes, N groups, pipes, -l {p['hb_loops']}; "
        f"stressng: --cpu {g['vcpus']} --cpu-ops {p['sng_ops']} --cache 2 --cache-ops 2 "
        f"--hdd 2 --hdd-ops {p['sng_ops'] * 10} on tmpfs; build: make -j{p['build_jobs']} of "
        f"{build_what}"
        f" with tcc. Generated {summary['generated']} by "
        f"`make {MAKE_TARGET.get(g['vcpus'], 'guest-bench')}`. CPU migrations: perf's count "
        "for the workload's process tree; cross-domain moves: its tasks' moves between the "
        "domains (mlsched-measure); balancer moves: the MIGRATE answers scx_mlsched carried "
        "out, for every task.")
    return "\n".join(rows)


def _host_load(guest: dict) -> str:
    h = guest.get("host_load") or {}
    if h.get("other_share") is None:
        return ""
    return (f"; other host processes used {h['other_share']:.1%} of the host's CPU time "
            f"meanwhile, the hypervisor took {h['steal_share']:.1%}")


def fmt_us(v: float | None) -> str:
    """A latency given in µs, in µs or (from 10 ms) ms, with its unit."""
    if v is None:
        return "–"
    return f"{v / 1e3:.1f} ms" if v >= 10_000 else f"{v:.0f} µs"


def plot(summary: dict, path: Path, atomic_path) -> None:
    """Two panels: speed and wake-up p99 against EEVDF per workload and configuration,
    with their 95 % intervals as error bars; the A/A band shaded. Written through
    ``atomic_path`` (beside ``path``, renamed)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    wls = summary["workloads"]
    cfgs = [c for c in _configs(wls) if c != BASE]
    width = 0.8 / max(len(cfgs), 1)
    fig, axes = plt.subplots(2, 1, figsize=(max(7, 1.8 * len(wls)), 9), sharex=True)
    for ax, key, label in ((axes[0], "vs_base", "speed vs EEVDF (>1: faster)"),
                           (axes[1], "wake_p99_vs_base", "wake-up p99 vs EEVDF (>1: longer)")):
        for i, cfg in enumerate(cfgs):
            xs, ys, lo, hi = [], [], [], []
            for j, w in enumerate(wls.values()):
                c = (w["configs"].get(cfg) or {}).get(key)
                if not c:
                    continue
                xs.append(j - 0.4 + width * (i + 0.5))
                ys.append(c["speed"])
                lo.append(c["speed"] - c["ci"][0])
                hi.append(c["ci"][1] - c["speed"])
            ax.bar(xs, ys, width, yerr=[lo, hi], capsize=2, label=name(cfg))
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_ylabel(label)
    axes[1].set_yscale("log")
    axes[1].set_xticks(range(len(wls)), list(wls), rotation=20)
    axes[1].legend(*axes[0].get_legend_handles_labels(), fontsize="small", ncol=3,
                   loc="upper center", bbox_to_anchor=(0.5, -0.25))
    axes[0].set_title(f"sched_ext guest, {summary['guest']['vcpus']} vCPUs (TCG): geometric "
                      f"mean and 95 % interval over {summary['runs_per_config']} rounds")
    fig.tight_layout()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=100)
    finally:
        plt.close(fig)


def generated() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
