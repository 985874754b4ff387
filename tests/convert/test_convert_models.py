"""mlsched-convert on every common way a migration model is saved, and the refusals.

Each style is built here, small and deterministic: the teacher policy (src/mlsched/train/teacher.py)
for an 8-CPU host written as a hand-set two-layer network (``teacher_net``), so the float
model's decisions are known without the converter, saved the way users save models.
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
from mlsched.runtime.features import (  # noqa: E402
    LOAD_LEVELS,
    LOAD_STEPS,
    host_features,
    pad,
)
from mlsched.runtime.interp import Model  # noqa: E402
from mlsched.runtime.wire import UNSURE  # noqa: E402
from mlsched.train import teacher  # noqa: E402
from support.lazy_tf import tf  # noqa: E402

N = 8
SCENARIOS = [(4, 2, 6, 0.9, 0.2), (2, 4, 4, 0.5, 0.5), (1, 7, 1, 0.1, 0.1)]
#: Logit steepness of the hand-set network: steep enough to match the teacher, smooth enough
#: that int8 rounding moves only rows next to the boundary.
STEEP = 40.0


def teacher_net(width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Weights (W1 [width, 3], b1, W2 [3, 1], b2) of relu(x W1 + b1) W2 + b2 = STEEP * teacher margin.

    h0 = src - dst - 0.15 busy/N + 0.08 idle/N + 1 (always > 0), h1 - h2 = [cpu >= N/2]
    for integer cpu; margin = h0 - 1 - 0.15 - 0.10 (h1 - h2), as teacher.py on an N-CPU host.
    """
    w1 = np.zeros((width, 3), np.float32)
    w1[:5, 0] = [0.0, teacher.OVERHEAD_IDLE / N, -teacher.OVERHEAD_BUSY / N, 1.0, -1.0]
    w1[0, 1] = w1[0, 2] = 1.0
    b1 = np.array([1.0, -(N / 2 - 1), -N / 2], np.float32)
    cache = teacher.CACHE_CROSS_LLC
    w2 = STEEP * np.array([[1.0], [-cache], [cache]], np.float32)
    b2 = np.array([-STEEP * (1 + teacher.OVERHEAD_BASE + teacher.CACHE_BASE)], np.float32)
    return w1, b1, w2, b2


def features(rows: int, width: int, seed: int) -> np.ndarray:
    return calibration.synthesize(N, rows, np.random.default_rng(seed))[:, :width]


def test_teacher_net_is_the_teacher():
    x = features(20000, 10, 1)
    w1, b1, w2, b2 = teacher_net(10)
    logit = (np.maximum(x @ w1 + b1, 0) @ w2 + b2)[:, 0]
    np.testing.assert_array_equal((logit > 0).astype(np.uint8), teacher.decide(x))


def keras_teacher(width: int, head: str = "sigmoid", extra: bool = False, name: str = "migrate"):
    """A Keras model computing the teacher net; ``extra``: Normalization, BatchNormalization
    and Dropout in front, compensated in the first dense layer so the function is unchanged."""
    keras = tf.keras
    w1, b1, w2, b2 = teacher_net(width)
    inp = keras.Input((width,), name="x")
    h = inp
    if extra:
        seen = features(5000, width, 3)     # statistics as Normalization.adapt() finds them
        mean, var = seen.mean(axis=0), np.maximum(seen.var(axis=0), 1e-2)
        h = keras.layers.Normalization(mean=mean, variance=var)(h)
        bn = keras.layers.BatchNormalization(epsilon=1e-3)
        h = bn(h)
        h = keras.layers.Dropout(0.3)(h)
        # Normalization then BN: z = ((x - m)/sd - mm) * g/sqrt(mv + eps) + beta, with
        # g = 1, beta = 0, mm = 0.5, mv = 4 - eps: z = ((x - m)/sd - 0.5) / 2
        # so x = m + sd (2 z + 0.5): fold that into the first dense layer.
        sd = np.sqrt(var)
        w1, b1 = (2 * sd)[:, None] * w1, b1 + (mean + 0.5 * sd) @ w1
    h = keras.layers.Dense(3, activation="relu", name="hidden")(h)
    out = keras.layers.Dense(1, activation=head if head == "sigmoid" else None, name=name)(h)
    model = keras.Model(inp, out)
    model.get_layer("hidden").set_weights([w1, b1])
    model.get_layer(name).set_weights([w2, b2])
    if extra:
        bn.set_weights([np.ones(width, np.float32), np.zeros(width, np.float32),
                        np.full(width, 0.5, np.float32), np.full(width, 4.0 - 1e-3, np.float32)])
    return model


