"""The teacher policy the default model learns: a documented, deterministic rule.

Migrate a task from its source domain to the destination domain when the expected
benefit exceeds the cost::

    benefit = (src_load - dst_load) * task_weight
    cost    = migration_overhead + cache_penalty

    migration_overhead = OVERHEAD_BASE
                         + OVERHEAD_BUSY * busy / N     # a busier system raises the cost
                         - OVERHEAD_IDLE * idle / N     # idle CPUs lower it (the move lands on one)
    cache_penalty      = CACHE_BASE
                         + CACHE_CROSS_LLC * [cpu >= N / 2]

    N = idle + busy (the host's CPUs); MIGRATE iff benefit > cost.

``task_weight`` is the load a typical task contributes relative to its domain's;
the request carries no per-task weight, so the teacher uses ``TASK_WEIGHT`` = 1.

Locality: the teacher models the common two-LLC split of a host into halves, with
domain 0 (the lower half) the home domain the balancer pulls towards; a task
running in the upper half (cpu >= N/2) leaves its LLC when it moves there and
pays the extra cache refill ``CACHE_CROSS_LLC``.

The reference scenarios on an 8-CPU host:
  cpu=4 idle=2 busy=6 src=.9 dst=.2: benefit .70 > cost .10+.1125-.02+.05+.10 = .3425 -> MIGRATE
  cpu=2 idle=4 busy=4 src=.5 dst=.5: benefit 0 -> STAY
  cpu=1 idle=7 busy=1 src=.1 dst=.1: benefit 0 -> STAY
"""

from __future__ import annotations

import numpy as np

TASK_WEIGHT = 1.0
OVERHEAD_BASE = 0.10
OVERHEAD_BUSY = 0.15
OVERHEAD_IDLE = 0.08
CACHE_BASE = 0.05
CACHE_CROSS_LLC = 0.10


def margin(x: np.ndarray) -> np.ndarray:
    """benefit - cost for raw features [n, >=5]; positive means MIGRATE."""
    x = np.asarray(x, dtype=np.float64)
    cpu, idle, busy, src, dst = (x[:, k] for k in range(5))
    n = np.maximum(idle + busy, 1.0)
    benefit = (src - dst) * TASK_WEIGHT
    overhead = OVERHEAD_BASE + OVERHEAD_BUSY * busy / n - OVERHEAD_IDLE * idle / n
    cache = CACHE_BASE + CACHE_CROSS_LLC * (cpu >= n / 2)
    return benefit - (overhead + cache)


def decide(x: np.ndarray) -> np.ndarray:
    """Teacher decisions (1 = MIGRATE, 0 = STAY) for raw features [n, >=5]."""
    return (margin(x) > 0).astype(np.uint8)
