"""Bundles a host must refuse: missing, truncated or edited files, bad manifests, absurd geometry,
files others could replace. Each refused with one line (exit 2 from `mlsched-lite bundle verify`)."""

from __future__ import annotations

import json
import os
import tracemalloc
from pathlib import Path

import pytest

from mlsched.runtime.bundle import MANIFEST, Bundle, BundleError
from mlsched.runtime.cli import main

FILES = ("model.tflite", "table.bin", "report.json", "report.png")


def verify(capfd, path, *extra) -> tuple[int, str, str]:
    code = main(["bundle", "verify", str(path), "--cpus", "8", *extra])
    out, err = capfd.readouterr()
    return code, out, err


def refused(capfd, path, match: str, *extra) -> str:
    with pytest.raises(BundleError, match=match):
        Bundle.load(path)
    code, out, err = verify(capfd, path, *extra)
    assert code == 2
    assert out == ""
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err
    return err


def edit_manifest(path: Path, fn) -> None:
    m = json.loads((path / MANIFEST).read_text())
    fn(m)
    (path / MANIFEST).write_text(json.dumps(m))


def test_default_bundle_verifies(capfd, bundle8_path):
    code, out, err = verify(capfd, bundle8_path)
    assert code == 0, err
    assert "cpus          8" in out and out.strip().endswith("OK")
    assert "sure cells equal the model" in out


def test_bundle_verify_refuses_a_host_bigger_than_the_bundle(capfd, bundle8_path):
    code = main(["bundle", "verify", str(bundle8_path), "--cpus", "16"])
    _, err = capfd.readouterr()
    assert code == 2 and "--cpus 16" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("name", (MANIFEST, *FILES))
def test_missing_file(capfd, bundle_copy, name):
    (bundle_copy / name).unlink()
    refused(capfd, bundle_copy, "no manifest.json|missing")


@pytest.mark.parametrize("name", FILES)
def test_truncated_file(capfd, bundle_copy, name):
    p = bundle_copy / name
    p.write_bytes(p.read_bytes()[:-1])
    refused(capfd, bundle_copy, "truncated")


