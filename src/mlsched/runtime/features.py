"""Feature contract shared by every path that turns raw features into a decision.

A migration request carries five features, its *raw features*, always in this order
(``FEATURES``, the table of known feature names)::

    0 cpu            current CPU id            (integer, 0..N-1)
    1 cpu_idle       idle CPUs on the host     (integer, 0..N)
    2 cpu_not_idle   busy CPUs on the host     (integer, 0..N)
    3 src_dom_load   source domain load        (0.0..1.0)
    4 dst_dom_load   destination domain load   (0.0..1.0)

A model's inputs are a mapping of them (``InputMap``), as its bundle's manifest names
them column by column: by default the five in this order (width 5) or the five and
five zero pads (width 10); with ``mlsched-convert --features`` any subset of the
known names in any order, and ``pad`` columns that read zero. Every path that feeds
the model (table building, the engine, the converter) goes through the mapping.

The kernel sends loads in fixed point (``wire.LOAD_ONE`` = 1.0) and counts as
integers; ``wire.from_wire`` turns them into these floats exactly (L / 1024 is
exact in binary floating point), so the table key computed here equals the one
the BPF helper computes in integer arithmetic (``wire.load_level``).

Table keys: a load x is quantized to ``q(x) = floor(LOAD_STEPS * x + 1/2)`` after
clamping to [0, 1], i.e. 0..LOAD_STEPS, rounding halves up (the BPF helper's
``(10 * L + 512) >> 10``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from .wire import LOAD_LEVELS, LOAD_STEPS


@dataclass(frozen=True)
class Feature:
    """One known feature: its name, its column in a request's raw features, what it is."""

    name: str
    column: int
    kind: str            # COUNT (0..N on an N-CPU host) or LOAD (0..1)
    meaning: str


COUNT, LOAD = "count", "load"
#: The known features, in the order of a request's raw features. Everything that names,
#: reads or scales a feature (manifest, ``--features``, normalization) goes by this table.
FEATURES = (
    Feature("cpu", 0, COUNT, "current CPU id"),
    Feature("cpu_idle", 1, COUNT, "idle CPUs on the host"),
    Feature("cpu_not_idle", 2, COUNT, "busy CPUs on the host"),
    Feature("src_dom_load", 3, LOAD, "source domain load"),
    Feature("dst_dom_load", 4, LOAD, "destination domain load"),
)
BY_NAME = {f.name: f for f in FEATURES}
FEATURE_NAMES = tuple(f.name for f in FEATURES)
FEATURE_WIDTH = 10
#: Input widths a model may have without a named mapping: the five features, or the five
#: features and five zero pads.
FEATURE_WIDTHS = (len(FEATURE_NAMES), FEATURE_WIDTH)
#: Most inputs a model may take (known features and zero pads).
MAX_INPUTS = 64
#: ``--features`` name of a column that reads zero; the manifest numbers them pad0, pad1, ...
PAD = "pad"
PAD_NAME = re.compile(r"pad[0-9]*")
CPU, IDLE, BUSY, SRC_LOAD, DST_LOAD = (f.column for f in FEATURES)
COUNT_COLUMNS = tuple(f.column for f in FEATURES if f.kind == COUNT)
LOAD_COLUMNS = (SRC_LOAD, DST_LOAD)

__all__ = ["BY_NAME", "COUNT_COLUMNS", "FEATURES", "FEATURE_NAMES", "FEATURE_WIDTH",
           "LOAD_COLUMNS", "LOAD_LEVELS", "LOAD_STEPS", "MAX_INPUTS", "THRESHOLD", "Feature",
           "InputMap", "Normalization", "host_features", "load_key", "pad"]
#: Sigmoid output above this means MIGRATE.
THRESHOLD = 0.5


def pad(features5: np.ndarray, width: int = FEATURE_WIDTH) -> np.ndarray:
    """Return [n, width] float32 with the five features in front, zeros behind."""
    f = np.asarray(features5, dtype=np.float32)
    if f.ndim == 1:
        f = f[None, :]
    out = np.zeros((f.shape[0], width), dtype=np.float32)
    take = min(f.shape[1], width)
    out[:, :take] = f[:, :take]
    return out


def load_key(x: np.ndarray) -> np.ndarray:
    """Quantize loads in [0, 1] (clamped) to table levels 0..LOAD_STEPS (int64)."""
    x = np.clip(np.asarray(x, dtype=np.float64), 0.0, 1.0)
    return np.floor(x * LOAD_STEPS + 0.5).astype(np.int64)


def host_features(ncpus: int, cpu, idle, src, dst) -> np.ndarray:
    """Raw features of a healthy N-CPU host (busy = N - idle), broadcast, [n, 10] float32."""
    cpu, idle, src, dst = np.broadcast_arrays(
        np.asarray(cpu, np.float64), np.asarray(idle, np.float64),
        np.asarray(src, np.float64), np.asarray(dst, np.float64))
    cols = [cpu.ravel(), idle.ravel(), ncpus - idle.ravel(), src.ravel(), dst.ravel()]
    return pad(np.stack(cols, axis=1))


