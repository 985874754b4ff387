"""The chosen model as one frozen float32 graph: what the converter folds, measures and quantizes.

Whatever the style (see loader.py), the model ends here as a TensorFlow ``GraphDef``
with one input ``[n, width]`` float32 and one output ``[n, 1]`` float32 whose value
above 0.5 means MIGRATE — the contract of the runtime's int8 model::

    1. freeze      the signature, wrapped to take float32 (cast to its own dtype) and
                   give [n, 1] float32; variables become constants, calls are inlined,
                   control edges dropped (a tf.Module needs no ``variables`` attribute)
    2. float32     float16/float64 ops and constants rewritten to float32: TFLite's
                   int8 kernels take float32 graphs only
    3. kind        what the output is, from the op that makes it (``output_kind``):
                     Sigmoid                                  probability
                     Greater/GreaterEqual/Less/LessEqual/Round  label (hard 0/1)
                     a bool or integer output                 label
                     anything else                            logit
    4. head        probability: unchanged; logit: a sigmoid appended; label: the
                   continuous score in front of the comparison, shifted so that
                   score > threshold  <=>  output > 0.5 (``label_score``); a label
                   whose comparison is not found stays a 0/1 step
    5. fold        the runtime's input scaling (counts / N) absorbed into the first
                   constant op on the input (``fold_scale``): a MatMul kernel's rows,
                   a Mul/RealDiv constant, passing Sub/Add/BiasAdd constants on the
                   way (a Keras Normalization or BatchNormalization layer in front)

The int8 model's single input scale then sees every column in [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import ConvertError, first_line
from .lazy_tf import tensorflow
from .loader import Choice

KINDS = ("probability", "logit", "label")
#: Ops that hand their first input on unchanged in value (for finding what makes the output).
PASS_THROUGH = {"Identity", "Reshape", "Squeeze", "ExpandDims", "Cast", "StopGradient",
                "Snapshot", "PreventGradient", "IdentityN"}
#: Ops whose output is a hard 0/1 decision.
LABEL_OPS = {"Greater", "GreaterEqual", "Less", "LessEqual", "Round", "ArgMax", "ArgMin",
             "Equal", "NotEqual"}
#: Ops on the input the fold passes (their constant is divided by the scale) and ends at.
FOLD_PASS = {"Sub", "Add", "AddV2", "BiasAdd"}
FOLD_END = {"MatMul", "Mul", "RealDiv"}
INPUT_NAME = "features"


@dataclass
class FloatGraph:
    """A frozen float32 graph ``[n, width] -> [n, 1]`` (see the module doc)."""

    graph_def: object
    input: str          # tensor name, e.g. "features:0"
    output: str
    width: int

    def function(self):
        return _function(self.graph_def, [self.input], self.output)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """The graph on float features [n, width]; returns [n] float32."""
        tf = tensorflow()
        fn = self.function()
        out = [np.asarray(fn(tf.constant(np.asarray(x[i:i + 65536], np.float32)))).reshape(-1)
               for i in range(0, len(x), 65536)]
        return np.concatenate(out) if out else np.zeros(0, np.float32)


def _function(graph_def, feeds: list[str], fetch: str):
    tf = tensorflow()

    def body():
        tf.graph_util.import_graph_def(graph_def, name="")

    wrapped = tf.compat.v1.wrap_function(body, [])
    g = wrapped.graph
    return wrapped.prune([g.get_tensor_by_name(t) for t in feeds], g.get_tensor_by_name(fetch))


def _tensor(name: str) -> str:
    """A node input ("n", "n:1") as a tensor name ("n:0", "n:1")."""
    return name if ":" in name else f"{name}:0"


def _node_of(name: str) -> str:
    return name.lstrip("^").split(":")[0]


def freeze(choice: Choice, fn=None) -> FloatGraph:
    """Step 1 and 2: the chosen output as a frozen float32 graph ``[n, width] -> [n, 1]``."""
    tf = tensorflow()
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    native = tf.as_dtype(choice.input.dtype)
    call, in_name, out_name = choice.signature.call, choice.input.name, choice.output.name

    @tf.function(input_signature=[tf.TensorSpec([None, choice.width], tf.float32, name=INPUT_NAME)])
    def wrapped(x):
        y = call({in_name: tf.cast(x, native)})[out_name] if fn is None else fn(x)
        return tf.reshape(tf.cast(y, tf.float32), [-1, 1])

    try:
        frozen = convert_variables_to_constants_v2(wrapped.get_concrete_function())
    except ConvertError:
        raise
    except Exception as e:  # noqa: BLE001 - tracing user graphs raises many kinds
        raise ConvertError(f"{choice.describe()}: cannot trace the model ({first_line(e)})") from None
    gd = frozen.graph.as_graph_def()
    to_float32(gd)
    for node in gd.node:        # a frozen inference graph needs no ordering between calls
        data = [i for i in node.input if not i.startswith("^")]
        del node.input[:]
        node.input.extend(data)
    return FloatGraph(gd, frozen.inputs[0].name, frozen.outputs[0].name, choice.width)


def to_float32(graph_def) -> None:
    """Rewrite float16/bfloat16/float64 types and constants to float32, in place; drop no-op casts."""
    tf = tensorflow()
    from tensorflow.core.framework import types_pb2

    others = {types_pb2.DT_DOUBLE, types_pb2.DT_HALF, types_pb2.DT_BFLOAT16}
    nodes = list(graph_def.node) + [n for f in graph_def.library.function for n in f.node_def]
    for node in nodes:
        for attr in node.attr.values():
            if attr.HasField("type") and attr.type in others:
                attr.type = types_pb2.DT_FLOAT
            if attr.HasField("list") and attr.list.type:
                types = [types_pb2.DT_FLOAT if t in others else t for t in attr.list.type]
                del attr.list.type[:]
                attr.list.type.extend(types)
            if attr.HasField("tensor") and attr.tensor.dtype in others:
                value = tf.make_ndarray(attr.tensor).astype(np.float32)
                attr.tensor.CopyFrom(tf.make_tensor_proto(value))
        if node.op == "Cast" and node.attr["SrcT"].type == node.attr["DstT"].type:
            dtype = node.attr["SrcT"].type
            for key in list(node.attr):
                del node.attr[key]
            node.op = "Identity"
            node.attr["T"].type = dtype


class _Nodes:
    """Look-ups over a GraphDef: node by name, consumers of a tensor, dependence on the input."""

    def __init__(self, graph_def, input_tensor: str):
        self.gd = graph_def
        self.by_name = {n.name: n for n in graph_def.node}
        self.input_node = _node_of(input_tensor)
        self.consumers: dict[str, list] = {}
        for n in graph_def.node:
            for k, name in enumerate(n.input):
                if not name.startswith("^"):
                    self.consumers.setdefault(_tensor(name), []).append((n, k))

    def depends_on_input(self, tensor: str) -> bool:
        seen, todo = set(), [_node_of(tensor)]
        while todo:
            name = todo.pop()
            if name == self.input_node:
                return True
            if name in seen or name not in self.by_name:
                continue
            seen.add(name)
            todo.extend(_node_of(i) for i in self.by_name[name].input if not i.startswith("^"))
        return False

    def producer_chain(self, tensor: str):
        """The first op behind ``tensor`` that is not a pass-through, and the dtype seen on the way."""
        node = self.by_name[_node_of(tensor)]
        saw_non_float = False
        while node.op in PASS_THROUGH and node.input:
            if node.op == "Cast" and node.attr["SrcT"].type != node.attr["DstT"].type:
                saw_non_float = True
            node = self.by_name[_node_of(node.input[0])]
        return node, saw_non_float

    def constant(self, tensor: str) -> np.ndarray:
        return np.asarray(_function(self.gd, [], _tensor(tensor))())


def output_kind(g: FloatGraph) -> tuple[str, str]:
    """Step 3: (kind, the op that tells it) for the graph's output (see the module doc)."""
    node, cast_from_other = _Nodes(g.graph_def, g.input).producer_chain(g.output)
    if node.op == "Sigmoid":
        return "probability", node.op
    if node.op in LABEL_OPS or cast_from_other:
        return "label", node.op if node.op in LABEL_OPS else f"{node.op} cast to float"
    return "logit", node.op


