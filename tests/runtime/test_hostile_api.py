"""Hostile values through the library API: MLScheduler.should_migrate(MigrationFeatures(...))
is a bool equal to the engine's decision on the same values (bad values: STAY), never an
exception. Shared parts: support/hostile.py.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from support.hostile import (  # noqa: F401 - report_runs: the autouse fixture
    FEW_SETTINGS,
    MANY_SETTINGS,
    counted,
    engine,
    report_runs,
)

# ---- the library API ---------------------------------------------------------------------
api_value = st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                      st.integers(min_value=-(10**400), max_value=10**400),
                      st.sampled_from([0, 1, 7, 8, 9, 0.5, 1.0, -0.0, True, False]),
                      st.text(max_size=4), st.none(), st.binary(max_size=3),
                      st.lists(st.integers(0, 3), max_size=2))

_SCHED = []


def check_api(row) -> None:
    from mlsched.runtime import MigrationFeatures, MLScheduler

    counted("api")
    if not _SCHED:
        _SCHED.append(MLScheduler())
    s = _SCHED[0]
    got = s.should_migrate(MigrationFeatures(*row))
    assert got in (True, False)
    assert got == (engine().decide_one(*row).decision == 1)


@FEW_SETTINGS
@given(st.tuples(*[api_value] * 5))
def test_api_values(row):
    check_api(row)


@pytest.mark.slow
@MANY_SETTINGS
@given(st.tuples(*[api_value] * 5))
def test_api_values_many(row):
    check_api(row)
