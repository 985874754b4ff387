"""SavedModel / Keras model -> bundle: load, calibrate, fold normalization, quantize, table, report.

``convert()`` is the list of steps below, one function each::

    1. check_options        flag values, output not there yet (unless --force)
    2. read_calibration     --calibration file, or features synthesized for an N-CPU host
    3. load                 any style (loader.py) -> chosen signature, input, output;
                            which feature each input reads (--features, else the five
                            in order and pads); frozen float32 graph, output kind, where
                            its output turns into MIGRATE (--migrate-above/-at-least, else
                            the kind's default), the head that puts that at 0.5 (graph.py)
    4. reference_decisions  the original model, in its own dtype, on held-out features;
                            its outputs must fit the kind (probability in [0, 1], label 0/1)
    5. scale_inputs         counts are divided by N before quantization (one int8 input
                            scale serves every column); the graph absorbs the scale in
                            its first op (fold), else multiplies it back in behind the
                            ops that pick the input's columns (rescale); verified
                            numerically, else raw features and a warning
    6. equalize_hidden      quantize: full-int8 TFLite (int8 input and output), calibrated
                            on step 2, of the graph as it is and with the hidden channels
                            of each Dense -> ReLU -> Dense brought towards one range
                            (graph.equalize, verified, at each of EQUALIZE_STRENGTHS);
                            the one that agrees best with the float model on rows of
                            their own is kept
    7. measure_agreement    int8 vs the original's decisions on held-out samples; below
                            --min-agreement: refuse (exit 3) unless --force
    8. build_table          decision table from the int8 interpreter (runtime/table.py, under src/mlsched/)
    9. make_report          report.json figures, report.png heatmaps
   10. make_manifest        feature mapping and width, normalization, decision rule,
                            quantization
   11. write_bundle         model, table, report files and manifest with hashes, atomic write

Why one module of this length: it is the conversion's list of steps, one function each, in
the order ``convert()`` calls them.
"""

from __future__ import annotations

import json
import logging
import platform
import re
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import mlsched
from mlsched.runtime import bundle as bundle_mod
from mlsched.runtime import table as table_mod
from mlsched.runtime.features import (
    DST_LOAD,
    FEATURE_NAMES,
    LOAD_COLUMNS,
    LOAD_STEPS,
    SRC_LOAD,
    THRESHOLD,
    InputMap,
    Normalization,
)
from mlsched.runtime.interp import Model, quiet_stderr, table_deciders
from mlsched.runtime.wire import LOAD_ONE, ROW_BYTES, UNSURE

from . import calibration, graph, loader
from .errors import EXIT_BAD_INPUT, EXIT_LOW_AGREEMENT, ConvertError, first_line
from .lazy_tf import tensorflow

__all__ = ["EXIT_BAD_INPUT", "EXIT_LOW_AGREEMENT", "ConvertError", "Options", "convert"]

log = logging.getLogger(__name__)

#: Held-out samples for the agreement figures (never used for calibration).
AGREEMENT_SAMPLES = 100_000
#: Rows the equalizing strength is chosen on (neither calibration nor held-out rows).
SELECTION_SAMPLES = 50_000
#: Equalizing strengths tried besides none (graph.equalize).
EQUALIZE_STRENGTHS = (0.5, 1.0)
#: Uniform in-geometry requests behind report.json's kernel_exact_fraction.uniform.
UNIFORM_SAMPLES = 200_000
#: Bytes of one kernel table row (struct mlsched_row).
KERNEL_ROW_BYTES = ROW_BYTES
SEED = 1125
OUTPUT_KINDS = ("auto",) + graph.KINDS
#: Slack on the [0, 1] range a probability output must keep (float rounding).
PROBABILITY_SLACK = 1e-6


