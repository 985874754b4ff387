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
