"""mlsched-convert on models written without mlsched in mind.

* raw counts computed on before the first layer (a ``tf.Module`` that divides the counts by
  the host's CPU count and takes (src - dst) x 6): the input scaling cannot fold, the
  converter rescales behind the ops that pick the input's columns;
* a Keras ``.h5`` of four inputs (Dense(10, relu) -> Dense(1, linear), an output near 1
  meaning MIGRATE) reading a subset of the features in its own order (``--features``);
* outputs whose boundary is the user's (``--migrate-above``, ``--migrate-at-least``) for
  each output kind;
* a Keras model fitted on raw counts of 128-CPU hosts, whose hidden channels have very
  unequal ranges (equalized before int8).

Every model here is built in the test. What the float model decides is computed here from
the model itself (TensorFlow, its own input columns, the boundary applied by hand), never
by the converter.
"""

from __future__ import annotations

import importlib.util
import json
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
from mlsched.train import teacher  # noqa: E402
from support.lazy_tf import tf  # noqa: E402

N = 8
#: Logit steepness of the hand-set networks (as in test_convert_models.py).
STEEP = 40.0
#: Ramp of the four-input model: its output climbs from 0 to 1 over this much teacher margin.
RAMP = 0.1
STRESS_FEATURES = ["dst_dom_load", "cpu_idle", "src_dom_load", "cpu_not_idle"]
#: Raw columns (cpu, idle, busy, src, dst) the four-input model's inputs are, by hand.
STRESS_COLUMNS = [4, 1, 3, 2]
#: Rows of 8-CPU traffic mlsched-lite decides against the float model.
TRAFFIC_ROWS = 4000


def run(capfd, *args) -> tuple[int, str, str]:
    code = convert_main([str(a) for a in args])
    out, err = capfd.readouterr()
    return code, out, err


def traffic(rows: int, seed: int) -> np.ndarray:
    """Raw features [rows, 5] of an 8-CPU host, loads on the wire's 1/1024 grid."""
    x = calibration.synthesize(N, rows, np.random.default_rng(seed))[:, :5].astype(np.float64)
    x[:, 3:] = np.round(x[:, 3:] * 1024) / 1024
    return x


# ---- the models ------------------------------------------------------------------------------

def save_raw_counts_module(root: Path) -> Path:
    """A 10-wide tf.Module on raw counts: the teacher policy, computed the way a hand-written
    model does, from the counts' shares of the host and 6 (src - dst)."""
    w1 = np.zeros((4, 3), np.float32)               # inputs: cpu/n, idle/n, busy/n, 6 (src - dst)
    w1[:, 0] = [0.0, teacher.OVERHEAD_IDLE, -teacher.OVERHEAD_BUSY, 1 / 6]
    w1[0, 1] = w1[0, 2] = N                         # h1 - h2 = [cpu >= N/2] for integer cpu
    b1 = np.array([1.0, -(N / 2 - 1), -N / 2], np.float32)
    w2 = STEEP * np.array([[1.0], [-teacher.CACHE_CROSS_LLC], [teacher.CACHE_CROSS_LLC]],
                          np.float32)
    b2 = np.array([-STEEP * (1 + teacher.OVERHEAD_BASE + teacher.CACHE_BASE)], np.float32)

    class RawCounts(tf.Module):
        def __init__(self):
            super().__init__()
            self.w1, self.b1, self.w2, self.b2 = (tf.Variable(w) for w in (w1, b1, w2, b2))

        @tf.function(input_signature=[tf.TensorSpec([None, 10], tf.float32, name="x")])
        def __call__(self, x):
            n = x[:, 1:2] + x[:, 2:3]               # idle + busy: the host's CPUs
            share = x[:, 0:3] / n
            gap = (x[:, 3:4] - x[:, 4:5]) * 6.0
            h = tf.nn.relu(tf.concat([share, gap], axis=1) @ self.w1 + self.b1)
            return {"p": tf.sigmoid(h @ self.w2 + self.b2)}

    tf.saved_model.save(RawCounts(), str(root / "m"))
    return root / "m"


