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
                   (``linear``, a score with a boundary of its own, only when asked)
    4. head        so that the model's boundary X (``--migrate-above``, else the kind's
                   default) lands on 0.5: probability and linear: output - X + 0.5
                   (a probability at X = 0.5 unchanged); logit: sigmoid(output - X);
                   label: the continuous score in front of the comparison, shifted so
                   that score > threshold  <=>  output > 0.5 (``label_score``); a label
                   whose comparison is not found stays a 0/1 step
    5. fold        the runtime's input scaling (counts / N) absorbed into the first
                   constant op on the input (``fold_scale``): a MatMul kernel's rows,
                   a Mul/RealDiv constant, passing Sub/Add/BiasAdd constants on the
                   way (a Keras Normalization or BatchNormalization layer in front)
    6. rescale     where it cannot fold (the input feeds several ops, or an op that is
                   not linear in it): the scale multiplied back in right behind the ops
                   that pick columns out of the input (``rescale``: StridedSlice, Slice,
                   Gather, Split, Unpack), each picked tensor by its own columns' factor,
                   so each gets an int8 scale of its own; anything else that reads the
                   whole input reads it through one Mul in front
    7. equalize    each ``Dense -> ReLU -> Dense`` of constant weights with the hidden
                   channels scaled to one range on the calibration rows (``equalize``):
                   int8 keeps one scale per activation tensor, so a channel of small
                   range (a load's) would otherwise get a few of its 256 levels

The int8 model's single input scale then sees every column in [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import ConvertError, first_line
from .lazy_tf import tensorflow
from .loader import Choice

KINDS = ("probability", "logit", "linear", "label")
#: Where each kind's output turns into MIGRATE unless --migrate-above/--migrate-at-least
#: says otherwise: a probability above 0.5, a logit or a linear score above 0, a label of 1.
DEFAULT_THRESHOLDS = {"probability": 0.5, "logit": 0.0, "linear": 0.0, "label": 0.5}
#: Ops that only move the input's elements (a column picked, split off or gathered): the
#: rescale goes behind them. Index of the data operand of each.
SELECT_OPS = {"StridedSlice": 0, "Slice": 0, "GatherV2": 0, "Gather": 0, "Split": 1,
              "SplitV": 0, "Unpack": 0}
#: Attribute holding how many outputs a selecting op has (ops not listed have one).
SELECT_OUTPUTS = {"Split": "num_split", "SplitV": "num_split", "Unpack": "num"}
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
#: Smallest factor ``equalize`` divides a channel by: a channel almost never active is not
#: blown up to the range of the others.
MIN_EQUALIZE = 1e-3


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


def with_head(choice: Choice, g: FloatGraph, kind: str,
              threshold: float | None = None) -> tuple[FloatGraph, str]:
    """Step 4: a graph whose output above 0.5 means MIGRATE; returns it and what was done.

    ``threshold``: where the output turns into MIGRATE (None: the kind's default); a
    label's is only which value is MIGRATE (1), its head does not depend on it.
    """
    tf = tensorflow()
    x_mig = DEFAULT_THRESHOLDS[kind] if threshold is None else float(threshold)
    shift = np.float32(0.5 - x_mig)
    if kind == "probability" and x_mig == DEFAULT_THRESHOLDS[kind]:
        return g, "output as it is"
    if kind in ("probability", "linear"):
        base = g.function()
        if x_mig == 0.5:
            return g, "output as it is (its boundary 0.5 is the int8 model's)"
        return (freeze(choice, fn=lambda x: base(x) + shift),
                f"output {'-' if x_mig > 0 else '+'} {abs(x_mig):g} + 0.5: its boundary"
                f" {x_mig:g} at 0.5")
    if kind == "logit":
        base = g.function()
        if x_mig == 0.0:
            return freeze(choice, fn=lambda x: tf.sigmoid(base(x))), "sigmoid appended"
        t = np.float32(x_mig)
        return (freeze(choice, fn=lambda x: tf.sigmoid(base(x) - t)),
                f"sigmoid(output - {x_mig:g}) appended")
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


def _consumers_through_identity(nodes: _Nodes, tensor: str) -> list:
    """(node, input index) of every op reading ``tensor``, looking through Identity/Snapshot."""
    found = []
    for node, k in nodes.consumers.get(tensor, []):
        if node.op in ("Identity", "Snapshot"):
            found += _consumers_through_identity(nodes, f"{node.name}:0")
        else:
            found.append((node, k))
    return found


def _column_factor(columns: np.ndarray, scale: np.ndarray) -> np.ndarray | None:
    """The factor a selecting op's output needs, from the input columns its elements came
    from (evaluated on rows holding their own column numbers): one number when every
    element comes from one column, a row [1, ...] when each row picks the same columns;
    None when the elements are not plain copies of input columns."""
    cols = np.asarray(columns, dtype=np.float64)
    idx = np.rint(cols).astype(np.int64)
    if cols.size == 0 or not np.array_equal(idx, cols) or idx.min() < 0 or idx.max() >= scale.size:
        return None
    if np.all(idx == idx.reshape(-1)[0]):
        return np.asarray(scale[idx.reshape(-1)[0]], np.float32)
    if idx.ndim >= 2 and np.all(idx == idx[:1]):
        return scale[idx[:1]].astype(np.float32)
    return None


def rescale(g: FloatGraph, scale: np.ndarray) -> tuple[FloatGraph | None, str]:
    """Step 6: the graph computing ``f(u * scale)`` for a graph ``fold_scale`` cannot change.

    Every op reading the input is either one that picks columns out of it (``SELECT_OPS``)
    or another: behind each output of a picking op goes a Mul by the factor of the columns
    it holds (none where they are all 1, as loads are), found by running the op on rows
    that hold their own column numbers; every other reader reads ``input * scale`` through
    one Mul. (None, why) when no op reads the input. The caller verifies the result.
    """
    tf = tensorflow()
    gd = type(g.graph_def)()
    gd.CopyFrom(g.graph_def)
    nodes = _Nodes(gd, g.input)
    s = np.asarray(scale, np.float32)
    readers = _consumers_through_identity(nodes, _tensor(g.input))
    if not readers:
        return None, "no op reads the input"
    probe = np.tile(np.arange(g.width, dtype=np.float32), (3, 1))
    picked, front = [], []
    front_mul = None

    def mul(name: str, tensor: str, factor: str) -> str:
        m = gd.node.add()
        m.name = name
        m.op = "Mul"
        m.attr["T"].type = tf.float32.as_datatype_enum
        m.input.extend([tensor, factor])
        return m.name

    for node, k in readers:
        outputs = node.attr[SELECT_OUTPUTS[node.op]].i if node.op in SELECT_OUTPUTS else 1
        factors = None
        if SELECT_OPS.get(node.op) == k:
            factors = [_column_factor(_function(g.graph_def, [g.input], f"{node.name}:{j}")(
                tf.constant(probe)).numpy(), s) for j in range(outputs)]
            if any(f is None for f in factors):
                factors = None
        if factors is None:
            if front_mul is None:
                front_mul = mul("mlsched_rescale", node.input[k],
                                _new_const(gd, "mlsched_rescale/factor", s))
            node.input[k] = front_mul
            front.append(node.op)
            continue
        picked.append(node.op)
        for j, f in enumerate(factors):
            if np.all(f == 1):
                continue
            out = f"{node.name}:{j}"
            users = list(nodes.consumers.get(out, []))
            m = mul(f"{node.name}/mlsched_rescale{j}", out if j else node.name,
                    _new_const(gd, f"{node.name}/mlsched_rescale{j}/factor", f))
            for user, i in users:
                user.input[i] = m
    parts = []
    if picked:
        parts.append(f"behind the {len(picked)} ops picking its columns"
                     f" ({', '.join(sorted(set(picked)))})")
    if front:
        parts.append(f"in front of {', '.join(sorted(set(front)))}")
    return FloatGraph(gd, g.input, g.output, g.width), " and ".join(parts)



def _new_const(gd, name: str, value: np.ndarray) -> str:
    tf = tensorflow()
    const = gd.node.add()
    const.name = name
    const.op = "Const"
    const.attr["dtype"].type = tf.float32.as_datatype_enum
    const.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(np.asarray(value, np.float32)))
    return const.name