def save_module(path: Path, width: int, dtype, head: str, variables: bool, signature: str | None,
                in_name: str = "input", out_name: str = "output", flat: bool = False) -> Path:
    """The teacher net as a plain tf.Module in ``dtype``, its output made by ``head``, saved with
    ``__call__`` (signature None) or as the named signature; weights as variables or constants."""
    w1, b1, w2, b2 = (w.astype(dtype.as_numpy_dtype) for w in teacher_net(width))
    spec = tf.TensorSpec([None, width], dtype, name=in_name)

    def compute(self, x):
        y = tf.nn.relu(tf.matmul(x, self.w1) + self.b1) @ self.w2 + self.b2
        y = tf.reshape(y, [-1]) if flat else y
        if head == "sigmoid":
            y = tf.sigmoid(y)
        elif head == "label":
            y = tf.cast(tf.sigmoid(y) > 0.5, dtype)
        elif head == "argmax":
            y = tf.argmax(tf.stack([-y, y], axis=-1), axis=-1)
        elif head == "less":              # MIGRATE when the negated logit is below zero
            y = tf.cast(tf.math.less(-y, tf.constant(0.0, dtype)), tf.int32)
        elif head == "round":
            y = tf.round(tf.sigmoid(y))
        return {out_name: y}

    class Net(tf.Module):
        def __init__(self):
            super().__init__()
            make = tf.Variable if variables else tf.constant
            self.w1, self.b1, self.w2, self.b2 = (make(w) for w in (w1, b1, w2, b2))

    setattr(Net, signature or "__call__", tf.function(compute, input_signature=[spec]))
    net = Net()
    if signature is None:
        tf.saved_model.save(net, str(path))
    else:
        tf.saved_model.save(net, str(path), signatures={signature: getattr(net, signature)})
    return path


# ---- the styles ------------------------------------------------------------------------------

STYLES = {
    # name: (builder(path) -> model path, extra convert args, width, output kind)
}


def style(name, width, kind, *extra):
    def register(fn):
        STYLES[name] = (fn, list(extra), width, kind)
        return fn
    return register


@style("keras-export-10", 10, "probability")
def _keras_export(root: Path) -> Path:
    keras_teacher(10).export(str(root / "m"), format="tf_saved_model", verbose=False)
    return root / "m"


@style("keras-saved_model.save-5", 5, "probability")
def _keras_tf_save(root: Path) -> Path:
    tf.saved_model.save(keras_teacher(5), str(root / "m"))
    return root / "m"


@style("module-call-float64-label-5-vars", 5, "label")
def _module_label(root: Path) -> Path:
    return save_module(root / "m", 5, tf.float64, "label", variables=True, signature=None)


@style("module-call-float64-argmax-label-5-novars", 5, "label")
def _module_argmax(root: Path) -> Path:
    """A label made by ArgMax over (STAY, MIGRATE) scores: no comparison to cut, the step is kept."""
    return save_module(root / "m", 5, tf.float64, "argmax", variables=False, signature=None,
                       out_name="migrate", flat=True)


@style("module-call-float32-less-label-10-novars", 10, "label")
def _module_less(root: Path) -> Path:
    return save_module(root / "m", 10, tf.float32, "less", variables=False, signature=None)


@style("module-named-float64-round-label-5-vars", 5, "label", "--signature", "label")
def _module_round(root: Path) -> Path:
    return save_module(root / "m", 5, tf.float64, "round", variables=True, signature="label")


@style("module-named-float16-logit-flat-10-novars", 10, "logit", "--signature", "decide")
def _module_named(root: Path) -> Path:
    return save_module(root / "m", 10, tf.float16, "logit", variables=False, signature="decide",
                       in_name="loads_and_counts", out_name="score", flat=True)


@style("module-call-float32-probability-10-vars", 10, "probability")
def _module_prob(root: Path) -> Path:
    return save_module(root / "m", 10, tf.float32, "sigmoid", variables=True, signature=None,
                       in_name="f", out_name="p")


