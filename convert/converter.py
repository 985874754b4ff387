"""SavedModel / Keras model -> bundle: calibrate, fold normalization, quantize, table, report.

Workflow of ``convert()``::

    1. load      SavedModel (signature by name, serving_default, or the only one)
                 or .keras/.h5; check input [*, 10] float32 and output [*, 1]
    2. fold      counts are divided by N before quantization (one int8 input scale
                 serves every column); the model's first dense kernel is rescaled
                 so the model still computes the same function (verified
                 numerically, else the raw features are quantized and a warning says so)
    3. quantize  full-int8 TFLite (int8 input and output), calibrated on --calibration
                 or on features synthesized for an N-CPU host
    4. measure   int8-vs-float decision agreement on held-out samples; below
                 --min-agreement: refuse (exit 3) unless --force
    5. table     decision table from the int8 interpreter (runtime/table.py)
    6. report    report.json / report.png, manifest with hashes, atomic write
"""

from __future__ import annotations

import json
import logging
import os
import platform
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from mlsched.runtime import bundle as bundle_mod
from mlsched.runtime import table as table_mod
from mlsched.runtime.features import (
    FEATURE_NAMES,
    FEATURE_WIDTH,
    LOAD_STEPS,
    THRESHOLD,
    Normalization,
)
from mlsched.runtime.interp import Model, quiet_stderr
from mlsched.runtime.wire import UNSURE

import mlsched

from . import calibration

log = logging.getLogger(__name__)

#: Held-out samples for the agreement figures (never used for calibration).
AGREEMENT_SAMPLES = 100_000
SEED = 1125
EXIT_BAD_INPUT = 2
EXIT_LOW_AGREEMENT = 3


class ConvertError(Exception):
    """A conversion that cannot go on; ``code`` is the process exit status."""

    def __init__(self, message: str, code: int = EXIT_BAD_INPUT):
        super().__init__(message)
        self.code = code


@dataclass
class Options:
    model: Path
    output: Path
    cpus: int
    calibration: Path | None = None
    signature: str | None = None
    min_agreement: float = 0.99
    table_mode: str = "boundary"
    force: bool = False
    progress: bool = False
    normalize: bool = True
    extra: dict = field(default_factory=dict)


def _tf():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    import tensorflow as tf

    tf.get_logger().setLevel(logging.ERROR)
    return tf


class LoadedModel:
    """A float model as a callable ``[n, 10] float32 -> [n] probability``, plus its variables."""

    def __init__(self, fn, holder, variables, description: str):
        self.fn = fn                 # concrete function, takes a [n, 10] float32 tensor
        self.holder = holder         # object that owns the variables (for the converter)
        self.variables = variables
        self.description = description

    def predict(self, x: np.ndarray) -> np.ndarray:
        tf = _tf()
        out = []
        for start in range(0, len(x), 65536):
            y = self.fn(tf.constant(np.asarray(x[start:start + 65536], dtype=np.float32)))
            if isinstance(y, dict):
                y = next(iter(y.values()))
            out.append(np.asarray(y).reshape(-1))
        return np.concatenate(out) if out else np.zeros(0, np.float32)


