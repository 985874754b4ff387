"""Hostile bundles: any JSON value anywhere in manifest.json is refused with BundleError (exit 2,
one line) or loads a bundle that verifies; what tests/runtime/test_bundle*.py does not already
cover. Shared parts: support/hostile.py.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from support.hostile import (  # noqa: F401 - report_runs: the autouse fixture
    FEW_SETTINGS,
    MANY_SETTINGS,
    assert_one_line_error,
    counted,
    report_runs,
    run_cli,
)

# ---- bundles: what tests/runtime/test_bundle*.py do not already cover -----------------------------
json_value = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(min_value=-(10**20), max_value=10**20),
              st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=6),
              st.sampled_from([0, 1, 8, 9, 10, 1024, 10**9, "uint8", "boundary", "table.bin",
                               "model.tflite", "mlsched-bundle", [8, 9, 11, 11], [1.0] * 10])),
    lambda children: st.one_of(st.lists(children, max_size=4),
                               st.dictionaries(st.text(max_size=5), children, max_size=4)),
    max_leaves=8).map(lambda v: json.loads(json.dumps(v)))      # fresh objects, never shared


def _paths(node, prefix=()):
    """Every path (tuple of keys/indices) into a JSON tree."""
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, (*prefix, i))


@st.composite
def manifest_edit(draw, manifest: dict):
    """The shipped manifest with 1..3 edits: a value replaced, a key deleted or added."""
    m = json.loads(json.dumps(manifest))
    for _ in range(draw(st.integers(1, 3))):
        paths = list(_paths(m))
        path = draw(st.sampled_from(paths))
        action = draw(st.sampled_from(["replace", "replace", "delete", "add"]))
        if not path:
            if action == "replace":
                m = draw(json_value)
            continue
        parent = m
        for k in path[:-1]:
            parent = parent[k]
        key = path[-1]
        if action == "replace":
            parent[key] = draw(json_value)
        elif action == "delete":
            del parent[key]
        elif isinstance(parent, dict):
            parent[draw(st.text(max_size=6))] = draw(json_value)
        if not isinstance(m, (dict, list)):
            break
    return m


def check_manifest(m, work: Path) -> None:
    from mlsched.runtime.bundle import MANIFEST, Bundle, BundleError

    counted("manifest")
    (work / MANIFEST).write_text(json.dumps(m))
    try:
        Bundle.load(work)
    except BundleError as e:
        assert "\n" not in str(e), str(e)
        return
    # accepted: the bundle must then verify, or be refused by verify with one line
    code, out, err = run_cli(["bundle", "verify", str(work), "--cpus", "8"])
    if code != 0:
        assert_one_line_error(code, out, err)
    else:
        assert out.strip().endswith("OK") and err == ""


_SHIPPED: dict = {}


def shipped_manifest() -> dict:
    if not _SHIPPED:
        from conftest import DEFAULT_BUNDLE

        _SHIPPED.update(json.loads((DEFAULT_BUNDLE / "manifest.json").read_text()))
    return _SHIPPED


@pytest.fixture(scope="module")
def bundle_work():
    """One private copy of the default bundle; examples rewrite only its manifest."""
    from conftest import DEFAULT_BUNDLE

    d = Path(tempfile.mkdtemp(prefix="hostile-bundle-"))
    shutil.copytree(DEFAULT_BUNDLE, d / "b")
    yield d / "b"
    shutil.rmtree(d)


@FEW_SETTINGS
@given(st.data())
def test_manifest_values(bundle_work, data):
    check_manifest(data.draw(manifest_edit(shipped_manifest())), bundle_work)


@pytest.mark.slow
@MANY_SETTINGS
@given(st.data())
def test_manifest_values_many(bundle_work, data):
    check_manifest(data.draw(manifest_edit(shipped_manifest())), bundle_work)


@pytest.mark.parametrize("text", ["[" * 200_000 + "]" * 200_000, '{"a":' * 100_000 + "1"
                                  + "}" * 100_000])
def test_manifest_nested_too_deep(capfd, bundle_copy, text):
    from mlsched.runtime.bundle import MANIFEST, Bundle, BundleError

    (bundle_copy / MANIFEST).write_text(text)
    with pytest.raises(BundleError, match="nested too deeply"):
        Bundle.load(bundle_copy)
    assert_one_line_error(*run_cli(["bundle", "verify", str(bundle_copy)]))


@pytest.mark.parametrize("where", ["offset", "scale"])
def test_normalization_outside_float32_refused(bundle_copy, where):
    """1e-300 is a fine float64 scale, but 1/scale is inf in the float32 the model sees."""
    from mlsched.runtime.bundle import MANIFEST

    m = json.loads((bundle_copy / MANIFEST).read_text())
    norm = m["features"]["normalization"]
    if where == "offset":
        norm["offset"] = [1e300] * 10
    else:
        norm["scale"] = [1e-300] * 10
    (bundle_copy / MANIFEST).write_text(json.dumps(m))
    code, out, err = run_cli(["decide", "--bundle", str(bundle_copy), "--cpu", "4", "--idle",
                              "2", "--busy", "6", "--src-load", "0.9", "--dst-load", "0.2"])
    assert_one_line_error(code, out, err)
    assert "float32" in err


@pytest.mark.skipif(os.geteuid() != 0, reason="the ownership rule applies when running as root")
@pytest.mark.parametrize("target", ["file", "dir"])
def test_insecure_bundle_behind_a_symlink_refused_as_root(bundle_copy, tmp_path, target):
    """A root-owned link to a file or directory others may write is as unsafe as the file."""
    from mlsched.runtime.bundle import Bundle, BundleError

    elsewhere = tmp_path / "elsewhere"
    if target == "file":
        elsewhere.mkdir()
        shutil.move(bundle_copy / "model.tflite", elsewhere / "model.tflite")
        os.chmod(elsewhere / "model.tflite", 0o666)
        (bundle_copy / "model.tflite").symlink_to(elsewhere / "model.tflite")
        link = bundle_copy
    else:
        shutil.move(bundle_copy, elsewhere)
        os.chmod(elsewhere, 0o777)
        link = tmp_path / "link"
        link.symlink_to(elsewhere)
    # a linked file is refused as a link (its target's directory is nobody's business here)
    why = "writable by users other than root" if target == "dir" else "a symbolic link"
    with pytest.raises(BundleError, match=why):
        Bundle.load(link)
    assert_one_line_error(*run_cli(["bundle", "verify", str(link), "--cpus", "8"]))
    assert Bundle.load(link, allow_insecure=True).cpus == 8


def test_tampered_bundle_refused_by_run_and_replay(bundle_copy, tmp_path):
    (bundle_copy / "table.bin").write_bytes(b"\x01" * (bundle_copy / "table.bin").stat().st_size)
    for argv in (["run", "--duration", "1"], ["replay", str(tmp_path / "x.csv")]):
        code, out, err = run_cli(["--bundle", str(bundle_copy), *argv])
        assert_one_line_error(code, out, err)
        assert "sha256" in err or "BPF" in err or "CAP_BPF" in err, err