def save_stress_h5(root: Path) -> Path:
    """Four inputs (STRESS_FEATURES), Dense(10, relu) -> Dense(1, linear): 1 where the teacher's
    margin (its cache term at its mean) is above RAMP/2, 0 below -RAMP/2, a ramp between."""
    keras = tf.keras
    m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(10, activation="relu"),
                          keras.layers.Dense(1)])
    k = 1 / RAMP
    w1 = np.zeros((4, 10), np.float32)
    w1[:, 0] = w1[:, 1] = k * np.array([-1.0, teacher.OVERHEAD_IDLE / N, 1.0,
                                        -teacher.OVERHEAD_BUSY / N])
    c = -k * (teacher.OVERHEAD_BASE + teacher.CACHE_BASE + teacher.CACHE_CROSS_LLC / 2)
    b1 = np.zeros(10, np.float32)
    b1[0], b1[1] = c + 0.5, c - 0.5
    w2 = np.zeros((10, 1), np.float32)
    w2[0, 0], w2[1, 0] = 1.0, -1.0                  # relu(a + .5) - relu(a - .5): 0..1
    m.set_weights([w1, b1, w2, np.zeros(1, np.float32)])
    m.save(root / "stress.h5")
    return root / "stress.h5"


def teacher_weights():
    """relu(x W1 + b1) W2 + b2 = STEEP * teacher margin on an 8-CPU host, for x [n, 5]."""
    w1 = np.zeros((5, 3), np.float32)
    w1[:, 0] = [0.0, teacher.OVERHEAD_IDLE / N, -teacher.OVERHEAD_BUSY / N, 1.0, -1.0]
    w1[0, 1] = w1[0, 2] = 1.0
    b1 = np.array([1.0, -(N / 2 - 1), -N / 2], np.float32)
    w2 = STEEP * np.array([[1.0], [-teacher.CACHE_CROSS_LLC], [teacher.CACHE_CROSS_LLC]],
                          np.float32)
    b2 = np.array([-STEEP * (1 + teacher.OVERHEAD_BASE + teacher.CACHE_BASE)], np.float32)
    return w1, b1, w2, b2


def save_teacher_keras(root: Path, activation: str | None) -> Path:
    keras = tf.keras
    m = keras.Sequential([keras.Input((5,)), keras.layers.Dense(3, activation="relu"),
                          keras.layers.Dense(1, activation=activation)])
    m.set_weights(list(teacher_weights()))
    m.save(root / "m.keras")
    return root / "m.keras"


def save_label_module(root: Path) -> Path:
    w1, b1, w2, b2 = teacher_weights()

    class Label(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 5], tf.float32)])
        def __call__(self, x):
            y = tf.nn.relu(x @ w1 + b1) @ w2 + b2
            return {"migrate": tf.cast(y > 0.0, tf.float32)}

    tf.saved_model.save(Label(), str(root / "m"))
    return root / "m"


STYLES = {
    # name: (builder(root) -> model path, convert args, width, output kind) as in
    # test_convert_models.py, so bench/model_styles.py measures these too
    "module-raw-counts-rescaled-10": (save_raw_counts_module, [], 10, "probability"),
    "h5-4-inputs-linear-above-0.5": (
        save_stress_h5, ["--features", ",".join(STRESS_FEATURES), "--output-kind", "linear",
                         "--migrate-above", "0.5"], 4, "linear"),
    "keras-probability-above-0.8": (lambda r: save_teacher_keras(r, "sigmoid"),
                                    ["--migrate-above", "0.8"], 5, "probability"),
    "keras-logit-above-2": (lambda r: save_teacher_keras(r, None),
                            ["--migrate-above", "2"], 5, "logit"),
    "module-label-at-least-1": (save_label_module, ["--migrate-at-least", "1"], 5, "label"),
}
#: Per style, by hand: the raw columns of each model input (None: a zero pad), where the
#: output turns into MIGRATE, and how the input scaling gets into the model.
EXPECTED = {
    "module-raw-counts-rescaled-10": ([0, 1, 2, 3, 4] + [None] * 5, (0.5, False), "rescaled"),
    "h5-4-inputs-linear-above-0.5": (STRESS_COLUMNS, (0.5, False), "folded"),
    "keras-probability-above-0.8": ([0, 1, 2, 3, 4], (0.8, False), "folded"),
    "keras-logit-above-2": ([0, 1, 2, 3, 4], (2.0, False), "folded"),
    "module-label-at-least-1": ([0, 1, 2, 3, 4], (1.0, True), "folded"),
}