def load_model(path: Path, signature: str | None) -> LoadedModel:
    tf = _tf()
    if not path.exists():
        raise ConvertError(f"{path}: no such file or directory (give a SavedModel directory or a .keras/.h5 file)")
    if path.is_file():
        if path.suffix not in (".keras", ".h5"):
            raise ConvertError(f"{path}: a file but not .keras or .h5: give a SavedModel directory or a Keras file")
        try:
            model = tf.keras.models.load_model(path, compile=False)
        except Exception as e:  # noqa: BLE001 - Keras raises many kinds; one line for all
            raise ConvertError(f"{path}: cannot load the Keras model ({_first_line(e)})") from None
        spec = tf.TensorSpec([None, FEATURE_WIDTH], tf.float32)
        _check_keras_shapes(model, path)
        fn = tf.function(lambda x: model(x, training=False), input_signature=[spec]).get_concrete_function()
        return LoadedModel(fn, model, list(model.weights), f"keras:{path.name}")
    if not ((path / "saved_model.pb").is_file() or (path / "saved_model.pbtxt").is_file()):
        raise ConvertError(f"{path}: a directory without saved_model.pb: not a SavedModel")
    try:
        loaded = tf.saved_model.load(str(path))
    except Exception as e:  # noqa: BLE001
        raise ConvertError(f"{path}: cannot read the SavedModel ({_first_line(e)}): is it truncated?") from None
    sigs = dict(loaded.signatures)
    if signature is not None:
        if signature not in sigs:
            raise ConvertError(f"{path}: no signature {signature!r} (has: {', '.join(sigs) or 'none'})")
        name = signature
    elif "serving_default" in sigs:
        name = "serving_default"
    elif len(sigs) == 1:
        name = next(iter(sigs))
    elif not sigs:
        raise ConvertError(f"{path}: the SavedModel has no signatures: export it with one")
    else:
        raise ConvertError(f"{path}: several signatures ({', '.join(sorted(sigs))}): choose one with --signature")
    fn = sigs[name]
    args, kwargs = fn.structured_input_signature
    inputs = list(args) + list(kwargs.values())
    if len(inputs) != 1:
        raise ConvertError(f"{path}: signature {name!r} takes {len(inputs)} inputs, expected one [*, 10] float32")
    spec = inputs[0]
    if spec.dtype != tf.float32 or spec.shape.rank != 2 or spec.shape[1] != FEATURE_WIDTH:
        raise ConvertError(f"{path}: signature {name!r} input is {spec.dtype.name} {spec.shape},"
                           f" expected float32 [*, {FEATURE_WIDTH}]")
    outs = fn.structured_outputs
    outs = list(outs.values()) if isinstance(outs, dict) else [outs]
    if len(outs) != 1 or outs[0].shape.rank != 2 or outs[0].shape[1] != 1:
        shapes = ", ".join(str(o.shape) for o in outs)
        raise ConvertError(f"{path}: signature {name!r} outputs {shapes}, expected one [*, 1]")
    in_key = next(iter(kwargs)) if kwargs else None

    if in_key is not None:
        base = fn

        @tf.function(input_signature=[tf.TensorSpec([None, FEATURE_WIDTH], tf.float32)])
        def call(x):
            return next(iter(base(**{in_key: x}).values()))

        fn = call.get_concrete_function()
    return LoadedModel(fn, loaded, list(loaded.variables), f"saved_model:{path.name}[{name}]")


def _check_keras_shapes(model, path: Path) -> None:
    try:
        ins, outs = model.inputs, model.outputs
    except (AttributeError, ValueError):
        return
    if len(ins) != 1 or tuple(ins[0].shape[1:]) != (FEATURE_WIDTH,):
        raise ConvertError(f"{path}: model input {[tuple(i.shape) for i in ins]}, expected one [*, {FEATURE_WIDTH}]")
    if len(outs) != 1 or tuple(outs[0].shape[1:]) != (1,):
        raise ConvertError(f"{path}: model output {[tuple(o.shape) for o in outs]}, expected one [*, 1]")


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200]}" if text else type(e).__name__


def fold_normalization(m: LoadedModel, norm: Normalization, probe: np.ndarray) -> bool:
    """Rescale the first dense kernel so the model takes normalized features; verify it.

    For ``u = x / s`` (offsets are zero for our features): ``x W + b = u (diag(s) W) + b``.
    The kernel is the single variable of shape [10, k]; the check compares the model on
    ``u`` after folding with the original on ``x`` and undoes the change when they differ.
    """
    if np.any(norm.offset != 0):
        raise ValueError("folding supports scale-only normalization")
    cands = [v for v in m.variables if len(v.shape) == 2 and v.shape[0] == FEATURE_WIDTH]
    if len(cands) != 1:
        log.warning("no single [10, k] kernel found (%d candidates): features stay raw", len(cands))
        return False
    kernel = cands[0]
    before = m.predict(probe)
    original = kernel.numpy()
    kernel.assign(original * norm.scale[:, None].astype(original.dtype))
    after = m.predict(norm.apply(probe))
    if np.allclose(before, after, rtol=1e-4, atol=1e-5):
        return True
    kernel.assign(original)
    log.warning("the model does not start with a dense layer over its input: features stay raw")
    return False


def quantize(m: LoadedModel, calib_u: np.ndarray, verbose: bool) -> bytes:
    tf = _tf()
    if isinstance(m.holder, tf.keras.Model):
        conv = tf.lite.TFLiteConverter.from_keras_model(m.holder)
    else:
        conv = tf.lite.TFLiteConverter.from_concrete_functions([m.fn], m.holder)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.int8
    conv.inference_output_type = tf.int8
    rows = calib_u.astype(np.float32)

    def representative():
        for i in range(len(rows)):
            yield [rows[i:i + 1]]

    conv.representative_dataset = representative
    try:
        with quiet_stderr(keep=verbose), warnings.catch_warnings():
            warnings.simplefilter("default" if verbose else "ignore")
            return conv.convert()
    except Exception as e:  # noqa: BLE001
        raise ConvertError(f"{m.description}: TFLite int8 conversion failed ({_first_line(e)})") from None