@dataclass
class Options:
    model: Path
    output: Path
    cpus: int
    calibration: Path | None = None
    signature: str | None = None
    model_output: str | None = None
    output_kind: str = "auto"
    min_agreement: float = 0.99
    table_mode: str = "boundary"
    table_levels: int = 2
    force: bool = False
    progress: bool = False
    normalize: bool = True
    features: str | None = None           # --features NAME,... (None: the five, then pads)
    migrate_above: float | None = None
    migrate_at_least: float | None = None
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Boundary:
    """Where the source model's output turns into MIGRATE: ``output > threshold``, or
    ``>=`` with ``at_least``; ``source`` is the flag that set it or the kind's default."""

    threshold: float
    at_least: bool
    source: str

    @property
    def explicit(self) -> bool:
        return self.source.startswith("--")

    def decide(self, y: np.ndarray) -> np.ndarray:
        y = np.asarray(y)
        return ((y >= self.threshold) if self.at_least else (y > self.threshold)).astype(np.uint8)

    def describe(self) -> str:
        return f"output {'>=' if self.at_least else '>'} {self.threshold:g} ({self.source})"

    def to_json(self, kind: str) -> dict:
        return {"output_kind": kind, "threshold": float(self.threshold),
                "migrate_at_least": self.at_least, "threshold_from": self.source}


def boundary_for(kind: str, above: float | None, at_least: float | None) -> Boundary:
    """The boundary the flags give, else the kind's default (graph.DEFAULT_THRESHOLDS); a
    label's must fall between its two values."""
    if above is None and at_least is None:
        return Boundary(graph.DEFAULT_THRESHOLDS[kind], False, f"default for a {kind} output")
    x, flag = (above, "--migrate-above") if above is not None else (at_least, "--migrate-at-least")
    if kind == "label" and not ((0 <= x < 1) if above is not None else (0 < x <= 1)):
        raise ConvertError(f"{flag} {x:g}: a label is 0 or 1, this puts both on one side"
                           " (give a value between them, e.g. 0.5)")
    return Boundary(float(x), at_least is not None, flag)


@dataclass
class Loaded:
    """The chosen model: the original signature and its frozen float32 graph with its head."""

    choice: loader.Choice
    graph: graph.FloatGraph
    kind: str            # probability, logit, linear or label
    kind_from: str       # how the kind was found: the output's last op, or the flag
    head: str            # what was done to the output so that > 0.5 means MIGRATE
    inputs: InputMap     # which feature each model input reads
    boundary: Boundary   # where the original output turns into MIGRATE

    @property
    def width(self) -> int:
        return self.choice.width

    @property
    def description(self) -> str:
        return self.choice.describe()

    def on_features(self, x: np.ndarray) -> np.ndarray:
        """The original model's output [n] on raw features [n, >= 5] (through the mapping)."""
        return self.raw(self.inputs.select(np.asarray(x)[:, :len(FEATURE_NAMES)]))

    def raw(self, x: np.ndarray) -> np.ndarray:
        """The original model's output [n] (float64) on its inputs [n, width], in its own dtype."""
        tf = tensorflow()
        dtype = tf.as_dtype(self.choice.input.dtype)
        name, out = self.choice.input.name, self.choice.output.name
        parts = []
        for start in range(0, len(x), 65536):
            feed = tf.constant(np.asarray(x[start:start + 65536], np.float64), dtype=dtype)
            y = self.choice.signature.call({name: feed})[out]
            parts.append(np.asarray(y, dtype=np.float64).reshape(-1))
        return np.concatenate(parts) if parts else np.zeros(0)

    def decide(self, x: np.ndarray) -> np.ndarray:
        """The original model's decisions (1 = MIGRATE) on raw features [n, >= 5]."""
        return self.boundary.decide(self.on_features(x))


def model_input(inputs: InputMap, norm: Normalization, x: np.ndarray) -> np.ndarray:
    """Raw features [n, >= 5] -> the int8 model's normalized inputs (mapping, then scale)."""
    return norm.apply(inputs.select(np.asarray(x)[:, :len(FEATURE_NAMES)]))


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


