"""Read a saved migration model, whatever way it was saved, as named signatures; pick one.

Every style ends as the same thing, a ``Signature``: named inputs and outputs with
dtypes and shapes, and a call that takes a dict of input tensors and returns a dict
of output tensors::

    SavedModel directory   Keras ``model.export()``, ``tf.saved_model.save`` of a Keras
                           model or of a plain ``tf.Module`` (``__call__`` or any named
                           signature; the module needs no ``variables`` attribute):
                           its signatures, by their names
    .keras / .h5 file      the Keras model, as one signature named ``keras``

``choose`` then picks the signature (``--signature``, else ``serving_default``, else the
only one), its single input and the output (``--model-output``, else the only one), and
checks what the rest of the converter relies on: input rank 2, width 5 or 10 (or, with
``--features``, one input per name given), a float dtype; output numeric with one value
per row. A refusal is a ``ConvertError`` whose
message is one line that names the problem.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mlsched.runtime.features import FEATURE_NAMES, FEATURE_WIDTH, FEATURE_WIDTHS, InputMap

from .errors import ConvertError, first_line
from .lazy_tf import tensorflow

#: Input dtypes the converter accepts (the quantized model always takes int8).
INPUT_DTYPES = ("float16", "float32", "float64")
#: Signature name given to a Keras file's model.
KERAS_SIGNATURE = "keras"


@dataclass(frozen=True)
class TensorInfo:
    """One input or output of a signature."""

    name: str
    dtype: str                        # TensorFlow dtype name: float32, int64, bool, ...
    shape: tuple[int | None, ...] | None  # None: unknown rank; None entries: unknown sizes

    def describe(self) -> str:
        return f"{self.name} {self.dtype} {shape_text(self.shape)}"


@dataclass
class Signature:
    name: str
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    call: Callable[[dict], dict]      # {input name: tensor} -> {output name: tensor}


@dataclass
class Source:
    """A model on disk, read: its style and its signatures (``holder`` keeps it alive)."""

    path: Path
    style: str
    signatures: dict[str, Signature]
    holder: object


@dataclass
class Choice:
    """The signature, input and output the converter works on."""

    source: Source
    signature: Signature
    input: TensorInfo
    output: TensorInfo

    @property
    def width(self) -> int:
        return int(self.input.shape[1])

    @property
    def padding(self) -> str:
        pads = self.width - len(FEATURE_NAMES)
        return f"{pads} zero pads after the five features" if pads else "none (the five features)"

    def inputs(self, named: InputMap | None) -> InputMap:
        """Which feature each input reads: ``named`` (``--features``), else the five in
        order and zero pads."""
        return named if named is not None else InputMap.default(self.width)

    def describe(self) -> str:
        return f"{self.source.style}:{self.source.path.name}[{self.signature.name}]"


def shape_text(shape) -> str:
    if shape is None:
        return "[unknown rank]"
    return "[" + ", ".join("n" if d is None else str(d) for d in shape) + "]"


def open_model(path: Path) -> Source:
    """Read a SavedModel directory or a .keras/.h5 file (see the module doc)."""
    if not path.exists():
        raise ConvertError(f"{path}: no such file or directory (give a SavedModel directory or a .keras/.h5 file)")
    if path.is_file():
        if path.suffix not in (".keras", ".h5"):
            raise ConvertError(f"{path}: a file but not .keras or .h5: give a SavedModel directory or a Keras file")
        return _open_keras(path)
    if not ((path / "saved_model.pb").is_file() or (path / "saved_model.pbtxt").is_file()):
        raise ConvertError(f"{path}: a directory without saved_model.pb: not a SavedModel")
    return _open_saved_model(path)


def _open_saved_model(path: Path) -> Source:
    tf = tensorflow()
    try:
        loaded = tf.saved_model.load(str(path))
    except Exception as e:  # noqa: BLE001 - loading raises many kinds; one line for all
        raise ConvertError(f"{path}: cannot read the SavedModel ({first_line(e)}): is it truncated?") from None
    sigs = {}
    for name, fn in loaded.signatures.items():
        args, kwargs = fn.structured_input_signature
        inputs = [_info(f"arg{i}", s) for i, s in enumerate(args)]
        inputs += [_info(k, s) for k, s in kwargs.items()]
        outs = fn.structured_outputs
        outs = outs if isinstance(outs, dict) else {"output_0": outs}
        sigs[name] = Signature(name, inputs, [_info(k, s) for k, s in outs.items()],
                               _signature_call(fn))
    style = "keras-savedmodel" if (path / "keras_metadata.pb").is_file() else "savedmodel"
    return Source(path, style, sigs, loaded)


def _signature_call(fn) -> Callable[[dict], dict]:
    def call(feeds: dict) -> dict:
        return fn(**feeds)

    return call


def _open_keras(path: Path) -> Source:
    tf = tensorflow()
    try:
        model = tf.keras.models.load_model(path, compile=False)
    except Exception as e:  # noqa: BLE001 - Keras raises many kinds; one line for all
        raise ConvertError(f"{path}: cannot load the Keras model ({first_line(e)})") from None
    try:
        ins, outs = list(model.inputs), list(model.outputs)
    except (AttributeError, ValueError):
        raise ConvertError(f"{path}: the Keras model has no defined inputs: save it built"
                           " (keras.Input) or export it as a SavedModel") from None
    inputs = [TensorInfo(_keras_name(t, f"input_{i}"), _dtype_name(t.dtype), _dims(t.shape))
              for i, t in enumerate(ins)]
    names = [_keras_name(t, f"output_{i}") for i, t in enumerate(outs)]
    if len(set(names)) != len(names):
        names = [f"output_{i}" for i in range(len(outs))]
    outputs = [TensorInfo(n, _dtype_name(t.dtype), _dims(t.shape)) for n, t in zip(names, outs, strict=True)]

    def call(feeds: dict) -> dict:
        xs = [feeds[i.name] for i in inputs]
        y = model(xs[0] if len(xs) == 1 else xs, training=False)
        if isinstance(y, dict):
            y = [y[k] for k in y]
        ys = list(y) if isinstance(y, (list, tuple)) else [y]
        return dict(zip(names, ys, strict=True))

    return Source(path, "keras", {KERAS_SIGNATURE: Signature(KERAS_SIGNATURE, inputs, outputs, call)}, model)


def _keras_name(tensor, fallback: str) -> str:
    """The name of the layer that makes a Keras tensor (its own name is generated)."""
    history = getattr(tensor, "_keras_history", None)
    op = getattr(history, "operation", None) if history is not None else None
    return getattr(op, "name", None) or fallback


def _dtype_name(dtype) -> str:
    return getattr(dtype, "name", None) or str(dtype)


def _dims(shape) -> tuple[int | None, ...] | None:
    try:
        return tuple(None if d is None else int(d) for d in shape)
    except TypeError:
        return None


def _info(name: str, spec) -> TensorInfo:
    shape = None if spec.shape.rank is None else tuple(spec.shape.as_list())
    return TensorInfo(name, spec.dtype.name, shape)


def choose(source: Source, signature: str | None = None, output: str | None = None,
           named: InputMap | None = None) -> Choice:
    """The signature, input and output to convert; refusals name what is wrong (module doc).
    ``named``: the ``--features`` mapping the input must have one column per name of."""
    sig = pick_signature(source, signature)
    where = f"{source.path}: signature {sig.name!r}"
    return Choice(source, sig, check_input(sig, where, named), pick_output(sig, output, where))


def pick_signature(source: Source, signature: str | None) -> Signature:
    sigs, path = source.signatures, source.path
    if signature is not None:
        if signature not in sigs:
            raise ConvertError(f"{path}: no signature {signature!r} (has: {', '.join(sigs) or 'none'})")
        return sigs[signature]
    if "serving_default" in sigs:
        return sigs["serving_default"]
    if len(sigs) == 1:
        return next(iter(sigs.values()))
    if not sigs:
        raise ConvertError(f"{path}: the SavedModel has no signatures: save it with one"
                           " (tf.saved_model.save(obj, dir, signatures=...))")
    raise ConvertError(f"{path}: several signatures ({', '.join(sorted(sigs))}): choose one with --signature")


def check_input(sig: Signature, where: str, named: InputMap | None = None) -> TensorInfo:
    want = (f"one [n, {named.width}] float matrix (--features names {named.width})" if named
            else f"one [n, {len(FEATURE_NAMES)}] or [n, {FEATURE_WIDTH}] float matrix")
    if len(sig.inputs) != 1:
        names = ", ".join(i.describe() for i in sig.inputs) or "none"
        raise ConvertError(f"{where} takes {len(sig.inputs)} inputs ({names}), expected {want}")
    inp = sig.inputs[0]
    if inp.dtype not in INPUT_DTYPES:
        kind = "numbers but not floating point" if _is_numeric(inp.dtype) else "not numeric"
        raise ConvertError(f"{where} input {inp.name!r} is {inp.dtype} ({kind}): expected"
                           f" {', '.join(INPUT_DTYPES)} (loads are fractions)")
    if inp.shape is None or len(inp.shape) != 2:
        rank = "unknown" if inp.shape is None else len(inp.shape)
        raise ConvertError(f"{where} input {inp.name!r} is {shape_text(inp.shape)}, rank {rank}:"
                           f" expected rank 2, {want}")
    width = "unknown" if inp.shape[1] is None else inp.shape[1]
    if named is not None and inp.shape[1] != named.width:
        raise ConvertError(f"{where} input {inp.name!r} has width {width}: --features names"
                           f" {named.width} ({named.describe()}), one per input")
    if named is None and inp.shape[1] not in FEATURE_WIDTHS:
        raise ConvertError(f"{where} input {inp.name!r} has width {width}: expected"
                           f" {len(FEATURE_NAMES)} ({', '.join(FEATURE_NAMES)}) or {FEATURE_WIDTH}"
                           " (the five and five zero pads), or say which feature each input"
                           " reads with --features NAME,...")
    return inp


def pick_output(sig: Signature, output: str | None, where: str) -> TensorInfo:
    outs = {o.name: o for o in sig.outputs}
    listed = ", ".join(o.describe() for o in sig.outputs)
    if output is not None:
        if output not in outs:
            raise ConvertError(f"{where} has no output {output!r} (has: {listed})")
        out = outs[output]
    elif len(outs) == 1:
        out = next(iter(outs.values()))
    else:
        raise ConvertError(f"{where} has {len(outs)} outputs ({listed}): choose one with --model-output")
    if not (_is_numeric(out.dtype) or out.dtype == "bool"):
        raise ConvertError(f"{where} output {out.name!r} is {out.dtype}: not numeric")
    if out.shape is None or not (len(out.shape) == 1 or (len(out.shape) == 2 and out.shape[1] == 1)):
        raise ConvertError(f"{where} output {out.name!r} is {shape_text(out.shape)}: expected one value"
                           " per row, [n, 1] or [n]")
    return out


def _is_numeric(dtype: str) -> bool:
    return dtype.startswith(("float", "int", "uint", "bfloat", "half", "double"))
