"""Feature contract shared by every path that turns raw features into a decision.

A migration request carries five features; a model takes them as they are
(width 5) or padded with zeros to ``FEATURE_WIDTH`` columns (width 10), as its
bundle's manifest says::

    0 cpu            current CPU id            (integer, 0..N-1)
    1 cpu_idle       idle CPUs on the host     (integer, 0..N)
    2 cpu_not_idle   busy CPUs on the host     (integer, 0..N)
    3 src_dom_load   source domain load        (0.0..1.0)
    4 dst_dom_load   destination domain load   (0.0..1.0)
    5..9             zero padding

The kernel sends loads in fixed point (``wire.LOAD_ONE`` = 1.0) and counts as
integers; ``wire.from_wire`` turns them into these floats exactly (L / 1024 is
exact in binary floating point), so the table key computed here equals the one
the BPF helper computes in integer arithmetic (``wire.load_level``).

Table keys: a load x is quantized to ``q(x) = floor(LOAD_STEPS * x + 1/2)`` after
clamping to [0, 1], i.e. 0..LOAD_STEPS, rounding halves up (the BPF helper's
``(10 * L + 512) >> 10``).
"""

from __future__ import annotations

import numpy as np

from .wire import LOAD_LEVELS, LOAD_STEPS

FEATURE_NAMES = ("cpu", "cpu_idle", "cpu_not_idle", "src_dom_load", "dst_dom_load")
FEATURE_WIDTH = 10
#: Input widths a model may have: the five features, or the five features and five zero pads.
FEATURE_WIDTHS = (len(FEATURE_NAMES), FEATURE_WIDTH)
CPU, IDLE, BUSY, SRC_LOAD, DST_LOAD = range(5)
COUNT_COLUMNS = (CPU, IDLE, BUSY)
LOAD_COLUMNS = (SRC_LOAD, DST_LOAD)

__all__ = ["COUNT_COLUMNS", "FEATURE_NAMES", "FEATURE_WIDTH", "LOAD_COLUMNS", "LOAD_LEVELS",
           "LOAD_STEPS", "THRESHOLD", "Normalization", "host_features", "load_key", "pad"]
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
        if self.scale.size not in FEATURE_WIDTHS:
            raise ValueError(f"normalization has {self.scale.size} columns, expected"
                             f" {' or '.join(map(str, FEATURE_WIDTHS))}")
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
        """Counts divided by the host's CPU count, loads and padding unchanged."""
        scale = np.ones(width)
        scale[list(COUNT_COLUMNS)] = max(int(ncpus), 1)
        return cls(scale)

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