def convert(opt: Options, verbose: bool = False) -> dict:
    """Convert ``opt.model`` into the bundle ``opt.output``; returns the report (module doc)."""
    t0 = time.time()
    named = check_options(opt)
    calib, calib_source = read_calibration(opt)
    with quiet_stderr(keep=verbose):
        m = load(opt.model, opt.signature, opt.model_output, opt.output_kind, named,
                 opt.migrate_above, opt.migrate_at_least)
    held = calibration.synthesize(opt.cpus, AGREEMENT_SAMPLES, np.random.default_rng(SEED + 1))
    reference = reference_decisions(m, held, opt.output_kind)
    g, norm, scaling = scale_inputs(m, opt.cpus, opt.normalize, held[:4096])
    calib_u = model_input(m.inputs, norm, calib)
    t_quantize = time.time()
    tflite, equalized = equalize_hidden(m, g, norm, calib_u, opt.cpus, verbose)
    quantize_seconds = time.time() - t_quantize
    int8 = Model(tflite)
    fidelity = measure_agreement(m, int8, norm, held, reference, opt)
    built, table_seconds = build_table(int8, m.inputs, norm, opt)
    report = make_report(opt, m, int8, norm, built, held, reference, fidelity, tflite,
                         scaling=scaling, equalized=equalized,
                         calib_info={"source": calib_source, "rows": len(calib)},
                         seconds={"quantize": quantize_seconds, "table": table_seconds},
                         calib=calib)
    png = _heatmaps(m, int8, norm, built, opt.cpus)
    report["seconds"] = round(time.time() - t0, 2)
    manifest = make_manifest(opt, m, int8, norm, built, report)
    write_bundle(opt, bundle_files(tflite, built, report, png), manifest)
    return report


def check_options(opt: Options) -> InputMap | None:
    """Refuse bad flag values before anything is read; returns the ``--features`` mapping."""
    check_boundary_flags(opt.migrate_above, opt.migrate_at_least)
    named = parse_features(opt.features)
    if opt.cpus < 1 or opt.cpus > bundle_mod.MAX_CPUS:
        raise ConvertError(f"--cpus {opt.cpus}: must be 1..{bundle_mod.MAX_CPUS}")
    if not 0 <= opt.min_agreement <= 1:
        raise ConvertError(f"--min-agreement {opt.min_agreement}: must be within [0, 1]")
    if opt.table_levels not in (1, 2):
        raise ConvertError(f"--table-levels {opt.table_levels}: use 1 or 2")
    if opt.table_mode not in table_mod.MODES:
        raise ConvertError(f"--table-mode {opt.table_mode}: use {' or '.join(table_mod.MODES)}")
    if opt.output_kind not in OUTPUT_KINDS:
        raise ConvertError(f"--output-kind {opt.output_kind}: use {', '.join(OUTPUT_KINDS)}")
    if opt.output.exists() and not opt.force:
        raise ConvertError(f"{opt.output} exists: pass --force to replace it")
    return named


def parse_features(spec: str | None) -> InputMap | None:
    """``--features NAME,...`` as a mapping; unknown, repeated or missing names refused."""
    if spec is None:
        return None
    try:
        return InputMap.parse(spec)
    except ValueError as e:
        raise ConvertError(f"--features {spec}: {e}") from None


def check_boundary_flags(above: float | None, at_least: float | None) -> None:
    if above is not None and at_least is not None:
        raise ConvertError("--migrate-above and --migrate-at-least: give one of them")
    for flag, x in (("--migrate-above", above), ("--migrate-at-least", at_least)):
        if x is not None and not np.isfinite(x):
            raise ConvertError(f"{flag} {x}: must be a finite number")


def read_calibration(opt: Options) -> tuple[np.ndarray, str]:
    """Raw calibration features [n, 10] (padding zero) and where they come from."""
    rng = np.random.default_rng(SEED)
    if opt.calibration is None:
        return (calibration.synthesize(opt.cpus, calibration.CALIBRATION_ROWS, rng),
                f"synthesized for {opt.cpus} CPUs")
    try:
        calib = calibration.load(opt.calibration)
    except calibration.CalibrationError as e:
        raise ConvertError(f"{e}: give .npz with 'features' [n, 10] or CSV with a header"
                           f" naming {', '.join(FEATURE_NAMES)}") from None
    if len(calib) > calibration.CALIBRATION_ROWS:
        calib = calib[rng.choice(len(calib), calibration.CALIBRATION_ROWS, replace=False)]
    return calib, str(opt.calibration)


def load(path: Path, signature: str | None = None, output: str | None = None,
         output_kind: str = "auto", named: InputMap | None = None,
         migrate_above: float | None = None, migrate_at_least: float | None = None) -> Loaded:
    """Read the model, choose signature/input/output, freeze it, find its kind and where it
    turns into MIGRATE, add the head."""
    choice = loader.choose(loader.open_model(path), signature, output, named)
    g = graph.freeze(choice)
    if output_kind == "auto":
        kind, op = graph.output_kind(g)
        kind_from = f"auto: the output comes from {op}"
    else:
        kind, kind_from = output_kind, "--output-kind"
    boundary = boundary_for(kind, migrate_above, migrate_at_least)
    g, head = graph.with_head(choice, g, kind, boundary.threshold)
    return Loaded(choice, g, kind, kind_from, head, choice.inputs(named), boundary)