class Progress:
    """A one-line progress bar on stderr when it is a terminal; silent otherwise."""

    def __init__(self, label: str, enabled: bool):
        self.label, self.enabled = label, enabled and sys.stderr.isatty()

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        width = 30
        fill = int(width * done / max(total, 1))
        sys.stderr.write(f"\r{self.label:<12} [{'#' * fill}{'.' * (width - fill)}] {done}/{total}")
        if done >= total:
            sys.stderr.write("\n")
        sys.stderr.flush()


def pipeline_decide(table: np.ndarray, model: Model, norm: Normalization, x: np.ndarray):
    """Table first, interpreter for misses: (decisions, hit mask). Used for the report."""
    vals, _ = table_mod.lookup(table, x[:, 0], x[:, 1], x[:, 2], x[:, 3], x[:, 4])
    hit = vals != UNSURE
    out = vals.copy()
    if (~hit).any():
        out[~hit] = model.decide(norm.apply(x[~hit]))
    return out, hit


def convert(opt: Options, verbose: bool = False) -> dict:
    t0 = time.time()
    if opt.cpus < 1 or opt.cpus > bundle_mod.MAX_CPUS:
        raise ConvertError(f"--cpus {opt.cpus}: must be 1..{bundle_mod.MAX_CPUS}")
    if not 0 <= opt.min_agreement <= 1:
        raise ConvertError(f"--min-agreement {opt.min_agreement}: must be within [0, 1]")
    if opt.table_mode not in table_mod.MODES:
        raise ConvertError(f"--table-mode {opt.table_mode}: use {' or '.join(table_mod.MODES)}")
    if opt.output.exists() and not opt.force:
        raise ConvertError(f"{opt.output} exists: pass --force to replace it")
    rng = np.random.default_rng(SEED)
    if opt.calibration is not None:
        try:
            calib = calibration.load(opt.calibration)
        except calibration.CalibrationError as e:
            raise ConvertError(f"{e}: give .npz with 'features' [n, 10] or CSV with a header"
                               f" naming {', '.join(FEATURE_NAMES)}") from None
        if len(calib) > calibration.CALIBRATION_ROWS:
            calib = calib[rng.choice(len(calib), calibration.CALIBRATION_ROWS, replace=False)]
        source = str(opt.calibration)
    else:
        calib = calibration.synthesize(opt.cpus, calibration.CALIBRATION_ROWS, rng)
        source = f"synthesized for {opt.cpus} CPUs"

    with quiet_stderr(keep=verbose):
        m = load_model(opt.model, opt.signature)
    held = calibration.synthesize(opt.cpus, AGREEMENT_SAMPLES, np.random.default_rng(SEED + 1))
    float_prob = m.predict(held)
    float_dec = (float_prob > THRESHOLD).astype(np.uint8)

    norm = Normalization.for_host(opt.cpus)
    folded = opt.normalize and fold_normalization(m, norm, held[:4096])
    if not folded:
        norm = Normalization.identity()
    tflite = quantize(m, norm.apply(calib), verbose)
    model = Model(tflite)

    int8_dec = model.decide(norm.apply(held))
    agreement = float((int8_dec == float_dec).mean())
    if agreement < opt.min_agreement and not opt.force:
        raise ConvertError(f"int8 model agrees with the float model on {agreement:.2%} of"
                           f" {len(held)} held-out decisions, below --min-agreement"
                           f" {opt.min_agreement:.2%}: give representative --calibration data,"
                           " or --force to accept it", EXIT_LOW_AGREEMENT)

    t_table = time.time()
    table = table_mod.build(lambda x: model.decide(norm.apply(x)), opt.cpus, opt.table_mode,
                            progress=Progress("table", opt.progress))
    table_seconds = time.time() - t_table
    pipe_dec, hit = pipeline_decide(table, model, norm, held)

    report = {
        "cpus": opt.cpus,
        "table_mode": opt.table_mode,
        "int8_vs_float_agreement": agreement,
        "table_vs_int8_agreement": float((pipe_dec == int8_dec).mean()),
        "table_vs_float_agreement": float((pipe_dec == float_dec).mean()),
        "table_hit_rate": float(hit.mean()),
        "unsure_fraction": float((table == UNSURE).mean()),
        "held_out_samples": len(held),
        "calibration": {"source": source, "rows": len(calib)},
        "normalization_folded": folded,
        "float_model_bytes": _tree_bytes(opt.model),
        "tflite_bytes": len(tflite),
        "table_bytes": int(table.nbytes),
        "table_seconds": round(table_seconds, 2),
        "backend": model.backend,
    }
    files = {bundle_mod.MODEL_FILE: tflite, bundle_mod.TABLE_FILE: table.tobytes()}
    png = _heatmaps(m, model, norm, table, opt.cpus)
    if png is not None:
        files["report.png"] = png
    report["seconds"] = round(time.time() - t0, 2)
    files["report.json"] = (json.dumps(report, indent=2, sort_keys=True) + "\n").encode()

    manifest = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cpus": opt.cpus,
        "features": {"names": list(FEATURE_NAMES) + [f"pad{i}" for i in range(FEATURE_WIDTH - 5)],
                     "width": FEATURE_WIDTH, "normalization": norm.to_json()},
        "model": {"file": bundle_mod.MODEL_FILE, "input_dtype": "int8", "threshold": THRESHOLD,
                  "input_quantization": [float(model.in_scale), int(model.in_zero)],
                  "output_quantization": [float(model.out_scale), int(model.out_zero)]},
        "table": {"file": bundle_mod.TABLE_FILE, "dtype": "uint8", "mode": opt.table_mode,
                  "shape": list(table.shape), "load_steps": LOAD_STEPS,
                  "axes": ["cpu", "cpu_idle", "q(src_dom_load)", "q(dst_dom_load)"],
                  "values": {"STAY": 0, "MIGRATE": 1, "UNSURE": 2}},
        "source": {"model": str(opt.model), "description": m.description},
        "tool_versions": _versions(),
        "report": {k: report[k] for k in ("int8_vs_float_agreement", "table_vs_int8_agreement",
                                          "table_hit_rate", "unsure_fraction")},
    }
    try:
        bundle_mod.write(opt.output, files, manifest, force=opt.force)
    except FileExistsError as e:
        raise ConvertError(str(e)) from None
    except OSError as e:
        raise ConvertError(f"{opt.output}: cannot write the bundle ({e.strerror})") from None
    return report