def float_decisions(name: str, path: Path, x: np.ndarray) -> np.ndarray:
    """The saved model's own decisions on raw features: its columns, its boundary, by hand."""
    columns, (threshold, at_least), _ = EXPECTED[name]
    feed = np.zeros((len(x), len(columns)), np.float32)
    for i, c in enumerate(columns):
        if c is not None:
            feed[:, i] = x[:, c]
    if path.suffix in (".h5", ".keras"):
        y = tf.keras.models.load_model(path, compile=False).predict(feed, verbose=0)
    else:
        y = next(iter(tf.saved_model.load(str(path))(tf.constant(feed)).values())).numpy()
    y = np.asarray(y, np.float64).reshape(-1)
    return ((y >= threshold) if at_least else (y > threshold)).astype(np.uint8)


@pytest.fixture(scope="module", params=sorted(STYLES))
def converted(request, tmp_path_factory):
    """(style name, model path, bundle path) for each style, converted for 8 CPUs."""
    name = request.param
    build, extra, _, _ = STYLES[name]
    root = tmp_path_factory.mktemp("byom")
    tf.keras.utils.set_random_seed(5)
    path = build(root)
    out = root / "bundle"
    assert convert_main([str(path), "-o", str(out), "--cpus", str(N), *extra]) == 0, name
    return name, path, out


# ---- each style ------------------------------------------------------------------------------

def test_converts_with_its_mapping_boundary_and_fidelity(converted):
    name, _, out = converted
    _, extra, width, kind = STYLES[name]
    columns, (threshold, at_least), scaling = EXPECTED[name]
    b = Bundle.load(out)
    rep = json.loads((out / "report.json").read_text())
    names = ["cpu", "cpu_idle", "cpu_not_idle", "src_dom_load", "dst_dom_load"]
    want = [names[c] if c is not None else f"pad{i - 5}" for i, c in enumerate(columns)]
    assert b.manifest["format_version"] == 2 and b.manifest["features"]["names"] == want
    assert b.width == width and rep["model"]["output"]["kind"] == kind
    flag = next((f for f in ("--migrate-above", "--migrate-at-least") if f in extra),
                f"default for a {kind} output")
    assert b.manifest["decision"] == {"output_kind": kind, "threshold": threshold,
                                      "migrate_at_least": at_least, "threshold_from": flag}
    assert rep["input_scaling"]["how"] == scaling
    assert rep["int8_vs_float_agreement"] >= 0.995, rep["int8_vs_float_agreement"]
    assert rep["table_vs_int8_agreement"] == 1.0