def reference_decisions(m: Loaded, held: np.ndarray, output_kind: str) -> np.ndarray:
    """The original model's decisions on held-out features, after checking its outputs fit its kind."""
    y = m.on_features(held)
    check_output_values(m, y, output_kind)
    dec = m.boundary.decide(y)
    log.debug("%s: %s (%s), %s; %.1f%% MIGRATE on held-out rows", m.description, m.kind,
              m.kind_from, m.head, 100 * float(dec.mean()))
    if dec.min() == dec.max():
        log.warning("every held-out row decides %s at %s (the output ranges %.4g..%.4g)",
                    "MIGRATE" if dec[0] else "STAY", m.boundary.describe(), y.min(), y.max())
    return dec


def check_output_values(m: Loaded, raw: np.ndarray, output_kind: str) -> None:
    """Refuse outputs that do not fit their kind: probability in [0, 1], label 0 or 1; an
    output ``auto`` calls a logit that never leaves [0, 1] is ambiguous."""
    name = f"{m.description} output {m.choice.output.name!r}"
    if not np.all(np.isfinite(raw)):
        raise ConvertError(f"{name} is not finite on {int((~np.isfinite(raw)).sum())} held-out rows")
    lo, hi = float(raw.min()), float(raw.max())
    in_unit = lo >= -PROBABILITY_SLACK and hi <= 1 + PROBABILITY_SLACK
    if m.kind == "probability" and not in_unit:
        raise ConvertError(f"{name} ranges {lo:.3g}..{hi:.3g}: not a probability"
                           " (pass --output-kind logit if it is one)")
    if m.kind == "label" and not np.all((raw == 0) | (raw == 1)):
        odd = raw[(raw != 0) & (raw != 1)][0]
        raise ConvertError(f"{name} takes values other than 0 and 1 (e.g. {odd:.4g}): not a label"
                           " (pass --output-kind probability or logit)")
    if m.kind == "logit" and output_kind == "auto" and in_unit and not m.boundary.explicit:
        raise ConvertError(f"{name} ({m.kind_from}) stays within [0, 1]: a probability or a"
                           " logit? pass --output-kind probability or --output-kind logit,"
                           " or say where it turns into MIGRATE (--migrate-above X)")


@dataclass(frozen=True)
class Scaling:
    """What ``scale_inputs`` did: ``how`` "folded", "rescaled", "none" or "raw", and why."""

    how: str
    text: str

    def to_json(self) -> dict:
        return {"how": self.how, "text": self.text}


def scale_inputs(m: Loaded, ncpus: int, normalize: bool, probe: np.ndarray
                 ) -> tuple[graph.FloatGraph, Normalization, Scaling]:
    """The graph to quantize, the normalization the runtime applies before it, and what
    was done.

    For ``u = x / s`` (each input by its feature's span on the host: counts / N): the
    graph is rewritten to compute ``f(u * s)``, first by folding ``s`` into its first op
    (graph.fold_scale), else by multiplying it back in behind the ops that pick the
    input's columns (graph.rescale); each result is compared with the original on
    ``probe``. When neither holds, the features stay raw and a warning says so.
    """
    identity = Normalization.identity(m.width)
    if not normalize:
        return m.graph, identity, Scaling("none", "features as they are (--no-normalize)")
    norm = m.inputs.host_normalization(ncpus)
    if norm.is_identity:
        return m.graph, norm, Scaling("none", "none needed: the model reads no count")
    x = m.inputs.select(probe)
    before = m.graph.predict(x)

    def same(g: graph.FloatGraph) -> bool:
        return bool(np.allclose(before, g.predict(norm.apply(x)), rtol=1e-4, atol=1e-5))

    folded, how = graph.fold_scale(m.graph, norm.scale)
    if folded is not None and same(folded):
        log.debug("input scaling folded %s", how)
        return folded, norm, Scaling("folded", f"counts / {ncpus} folded {how}")
    why = how if folded is None else f"folding it {how} changed the model's output"
    rescaled, where = graph.rescale(m.graph, norm.scale)
    if rescaled is not None and same(rescaled):
        log.info("input scaling cannot fold (%s): rescaled %s", why, where)
        return rescaled, norm, Scaling(
            "rescaled", f"counts / {ncpus}, multiplied back {where} (cannot fold: {why})")
    why2 = where if rescaled is None else "rescaling changed the model's output"
    log.warning("cannot fold the input scaling into the model (%s) nor rescale it (%s):"
                " features stay raw", why, why2)
    return m.graph, identity, Scaling("raw", f"features stay raw: cannot fold ({why}) nor"
                                             f" rescale ({why2})")