@style("keras-file-normalization-bn-dropout-5", 5, "probability")
def _keras_file(root: Path) -> Path:
    keras_teacher(5, extra=True).save(root / "m.keras")
    return root / "m.keras"


@style("h5-logit-10", 10, "logit")
def _h5(root: Path) -> Path:
    keras_teacher(10, head="linear", name="logit").save(root / "m.h5")
    return root / "m.h5"


@pytest.fixture(scope="module", params=sorted(STYLES))
def converted(request, tmp_path_factory):
    """(style name, model path, bundle path, width, kind) for each style, converted for 8 CPUs."""
    name = request.param
    build, extra, width, kind = STYLES[name]
    root = tmp_path_factory.mktemp("style")
    tf.keras.utils.set_random_seed(5)
    path = build(root)
    out = root / "bundle"
    code = convert_main([str(path), "-o", str(out), "--cpus", str(N), *extra])
    assert code == 0, name
    return name, path, out, width, kind


def test_style_converts_with_fidelity(converted):
    name, _, out, width, kind = converted
    b = Bundle.load(out)
    rep = json.loads((out / "report.json").read_text())
    assert b.width == width and b.manifest["features"]["width"] == width
    assert len(b.manifest["features"]["names"]) == width and b.normalization.width == width
    assert rep["model"]["input"]["width"] == width
    assert rep["model"]["output"]["kind"] == kind, rep["model"]["output"]
    head = rep["model"]["output"]["head"]
    if kind == "label":
        expected = {"argmax": "0/1 step kept", "less": "score in front of Less < 0 kept",
                    "round": "score in front of Round > 0.5 kept"}
        key = next((k for k in expected if k in name), None)
        assert head.startswith(expected[key] if key else "score in front of Greater > 0.5 kept"), head
    assert rep["normalization_folded"], name
    assert rep["int8_vs_float_agreement"] >= 0.99, rep
    assert rep["table_vs_int8_agreement"] == 1.0
    assert Model(b.model_bytes).width == width


@pytest.mark.parametrize("converted", [n for n in sorted(STYLES) if n.startswith("module-")],
                         indirect=True)
def test_module_styles_have_no_variables_attribute(converted):
    """The case that used to end in AttributeError: a restored tf.Module has no ``variables``."""
    _, path, *_ = converted
    assert not hasattr(tf.saved_model.load(str(path)), "variables")


def test_style_table_equals_interpreter(converted):
    _, _, out, width, _ = converted
    b = Bundle.load(out)
    model = Model(b.model_bytes)
    c, i, s, d = np.meshgrid(np.arange(N), np.arange(N + 1), np.arange(LOAD_LEVELS),
                             np.arange(LOAD_LEVELS), indexing="ij")
    x = host_features(N, c.ravel(), i.ravel(), s.ravel() / LOAD_STEPS, d.ravel() / LOAD_STEPS)
    expected = model.decide(b.normalization.apply(x[:, :width])).reshape(b.table.shape)
    sure = b.table != UNSURE
    assert sure.mean() > 0.5
    np.testing.assert_array_equal(b.table[sure], expected[sure])