def test_decide_agrees_with_the_float_model(converted, tmp_path):
    """mlsched-lite decide on 8-CPU traffic against the float model at its boundary."""
    name, path, out = converted
    x = traffic(TRAFFIC_ROWS, 9)
    csv = tmp_path / "f.csv"
    csv.write_text("cpu,cpu_idle,cpu_not_idle,src_dom_load,dst_dom_load\n"
                   + "".join(",".join(f"{v:.17g}" for v in r) + "\n" for r in x))
    r = subprocess.run([sys.executable, "-m", "mlsched.runtime.cli", "decide", "--bundle",
                        str(out), "--input", str(csv)], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    got = np.array([1 if w == "MIGRATE" else 0 for w in r.stdout.split()], np.uint8)
    want = float_decisions(name, path, x)
    assert 0.1 < want.mean() < 0.9
    agreement = float((got == want).mean())
    print(f"{name}: mlsched-lite decide = float model on {agreement:.2%} of {len(x)} rows")
    assert agreement >= 0.99


def test_inspect_explains_each_decision(converted, capfd):
    name, path, _ = converted
    _, extra, _, kind = STYLES[name]
    _, (threshold, at_least), scaling = EXPECTED[name]
    code, out, _ = run(capfd, path, "--inspect", *extra)
    assert code == 0
    lines = {ln.split()[0]: ln for ln in out.splitlines() if ln.startswith("  ")}
    assert "(--features)" in lines["inputs"] if "--features" in extra else \
        "(the five features in order" in lines["inputs"]
    assert ("rescale inserted" if scaling == "rescaled" else "input scaling into") in lines["folds"]
    assert "hidden channels can be brought towards one range" in lines["hidden"]
    assert " on 2000 rows of a 8-CPU host" in lines["range"]
    op = ">=" if at_least else ">"
    assert f"output {op} {threshold:g} (" in lines["boundary"] and "% of those rows" in lines["boundary"]
    if "--migrate-above" in extra or "--migrate-at-least" in extra:
        assert f"the default, output > {0.5 if kind in ('probability', 'label') else 0:g}" \
            in lines["boundary"]


# ---- the particular cases --------------------------------------------------------------------

@pytest.fixture(scope="module")
def raw_counts(tmp_path_factory) -> Path:
    return save_raw_counts_module(tmp_path_factory.mktemp("raw"))


def test_raw_counts_rescaled_where_naive_quantization_loses(raw_counts, tmp_path, capfd, caplog):
    """Counts kept raw crush the loads into one int8 scale; the rescale keeps them apart."""
    code, _, err = run(capfd, raw_counts, "-o", tmp_path / "naive", "--cpus", N, "--no-normalize")
    assert code == 0, err
    naive = json.loads((tmp_path / "naive" / "report.json").read_text())
    code, _, err = run(capfd, raw_counts, "-o", tmp_path / "b", "--cpus", N)
    assert code == 0, err
    rep = json.loads((tmp_path / "b" / "report.json").read_text())
    assert "features stay raw" not in caplog.text
    assert rep["input_scaling"]["how"] == "rescaled"
    assert "the input feeds 5 ops" in rep["input_scaling"]["text"]
    assert list(Bundle.load(tmp_path / "b").normalization.scale[:5]) == [8, 8, 8, 1, 1]
    assert rep["int8_vs_float_agreement"] >= 0.995 > naive["int8_vs_float_agreement"]


def test_subset_model_table_is_constant_along_what_it_does_not_read(tmp_path, capfd):
    path = save_stress_h5(tmp_path)
    code, _, err = run(capfd, path, "-o", tmp_path / "b", "--cpus", N, *STYLES[
        "h5-4-inputs-linear-above-0.5"][1])
    assert code == 0, err
    b = Bundle.load(tmp_path / "b")
    assert (b.table == b.table[:1]).all()                  # cpu is not an input
    assert 0.05 < (b.table == 2).mean() < 0.5
    rep = json.loads((tmp_path / "b" / "report.json").read_text())
    assert rep["kernel_exact_fraction"]["uniform"] >= 0.999


@pytest.fixture(scope="module")
def stress(tmp_path_factory) -> Path:
    return save_stress_h5(tmp_path_factory.mktemp("stress"))


@pytest.mark.parametrize("args,needle", [
    ([], "has width 4: expected 5"),
    (["--features", "cpu,cpu_idle,cpu_not_idle,src_dom_load,dst_dom_load"],
     "has width 4: --features names 5"),
    (["--features", "dst_dom_load,cpus,src_dom_load,cpu_not_idle"], "unknown feature 'cpus'"),
    (["--features", "dst_dom_load,cpu_idle,dst_dom_load,cpu_not_idle"],
     "'dst_dom_load' named more than once"),
    (["--features", ",".join(STRESS_FEATURES)], "stays within [0, 1]"),
    (["--features", ",".join(STRESS_FEATURES), "--migrate-above", "0.5",
      "--migrate-at-least", "0.5"], "give one of them"),
    (["--features", ",".join(STRESS_FEATURES), "--output-kind", "label", "--migrate-above", "1"],
     "a label is 0 or 1"),
])
def test_refusals_one_line_exit_2_nothing_written(stress, tmp_path, capfd, args, needle):
    code, _, err = run(capfd, stress, "-o", tmp_path / "out", "--cpus", N, *args)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("mlsched-convert: "), err
    assert needle in lines[0], lines[0]
    assert not (tmp_path / "out").exists()


def test_width_refusal_names_the_flag(stress, capfd):
    code, _, err = run(capfd, stress, "-o", "/nonexistent/out", "--cpus", N)
    assert code == 2 and "--features NAME" in err


# ---- hidden layers of unequal ranges ---------------------------------------------------------

def test_equalize_keeps_the_function_and_evens_the_channels():
    """Hidden channels 100 times apart come out at one range; the output does not move."""
    from mlsched.convert import graph, loader

    keras = tf.keras
    m = keras.Sequential([keras.Input((5,)), keras.layers.Dense(4, activation="relu"),
                          keras.layers.Dense(1)])
    w1 = np.zeros((5, 4), np.float32)
    w1[3, 0], w1[4, 1], w1[0, 2], w1[1, 3] = 0.5, 0.5, 50.0, 50.0
    m.set_weights([w1, np.zeros(4, np.float32), np.ones((4, 1), np.float32),
                   np.zeros(1, np.float32)])
    info = loader.TensorInfo("x", "float32", (None, 5))
    sig = loader.Signature("keras", [info], [loader.TensorInfo("y", "float32", (None, 1))],
                           lambda feeds: {"y": m(feeds["x"])})
    g = graph.freeze(loader.Choice(loader.Source(Path("m"), "keras", {}, m), sig, info,
                                   sig.outputs[0]))
    u = np.random.default_rng(0).uniform(0, 1, (500, 5)).astype(np.float32)
    eq, layers = graph.equalize(g, u)
    assert layers == 1
    np.testing.assert_allclose(eq.predict(u), g.predict(u), rtol=1e-5, atol=1e-5)
    nodes = [n for n in eq.graph_def.node if n.op == "Relu"]
    relu = graph._function(eq.graph_def, [eq.input], f"{nodes[0].name}:0")
    top = np.asarray(relu(tf.constant(u))).max(axis=0)
    np.testing.assert_allclose(top, top.max(), rtol=1e-5)


RAW_CPUS = 128


@pytest.mark.slow
def test_raw_scale_model_at_128_cpus_stays_in_the_kernel(tmp_path, capfd):
    """A Keras model fitted on raw counts of 128-CPU hosts: at most 0.1 % of uniform
    in-geometry requests leave the kernel (report.json's kernel_exact_fraction)."""
    keras = tf.keras
    tf.keras.utils.set_random_seed(7)
    rng = np.random.default_rng(7)
    idle = rng.integers(0, RAW_CPUS + 1, 200_000)
    x = np.column_stack([rng.integers(0, RAW_CPUS, idle.size), idle, RAW_CPUS - idle,
                         rng.uniform(0, 1, (idle.size, 2)), np.zeros((idle.size, 5))])
    m = keras.Sequential([keras.Input((10,)), keras.layers.Dense(64, activation="relu"),
                          keras.layers.Dense(64, activation="relu"),
                          keras.layers.Dense(1, activation="sigmoid")])
    m.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy")
    m.fit(x.astype(np.float32), teacher.decide(x).astype(np.float32), batch_size=512, epochs=8,
          verbose=0)
    m.save(tmp_path / "raw.keras")
    code, _, err = run(capfd, tmp_path / "raw.keras", "-o", tmp_path / "b", "--cpus", RAW_CPUS)
    assert code == 0, err
    rep = json.loads((tmp_path / "b" / "report.json").read_text())
    assert rep["kernel_exact_fraction"]["uniform"] >= 0.999, rep["kernel_exact_fraction"]
    assert rep["equalized"]["layers"] == 2