def with_head(choice: Choice, g: FloatGraph, kind: str) -> tuple[FloatGraph, str]:
    """Step 4: a graph whose output above 0.5 means MIGRATE; returns it and what was done."""
    tf = tensorflow()
    if kind == "probability":
        return g, "output as it is"
    if kind == "logit":
        base = g.function()
        return freeze(choice, fn=lambda x: tf.sigmoid(base(x))), "sigmoid appended"
    found = label_score(g)
    if found is None:
        return g, "0/1 step kept (no comparison with a constant found in front of it)"
    score, threshold, sign, op = found
    fn = _function(g.graph_def, [g.input], score)
    t = np.float32(threshold)
    head = freeze(choice, fn=lambda x: sign * (tf.reshape(fn(x), [-1]) - t) + 0.5)
    return head, f"score in front of {op} {'>' if sign > 0 else '<'} {threshold:g} kept"


def label_score(g: FloatGraph):
    """For a label made by comparing a score with a constant: (score tensor, threshold, sign, op)."""
    nodes = _Nodes(g.graph_def, g.input)
    node, _ = nodes.producer_chain(g.output)
    if node.op == "Round":
        return _tensor(node.input[0]), 0.5, 1.0, node.op
    if node.op not in ("Greater", "GreaterEqual", "Less", "LessEqual"):
        return None
    a, b = node.input[0], node.input[1]
    greater = node.op.startswith("Greater")
    if not nodes.depends_on_input(b) and nodes.depends_on_input(a):
        score, const, sign = a, b, 1.0 if greater else -1.0
    elif not nodes.depends_on_input(a) and nodes.depends_on_input(b):
        score, const, sign = b, a, -1.0 if greater else 1.0
    else:
        return None
    t = nodes.constant(const)
    if t.size != 1:
        return None
    return _tensor(score), float(t.reshape(-1)[0]), sign, node.op