def _tree_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _versions() -> dict:
    tf = _tf()
    out = {"mlsched": mlsched.__version__, "tensorflow": tf.__version__,
           "numpy": np.__version__, "python": platform.python_version()}
    return out


def _heatmaps(m: LoadedModel, model: Model, norm: Normalization, table: np.ndarray,
              ncpus: int) -> bytes | None:
    """Decision maps over src x dst load (cpu 0 and N-1, three idle counts): float, int8, table."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.colors import ListedColormap
    except ImportError:
        log.warning("matplotlib not installed: no report.png")
        return None
    import io

    from mlsched.runtime.features import host_features

    res = 101
    grid = np.linspace(0, 1, res)
    s, d = np.meshgrid(grid, grid, indexing="ij")
    cases = [(0, ncpus), (0, ncpus // 2), (0, 0), (ncpus - 1, ncpus // 2)]
    cmap = ListedColormap(["#4477aa", "#ee6677", "#cccccc"])
    fig, axes = plt.subplots(3, len(cases), figsize=(3.2 * len(cases), 9), squeeze=False)
    for col, (cpu, idle) in enumerate(cases):
        x = host_features(ncpus, cpu, idle, s.ravel(), d.ravel())
        maps = [(m.predict(x) > THRESHOLD).astype(np.uint8), model.decide(norm.apply(x)),
                table_mod.lookup(table, x[:, 0], x[:, 1], x[:, 2], x[:, 3], x[:, 4])[0]]
        for row, (name, dec) in enumerate(zip(("float", "int8", "table"), maps, strict=True)):
            ax = axes[row][col]
            ax.imshow(dec.reshape(res, res).T, origin="lower", extent=(0, 1, 0, 1), cmap=cmap,
                      vmin=0, vmax=2, interpolation="nearest")
            ax.set_title(f"{name}: cpu={cpu} idle={idle}/{ncpus}", fontsize=9)
            ax.set_xlabel("src_dom_load")
            ax.set_ylabel("dst_dom_load")
    fig.suptitle("decisions: blue STAY, red MIGRATE, grey UNSURE (table miss)")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return buf.getvalue()
