"""The three reference scenarios of an 8-CPU host and an expectation that does not come from
the code under test: the documented rule the default model learns (src/mlsched/train/teacher.py)."""

from __future__ import annotations

import numpy as np

#: (cpu, idle, busy, src_load, dst_load): MIGRATE, STAY, STAY.
SCENARIOS = [
    (4, 2, 6, 0.9, 0.2),
    (2, 4, 4, 0.5, 0.5),
    (1, 7, 1, 0.1, 0.1),
]


def teacher_decisions(rows) -> list[int]:
    """The teacher's decisions for raw feature rows (numpy only, no TensorFlow)."""
    from mlsched.train import teacher

    return [int(d) for d in teacher.decide(np.asarray(rows, dtype=np.float64))]