def test_style_reference_scenarios_and_mlsched_lite(converted, tmp_path):
    """The teacher's answers through mlsched-lite decide --bundle, and bundle verify."""
    _, _, out, width, _ = converted
    rows = np.concatenate([np.array(SCENARIOS, np.float64), features(500, 5, 9)])
    rows[:, 3:] = np.round(rows[:, 3:] * 1024) / 1024     # loads on the wire's 1/1024 grid
    csv = tmp_path / "f.csv"
    csv.write_text("cpu,cpu_idle,cpu_not_idle,src_dom_load,dst_dom_load\n"
                   + "".join(",".join(f"{v:.17g}" for v in r) + "\n" for r in rows))
    lite = [sys.executable, "-m", "mlsched.runtime.cli"]
    r = subprocess.run([*lite, "decide", "--bundle", str(out), "--input", str(csv)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    got = [1 if w == "MIGRATE" else 0 for w in r.stdout.split()]
    assert got[:3] == [1, 0, 0]                          # the reference scenarios' answers (teacher.py)
    b = Bundle.load(out)
    int8 = Model(b.model_bytes).decide(b.normalization.apply(pad(rows, width)))
    np.testing.assert_array_equal(got, int8)             # table + interpreter = interpreter
    assert (np.asarray(got) == teacher.decide(rows)).mean() >= 0.98
    r = subprocess.run([*lite, "decide", "--bundle", str(out), "--cpu", "4", "--idle", "2", "--busy",
                        "6", "--src-load", "0.9", "--dst-load", "0.2"], capture_output=True,
                       text=True, timeout=120)
    assert (r.returncode, r.stdout.strip()) == (0, "MIGRATE"), r.stderr
    r = subprocess.run([*lite, "bundle", "verify", str(out), "--cpus", str(N)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip().endswith("OK"), r.stdout + r.stderr
    assert f"input width   {width}" in r.stdout


@pytest.mark.parametrize("converted", [n for n in sorted(STYLES) if STYLES[n][2] == 5], indirect=True)
def test_five_wide_bundle_through_the_kernel_side(converted, tmp_path, require_bpf):
    """Table in the BPF helper, misses over the ring to the engine: the same decisions."""
    _, _, out, _, _ = converted
    rows = np.concatenate([np.array(SCENARIOS, np.float64), features(300, 5, 11)])
    rows[:, 3:] = np.round(rows[:, 3:] * 1024) / 1024     # loads exact on the wire (1/1024 units)
    csv = tmp_path / "f.csv"
    csv.write_text("cpu,cpu_idle,cpu_not_idle,src_dom_load,dst_dom_load\n"
                   + "".join(",".join(f"{v:.17g}" for v in r) + "\n" for r in rows))
    r = subprocess.run([sys.executable, "-m", "mlsched.runtime.cli", "replay", "--bundle", str(out),
                        str(csv)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    got = [1 if w == "MIGRATE" else 0 for w in r.stdout.split()]
    b = Bundle.load(out)
    np.testing.assert_array_equal(got, Model(b.model_bytes).decide(b.normalization.apply(pad(rows, 5))))


def test_inspect_lists_signatures_and_plan(converted, capfd):
    name, path, _, width, kind = converted
    args = [str(path), "--inspect"] + STYLES[name][1]
    before = set(path.parent.iterdir())
    assert convert_main(args) == 0
    text = capfd.readouterr().out
    assert f"width       {width}: padding" in text
    assert f": {kind} (auto: the output comes from" in text
    assert "<- converted" in text and "input scaling into" in text
    assert set(path.parent.iterdir()) == before


# ---- outputs: several, chosen; kinds checked against values ----------------------------------

@pytest.fixture(scope="module")
def two_outputs(tmp_path_factory) -> Path:
    keras = tf.keras
    base = keras_teacher(5, head="linear", name="logit")
    prob = keras.layers.Activation("sigmoid", name="prob")(base.output)
    path = tmp_path_factory.mktemp("two") / "two.keras"
    keras.Model(base.input, [prob, base.output]).save(path)
    return path


def test_several_outputs_listed_then_chosen(two_outputs, tmp_path, capfd):
    code, err = run(capfd, two_outputs, "-o", tmp_path / "b", "--cpus", N)
    assert code == 2 and "2 outputs" in err and "prob" in err and "logit" in err
    assert "--model-output" in err and not (tmp_path / "b").exists()
    for name, kind in (("prob", "probability"), ("logit", "logit")):
        out = tmp_path / name
        code, err = run(capfd, two_outputs, "-o", out, "--cpus", N, "--model-output", name)
        assert code == 0, err
        rep = json.loads((out / "report.json").read_text())
        assert rep["model"]["output"] == {**rep["model"]["output"], "name": name, "kind": kind}
        assert rep["int8_vs_float_agreement"] >= 0.99
    a, b = Bundle.load(tmp_path / "prob"), Bundle.load(tmp_path / "logit")
    assert (a.table == b.table).mean() > 0.99


def test_declared_kind_must_fit_values(two_outputs, tmp_path, capfd):
    code, err = run(capfd, two_outputs, "-o", tmp_path / "b", "--cpus", N, "--model-output", "logit",
                    "--output-kind", "probability")
    assert code == 2 and "not a probability" in err and "--output-kind logit" in err
    code, err = run(capfd, two_outputs, "-o", tmp_path / "b", "--cpus", N, "--model-output", "prob",
                    "--output-kind", "label")
    assert code == 2 and "not a label" in err
    assert not (tmp_path / "b").exists()


# ---- refusals: one line, exit 2, nothing written ---------------------------------------------

def run(capfd, *args) -> tuple[int, str]:
    code = convert_main([str(a) for a in args])
    return code, capfd.readouterr().err


@pytest.fixture(scope="module")
def refused(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("refused")

    def module(name, specs, body):
        m = tf.Module()
        m.f = tf.function(body, input_signature=specs)
        tf.saved_model.save(m, str(root / name), signatures={"serving_default": m.f})

    f32 = tf.float32
    module("rank3", [tf.TensorSpec([None, 5, 1], f32)], lambda x: tf.reduce_sum(x, [1, 2])[:, None])
    module("two_inputs", [tf.TensorSpec([None, 5], f32), tf.TensorSpec([None, 5], f32)],
           lambda a, b: tf.reduce_sum(a + b, 1, keepdims=True))
    module("width7", [tf.TensorSpec([None, 7], f32)], lambda x: tf.reduce_sum(x, 1, keepdims=True))
    module("strings", [tf.TensorSpec([None, 5], tf.string)],
           lambda x: tf.ones([tf.shape(x)[0], 1]))
    module("out_rank3", [tf.TensorSpec([None, 5], f32)], lambda x: x[:, :, None])
    module("bessel", [tf.TensorSpec([None, 5], f32)],
           lambda x: tf.sigmoid(tf.reduce_sum(tf.math.bessel_i0e(x @ (0.5 * tf.eye(5))), 1, keepdims=True)))
    module("unit_logit", [tf.TensorSpec([None, 5], f32)],
           lambda x: tf.reduce_mean(x[:, 3:], 1, keepdims=True))
    module("square_first", [tf.TensorSpec([None, 5], f32)],
           lambda x: tf.sigmoid(40 * (tf.square(x[:, 3:4]) - tf.square(x[:, 4:5]) - 0.1)))
    return root


def test_unfoldable_input_scaling_is_rescaled(refused, tmp_path, capfd, caplog):
    """Squares of sliced loads: nothing to fold into, so the scale goes behind the slices
    (loads keep factor 1) and the runtime still divides the counts by N."""
    code, err = run(capfd, refused / "square_first", "-o", tmp_path / "b", "--cpus", 4, "--force")
    assert code == 0, err
    assert "features stay raw" not in caplog.text
    rep = json.loads((tmp_path / "b" / "report.json").read_text())
    assert not rep["normalization_folded"] and rep["input_scaling"]["how"] == "rescaled"
    assert "(cannot fold: the input feeds 2 ops)" in rep["input_scaling"]["text"]
    assert list(Bundle.load(tmp_path / "b").normalization.scale) == [4, 4, 4, 1, 1]


@pytest.mark.parametrize("case,needle", [
    ("rank3", "rank 3"),
    ("two_inputs", "takes 2 inputs"),
    ("width7", "width 7: expected 5"),
    ("strings", "string (not numeric)"),
    ("out_rank3", "expected one value per row"),
    ("bessel", "op BesselI0e"),
    ("unit_logit", "pass --output-kind"),
])
def test_refusal_one_line_exit_2_nothing_written(refused, tmp_path, capfd, case, needle):
    before = set(tmp_path.iterdir())
    code, err = run(capfd, refused / case, "-o", tmp_path / "out", "--cpus", 4)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("mlsched-convert: "), err
    assert needle in lines[0], lines[0]
    assert set(tmp_path.iterdir()) == before


def test_inspect_shows_refusal_and_writes_nothing(refused, capfd):
    assert convert_main([str(refused / "width7"), "--inspect"]) == 0
    out = capfd.readouterr().out
    assert "input       arg0 float32 [n, 7]" in out or "float32 [n, 7]" in out
    assert "would refuse" in out and "width 7" in out


def test_inspect_shows_kind_that_does_not_fit(two_outputs, capfd):
    assert convert_main([str(two_outputs), "--inspect", "--model-output", "logit",
                         "--output-kind", "probability"]) == 0
    out = capfd.readouterr().out
    assert "output      prob float32 [n, 1]" in out and "output      logit float32 [n, 1]" in out
    assert "would refuse" in out and "not a probability" in out


def test_output_required_without_inspect(refused, capfd):
    code, err = run(capfd, refused / "width7")
    assert code == 2 and "-o BUNDLE_DIR is required" in err