def equalizable(g: graph.FloatGraph, calib_u: np.ndarray, strength: float
                ) -> tuple[graph.FloatGraph, int]:
    """``g`` with its hidden ReLU channels equalized at ``strength`` (graph.equalize) and how
    many layers changed; ``g`` and 0 when nothing changed or the numbers moved."""
    eq, layers = graph.equalize(g, calib_u, strength)
    if layers == 0:
        return g, 0
    if not np.allclose(g.predict(calib_u), eq.predict(calib_u), rtol=1e-4, atol=1e-5):
        log.warning("equalizing the hidden layers changed the model's output: left as they are")
        return g, 0
    return eq, layers


def equalize_hidden(m: Loaded, g: graph.FloatGraph, norm: Normalization, calib_u: np.ndarray,
                    ncpus: int, verbose: bool) -> tuple[bytes, dict]:
    """The int8 model of ``g`` at the equalizing strength (EQUALIZE_STRENGTHS, 0: none) whose
    decisions agree best with the float model's on selection rows (never the held-out
    ones the report measures); ties go to the weaker strength. Returns it and what was
    chosen among what."""
    sel = calibration.synthesize(ncpus, SELECTION_SAMPLES, np.random.default_rng(SEED + 3))
    want, u = m.decide(sel), model_input(m.inputs, norm, sel)
    tried, best, layers = {}, None, 0
    for strength in (0.0,) + EQUALIZE_STRENGTHS:
        cand, n = (g, 0) if strength == 0 else equalizable(g, calib_u, strength)
        if strength and n == 0:
            break
        tflite = quantize(m, cand, calib_u, verbose)
        tried[strength] = float((Model(tflite).decide(u) == want).mean())
        if best is None or tried[strength] > tried[best[0]]:
            best, layers = (strength, tflite), n
    log.debug("hidden layers equalized: %d at strength %g (agreement by strength %s)", layers,
              best[0], tried)
    return best[1], {"layers": layers, "strength": best[0],
                     "selection_agreement": {f"{k:g}": v for k, v in tried.items()}}


def quantize(m: Loaded, g: graph.FloatGraph, calib_u: np.ndarray, verbose: bool) -> bytes:
    """Full-int8 TFLite of ``g`` (int8 input and output), calibrated on normalized features."""
    tf = tensorflow()
    fn = g.function()
    conv = tf.lite.TFLiteConverter.from_concrete_functions([fn], tf.Module())
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.int8
    conv.inference_output_type = tf.int8
    rows = np.asarray(calib_u, dtype=np.float32)

    def representative():
        for i in range(len(rows)):
            yield [rows[i:i + 1]]

    conv.representative_dataset = representative
    try:
        with quiet_stderr(keep=verbose), warnings.catch_warnings():
            warnings.simplefilter("default" if verbose else "ignore")
            return conv.convert()
    except Exception as e:  # noqa: BLE001 - the converter raises many kinds; one line for all
        ops = sorted(set(re.findall(r"'tf\.(\w+)' op is neither a custom op nor a flex op", str(e))))
        if ops:
            raise ConvertError(f"{m.description}: TFLite has no int8 builtin for op"
                               f" {', '.join(ops)}: rewrite the model without it") from None
        raise ConvertError(f"{m.description}: TFLite int8 conversion failed ({first_line(e)})") from None


