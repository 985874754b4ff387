"""The model's input width in a version-1 manifest: absent means 10, 5 or 10 accepted, the rest
refused, and the runtime feeds the model exactly the width it records (no TensorFlow here)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mlsched.runtime.bundle import MANIFEST, Bundle, BundleError
from mlsched.runtime.cli import main
from mlsched.runtime.engine import Engine
from mlsched.runtime.features import Normalization, pad
from mlsched.runtime.interp import Model


def edit_manifest(path: Path, fn) -> None:
    m = json.loads((path / MANIFEST).read_text())
    fn(m)
    (path / MANIFEST).write_text(json.dumps(m))


def test_manifest_without_width_is_ten(capfd, bundle_copy):
    edit_manifest(bundle_copy, lambda m: m["features"].pop("width"))
    b = Bundle.load(bundle_copy)
    assert b.width == 10 and b.normalization.width == 10
    assert Engine(b).decide_one(4, 2, 6, 0.9, 0.2).name == "MIGRATE"
    assert main(["bundle", "verify", str(bundle_copy), "--cpus", "8"]) == 0
    assert "input width   10 (five zero pads)" in capfd.readouterr().out


def _five(m):
    m["features"].update(width=5, names=m["features"]["names"][:5])
    norm = m["features"]["normalization"]
    norm.update(scale=norm["scale"][:5], offset=norm["offset"][:5])


BAD_WIDTHS = {
    "width 7": (lambda m: m["features"].update(width=7), "feature width 7"),
    "width as text": (lambda m: m["features"].update(width="10"), "feature width '10'"),
    "width true": (lambda m: m["features"].update(width=True), "feature width True"),
    "names not one per column": (lambda m: m["features"].update(width=5), "with 10 names"),
    "normalization wider than the model": (
        lambda m: m["features"].update(width=5, names=m["features"]["names"][:5]),
        "normalization has 10 columns, the model takes 5"),
    "normalization of 7 columns": (
        lambda m: m["features"]["normalization"].update(scale=[1.0] * 7, offset=[0.0] * 7),
        "normalization"),
}


@pytest.mark.parametrize("case", sorted(BAD_WIDTHS))
def test_bad_width_refused_in_one_line(capfd, bundle_copy, case):
    fn, match = BAD_WIDTHS[case]
    edit_manifest(bundle_copy, fn)
    with pytest.raises(BundleError, match=match):
        Bundle.load(bundle_copy)
    assert main(["bundle", "verify", str(bundle_copy), "--cpus", "8"]) == 2
    out, err = capfd.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_manifest_width_must_match_the_model(bundle_copy):
    """A manifest saying 5 over the default 10-wide model.tflite: the engine refuses it."""
    edit_manifest(bundle_copy, _five)
    b = Bundle.load(bundle_copy)
    assert b.width == 5
    with pytest.raises(ValueError, match="model takes 10 features, the manifest says 5"):
        Engine(b)


def test_model_feeds_its_own_width(bundle8):
    m = Model(bundle8.model_bytes)
    assert m.width == 10
    x = np.array([[4, 2, 6, 0.9, 0.2]], np.float32)
    with pytest.raises(ValueError, match=r"this model takes \[n, 10\]"):
        m.decide(x)
    assert m.decide(bundle8.normalization.apply(pad(x))).tolist() == [1]


def test_pad_and_normalization_take_a_width():
    x = np.array([[1, 2, 3, 0.5, 0.25]])
    assert pad(x).shape == (1, 10) and pad(x, 5).shape == (1, 5)
    np.testing.assert_array_equal(pad(x, 5)[0], np.float32(x[0]))
    assert not pad(x).any(axis=0)[5:].any()
    n5 = Normalization.for_host(8, 5)
    assert n5.width == 5 and list(n5.scale) == [8, 8, 8, 1, 1]
    assert Normalization.for_host(8).width == 10
    assert Normalization(np.ones(7)).width == 7       # a width --features names
    with pytest.raises(ValueError, match="65 columns"):
        Normalization(np.ones(65))
