"""Decision tables made up for tests of the kernel side: every cell kind, no model needed.

Values are written out here (0 STAY, 1 MIGRATE, 2 UNSURE, as bpf/mlsched.h defines them)
rather than taken from the code under test.
"""

from __future__ import annotations

import numpy as np

#: Host size of the synthetic table, and the levels of a load.
N = 8
LEVELS = 11
STAY, MIGRATE, UNSURE = 0, 1, 2


def synthetic_table(seed: int = 7, ncpus: int = N) -> np.ndarray:
    """[ncpus, ncpus + 1, 11, 11] uint8: 40 % STAY, 40 % MIGRATE, 20 % UNSURE at random."""
    rng = np.random.default_rng(seed)
    return rng.choice(np.array([STAY, MIGRATE, UNSURE], np.uint8),
                      size=(ncpus, ncpus + 1, LEVELS, LEVELS), p=[0.4, 0.4, 0.2])


def band_bounds(q):
    """Smallest and largest wire load L (0..1024) of 0.1 band q: (10 L + 512) >> 10 == q, i.e.
    1024 q - 512 <= 10 L < 1024 q + 512."""
    q = np.asarray(q, np.int64)
    return np.maximum(0, -(-(1024 * q - 512) // 10)), np.minimum(1024, -(-(1024 * q + 512) // 10) - 1)


def unsure_cell_traffic(table: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Wire features [n, 5] uint32 whose level-1 cell in ``table`` is UNSURE."""
    rng = np.random.default_rng(seed)
    ncpus = table.shape[0]
    cpu, idle, qs, qd = np.nonzero(table == UNSURE)
    k = rng.integers(0, cpu.size, n)
    (slo, shi), (dlo, dhi) = band_bounds(qs[k]), band_bounds(qd[k])
    src = rng.integers(slo, shi + 1)
    dst = rng.integers(dlo, dhi + 1)
    return np.stack([cpu[k], idle[k], ncpus - idle[k], src, dst], axis=1).astype(np.uint32)