def knife_edge(m: Loaded, held: np.ndarray, reference: np.ndarray, step: float) -> np.ndarray:
    """Rows whose float decision flips within half an int8 input step of either load."""
    edge = np.zeros(len(held), dtype=bool)
    for col in LOAD_COLUMNS:
        for delta in (-step / 2, step / 2):
            moved = held.copy()
            moved[:, col] = np.clip(moved[:, col] + delta, 0.0, 1.0)
            edge |= m.decide(moved) != reference
    return edge


def measure_agreement(m: Loaded, int8: Model, norm: Normalization, held: np.ndarray,
                      reference: np.ndarray, opt: Options) -> dict:
    """int8 vs float decisions on held-out rows, overall and off the knife edge; gate on overall."""
    dec = int8.decide(model_input(m.inputs, norm, held))
    agree = dec == reference
    agreement = float(agree.mean())
    edge = knife_edge(m, held, reference, float(int8.in_scale))
    off_edge = float(agree[~edge].mean()) if (~edge).any() else 1.0
    if agreement < opt.min_agreement and not opt.force:
        raise ConvertError(f"int8 model agrees with the float model on {agreement:.2%} of"
                           f" {len(held)} held-out decisions ({off_edge:.2%} off the"
                           f" {edge.mean():.2%} of rows within half an input step of the boundary),"
                           f" below --min-agreement {opt.min_agreement:.2%}: give representative"
                           " --calibration data, or --force to accept it", EXIT_LOW_AGREEMENT)
    return {"int8_decisions": dec, "int8_vs_float_agreement": agreement,
            "knife_edge_fraction": float(edge.mean()), "int8_vs_float_agreement_off_edge": off_edge}


def build_table(int8: Model, inputs: InputMap, norm: Normalization, opt: Options
                ) -> tuple[table_mod.Exact, float]:
    """Both table levels from the int8 model's complete picture (``table.build_exact``),
    or level 1 alone: ``nearest`` mode, or a model whose input is not int8. Either way
    through the feature mapping: the table is constant along a feature the model does
    not read."""
    t0 = time.time()
    progress = Progress("table", opt.progress)
    if opt.table_mode == "boundary" and int8.quantized and opt.table_levels == 2:
        built = table_mod.build_exact(
            opt.cpus, lambda x: int8.quantize_input(model_input(inputs, norm, x)),
            table_deciders(int8), progress=progress,
            load_inputs=(inputs.input_of(SRC_LOAD), inputs.input_of(DST_LOAD)))
    else:
        table = table_mod.build(lambda x: int8.decide(model_input(inputs, norm, x)), opt.cpus,
                                opt.table_mode, progress=progress)
        why = ("nearest mode: level 1 answers every cell" if opt.table_mode == "nearest"
               else "--table-levels 1" if opt.table_levels == 1
               else "the model's input is not int8")
        built = table_mod.Exact(table, None, why, 0, 0, 0)
    if built.reason:
        log.info("no table level 2: %s", built.reason)
    return built, time.time() - t0