def _only_user(nodes: _Nodes, node):
    """The one op reading ``node``'s output, or None."""
    users = nodes.consumers.get(f"{node.name}:0", [])
    return users[0][0] if len(users) == 1 else None


def _dense_under(nodes: _Nodes, relu):
    """For ``relu``: (first MatMul, its weight input index, the bias op and its constant's
    input index or None) when relu reads ``MatMul(x, W) [+ b]`` with constant W and b."""
    pre = nodes.by_name.get(_node_of(relu.input[0]))
    bias, b_side = None, None
    if pre is not None and pre.op in ("BiasAdd", "Add", "AddV2") and _only_user(nodes, pre) is relu:
        sides = [k for k in (0, 1) if not nodes.depends_on_input(pre.input[k])]
        if len(sides) != 1:
            return None
        bias, b_side = pre, sides[0]
        pre = nodes.by_name.get(_node_of(pre.input[1 - b_side]))
    if pre is None or pre.op != "MatMul" or pre.attr["transpose_a"].b or pre.attr["transpose_b"].b:
        return None
    if _only_user(nodes, pre) is not (bias or relu) or nodes.depends_on_input(pre.input[1]):
        return None
    return pre, bias, b_side


def equalize(g: FloatGraph, probe: np.ndarray, strength: float = 1.0) -> tuple[FloatGraph, int]:
    """Step 7: every ``MatMul -> BiasAdd -> Relu -> MatMul`` of constant weights with its hidden
    channels brought towards one range: channel j divided by r_j in the first layer and
    multiplied by r_j in the second (relu(z / r) = relu(z) / r for r > 0: the function is
    unchanged), ``r_j = (max_j / max) ** strength`` with max_j its largest value on
    ``probe`` (the normalized calibration rows) and max the largest of them.

    The int8 model keeps one scale per activation tensor: strength 1 gives every channel
    all of its 256 levels, but moves the rounding into the second layer's weights, whose
    scale (per output channel) the largest ``r_j * W2[j, k]`` then sets; strengths between
    0 and 1 share it out (the converter picks by measuring). Returns the graph and how
    many layers changed; the caller verifies it."""
    tf = tensorflow()
    gd = type(g.graph_def)()
    gd.CopyFrom(g.graph_def)
    changed = 0
    for name in [n.name for n in gd.node if n.op == "Relu"]:
        nodes = _Nodes(gd, g.input)
        relu = nodes.by_name[name]
        mm2 = _only_user(nodes, relu)
        if mm2 is None or mm2.op != "MatMul" or _node_of(mm2.input[0]) != name \
                or mm2.attr["transpose_a"].b or mm2.attr["transpose_b"].b \
                or nodes.depends_on_input(mm2.input[1]):
            continue
        dense = _dense_under(nodes, relu)
        if dense is None:
            continue
        mm1, bias, b_side = dense
        w1 = nodes.constant(mm1.input[1]).astype(np.float64)
        w2 = nodes.constant(mm2.input[1]).astype(np.float64)
        b = None if bias is None else nodes.constant(bias.input[b_side]).astype(np.float64)
        if w1.ndim != 2 or w2.ndim != 2 or w1.shape[1] != w2.shape[0] or \
                (b is not None and b.shape != (w1.shape[1],)):
            continue
        act = np.asarray(_function(gd, [g.input], f"{name}:0")(
            tf.constant(np.asarray(probe, np.float32))))
        top = act.max(axis=0)
        if top.max() <= 0:
            continue
        r = np.maximum(np.where(top > 0, (top / top.max()) ** strength, 1.0), MIN_EQUALIZE)
        tag = f"mlsched_equalized{changed}"
        mm1.input[1] = _new_const(gd, f"{mm1.name}/{tag}", w1 / r[None, :])
        mm2.input[1] = _new_const(gd, f"{mm2.name}/{tag}", w2 * r[:, None])
        if bias is not None:
            bias.input[b_side] = _new_const(gd, f"{bias.name}/{tag}", b / r)
        changed += 1
    return FloatGraph(gd, g.input, g.output, g.width), changed
