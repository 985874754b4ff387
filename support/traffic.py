"""The injector's generated traffic, regenerated in user space to check what the kernel did.

``KernelPath.inject(generate=count, seed=s, gen_ncpus=N)`` makes the SEC("syscall")
injector produce records from splitmix64 in the kernel:
per record r, cpu = (r & 0xffff) % N, idle = (r >> 16 & 0xffff) % (N + 1),
busy = N - idle (+1 when (r >> 54) % 100 < invalid_pct), src = (r >> 32 & 0x7ff)
% 1025, dst = (r >> 43 & 0x7ff) % 1025. Tests, the soak driver and the benchmark use
this module to know those records without reading them back.
"""

from __future__ import annotations

import numpy as np


def splitmix64(seed: int, count: int) -> np.ndarray:
    """The injector's generator, for checking generated records in user space."""
    gamma = np.uint64(0x9E3779B97F4A7C15)
    state = np.uint64(seed) + gamma * np.arange(1, count + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = state
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def generated_features(seed: int, count: int, ncpus: int, invalid_pct: int = 0) -> np.ndarray:
    """Features the injector generates from ``seed``: [count, 5] uint32 (wire units)."""
    r = splitmix64(seed, count)
    u = np.uint64
    out = np.empty((count, 5), dtype=np.uint32)
    out[:, 0] = (r & u(0xFFFF)) % u(ncpus)
    out[:, 1] = ((r >> u(16)) & u(0xFFFF)) % u(ncpus + 1)
    out[:, 2] = ncpus - out[:, 1].astype(np.int64) + ((r >> u(54)) % u(100) < u(invalid_pct))
    out[:, 3] = ((r >> u(32)) & u(0x7FF)) % u(1025)
    out[:, 4] = ((r >> u(43)) & u(0x7FF)) % u(1025)
    return out