@pytest.mark.parametrize("name", FILES)
@pytest.mark.parametrize("where", ("first", "middle", "last"))
def test_one_byte_edited(capfd, bundle_copy, name, where):
    p = bundle_copy / name
    data = bytearray(p.read_bytes())
    i = {"first": 0, "middle": len(data) // 2, "last": len(data) - 1}[where]
    data[i] ^= 0x01
    p.write_bytes(bytes(data))
    refused(capfd, bundle_copy, "sha256")


def test_truncated_manifest(capfd, bundle_copy):
    p = bundle_copy / MANIFEST
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    refused(capfd, bundle_copy, "not valid JSON")


def test_manifest_edit_of_a_hash_is_caught(capfd, bundle_copy):
    def flip(m):
        h = m["files"]["table.bin"]["sha256"]
        m["files"]["table.bin"]["sha256"] = ("1" if h[0] != "1" else "2") + h[1:]
    edit_manifest(bundle_copy, flip)
    refused(capfd, bundle_copy, "sha256")


BAD_MANIFESTS = {
    "unknown version": (lambda m: m.update(format_version=3), "format version 3"),
    "version as text": (lambda m: m.update(format_version="1"), "format_version"),
    "foreign format": (lambda m: m.update(format="tflite"), "not an mlsched-bundle"),
    "cpus as text": (lambda m: m.update(cpus="8"), "cpus must be"),
    "cpus bool": (lambda m: m.update(cpus=True), "cpus must be"),
    "cpus zero": (lambda m: m.update(cpus=0), "cpus must be"),
    "files a list": (lambda m: m.update(files=[]), "files must"),
    "bytes as text": (lambda m: m["files"]["model.tflite"].update(bytes="10864"), "needs sha256"),
    "path in a name": (lambda m: m["files"].update({"../etc/passwd": m["files"]["report.json"]}),
                       "not allowed"),
    "negative scale": (lambda m: m["features"]["normalization"].update(scale=[-1.0] * 10),
                       "normalization"),
    "scale as text": (lambda m: m["features"]["normalization"].update(scale="8"), "normalization"),
    "wrong feature names": (lambda m: m["features"].update(names=["a"] * 10), "feature spec"),
    "table mode": (lambda m: m["table"].update(mode="magic"), "table must"),
    "table shape": (lambda m: m["table"].update(shape=[8, 9, 11, 12]), "geometry"),
    "manifest empty": (lambda m: m.clear(), "not an mlsched-bundle"),
}


@pytest.mark.parametrize("case", sorted(BAD_MANIFESTS))
def test_bad_manifest(capfd, bundle_copy, case):
    fn, match = BAD_MANIFESTS[case]
    edit_manifest(bundle_copy, fn)
    refused(capfd, bundle_copy, match)


@pytest.mark.parametrize("cpus", [10**9, 4096, 1024])
def test_absurd_geometry_refused_before_allocating(capfd, bundle_copy, cpus):
    """A manifest claiming a huge table (consistent with itself) costs no memory to refuse."""
    def huge(m):
        m["cpus"] = cpus
        m["table"]["shape"] = [cpus, cpus + 1, 11, 11]
        m["files"]["table.bin"]["bytes"] = cpus * (cpus + 1) * 121
    edit_manifest(bundle_copy, huge)
    tracemalloc.start()
    try:
        with pytest.raises(BundleError):
            Bundle.load(bundle_copy)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20
    refused(capfd, bundle_copy, "cpus must be|bytes, manifest says")


def test_not_a_bundle(capfd, tmp_path):
    refused(capfd, tmp_path / "nope", "no such bundle")
    f = tmp_path / "file"
    f.write_text("x")
    refused(capfd, f, "not a directory")
    (tmp_path / "empty").mkdir()
    refused(capfd, tmp_path / "empty", "no manifest.json")


@pytest.mark.skipif(os.geteuid() != 0, reason="the ownership rule applies when running as root")
@pytest.mark.parametrize("target", ["dir", "model.tflite", MANIFEST])
def test_insecure_bundle_refused_as_root(capfd, bundle_copy, target):
    p = bundle_copy if target == "dir" else bundle_copy / target
    os.chmod(p, os.stat(p).st_mode | 0o002)
    err = refused(capfd, bundle_copy, "writable by users other than root")
    assert "--allow-insecure-bundle" in err
    assert Bundle.load(bundle_copy, allow_insecure=True).cpus == 8
    code, out, _ = verify(capfd, bundle_copy, "--allow-insecure-bundle")
    assert code == 0 and out.strip().endswith("OK")
    code = main(["--allow-insecure-bundle", "bundle", "verify", str(bundle_copy), "--cpus", "8"])
    capfd.readouterr()
    assert code == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="the ownership rule applies when running as root")
def test_bundle_owned_by_another_user_refused_as_root(capfd, bundle_copy):
    os.chown(bundle_copy / "table.bin", 65534, 65534)
    refused(capfd, bundle_copy, "uid 65534")


def test_decide_refuses_a_tampered_bundle(capfd, bundle_copy):
    (bundle_copy / "table.bin").write_bytes(b"\x00" * (bundle_copy / "table.bin").stat().st_size)
    code = main(["decide", "--bundle", str(bundle_copy), "--cpu", "4", "--idle", "2", "--busy", "6",
                 "--src-load", "0.9", "--dst-load", "0.2"])
    out, err = capfd.readouterr()
    assert code == 2 and out == "" and "sha256" in err and len(err.strip().splitlines()) == 1


def test_manifest_integer_past_the_digit_limit_is_one_line(capfd, bundle_copy):
    """Python refuses to parse integers of more than 4300 digits: a bad manifest, exit 2."""
    text = (bundle_copy / MANIFEST).read_text()
    (bundle_copy / MANIFEST).write_text(text.replace('"cpus": 8', '"cpus": 8' + "9" * 5000, 1))
    refused(capfd, bundle_copy, "not a manifest")