def on_wire(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Raw features -> (the same rows with loads on the wire's 1/1024 grid, wire loads [n, 2])."""
    wire = np.rint(np.clip(x[:, 3:5], 0.0, 1.0) * LOAD_ONE).astype(np.int64)
    snapped = np.array(x[:, :5], dtype=np.float64)
    snapped[:, 3:5] = wire / LOAD_ONE
    return snapped, wire


def pipeline_decide(built: table_mod.Exact, model: Model, inputs: InputMap, norm: Normalization,
                    x: np.ndarray):
    """Both table levels first, interpreter for the rest, on the wire's grid (as the kernel and
    the engine see a request): (decisions, level that answered 0/1/2, int8 decisions)."""
    snapped, wire = on_wire(x)
    counts = snapped[:, :3]
    integral = (counts == np.floor(counts)).all(axis=1) & (counts >= 0).all(axis=1)
    c = np.where(integral[:, None], counts, -1).astype(np.int64)
    vals, level, _ = built.levels.lookup(
        c[:, 0], c[:, 1], c[:, 2], wire[:, 0], wire[:, 1])
    int8_dec = model.decide(model_input(inputs, norm, snapped))
    out = np.where(level > 0, vals, int8_dec).astype(np.uint8)
    return out, level, int8_dec


def uniform_traffic(ncpus: int, rows: int, rng: np.random.Generator) -> np.ndarray:
    """In-geometry requests with uniform cpu, idle count and wire loads (raw features [n, 5])."""
    idle = rng.integers(0, ncpus + 1, rows)
    return np.column_stack([rng.integers(0, ncpus, rows), idle, ncpus - idle,
                            rng.integers(0, LOAD_ONE + 1, (rows, 2)) / LOAD_ONE]).astype(np.float64)


def kernel_exact_fraction(built: table_mod.Exact, model: Model, inputs: InputMap,
                          norm: Normalization, x: np.ndarray) -> float:
    """Share of in-geometry rows a table level answers with exactly the int8 model's decision."""
    _, wire = on_wire(x)
    n = built.table.shape[0]
    counts = x[:, :3]
    inside = ((counts == np.floor(counts)).all(axis=1) & (counts[:, 0] >= 0) & (counts[:, 0] < n)
              & (counts[:, 1] >= 0) & (counts[:, 1] + counts[:, 2] == n))
    if not inside.any():
        return 0.0
    dec, level, int8_dec = pipeline_decide(built, model, inputs, norm, x[inside])
    return float(((level > 0) & (dec == int8_dec)).mean())


def make_report(opt: Options, m: Loaded, int8: Model, norm: Normalization, built: table_mod.Exact,
                held: np.ndarray, reference: np.ndarray, fidelity: dict, tflite: bytes, *,
                scaling: Scaling, equalized: dict, calib_info: dict, seconds: dict,
                calib: np.ndarray) -> dict:
    table, level2 = built.table, built.level2
    pipe_dec, level, int8_snapped = pipeline_decide(built, int8, m.inputs, norm, held)
    y = m.on_features(held)
    inp, out = m.choice.input, m.choice.output
    uniform = uniform_traffic(opt.cpus, UNIFORM_SAMPLES, np.random.default_rng(SEED + 2))
    rows = table.shape[0] * table.shape[1]
    return {
        "cpus": opt.cpus,
        "table_mode": opt.table_mode,
        "model": {"style": m.choice.source.style, "signature": m.choice.signature.name,
                  "input": {"name": inp.name, "dtype": inp.dtype, "width": m.width,
                            "features": list(m.inputs.names)},
                  "output": {"name": out.name, "dtype": out.dtype, "kind": m.kind,
                             "kind_from": m.kind_from, "head": m.head,
                             "range_held_out": [float(y.min()), float(y.max())]}},
        "decision": {**m.boundary.to_json(m.kind), "rule": m.boundary.describe(),
                     "migrate_fraction_held_out": float(reference.mean())},
        "int8_vs_float_agreement": fidelity["int8_vs_float_agreement"],
        "int8_vs_float_agreement_off_edge": fidelity["int8_vs_float_agreement_off_edge"],
        "knife_edge_fraction": fidelity["knife_edge_fraction"],
        "table_vs_int8_agreement": float((pipe_dec == int8_snapped).mean()),
        "table_vs_float_agreement": float((pipe_dec == reference).mean()),
        "table_hit_rate": float((level > 0).mean()),
        "level1_hit_rate": float((level == 1).mean()),
        "unsure_fraction": float((table == UNSURE).mean()),
        "kernel_exact_fraction": {
            "uniform": kernel_exact_fraction(built, int8, m.inputs, norm, uniform),
            "calibration": kernel_exact_fraction(built, int8, m.inputs, norm, calib[:, :5]),
        },
        "level2": None if level2 is None else {
            "bytes": level2.nbytes, "cells": level2.cells, "distinct_line_sets": level2.distinct,
            "lines_per_cell": level2.lines,
            "lines_to_user_space": built.ring_lines, "lines": built.lines_total},
        "level2_absent_because": built.reason,
        "table_points_evaluated": built.points,
        "held_out_samples": len(held),
        "calibration": calib_info,
        "normalization_folded": scaling.how == "folded",
        "input_scaling": scaling.to_json(),
        "equalized": equalized,
        "float_model_bytes": _tree_bytes(opt.model),
        "tflite_bytes": len(tflite),
        "table_bytes": int(table.nbytes),
        "level1_bytes": int(table.nbytes),
        "level2_bytes": level2.nbytes if level2 is not None else 0,
        "kernel_table_bytes": rows * KERNEL_ROW_BYTES + (level2.kernel_words * 8 if level2 else 0),
        "quantize_seconds": round(seconds["quantize"], 2),
        "table_seconds": round(seconds["table"], 2),
        "backend": int8.backend,
    }


def make_manifest(opt: Options, m: Loaded, int8: Model, norm: Normalization,
                  built: table_mod.Exact, report: dict) -> dict:
    table = built.table
    manifest = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cpus": opt.cpus,
        "features": {"names": list(m.inputs.names), "width": m.width,
                     "normalization": norm.to_json()},
        "decision": m.boundary.to_json(m.kind),
        "model": {"file": bundle_mod.MODEL_FILE, "input_dtype": "int8", "threshold": THRESHOLD,
                  "input_quantization": [float(int8.in_scale), int(int8.in_zero)],
                  "output_quantization": [float(int8.out_scale), int(int8.out_zero)]},
        "table": {"file": bundle_mod.TABLE_FILE, "dtype": "uint8", "mode": opt.table_mode,
                  "shape": list(table.shape), "load_steps": LOAD_STEPS,
                  "axes": ["cpu", "cpu_idle", "q(src_dom_load)", "q(dst_dom_load)"],
                  "values": {"STAY": 0, "MIGRATE": 1, "UNSURE": 2}},
        "source": {"model": str(opt.model), "description": m.description,
                   "input": report["model"]["input"], "output": report["model"]["output"]},
        "tool_versions": _versions(),
        "report": {k: report[k] for k in ("int8_vs_float_agreement", "table_vs_int8_agreement",
                                          "table_hit_rate", "unsure_fraction",
                                          "kernel_exact_fraction")},
    }
    if built.level2 is not None:
        manifest["table"]["level2"] = {"file": bundle_mod.LEVEL2_FILE, **built.level2.to_json()}
    return manifest


def bundle_files(tflite: bytes, built: table_mod.Exact, report: dict,
                 png: bytes | None) -> dict[str, bytes]:
    files = {bundle_mod.MODEL_FILE: tflite, bundle_mod.TABLE_FILE: built.table.tobytes()}
    if built.level2 is not None:
        files[bundle_mod.LEVEL2_FILE] = built.level2.to_bytes()
    if png is not None:
        files["report.png"] = png
    files["report.json"] = (json.dumps(report, indent=2, sort_keys=True) + "\n").encode()
    return files


def write_bundle(opt: Options, files: dict[str, bytes], manifest: dict) -> None:
    try:
        bundle_mod.write(opt.output, files, manifest, force=opt.force)
    except FileExistsError as e:
        raise ConvertError(str(e)) from None
    except OSError as e:
        raise ConvertError(f"{opt.output}: cannot write the bundle ({e.strerror})") from None


def _tree_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _versions() -> dict:
    tf = tensorflow()
    out = {"mlsched": mlsched.__version__, "tensorflow": tf.__version__,
           "numpy": np.__version__, "python": platform.python_version()}
    return out


def _heatmaps(m: Loaded, model: Model, norm: Normalization, built: table_mod.Exact,
              ncpus: int) -> bytes | None:
    """Decision maps over src x dst load (cpu 0 and N-1, three idle counts): float, int8, and
    what the table levels answer (grey: left to the interpreter)."""
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
        _, wire = on_wire(x)
        levels = built.levels.lookup(
            x[:, 0].astype(np.int64), x[:, 1].astype(np.int64), x[:, 2].astype(np.int64),
            wire[:, 0], wire[:, 1])[0]
        maps = [m.decide(x), model.decide(model_input(m.inputs, norm, x)), levels]
        names = ("float", "int8", "table levels 1+2" if built.level2 is not None else "table")
        for row, (name, dec) in enumerate(zip(names, maps, strict=True)):
            ax = axes[row][col]
            ax.imshow(dec.reshape(res, res).T, origin="lower", extent=(0, 1, 0, 1), cmap=cmap,
                      vmin=0, vmax=2, interpolation="nearest")
            ax.set_title(f"{name}: cpu={cpu} idle={idle}/{ncpus}", fontsize=9)
            ax.set_xlabel("src_dom_load")
            ax.set_ylabel("dst_dom_load")
    fig.suptitle("decisions: blue STAY, red MIGRATE, grey: neither table level answers")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return buf.getvalue()
