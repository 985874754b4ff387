"""Statistics of the guest bench: paired comparisons with their intervals and noise floor.

Every configuration runs once per round, in a fresh random order, so a round pairs
each configuration with the baseline (EEVDF) under the same conditions of that moment
in the boot. A comparison is made on those pairs:

* ``speed`` — how many times faster than the baseline: per round the ratio baseline /
  value (or value / baseline where more is better), summarized as the geometric mean
  over rounds (the mean of log ratios, which treats 2x faster and 2x slower alike);
  ``median`` is the median of the per-round ratios;
* ``ci`` — the 95 % bootstrap interval of that geometric mean: rounds resampled with
  replacement (percentile interval, fixed seed so a table regenerates identically);
* ``p`` — the two-sided Wilcoxon signed-rank test on the per-round log ratios (exact
  for the run counts a bench uses, with mid-ranks for ties);
* ``call`` — "faster" or "slower" only when the interval excludes 1 (no change), else
  "no call".

Pure Python and numpy: nothing here imports the project's packages.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: Bootstrap resamples of the rounds; enough that the interval's ends move by < 0.1 %.
RESAMPLES = 10_000
CONFIDENCE = 0.95
SEED = 20261204
#: Up to this many non-zero pairs the signed-rank p-value is exact; above, normal.
EXACT_MAX = 60


@dataclass(frozen=True)
class Comparison:
    n: int                       # rounds with both values
    speed: float                 # geometric mean of the per-round ratios
    median: float                # median of the per-round ratios
    ci: tuple[float, float]      # 95 % bootstrap interval of ``speed``
    p: float                     # Wilcoxon signed-rank, two-sided

    @property
    def call(self) -> str:
        if self.ci[0] > 1.0:
            return "faster"
        if self.ci[1] < 1.0:
            return "slower"
        return "no call"

    def as_dict(self) -> dict:
        return {"n": self.n, "speed": self.speed, "median": self.median,
                "ci": list(self.ci), "p": self.p, "call": self.call}


def ratios(base: dict[int, float], other: dict[int, float],
           higher_is_better: bool) -> list[float]:
    """Per round present in both (and positive in both): how many times better ``other``
    did than ``base``."""
    out = []
    for r in sorted(base.keys() & other.keys()):
        b, o = base[r], other[r]
        if b is None or o is None or not (b > 0 and o > 0):
            continue
        out.append(o / b if higher_is_better else b / o)
    return out


def bootstrap_ci(logs: np.ndarray, resamples: int = RESAMPLES,
                 confidence: float = CONFIDENCE, seed: int = SEED) -> tuple[float, float]:
    """Percentile interval of the mean of ``logs`` over resampled rounds (in log units)."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(logs), size=(resamples, len(logs)))
    means = logs[idx].mean(axis=1)
    tail = (1.0 - confidence) / 2
    lo, hi = np.quantile(means, [tail, 1.0 - tail])
    return float(lo), float(hi)


def _midranks(values: list[float]) -> list[float]:
    """Ranks 1..n of ``values`` (ascending), ties sharing their mean rank."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def signed_rank_p(diffs: list[float]) -> float:
    """Two-sided p-value of Wilcoxon's signed-rank test that ``diffs`` centre on 0.

    Zero differences are dropped (Wilcoxon's convention). Exact null distribution of
    the positive-rank sum (every sign pattern equally likely; mid-ranks doubled to
    integers) up to EXACT_MAX pairs, the normal approximation with tie correction above.
    """
    d = [x for x in diffs if x != 0]
    n = len(d)
    if n == 0:
        return 1.0
    ranks = _midranks([abs(x) for x in d])
    doubled = [round(2 * r) for r in ranks]
    w_plus = sum(r for r, x in zip(doubled, d, strict=True) if x > 0)
    total = sum(doubled)
    if n <= EXACT_MAX:
        counts = np.zeros(total + 1, dtype=np.float64)
        counts[0] = 1.0
        for r in doubled:                # each rank (>= 2) is in the positive sum or not
            counts[r:] = counts[r:] + counts[:-r]
        probs = counts / counts.sum()
        lower = probs[:w_plus + 1].sum()
        upper = probs[w_plus:].sum()
        return float(min(1.0, 2 * min(lower, upper)))
    mean = total / 4
    ties = sum(c ** 3 - c for c in _tie_sizes(ranks))
    var = (n * (n + 1) * (2 * n + 1) / 24 - ties / 48) * 4     # in doubled units
    z = (w_plus - mean) / math.sqrt(var)
    return float(min(1.0, math.erfc(abs(z) / math.sqrt(2))))


def _tie_sizes(ranks: list[float]) -> list[int]:
    sizes: dict[float, int] = {}
    for r in ranks:
        sizes[r] = sizes.get(r, 0) + 1
    return [c for c in sizes.values() if c > 1]


def compare(base: dict[int, float], other: dict[int, float],
            higher_is_better: bool = False) -> Comparison | None:
    """``other`` against ``base`` (both by round), or None with fewer than 2 pairs."""
    rs = ratios(base, other, higher_is_better)
    if len(rs) < 2:
        return None
    logs = np.log(np.asarray(rs, dtype=np.float64))
    lo, hi = bootstrap_ci(logs)
    return Comparison(n=len(rs), speed=float(math.exp(logs.mean())),
                      median=float(np.median(rs)), ci=(math.exp(lo), math.exp(hi)),
                      p=signed_rank_p(list(logs)))


def spread(values: list[float]) -> float | None:
    """(max - min) / median of one configuration's runs: the figure the old tables gave."""
    v = [x for x in values if x is not None]
    if len(v) < 2:
        return None
    med = float(np.median(v))
    return (max(v) - min(v)) / med if med else None