def fold_scale(g: FloatGraph, scale: np.ndarray) -> tuple[FloatGraph | None, str]:
    """Step 5: the graph computing ``f(u * scale)`` with the scale absorbed; (None, why) if it cannot.

    ``x = u * s`` enters the first ops on the input: ``x - c = s (u - c/s)`` (Sub, Add,
    BiasAdd: the factor travels on), ``x * c = u (s c)``, ``x / c = u / (c / s)`` and
    ``x W = u (diag(s) W)`` (MatMul) absorb it. The caller verifies the result numerically.
    """
    tf = tensorflow()
    gd = type(g.graph_def)()
    gd.CopyFrom(g.graph_def)
    nodes = _Nodes(gd, g.input)
    s = np.asarray(scale, np.float32)
    current = _tensor(g.input)
    while True:
        users = nodes.consumers.get(current, [])
        if len(users) != 1:
            return None, f"the input feeds {len(users)} ops"
        node, k = users[0]
        if node.op in ("Identity", "Snapshot"):
            current = f"{node.name}:0"
            continue
        if node.op not in FOLD_PASS | FOLD_END or len(node.input) < 2:
            return None, f"the input goes to {node.op} first"
        other = node.input[1 - k]
        if nodes.depends_on_input(other):
            return None, f"{node.op} combines the input with itself"
        c = nodes.constant(other).astype(np.float32)
        if node.op == "MatMul":
            if k != 0 or node.attr["transpose_a"].b:
                return None, "the input is the right-hand side of a MatMul"
            new = c * (s[None, :] if node.attr["transpose_b"].b else s[:, None])
        elif node.op == "Mul":
            new = c * s
        elif node.op == "RealDiv" and k == 0:
            new = c / s
        elif node.op in FOLD_PASS:
            new = c / s
        else:
            return None, f"the input divides {node.op}"
        const = gd.node.add()
        const.name = f"{node.name}/mlsched_folded"
        const.op = "Const"
        const.attr["dtype"].type = tf.float32.as_datatype_enum
        const.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(new.astype(np.float32)))
        node.input[1 - k] = const.name
        if node.op in FOLD_END:
            return FloatGraph(gd, g.input, g.output, g.width), f"into {node.op} {node.name}"
        current = f"{node.name}:0"