class Normalization:
    """Per-feature affine normalization ``u = (x - offset) / scale`` recorded in the manifest.

    The int8 model's single input scale serves all its columns (5 or 10), so every
    column is brought to [0, 1] first; raw CPU ids would otherwise crush the loads to
    a few quantization levels. Its width is the model's input width.
    """

    def __init__(self, scale, offset=None):
        self.scale = np.asarray(scale, dtype=np.float64).reshape(-1)
        if not 1 <= self.scale.size <= MAX_INPUTS:
            raise ValueError(f"normalization has {self.scale.size} columns, expected"
                             f" 1..{MAX_INPUTS}")
        self.offset = (np.zeros(self.scale.size) if offset is None
                       else np.asarray(offset, dtype=np.float64).reshape(self.scale.size))
        if not np.all(np.isfinite(self.scale)) or np.any(self.scale <= 0):
            raise ValueError("normalization scale must be finite and > 0")
        if not np.all(np.isfinite(self.offset)):
            raise ValueError("normalization offset must be finite")
        self._inv = (1.0 / self.scale).astype(np.float32)
        self._off = self.offset.astype(np.float32)

    @classmethod
    def identity(cls, width: int = FEATURE_WIDTH) -> Normalization:
        return cls(np.ones(width))

    @classmethod
    def for_host(cls, ncpus: int, width: int = FEATURE_WIDTH) -> Normalization:
        """Counts divided by the host's CPU count, loads and padding unchanged (the default
        mapping of ``width`` columns; ``InputMap.host_normalization`` for any other)."""
        return InputMap.default(width).host_normalization(ncpus)

    @property
    def width(self) -> int:
        return int(self.scale.size)

    @property
    def is_identity(self) -> bool:
        return bool(np.all(self.scale == 1.0) and np.all(self.offset == 0.0))

    def apply(self, x: np.ndarray) -> np.ndarray:
        return (np.asarray(x, dtype=np.float32) - self._off) * self._inv

    def to_json(self) -> dict:
        return {"scale": [float(v) for v in self.scale], "offset": [float(v) for v in self.offset]}

    @classmethod
    def from_json(cls, d: dict) -> Normalization:
        return cls(d["scale"], d.get("offset"))


class InputMap:
    """Which raw feature each model input reads: the manifest's ``features.names``.

    ``names[i]`` is the known feature (``FEATURES``) model input ``i`` reads, or a pad
    (``pad0``, ``pad1``, ...) that reads zero. A known name appears at most once.
    """

    def __init__(self, names):
        names = [str(n) for n in names]
        if not 1 <= len(names) <= MAX_INPUTS:
            raise ValueError(f"{len(names)} model inputs: expected 1..{MAX_INPUTS}")
        unknown = [n for n in names if n not in BY_NAME and not PAD_NAME.fullmatch(n)]
        if unknown:
            raise ValueError(f"unknown feature {unknown[0]!r} (known: {', '.join(FEATURE_NAMES)};"
                             f" {PAD} for a zero column)")
        known = [n for n in names if n in BY_NAME]
        repeated = sorted({n for n in known if known.count(n) > 1})
        if repeated:
            raise ValueError(f"feature {repeated[0]!r} named more than once")
        if not known:
            raise ValueError(f"no known feature among the inputs (known: {', '.join(FEATURE_NAMES)})")
        self.names = tuple(names)
        #: raw column each model input reads, -1 for a pad
        self.columns = np.array([BY_NAME[n].column if n in BY_NAME else -1 for n in names],
                                dtype=np.int64)

    @classmethod
    def default(cls, width: int = FEATURE_WIDTH) -> InputMap:
        """The five features in their order, then zero pads up to ``width`` columns."""
        if width < len(FEATURE_NAMES):
            raise ValueError(f"default mapping of {width} columns: needs at least {len(FEATURE_NAMES)}")
        return cls(list(FEATURE_NAMES) + [f"{PAD}{i}" for i in range(width - len(FEATURE_NAMES))])

    @classmethod
    def parse(cls, spec: str) -> InputMap:
        """``--features cpu_idle,src_dom_load,pad,...`` (pads numbered in order)."""
        names, pads = [], 0
        for item in spec.split(","):
            name = item.strip()
            if not name:
                raise ValueError(f"empty name in {spec!r}")
            if name == PAD:
                name, pads = f"{PAD}{pads}", pads + 1
            elif PAD_NAME.fullmatch(name):
                raise ValueError(f"{name!r}: write {PAD} for a zero column")
            names.append(name)
        return cls(names)

    @property
    def width(self) -> int:
        return len(self.names)

    @property
    def reads(self) -> tuple[str, ...]:
        """The known features the model reads, in its input order."""
        return tuple(n for n in self.names if n in BY_NAME)

    @property
    def is_default(self) -> bool:
        """The mapping a manifest without names-by-column meant: five features, then pads."""
        return self.names[:len(FEATURE_NAMES)] == FEATURE_NAMES and \
            all(PAD_NAME.fullmatch(n) for n in self.names[len(FEATURE_NAMES):])

    def input_of(self, column: int) -> int | None:
        """The model input that reads raw column ``column``, or None when none does."""
        hit = np.flatnonzero(self.columns == column)
        return int(hit[0]) if hit.size else None

    def select(self, raw: np.ndarray) -> np.ndarray:
        """Raw features [n, >= 5] -> the model's columns [n, width] float32 (pads zero)."""
        x = np.asarray(raw, dtype=np.float32)
        if x.ndim == 1:
            x = x[None, :]
        out = np.zeros((x.shape[0], self.width), dtype=np.float32)
        used = self.columns >= 0
        out[:, used] = x[:, self.columns[used]]
        return out

    def host_normalization(self, ncpus: int) -> Normalization:
        """Each input divided by the span of its feature on an N-CPU host: counts by N,
        loads and pads by 1 (so one int8 input scale serves every column)."""
        scale = np.ones(self.width)
        for i, name in enumerate(self.names):
            if name in BY_NAME and BY_NAME[name].kind == COUNT:
                scale[i] = max(int(ncpus), 1)
        return Normalization(scale)

    def describe(self) -> str:
        return ", ".join(self.names)

    def __eq__(self, other) -> bool:
        return isinstance(other, InputMap) and self.names == other.names

    def __hash__(self) -> int:
        return hash(self.names)
