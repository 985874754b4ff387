"""Manifest values of the right shape but an absurd size or the wrong type: a 400-digit
integer, NaN, infinity, a boolean for a number. Each is the bundle's own one-line error
naming the field (exit 2 from `mlsched-lite bundle verify`), never an internal error."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from mlsched.runtime.bundle import MANIFEST, Bundle, BundleError
from mlsched.runtime.cli import main

#: An integer of 400 digits: JSON and Python read it, a float cannot hold it.
HUGE = 10**400


def edit_manifest(path: Path, fn) -> None:
    m = json.loads((path / MANIFEST).read_text())
    fn(m)
    (path / MANIFEST).write_text(json.dumps(m))


def setter(*path):
    """A manifest edit that puts a value at ``path``."""
    def put(value):
        def edit(m):
            o = m
            for key in path[:-1]:
                o = o[key]
            o[path[-1]] = value
        return edit
    return put


#: (where, the edit, what the error names).
FIELDS = {
    "scale": (setter("features", "normalization", "scale", 0), "features.normalization.scale[0]"),
    "offset": (setter("features", "normalization", "offset", 3),
               "features.normalization.offset[3]"),
    "report figure": (setter("report", "table_hit_rate"), "report.table_hit_rate"),
    "level 2 lines": (setter("table", "level2", "lines"), "table.level2.lines"),
    "level 2 cells": (setter("table", "level2", "cells"), "table.level2.cells"),
    "level 2 mul": (setter("table", "level2", "src", "mul"), "table.level2.src.mul"),
    "level 2 band start": (setter("table", "level2", "dst", "band_start", 4),
                           "table.level2.dst.band_start[4]"),
    "cpus": (setter("cpus"), "cpus"),
    "width": (setter("features", "width"), "feature width"),
    "file size": (setter("files", "report.json", "bytes"), "files['report.json']"),
}
VALUES = {"400 digits": HUGE, "minus 400 digits": -HUGE, "infinity": float("inf"),
          "NaN": float("nan"), "true": True}


@pytest.mark.parametrize("value", sorted(VALUES))
@pytest.mark.parametrize("field", sorted(FIELDS))
def test_absurd_numbers_are_the_bundles_error_naming_the_field(capfd, bundle_copy, field, value):
    edit, name = FIELDS[field]
    edit_manifest(bundle_copy, edit(VALUES[value]))
    with pytest.raises(BundleError) as e:
        Bundle.load(bundle_copy)
    assert name in str(e.value)
    code = main(["bundle", "verify", str(bundle_copy), "--cpus", "8"])
    out, err = capfd.readouterr()
    assert code == 2 and out == "", err
    assert len(err.strip().splitlines()) == 1 and "internal error" not in err, err
    assert name in err and "9" * 40 not in err and "0" * 40 not in err, err


def leaves(o, path=()):
    """Every path into the manifest: keys of objects, indexes of lists."""
    if path:
        yield path
    if isinstance(o, dict):
        for k, v in o.items():
            yield from leaves(v, (*path, k))
    elif isinstance(o, list):
        for i, v in enumerate(o):
            yield from leaves(v, (*path, i))


@pytest.fixture(scope="module")
def shipped(bundle8_path):
    return json.loads((bundle8_path / MANIFEST).read_text())


hostile = st.one_of(
    st.sampled_from([HUGE, -HUGE, 2**64, 2**63, -1, 0, 1e308, -1e308, 5e-324]),
    st.floats(), st.integers(), st.booleans(), st.none(), st.text(max_size=4),
    st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=3), st.integers(),
                                                         max_size=2))


@settings(max_examples=400, deadline=None, suppress_health_check=[
    HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_any_value_anywhere_loads_or_is_refused(bundle_copy, shipped, data):
    """Whatever value any field holds, loading and the summary either work or end in the
    bundle's own error."""
    path = data.draw(st.sampled_from(sorted(leaves(shipped), key=repr)), label="field")
    value = data.draw(hostile, label="value")
    m = copy.deepcopy(shipped)
    setter(*path)(value)(m)
    (bundle_copy / MANIFEST).write_text(json.dumps(m))
    try:
        bundle = Bundle.load(bundle_copy)
    except BundleError as e:
        assert len(str(e).splitlines()) == 1
        event("refused")
        return
    event("loaded")
    assert bundle.summary()
