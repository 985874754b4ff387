"""mlsched-convert: the default model, fidelity of int8 and table, every bad-input class."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

if importlib.util.find_spec("tensorflow") is None:
    pytest.skip("the convert extra (tensorflow-cpu) is not installed", allow_module_level=True)


from mlsched.convert import calibration  # noqa: E402
from mlsched.convert.cli import main as convert_main  # noqa: E402
from mlsched.runtime.bundle import Bundle  # noqa: E402
from mlsched.runtime.features import (  # noqa: E402
    LOAD_LEVELS,
    LOAD_STEPS,
    Normalization,
    host_features,
    pad,
)
from mlsched.runtime.interp import Model  # noqa: E402
from mlsched.runtime.wire import UNSURE  # noqa: E402
from mlsched.train import teacher  # noqa: E402
from support.lazy_tf import tf  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MODEL = ROOT / "models" / "default" / "saved_model"
SCENARIOS = [  # (cpu, idle, busy, src, dst) on an 8-CPU host
    (4, 2, 6, 0.9, 0.2),
    (2, 4, 4, 0.5, 0.5),
    (1, 7, 1, 0.1, 0.1),
]


def run_convert(capfd, *args) -> tuple[int, str]:
    code = convert_main([str(a) for a in args])
    err = capfd.readouterr().err
    return code, err


def listing(d: Path) -> set[str]:
    return {p.name for p in d.iterdir()}


@pytest.fixture(scope="module")
def bundle8(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("b") / "bundle8"
    assert convert_main([str(DEFAULT_MODEL), "-o", str(out), "--cpus", "8"]) == 0
    return out


@pytest.fixture(scope="module")
def bundle64(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("b") / "bundle64"
    assert convert_main([str(DEFAULT_MODEL), "-o", str(out), "--cpus", "64",
                         "--table-levels", "1"]) == 0
    return out


def test_default_model_converts_with_report(bundle64):
    b = Bundle.load(bundle64)
    rep = json.loads((bundle64 / "report.json").read_text())
    for key in ("int8_vs_float_agreement", "table_vs_int8_agreement", "table_hit_rate",
                "unsure_fraction", "float_model_bytes", "tflite_bytes", "table_bytes", "cpus",
                "seconds"):
        assert key in rep, key
    assert rep["cpus"] == 64 and b.cpus == 64
    assert b.level2 is None and rep["level2_absent_because"] == "--table-levels 1"
    assert not (bundle64 / "level2.bin").exists()
    assert rep["int8_vs_float_agreement"] >= 0.99
    assert rep["table_vs_int8_agreement"] >= 0.999
    assert b.table.shape == (64, 65, LOAD_LEVELS, LOAD_LEVELS)
    assert (bundle64 / "table.bin").stat().st_size < 1 << 20
    assert (bundle64 / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The manifest's normalization is what the runtime must apply: counts / N.
    assert list(b.normalization.scale[:5]) == [64, 64, 64, 1, 1]
    assert 0 < rep["unsure_fraction"] < 0.5


def test_every_sure_cell_equals_interpreter_at_centre(bundle8):
    b = Bundle.load(bundle8)
    model = Model(b.model_bytes)
    n = b.cpus
    c, i, s, d = np.meshgrid(np.arange(n), np.arange(n + 1), np.arange(LOAD_LEVELS),
                             np.arange(LOAD_LEVELS), indexing="ij")
    x = host_features(n, c.ravel(), i.ravel(), s.ravel() / LOAD_STEPS, d.ravel() / LOAD_STEPS)
    u = Normalization.from_json(b.manifest["features"]["normalization"]).apply(x)
    expected = model.decide(u).reshape(b.table.shape)
    sure = b.table != UNSURE
    assert sure.mean() > 0.5
    np.testing.assert_array_equal(b.table[sure], expected[sure])


def test_unsure_cells_really_change_inside(bundle8):
    """An UNSURE cell must contain points of both decisions (else it is a needless miss)."""
    b = Bundle.load(bundle8)
    model = Model(b.model_bytes)
    cells = np.argwhere(b.table == UNSURE)
    rng = np.random.default_rng(7)
    pick = cells[rng.choice(len(cells), min(200, len(cells)), replace=False)]
    offs = np.linspace(-0.05, 0.05, 9)
    for cpu, idle, qs, qd in pick:
        src = np.clip(qs / 10 + offs[:, None] + 0 * offs[None, :], 0, 1).ravel()
        dst = np.clip(qd / 10 + 0 * offs[:, None] + offs[None, :], 0, 1).ravel()
        dec = model.decide(b.normalization.apply(host_features(b.cpus, cpu, idle, src, dst)))
        assert dec.min() != dec.max(), (cpu, idle, qs, qd)


def test_nearest_mode_never_unsure(tmp_path, capfd):
    out = tmp_path / "nearest"
    code, err = run_convert(capfd, DEFAULT_MODEL, "-o", out, "--cpus", "4", "--table-mode", "nearest")
    assert code == 0, err
    b = Bundle.load(out)
    assert b.table_mode == "nearest" and not (b.table == UNSURE).any()


def test_reference_scenarios_float_int8_table(bundle8):
    x = pad(np.array(SCENARIOS, dtype=np.float32))
    expected = teacher.decide(x)
    assert list(expected) == [1, 0, 0]          # the reference design's stated outcomes
    loaded = tf.saved_model.load(str(DEFAULT_MODEL))
    prob = next(iter(loaded.signatures["serving_default"](tf.constant(x)).values())).numpy()[:, 0]
    np.testing.assert_array_equal((prob > 0.5).astype(np.uint8), expected)
    b = Bundle.load(bundle8)
    np.testing.assert_array_equal(Model(b.model_bytes).decide(b.normalization.apply(x)), expected)
    cells = b.table[x[:, 0].astype(int), x[:, 1].astype(int),
                    np.floor(x[:, 3] * 10 + 0.5).astype(int), np.floor(x[:, 4] * 10 + 0.5).astype(int)]
    np.testing.assert_array_equal(cells, expected)


def test_cli_end_to_end_subprocess(tmp_path):
    out = tmp_path / "b"
    r = subprocess.run([sys.executable, "-m", "mlsched.convert.cli", str(DEFAULT_MODEL), "-o", str(out),
                        "--cpus", "2"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["cpus"] == 2
    assert Bundle.load(out).cpus == 2
    r = subprocess.run([sys.executable, "-m", "mlsched.convert.cli", str(DEFAULT_MODEL), "-o", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "exists" in r.stderr and "--force" in r.stderr
    assert r.stderr.count("\n") == 1


# ---- a raw-scale model: naive int8 conversion collapses the loads, folding does not ----

RAW_CPUS = 128


@pytest.fixture(scope="module")
def raw_model(tmp_path_factory) -> Path:
    """A model on raw features of a 128-CPU host: migrate when src - dst > 0.15 + 0.2 * cpu/128."""
    keras = tf.keras
    m = keras.Sequential([keras.Input(shape=(10,)), keras.layers.Dense(64, activation="relu"),
                          keras.layers.Dense(64, activation="relu"),
                          keras.layers.Dense(1, activation="sigmoid")])
    w1 = np.zeros((10, 64), np.float32)
    w1[3, 0], w1[4, 0] = 1.0, -1.0          # h0 = relu(src - dst + 1) (always positive)
    w1[0, 1] = 1.0 / RAW_CPUS               # h1 = cpu / 128
    b1 = np.zeros(64, np.float32)
    b1[0] = 1.0
    w2 = np.zeros((64, 64), np.float32)
    w2[0, 0], w2[1, 0] = 1.0, -0.2          # g0 = relu(src - dst + 1 - 0.2 cpu/128)
    w3 = np.zeros((64, 1), np.float32)
    w3[0, 0] = 40.0
    m.set_weights([w1, b1, w2, np.zeros(64, np.float32), w3, np.array([-40.0 * 1.15], np.float32)])
    path = tmp_path_factory.mktemp("raw") / "raw.keras"
    m.save(path)
    return path


def test_raw_scale_model_folds_where_naive_fails(raw_model, tmp_path, capfd):
    naive = tmp_path / "naive"
    code, err = run_convert(capfd, raw_model, "-o", naive, "--cpus", RAW_CPUS, "--no-normalize")
    assert code == 3, err
    assert "agrees with the float model on" in err and not naive.exists()
    figure = float(err.split("on ")[1].split("%")[0]) / 100
    assert figure < 0.99
    folded = tmp_path / "folded"
    code, err = run_convert(capfd, raw_model, "-o", folded, "--cpus", RAW_CPUS,
                            "--table-levels", "1")
    assert code == 0, err
    rep = json.loads((folded / "report.json").read_text())
    assert rep["normalization_folded"] and rep["int8_vs_float_agreement"] >= 0.99


# ---- bad input: one line, exit 2, nothing left on disk ----

@pytest.fixture(scope="module")
def bad_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")

    class Two(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 10], tf.float32)])
        def a(self, x):
            return tf.reduce_sum(x, axis=1, keepdims=True)

        @tf.function(input_signature=[tf.TensorSpec([None, 10], tf.float32)])
        def b(self, x):
            return tf.reduce_mean(x, axis=1, keepdims=True)

    two = Two()
    tf.saved_model.save(two, str(root / "two"), signatures={"a": two.a, "b": two.b})

    class Wrong(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 7], tf.float32)])
        def f(self, x):
            return tf.reduce_sum(x, axis=1, keepdims=True)

        @tf.function(input_signature=[tf.TensorSpec([None, 10], tf.float32)])
        def g(self, x):
            return x[:, :2]

        @tf.function(input_signature=[tf.TensorSpec([None, 10], tf.int32)])
        def h(self, x):
            return tf.reduce_sum(x, axis=1, keepdims=True)

    w = Wrong()
    tf.saved_model.save(w, str(root / "wrong_in"), signatures={"serving_default": w.f})
    tf.saved_model.save(w, str(root / "wrong_out"), signatures={"serving_default": w.g})
    tf.saved_model.save(w, str(root / "wrong_dtype"), signatures={"serving_default": w.h})
    trunc = root / "truncated"
    shutil.copytree(DEFAULT_MODEL, trunc)
    pb = trunc / "saved_model.pb"
    pb.write_bytes(pb.read_bytes()[: pb.stat().st_size // 3])
    (root / "notamodel").mkdir()
    (root / "notamodel" / "README").write_text("x")
    (root / "calib_bad_header.csv").write_text("a,b,c\n1,2,3\n")
    (root / "calib_text.csv").write_text("cpu,cpu_idle,cpu_not_idle,src_dom_load,dst_dom_load\n1,2,x,0.1,0.2\n")
    (root / "calib_nan.csv").write_text("cpu,cpu_idle,cpu_not_idle,src_dom_load,dst_dom_load\n1,2,6,nan,0.2\n")
    (root / "calib_empty.csv").write_text("")
    (root / "calib_short.csv").write_text("cpu,cpu_idle,cpu_not_idle,src_dom_load,dst_dom_load\n1,2\n")
    np.savez(root / "calib_shape.npz", features=np.zeros((5, 3)))
    np.savez(root / "calib_noarr.npz", other=np.zeros((5, 10)))
    (root / "calib_junk.npz").write_bytes(b"PK\x03\x04garbage")
    return root


@pytest.mark.parametrize("case,extra,needle", [
    ("missing", [], "no such file"),
    ("notamodel", [], "not a SavedModel"),
    ("truncated", [], "cannot read the SavedModel"),
    ("two", [], "--signature"),
    ("two:nosuch", ["--signature", "nosuch"], "no signature 'nosuch'"),
    ("wrong_in", [], "width 7"),
    ("wrong_dtype", [], "int32"),
    ("wrong_out", [], "expected one value per row"),
    ("default:calib_bad_header.csv", [], "header lacks"),
    ("default:calib_text.csv", [], "not a number"),
    ("default:calib_nan.csv", [], "NaN"),
    ("default:calib_empty.csv", [], "empty"),
    ("default:calib_short.csv", [], "fields"),
    ("default:calib_shape.npz", [], "shape"),
    ("default:calib_noarr.npz", [], "no 'features'"),
    ("default:calib_junk.npz", [], "not a readable .npz"),
    ("default:cpus", ["--cpus", "0"], "--cpus 0"),
])
def test_bad_input_one_line_exit_2_nothing_left(bad_models, tmp_path, capfd, case, extra, needle):
    name, _, arg = case.partition(":")
    model = DEFAULT_MODEL if name == "default" else bad_models / name
    args = [model, "-o", tmp_path / "out", "--cpus", "4", *extra]
    if arg.startswith("calib"):
        args += ["--calibration", bad_models / arg]
    before = listing(tmp_path)
    code, err = run_convert(capfd, *args)
    assert code == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("mlsched-convert: "), err
    assert needle in lines[0], lines[0]
    assert listing(tmp_path) == before


def test_calibration_file_is_used(tmp_path, capfd):
    rng = np.random.default_rng(3)
    feats = calibration.synthesize(8, 500, rng)
    csv = tmp_path / "rec.csv"
    rows = ["cpu,cpu_idle,cpu_not_idle,src_dom_load,dst_dom_load,cfs_action"]
    rows += [",".join(f"{v:g}" for v in r[:5]) + ",1" for r in feats]
    csv.write_text("\n".join(rows) + "\n")
    code, err = run_convert(capfd, DEFAULT_MODEL, "-o", tmp_path / "b", "--cpus", "8",
                            "--calibration", csv)
    assert code == 0, err
    rep = json.loads((tmp_path / "b" / "report.json").read_text())
    assert rep["calibration"] == {"source": str(csv), "rows": len(feats)}
    assert rep["int8_vs_float_agreement"] >= 0.99


def test_force_replaces_atomically(bundle8, tmp_path, capfd):
    out = tmp_path / "b"
    shutil.copytree(bundle8, out)
    old = (out / "manifest.json").read_text()
    code, err = run_convert(capfd, DEFAULT_MODEL, "-o", out, "--cpus", "3", "--force")
    assert code == 0, err
    assert (out / "manifest.json").read_text() != old and Bundle.load(out).cpus == 3
    assert listing(tmp_path) == {"b"}
    assert oct(os.stat(out / "table.bin").st_mode & 0o777) == "0o644"
